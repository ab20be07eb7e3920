"""``idle`` mode: idle WSS connections held open on one shard, and its RSS per connection;
with ``--waiting N``, N visitors waiting in a front's waiting room, and the front's RSS."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter
from typing import Any

from ..cluster import Child, LocalCluster, shard_names
from ..front.queue import QueueOptions
from ..main.server import MainServer
from ..process import raise_fd_limit
from ..wire import Admission
from .children import final_line, spawn_workers, stop_all
from .load import split
from .meter import Meter
from .options import IDLE_CONNECTIONS, TARGET_IDLE_RSS, TARGET_WAITING, Options
from .progress import SAMPLE_EVERY, Progress
from .workspace import DataDir, machine


def _held_figures(meter: Meter, finals: list[Any], still_open: str) -> dict[str, Any]:
    """What both idle reports add from the meter and the workers' last lines."""
    failed = sum((Counter(f.get("failed") or {}) for f in finals if f), Counter())
    return {
        "peak_rss_mb": {n: round(v / 2**20, 1) for n, v in meter.rss_peak.items()},
        still_open: sum(int(f.get("open_at_close", 0)) for f in finals if f),
        "failure_samples": dict(failed.most_common(5)),
    }


async def run_idle(opts: Options) -> dict[str, Any]:
    if opts.waiting:
        return await run_idle_waiting(opts)
    raise_fd_limit()
    out: dict[str, Any] = {"mode": "idle", "options": opts.public(), "machine": machine()}
    with DataDir(opts) as data:
        cluster = LocalCluster(data, shard_names(1), shard_args=opts.loop_flag, load_test=True)
        async with cluster:
            main = cluster.main
            assert main is not None and main.signer is not None
            event_id = await main.init_tickets("Idle bench", "idle", "1.00", 10)
            await main.distribute_tickets()
            shard = cluster.processes[0]
            sl = main.shards[shard.name]
            ttl = opts.max_seconds + 60.0
            # Real admission tokens, signed by main's key exactly as the redirect does.
            locations = [
                f"{sl.https_url}/?event={event_id}&token="
                + Admission.new(secrets.token_urlsafe(16), shard.name, event_id).sign(
                    main.signer, ttl
                )
                for _ in range(opts.connections)
            ]
            await asyncio.sleep(0.5)
            meter_pids = {"shard": shard.pid, "main+redirect": os.getpid()}
            workers_n = max(1, min(opts.workers, opts.connections or 1))
            chunks = split(len(locations), workers_n)
            parts, i = [], 0
            for n in chunks:
                parts.append(locations[i : i + n])
                i += n
            workers: list[Child] = []
            try:
                jobs = [
                    {
                        "mode": "idle",
                        "cafile": str(cluster.keys / "ca.crt"),
                        "locations": part,
                        "concurrency": max(1, opts.concurrency // workers_n),
                        "timeout": 30.0,
                        "max_seconds": opts.max_seconds,
                    }
                    for part in parts
                ]
                workers = await spawn_workers("idle", jobs, opts.loop_flag)
                meter = Meter({**meter_pids, **{w.name: w.pid for w in workers}})
                rss_before = meter.rss("shard")
                result = await _hold_idle(workers, meter, opts)
                status = await main.call(shard.name, "status")
                rss_held = meter.rss("shard")
                meter.end()
                for w in workers:
                    await w.send("CLOSE")
                finals = [await final_line(w, "RESULT", opts.max_seconds) for w in workers]
            finally:
                await stop_all(workers)
    held = int(status.get("connections", 0))
    per_conn = (rss_held - rss_before) / held if held else None
    out["idle"] = {
        "connections": opts.connections,
        "held_by_shard": held,
        "open_at_client": result["open"],
        "failed": result["failed"],
        "open_seconds": round(result["seconds"], 2),
        "opened_per_s": round(result["open"] / result["seconds"], 1) if result["seconds"] else None,
        "shard_rss_mb_before": round(rss_before / 2**20, 1),
        "shard_rss_mb_held": round(rss_held / 2**20, 1),
        "shard_kib_per_connection": round(per_conn / 1024, 1) if per_conn is not None else None,
        **_held_figures(meter, finals, "still_open_at_close"),
    }
    out["idle"]["target_met"] = bool(
        held >= min(opts.connections, IDLE_CONNECTIONS) and rss_held <= TARGET_IDLE_RSS
    )
    out["ok"] = held == opts.connections
    if not out["ok"]:
        out["problems"] = [f"the shard held {held} of {opts.connections} connections"]
    return out


async def run_idle_waiting(opts: Options) -> dict[str, Any]:
    """``opts.waiting`` visitors in the pre-queue of an event that starts in an hour,
    each polling as the page does; the front's RSS before and with them in line: main's
    embedded front, or with ``--fronts 1`` a front process (its line as it reports it
    to main)."""
    raise_fd_limit()
    out: dict[str, Any] = {"mode": "idle", "options": opts.public(), "machine": machine()}
    with DataDir(opts) as data:
        cluster = LocalCluster(
            data,
            shard_names(1),
            shard_args=opts.loop_flag,
            load_test=True,
            fronts=min(1, opts.fronts),
            front_args=opts.loop_flag,
        )
        async with cluster:
            main, redirect = cluster.main, cluster.redirect
            assert main is not None and redirect is not None
            event_id = await main.init_tickets("Waiting bench", "idle", "1.00", 10)
            await main.distribute_tickets()
            await main.update_event(event_id, sale_starts_at=time.time() + 3600)
            await cluster.fronts_in_sync()  # the front process knows the event
            if cluster.front_processes:
                name, pid = cluster.front_processes[0].name, cluster.front_processes[0].pid
            else:
                name, pid = "main+front", os.getpid()
            front = f"{cluster.front_url.rstrip('/')}/events/{event_id}"
            workers_n = max(1, min(opts.workers, opts.waiting))
            jobs = [
                {
                    "mode": "wait",
                    "front": front,
                    "cafile": str(cluster.keys / "ca.crt"),
                    "clients": n,
                    "concurrency": max(1, opts.concurrency // workers_n),
                    "max_seconds": opts.max_seconds,
                }
                for n in split(opts.waiting, workers_n)
            ]
            workers: list[Child] = []
            try:
                workers = await spawn_workers("wait", jobs, opts.loop_flag)
                meter = Meter({name: pid, **{w.name: w.pid for w in workers}})
                rss_before = meter.rss(name)
                result = await _hold_idle(workers, meter, opts, total=opts.waiting)
                if cluster.front_processes:  # its last report to main, a tick old at most
                    await asyncio.sleep(2 * QueueOptions().tick)
                    in_line, connections = reported_waiting(main, event_id), None
                else:
                    in_line = redirect.queue.waiting()
                    connections = redirect.gate.connections if redirect.gate else 0
                rss_held = meter.rss(name)
                meter.end()
                for w in workers:
                    await w.send("CLOSE")
                finals = [await final_line(w, "RESULT", opts.max_seconds) for w in workers]
            finally:
                await stop_all(workers)
    per_waiter = (rss_held - rss_before) / in_line if in_line else None
    out["waiting"] = {
        "front": name,
        "visitors": opts.waiting,
        "in_line": in_line,
        "front_connections_at_measure": connections,
        "failed": result["failed"],
        "entry_seconds": round(result["seconds"], 2),
        "entered_per_s": round(result["open"] / result["seconds"], 1)
        if result["seconds"]
        else None,
        "front_rss_mb_before": round(rss_before / 2**20, 1),
        "front_rss_mb_held": round(rss_held / 2**20, 1),
        "front_kib_per_waiter": round(per_waiter / 1024, 2) if per_waiter is not None else None,
        **_held_figures(meter, finals, "still_polling_at_close"),
    }
    out["waiting"]["target_met"] = bool(
        in_line >= min(opts.waiting, TARGET_WAITING) and rss_held <= TARGET_IDLE_RSS
    )
    out["ok"] = in_line == opts.waiting
    if not out["ok"]:
        out["problems"] = [f"the front held {in_line} of {opts.waiting} visitors in line"]
    return out


def reported_waiting(main: MainServer, event_id: int) -> int:
    """Visitors waiting in every front's line of ``event_id``, as last reported to main."""
    state = main.lines.events.get(event_id)
    return 0 if state is None else sum(f.report.sketch.waiting for f in state.fronts.values())


async def _hold_idle(
    workers: list[Child], meter: Meter, opts: Options, *, total: int | None = None
) -> dict[str, Any]:
    bar = Progress(
        "idle",
        opts.connections if total is None else total,
        "connections" if total is None else "waiting",
        opts.progress,
    )
    opened: dict[str, int] = {w.name: 0 for w in workers}
    failed: dict[str, int] = {w.name: 0 for w in workers}
    holding: dict[str, dict[str, Any]] = {}

    async def follow(w: Child) -> None:
        while True:
            tag, payload = await w.read()
            if tag == "P":
                opened[w.name] = payload["granted"]
                failed[w.name] = payload["done"] - payload["granted"]
            elif tag == "HOLDING":
                holding[w.name] = payload
                return
            elif tag == "":
                return

    meter.begin()
    for w in workers:
        await w.send("GO")
    readers = [asyncio.ensure_future(follow(w)) for w in workers]
    deadline = time.monotonic() + opts.max_seconds + 30.0
    try:
        while not all(r.done() for r in readers) and time.monotonic() < deadline:
            await asyncio.wait(readers, timeout=SAMPLE_EVERY)
            meter.sample()
            bar.draw(sum(opened.values()), sum(failed.values()), "failed")
    finally:
        for r in readers:
            r.cancel()
        bar.close()
    await asyncio.sleep(2.0)  # let the shard settle (buffers, GC) before measuring
    meter.sample()
    seconds = max((h["seconds"] for h in holding.values()), default=0.0)
    return {
        "open": sum(h["open"] for h in holding.values()),
        "failed": sum(h["failed"] for h in holding.values()),
        "seconds": seconds,
    }
