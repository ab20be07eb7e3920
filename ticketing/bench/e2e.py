"""``e2e`` mode: the bare-stack baseline, then the real sale, in ABBA rounds."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..cluster import Child, LocalCluster, shard_names
from ..process import raise_fd_limit
from ..tls import write_cluster_keys
from .checks import check_sale
from .children import spawn_child, stop_all
from .load import drive_visits
from .options import TARGET_RATIO, Options
from .workspace import DataDir, machine


async def run_baseline(data: Path, opts: Options) -> dict[str, Any]:
    keys = data / "keys"
    names = shard_names(opts.shards)
    children: list[Child] = []
    try:
        wss = list(
            await asyncio.gather(
                *(
                    spawn_child(
                        f"baseline-{n}",
                        [
                            "-m",
                            "ticketing.bench.baseline",
                            "wss",
                            "--keys",
                            str(keys),
                            "--name",
                            n,
                            *opts.loop_flag,
                        ],
                    )
                    for n in names
                )
            )
        )
        children += wss
        targets = [f"--target=https://127.0.0.1:{c.ready['port']}" for c in wss]
        redirect = await spawn_child(
            "baseline-redirect",
            [
                "-m",
                "ticketing.bench.baseline",
                "redirect",
                "--keys",
                str(keys),
                "--name",
                "main",
                *targets,
                *opts.loop_flag,
            ],
        )
        children.append(redirect)
        servers = {"redirect": redirect.pid, **{n: c.pid for n, c in zip(names, wss, strict=True)}}
        front = f"https://127.0.0.1:{redirect.ready['port']}/"
        # This process serves nothing here: its CPU is the harness's own overhead.
        result = await drive_visits(
            "baseline",
            front,
            keys / "ca.crt",
            {**servers, "harness": os.getpid()},
            opts,
            goal=opts.clients,
        )
    finally:
        await stop_all(children)
    result.pop("ticket_ids")
    harness = result["cpu_s"]["harness"]
    result["server_cpu_s"] = round(result["server_cpu_s"] - harness, 3)
    if result["granted"]:
        result["server_cpu_ms_per_ticket"] = round(
            1000 * result["server_cpu_s"] / result["granted"], 3
        )
    result["harness_cpu_s"] = harness
    return result


async def run_ticketing(data: Path, opts: Options) -> dict[str, Any]:
    names = shard_names(opts.shards)
    cluster = LocalCluster(data, names, shard_args=opts.loop_flag, load_test=True)
    async with cluster:
        main = cluster.main
        assert main is not None
        event_id = await main.init_tickets("Bench night", "benchmark", "25.00", opts.tickets)
        await main.distribute_tickets()
        servers = {"main+redirect": os.getpid(), **{p.name: p.pid for p in cluster.processes}}
        result = await drive_visits(
            "ticketing",
            cluster.front_url,
            cluster.keys / "ca.crt",
            servers,
            opts,
            goal=opts.tickets,
        )
        audit = (await main.audit(event_id)).as_dict()
    verdict = check_sale(result["ticket_ids"], opts.tickets, audit, event_id)
    result["audit"] = audit
    result["verdict"] = verdict.as_dict()
    return result


async def run_e2e(opts: Options) -> dict[str, Any]:
    """``rounds`` rounds of baseline + ticketing, in ABBA order so drift hits both alike."""
    raise_fd_limit()  # inherited by every process we start
    out: dict[str, Any] = {"mode": "e2e", "options": opts.public(), "machine": machine()}
    rounds: list[dict[str, Any]] = []
    with DataDir(opts) as data:
        for r in range(opts.rounds):
            here = data / f"round-{r + 1}" if opts.rounds > 1 else data
            write_cluster_keys(here / "keys", shard_names(opts.shards))
            phases = ["baseline", "ticketing"] if r % 2 == 0 else ["ticketing", "baseline"]
            result: dict[str, Any] = {}
            for phase in phases:
                if phase == "baseline" and opts.baseline:
                    result["baseline"] = await run_baseline(here, opts)
                elif phase == "ticketing":
                    result["ticketing"] = await run_ticketing(here, opts)
            if "baseline" in result and result["baseline"]["tickets_per_s"]:
                result["ratio"] = round(
                    result["ticketing"]["tickets_per_s"] / result["baseline"]["tickets_per_s"], 3
                )
            rounds.append(result)
    out["rounds"] = rounds
    # The table shows each phase's median round (by tickets/s); the JSON keeps all.
    median = _median_by(r["ticketing"] for r in rounds)
    out["ticketing"] = t = {k: v for k, v in median.items() if k != "ticket_ids"}
    b = _median_by(r["baseline"] for r in rounds) if opts.baseline else None
    if b and b["tickets_per_s"]:
        out["baseline"] = b
        out["ratio"] = {
            "throughput": round(t["tickets_per_s"] / b["tickets_per_s"], 3),
            "per_round": [r.get("ratio") for r in rounds],
            "server_cpu_per_ticket": (
                round(t["server_cpu_ms_per_ticket"] / b["server_cpu_ms_per_ticket"], 3)
                if t["server_cpu_ms_per_ticket"] and b["server_cpu_ms_per_ticket"]
                else None
            ),
            "target": TARGET_RATIO,
        }
        out["ratio"]["target_met"] = out["ratio"]["throughput"] >= TARGET_RATIO
    failed = [r["ticketing"]["verdict"] for r in rounds if not r["ticketing"]["verdict"]["ok"]]
    out["ok"] = not failed
    out["problems"] = [p for v in failed for p in v["problems"]]
    return out


def _median_by(phases: Iterable[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(phases, key=lambda r: r["tickets_per_s"])
    return ordered[(len(ordered) - 1) // 2]
