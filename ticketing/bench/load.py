"""The load: ``opts.clients`` visitors fired from worker processes
(``python -m ticketing.bench.worker``), and what their answers add up to."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cluster import Child
from .checks import percentile
from .children import spawn_workers, stop_all
from .meter import Meter
from .options import Options
from .progress import SAMPLE_EVERY, Progress

RSS_EVERY = 1.0  # seconds between RSS samples (the meter's end also reads each peak)

TIMELINE_STEP = 0.5  # seconds per bucket of the answers' timeline
# What the workers report per finished visitor (worker.Visits), in one order.
PER_VISITOR = (
    *("kinds", "tickets", "latency", "ends", "arrivals", "waits", "hops", "silences", "queue"),
    *("steps", "dialed"),
)


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal shares (the first ones get the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


async def drive_visits(
    label: str,
    front: str | Sequence[str],
    cafile: Path,
    servers: dict[str, int],
    opts: Options,
    *,
    goal: int,
    rate: float | None = None,
    started: asyncio.Future[float] | None = None,
) -> dict[str, Any]:
    """Fire ``opts.clients`` visitors at ``front`` (one URL, or several taken in turn by
    every worker); measure the servers in ``servers``.

    ``goal`` is what the progress bar counts the grants against (tickets for the
    real run, visitors for the baseline). ``rate``: visitors arrive at this many per
    second in all (split among the workers) and persist through waits and faults.
    ``started`` gets the monotonic time of GO.
    """
    workers_n = max(1, min(opts.workers, opts.clients or 1))
    shares_c = split(opts.clients, workers_n)
    shares_k = split(max(opts.concurrency, workers_n), workers_n)
    timeout = min(60.0, opts.max_seconds)
    workers: list[Child] = []
    try:
        jobs = [
            {
                "mode": "visit",
                "fronts": [front] if isinstance(front, str) else list(front),
                "cafile": str(cafile),
                "clients": n,
                "concurrency": k,
                "timeout": timeout,
                "max_seconds": opts.max_seconds,
                **({"rate": rate / workers_n, "persistent": True} if rate else {}),
            }
            for n, k in zip(shares_c, shares_k, strict=True)
        ]
        workers = await spawn_workers(label, jobs, opts.loop_flag)
        meter = Meter(servers)
        assigned = {w.name: n for w, n in zip(workers, shares_c, strict=True)}
        results = await _run_workers(label, workers, assigned, meter, opts, goal, started)
    finally:
        await stop_all(workers)
    summary = summarize_visits(results, meter, servers)
    if rate:  # the fault benchmark needs every visitor's own record
        summary["visitors"] = {k: results[k] for k in ("t0", *PER_VISITOR)}
    return summary


async def _run_workers(
    label: str,
    workers: list[Child],
    assigned: dict[str, int],
    meter: Meter,
    opts: Options,
    goal: int,
    started: asyncio.Future[float] | None = None,
) -> dict[str, Any]:
    """GO, follow the progress lines until every RESULT (bounded), return the merged results."""
    progress: dict[str, dict[str, int]] = {w.name: {"done": 0, "granted": 0} for w in workers}
    results: dict[str, dict[str, Any]] = {}

    async def follow(w: Child) -> None:
        while True:
            tag, payload = await w.read()
            if tag == "P":
                progress[w.name] = payload
            elif tag == "RESULT":
                results[w.name] = payload
                return
            elif tag == "":
                return

    bar = Progress(label, opts.clients, "visitors", opts.progress)
    meter.begin()
    t0 = time.monotonic()
    for w in workers:
        await w.send("GO")
    if started is not None and not started.done():
        started.set_result(t0)
    readers = [asyncio.ensure_future(follow(w)) for w in workers]
    deadline = t0 + opts.max_seconds + 30.0  # the workers bound themselves; this is a backstop
    sampled = t0
    try:
        while not all(r.done() for r in readers) and time.monotonic() < deadline:
            await asyncio.wait(readers, timeout=SAMPLE_EVERY)
            # This loop runs in main's process: its own cost counts as main's CPU.
            if time.monotonic() - sampled >= RSS_EVERY:
                sampled = time.monotonic()
                meter.sample()
            done = sum(p["done"] for p in progress.values())
            granted = sum(p["granted"] for p in progress.values())
            bar.draw(done, granted, f"tickets (of {goal})")
    finally:
        for r in readers:
            r.cancel()
        bar.close()
    meter.end()
    merged: dict[str, Any] = {
        "t0": t0,
        **{key: [] for key in PER_VISITOR},
        "errors": Counter(),
        "unfinished": 0,
        "clients": opts.clients,
        "missing_workers": [w.name for w in workers if w.name not in results],
        "loadgen_cpu": {w: r["cpu_s"] for w, r in results.items()},
        "loadgen_rss": {w: r["peak_rss"] for w, r in results.items()},
    }
    for w in workers:
        got = results.get(w.name)
        if got is None:  # a worker that never reported: count all its visitors as failed
            merged["unfinished"] += assigned[w.name]
            merged["errors"][f"{w.name} sent no result"] += assigned[w.name]
            continue
        for key in PER_VISITOR:
            merged[key] += got.get(key, [])
        merged["errors"].update(got["errors"])
        merged["unfinished"] += got["unfinished"]
    return merged


def timeline(t0: float, kinds: Sequence[str], ends: Sequence[float]) -> dict[str, Any]:
    """Answers per ``TIMELINE_STEP`` seconds since GO: where a run slows down."""
    n = int(max(ends, default=t0) - t0) // 1 * int(1 / TIMELINE_STEP) + 2
    tickets, others = [0] * n, [0] * n
    for kind, end in zip(kinds, ends, strict=True):
        i = min(n - 1, int((end - t0) / TIMELINE_STEP))
        (tickets if kind == "ticket" else others)[i] += 1
    while n > 1 and not tickets[n - 1] and not others[n - 1]:
        n -= 1
    return {"step_s": TIMELINE_STEP, "tickets": tickets[:n], "other": others[:n]}


def summarize_visits(r: dict[str, Any], meter: Meter, servers: dict[str, int]) -> dict[str, Any]:
    t0 = r["t0"]
    kinds: list[str] = r["kinds"]
    ends: list[float] = r["ends"]
    ticket_ends = [e for k, e in zip(kinds, ends, strict=True) if k == "ticket"]
    ticket_lat = [x for k, x in zip(kinds, r["latency"], strict=True) if k == "ticket"]
    elapsed = (max(ends) - t0) if ends else 0.0
    sell_window = (max(ticket_ends) - t0) if ticket_ends else 0.0
    counts = Counter(kinds)
    granted = counts.get("ticket", 0)
    errors = len(kinds) - granted - counts.get("sold_out", 0) + r["unfinished"]
    server_cpu = sum(meter.cpu[n] for n in servers)

    def ms(p: float) -> float | None:
        v = percentile(ticket_lat, p)
        return None if v is None else round(v * 1000, 1)

    return {
        "clients": r["clients"],
        "finished": len(kinds),
        "elapsed_s": round(elapsed, 3),
        "visitors_per_s": round(len(kinds) / elapsed, 1) if elapsed else 0.0,
        "granted": granted,
        "sell_window_s": round(sell_window, 3),
        "tickets_per_s": round(granted / sell_window, 1) if sell_window else 0.0,
        "sold_out": counts.get("sold_out", 0),
        "queued": sum(1 for q in r["queue"] if q is not None),  # waited in a front's line
        "errors": errors,
        "error_samples": dict(Counter(r["errors"]).most_common(5)),
        "latency_ms": {"p50": ms(50), "p95": ms(95), "p99": ms(99)},
        "cpu_s": {
            **{n: round(meter.cpu[n], 3) for n in servers},
            **{n: round(v, 3) for n, v in r["loadgen_cpu"].items()},
        },
        "server_cpu_s": round(server_cpu, 3),
        "load_seconds": round(meter.seconds, 3),  # the window the CPU figures cover
        "server_cpu_ms_per_ticket": round(1000 * server_cpu / granted, 3) if granted else None,
        "loadgen_cpu_s": round(sum(r["loadgen_cpu"].values()), 3),
        "peak_rss_mb": {
            n: round(v / 2**20, 1) for n, v in {**meter.rss_peak, **r["loadgen_rss"]}.items()
        },
        "timeline": timeline(t0, kinds, ends),
        "ticket_ids": [t for k, t in zip(kinds, r["tickets"], strict=True) if k == "ticket"],
        "missing_workers": r["missing_workers"],
    }
