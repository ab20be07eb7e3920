"""``e2e`` mode: the bare-stack baseline, then the real sale, in ABBA rounds."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..cluster import Child, LocalCluster, front_names, shard_names
from ..process import raise_fd_limit, tune_gc
from ..shard.server import DEFAULT_REPORT_LINGER
from ..tls import write_cluster_keys
from .checks import check_sale
from .children import spawn_child, stop_all
from .ledger_mode import run_ledger
from .load import drive_visits
from .options import (
    TARGET_CEILING_TPS,
    TARGET_CPU_RATIO_FRONTS,
    TARGET_MAIN_US,
    TARGET_RATIO,
    TARGET_RATIO_FRONTS,
    Options,
)
from .projection import MAIN, MainCost, per_ticket_us, project_ceiling, role_costs, role_of
from .workspace import DataDir, machine

IDLE_SETTLE = 0.5  # seconds after the fronts are in sync before main's fixed load is measured
IDLE_WINDOW = 2.0  # seconds it is measured for, with nothing sold
SLOPE_BATCHES = (16, 256)  # sales per report in the two ledger runs (the full batch last)


def _baseline_args(role: str, keys: Path, name: str, *extra: str) -> list[str]:
    return ["-m", "ticketing.bench.baseline", role, "--keys", str(keys), "--name", name, *extra]


async def run_baseline(data: Path, opts: Options) -> dict[str, Any]:
    """The bare stack in the layout of the ticketing run: K WSS processes and one 302
    process (``redirect``, main's certificate) or, with ``--fronts F``, F of them
    (``front-k``, each with that front's certificate)."""
    keys = data / "keys"
    names = shard_names(opts.shards)
    redirects = front_names(opts.fronts) or ["redirect"]
    children: list[Child] = []
    try:
        wss = list(
            await asyncio.gather(
                *(
                    spawn_child(f"baseline-{n}", _baseline_args("wss", keys, n, *opts.loop_flag))
                    for n in names
                )
            )
        )
        children += wss
        targets = [f"--target=https://127.0.0.1:{c.ready['port']}" for c in wss]
        fronts = list(
            await asyncio.gather(
                *(
                    spawn_child(
                        f"baseline-{r}",
                        _baseline_args(
                            "redirect",
                            keys,
                            "main" if r == "redirect" else r,
                            *targets,
                            *opts.loop_flag,
                        ),
                    )
                    for r in redirects
                )
            )
        )
        children += fronts
        servers = {
            **{r: c.pid for r, c in zip(redirects, fronts, strict=True)},
            **{n: c.pid for n, c in zip(names, wss, strict=True)},
        }
        urls = [f"https://127.0.0.1:{c.ready['port']}/" for c in fronts]
        # This process serves nothing here: its CPU is the harness's own overhead.
        result = await drive_visits(
            "baseline",
            urls,
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
    add_costs(result)
    return result


async def run_ticketing(data: Path, opts: Options) -> dict[str, Any]:
    names = shard_names(opts.shards)
    cluster = LocalCluster(
        data,
        names,
        shard_args=opts.loop_flag,
        load_test=True,
        fronts=opts.fronts,
        front_args=opts.loop_flag,
    )
    async with cluster:
        main = cluster.main
        assert main is not None
        event_id = await main.init_tickets("Bench night", "benchmark", "25.00", opts.tickets)
        await main.distribute_tickets()
        await cluster.fronts_in_sync()  # every front routes the event before GO
        tune_gc()  # main runs here: as `ticketing main` does once it is up
        idle_rate = await idle_cpu(IDLE_WINDOW)
        # Main runs in this process (with the harness); with fronts, its own front only
        # stands by as the marketplace backend, so this process is "main".
        here = "main" if opts.fronts else "main+redirect"
        servers = {
            here: os.getpid(),
            **{f.name: f.pid for f in cluster.front_processes},
            **{p.name: p.pid for p in cluster.processes},
        }
        result = await drive_visits(
            "ticketing",
            cluster.front_urls,
            cluster.keys / "ca.crt",
            servers,
            opts,
            goal=opts.tickets,
        )
        audit = (await main.audit(event_id)).as_dict()
        result["ledger_commits"] = ledger_commits(main.metrics.registry)
        result["main_fixed"] = main_fixed(
            idle_rate, len(names) + opts.fronts, result["load_seconds"], result["granted"]
        )
    verdict = check_sale(result["ticket_ids"], opts.tickets, audit, event_id)
    result["audit"] = audit
    result["verdict"] = verdict.as_dict()
    add_costs(result)
    return result


async def idle_cpu(seconds: float) -> float:
    """This process's CPU s per second (every thread) while nothing is sold: main's
    fixed load (heartbeats, the view pusher's ticks, timers), with the harness idle."""
    await asyncio.sleep(IDLE_SETTLE)  # the first view pushes and key certifications are done
    c0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    return (time.process_time() - c0) / (time.monotonic() - t0)


def main_fixed(rate: float, links: int, seconds: float, tickets: int) -> dict[str, Any]:
    """Main's fixed load and its share of main's CPU per ticket over a ``seconds`` load."""
    return {
        "cpu_ms_per_s": round(1e3 * rate, 3),
        "window_s": IDLE_WINDOW,
        "links": links,  # linked fronts and shards while it was measured
        "us_per_ticket": round(1e6 * rate * seconds / tickets, 1) if tickets else None,
    }


def ledger_commits(registry: Any) -> dict[str, Any]:
    """How main's ledger batched this sale: its CPU per ticket falls as batches grow, so a
    slow run's small batches make main look dearer than it would be at scale."""
    n = registry.get_sample_value("ticketing_ledger_batch_size_sales_count") or 0.0
    sales = registry.get_sample_value("ticketing_ledger_batch_size_sales_sum") or 0.0
    return {
        "commits": int(n),
        "sales": int(sales),
        "sales_per_commit": round(sales / n, 2) if n else None,
    }


def add_costs(result: dict[str, Any]) -> None:
    """CPU µs per sold ticket of every server process, and of the load generators in all."""
    cpu = {n: s for n, s in result["cpu_s"].items() if "worker" not in n and n != "harness"}
    cpu["load generators"] = result["loadgen_cpu_s"]
    result["cpu_us_per_ticket"] = per_ticket_us(cpu, result["granted"])


async def run_e2e(opts: Options) -> dict[str, Any]:
    """``rounds`` rounds of baseline + ticketing, in ABBA order so drift hits both alike."""
    raise_fd_limit()  # inherited by every process we start
    out: dict[str, Any] = {"mode": "e2e", "options": opts.public(), "machine": machine()}
    rounds: list[dict[str, Any]] = []
    slope = await ledger_slope(opts) if opts.fronts and opts.slope_tickets else None
    if slope:
        out["ledger_slope"] = slope
    with DataDir(opts) as data:
        for r in range(opts.rounds):
            here = data / f"round-{r + 1}" if opts.rounds > 1 else data
            write_cluster_keys(
                here / "keys", shard_names(opts.shards), fronts=front_names(opts.fronts)
            )
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
            "target": TARGET_RATIO_FRONTS if opts.fronts else TARGET_RATIO,
        }
        out["ratio"]["target_met"] = out["ratio"]["throughput"] >= out["ratio"]["target"]
    out["projection"] = project(t, opts.cores, slope, opts.fronts)
    if b:
        out["baseline_projection"] = project(b, opts.cores)
    if opts.fronts:
        out["targets"] = fronts_targets(out)
    failed = [r["ticketing"]["verdict"] for r in rounds if not r["ticketing"]["verdict"]["ok"]]
    out["ok"] = not failed
    out["problems"] = [p for v in failed for p in v["problems"]]
    return out


async def ledger_slope(opts: Options) -> dict[str, Any]:
    """Main's CPU per shard report and per sale: two ``--mode ledger`` runs, one report in
    flight per shard, at batches of 16 and 256 (CPU per report = r + batch x m)."""
    runs = []
    for batch in SLOPE_BATCHES:
        # Small batches go slowly: a quarter as many tickets (at least 20 reports).
        tickets = max(20 * batch, opts.slope_tickets // (1 if batch == SLOPE_BATCHES[-1] else 4))
        one = replace(
            opts, tickets=tickets, batch=batch, in_flight=1, ledger=None, progress=False, keep=None
        )  # a temporary directory each: --keep is for the sale's own
        led = (await run_ledger(one))["ledger"]
        reports = led["reports"] or 1
        runs.append({"batch": batch, "reports": reports, "cpu_s": led["cpu_s"]["main"],
                     "cpu_us_per_report": round(1e6 * led["cpu_s"]["main"] / reports, 1)})  # fmt: skip
    (b1, c1), (b2, c2) = ((x["batch"], x["cpu_s"] / x["reports"]) for x in runs)
    per_sale = max(0.0, (c2 - c1) / (b2 - b1))
    return {
        "runs": runs,
        "per_sale_us": round(1e6 * per_sale, 2),
        "per_report_us": round(1e6 * max(0.0, c1 - b1 * per_sale), 1),
    }


def main_cost(phase: dict[str, Any], slope: dict[str, Any] | None, fronts: int) -> MainCost | None:
    """Main's :class:`MainCost` from this phase and the ledger runs: per front is what main
    spent over the load beyond its fixed load, its reports and its sales (None without
    the ledger runs, or without front processes, whose traffic it stands for)."""
    fixed = phase.get("main_fixed")
    if not slope or not fronts or not fixed or not fixed["links"] or not phase["granted"]:
        return None
    seconds = phase["load_seconds"]
    rate, links = fixed["cpu_ms_per_s"] / 1e3, fixed["links"]
    per_sale, per_report = slope["per_sale_us"] / 1e6, slope["per_report_us"] / 1e6
    reports = phase.get("ledger_commits", {}).get("commits", 0)  # one per shard report
    main_cpu = sum(s for n, s in phase["cpu_s"].items() if role_of(n) == MAIN)
    rest = main_cpu - rate * seconds - reports * per_report - phase["granted"] * per_sale
    return MainCost(
        per_sale,
        per_link=rate / links,
        per_front=max(0.0, rest) / fronts / seconds if seconds > 0 else 0.0,
        per_report=per_report,
        linger=DEFAULT_REPORT_LINGER,
        batch=SLOPE_BATCHES[-1],
    )


def project(
    phase: dict[str, Any], cores: int, slope: dict[str, Any] | None = None, fronts: int = 0
) -> dict[str, Any] | None:
    """The projected ceiling from one phase's per-role CPU (None when nothing was sold).

    Main's fixed load (measured before GO) comes off its per-ticket cost and is
    charged per linked process instead; with the ledger runs main's cost is split
    into per report, per sale and per front (``projection.py``)."""
    if not phase["granted"]:
        return None
    costs = role_costs(phase["cpu_s"], phase["granted"])
    fixed = phase.get("main_fixed")
    main: float | MainCost = costs["main"]
    per_link = 0.0
    if fixed and fixed["us_per_ticket"] is not None and fixed["links"]:
        main = max(0.0, costs["main"] - fixed["us_per_ticket"] / 1e6)
        per_link = fixed["cpu_ms_per_s"] / 1e3 / fixed["links"]
    main = main_cost(phase, slope, fronts) or main
    return project_ceiling(
        main, costs["fronts"], costs["shards"], cores, main_fixed=per_link
    ).as_dict()


def fronts_targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's targets (meant for ``--fronts 2`` at N=3,000), each with its verdict."""
    p, ratio = out["projection"], out.get("ratio") or {}
    # All of main's CPU over the load phase per ticket sold (its fixed load included).
    costs = out["ticketing"].get("cpu_us_per_ticket", {})
    main_us = next((v for n, v in costs.items() if role_of(n) == MAIN), None)
    rows = [
        ("main CPU us per sold ticket", main_us, "<=", TARGET_MAIN_US),
        ("throughput vs bare stack", ratio.get("throughput"), ">=", TARGET_RATIO_FRONTS),
        (
            "server CPU/ticket vs bare stack",
            ratio.get("server_cpu_per_ticket"),
            "<=",
            TARGET_CPU_RATIO_FRONTS,
        ),
        (
            f"projected {out['options']['cores']}-core ceiling tickets/s",
            (p or {}).get("tickets_per_s"),
            ">=",
            TARGET_CEILING_TPS,
        ),
    ]
    targets = [
        {
            "name": name,
            "value": value,
            "target": f"{op} {goal:g}",
            "met": value is not None and (value <= goal if op == "<=" else value >= goal),
        }
        for name, value, op, goal in rows
    ]
    limit = (p or {}).get("limited_by")
    targets.append(
        {"name": "ceiling limited by", "value": limit, "target": "fronts or shards",
         "met": limit is not None and limit != MAIN}
    )  # fmt: skip
    return targets


def _median_by(phases: Iterable[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(phases, key=lambda r: r["tickets_per_s"])
    return ordered[(len(ordered) - 1) // 2]
