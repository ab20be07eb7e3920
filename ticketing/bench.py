"""``ticketing bench``: how fast is the whole stack, and how much of it is ours?

Three modes, each on this machine only (127.0.0.1), every loop bounded in count and
time (``--max-seconds``):

``e2e`` (default)
    A local cluster (:class:`~ticketing.cluster.LocalCluster`: main + redirect in this
    process, ``--shards`` shard processes, fresh keys and SQLite files in a temporary
    directory) and ``--clients`` visitors for ``--tickets`` tickets, fired by
    ``--workers`` load-generator processes (``bench_worker.py``) through the redirect
    over real TLS, ``--concurrency`` in flight. In the same run, a **baseline**: the
    bare stack doing the same network work with no ticketing logic
    (``bench_baseline.py``: one aiohttp HTTPS redirect process + ``--shards`` WSS
    processes, the same certificates, clients, concurrency and process layout).
    The sale is checked: nothing oversold, every granted id distinct, every granted
    ticket committed in main's ledger, and an exact audit (:func:`check_sale`); the
    exit code is 1 when a check fails.

``ledger``
    Main's ledger alone: a real :class:`~ticketing.main_server.MainServer` and
    synthetic shard processes (``bench_ledger.py``) that report every ticket of their
    slice as sold over the real mutual-TLS links, ``--batch`` sales per request, as
    fast as main commits them.

``idle``
    ``--connections`` idle WSS connections held open on one shard (each admitted with
    a real token signed by main) and the shard's RSS per connection.

Where the CPU time is counted: main and the redirect run in *this* process, the
visitors in worker processes, so server CPU = this process + the shard processes,
and the load generator's CPU is reported apart. The harness itself (progress bar,
reading the workers' reports, sampling RSS) also runs here; the baseline phase,
during which this process serves nothing, measures that overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench_worker import raise_fd_limit
from .cluster import Child, LocalCluster, shard_names
from .ledger import ticket_id
from .tls import write_cluster_keys

# Defaults: the target configuration.
DEFAULT_SHARDS = 2
DEFAULT_CLIENTS = 3000
DEFAULT_TICKETS = 2000
DEFAULT_CONCURRENCY = 64
DEFAULT_WORKERS = 2
DEFAULT_MAX_SECONDS = 120.0
LEDGER_TICKETS = 100_000
IDLE_CONNECTIONS = 5000

# Targets (reported; only the correctness checks decide the exit code).
TARGET_RATIO = 0.8
TARGET_LEDGER_TPS = 20_000
TARGET_IDLE_RSS = 1 << 30  # 5,000 idle connections within 1 GiB

SAMPLE_EVERY = 0.25  # seconds: progress redraw and RSS sampling
TIMELINE_STEP = 0.5  # seconds per bucket of the answers' timeline
STREAM_LIMIT = 64 << 20  # the workers' RESULT line holds one entry per visitor

# -- the checks: plain functions, so tests can feed them broken results ------------------


@dataclass
class Verdict:
    """What the checks found in a sale. ``ok`` is what the exit code reports."""

    tickets: int
    granted: int
    distinct: int
    oversold: int
    unconfirmed: int
    audit_exact: bool
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "tickets": self.tickets,
            "granted": self.granted,
            "distinct": self.distinct,
            "oversold": self.oversold,
            "unconfirmed": self.unconfirmed,
            "audit_exact": self.audit_exact,
            "ok": self.ok,
            "problems": self.problems,
        }


def check_sale(
    ticket_ids: Sequence[str], tickets: int, audit: dict[str, Any], event_id: int = 1
) -> Verdict:
    """Check one sale of ``tickets`` tickets as the visitors saw it and as the ledger has it.

    - oversold = ids granted twice + distinct ids beyond ``tickets`` (must be 0);
    - every id must be a ticket of the event (serial in ``[0, tickets)``);
    - distinct ids == grants;
    - the audit must be exact, sum to ``tickets``, and hold (held + sold) at least
      every granted ticket: a visitor told "yours" for a sale main never committed
      breaks "confirm after commit".
    """
    granted = len(ticket_ids)
    distinct = len(set(ticket_ids))
    oversold = (granted - distinct) + max(0, distinct - tickets)
    valid = {ticket_id(event_id, s) for s in range(tickets)}
    foreign = sorted(set(ticket_ids) - valid)
    committed = int(audit.get("held", 0)) + int(audit.get("sold", 0))
    unconfirmed = max(0, distinct - committed)
    exact = bool(audit.get("exact"))
    problems: list[str] = []
    if oversold:
        problems.append(
            f"oversold {oversold} (granted {granted}, distinct {distinct}, of {tickets})"
        )
    if distinct != granted:
        dupes = [t for t, n in Counter(ticket_ids).items() if n > 1]
        problems.append(f"{granted - distinct} ticket ids granted twice, e.g. {dupes[:3]}")
    if foreign:
        problems.append(f"{len(foreign)} granted ids are not tickets of the event: {foreign[:3]}")
    if not exact:
        problems.append(f"audit not exact: {'; '.join(audit.get('problems') or ['(no detail)'])}")
    if int(audit.get("total", -1)) != tickets:
        problems.append(f"audit total {audit.get('total')} != {tickets} tickets")
    if unconfirmed:
        problems.append(f"{unconfirmed} granted tickets are not held or sold in the ledger")
    return Verdict(tickets, granted, distinct, oversold, unconfirmed, exact, problems)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# -- child processes -----------------------------------------------------------------------


async def spawn_child(name: str, args: Sequence[str], **options: Any) -> Child:
    """A bench helper process; its result lines can be long (one entry per visitor)."""
    return await Child.spawn(name, args, limit=STREAM_LIMIT, **options)


async def stop_all(children: Iterable[Child]) -> None:
    await asyncio.gather(*(c.stop() for c in children), return_exceptions=True)


# -- CPU and memory per process --------------------------------------------------------------


def _cpu(proc: Any) -> float:
    """User + system CPU seconds of a ``psutil.Process``; 0 once it has exited."""
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except Exception:  # psutil.Error
        return 0.0


def _hwm(pid: int) -> int:
    """Peak RSS the kernel recorded for ``pid`` (VmHWM), in bytes; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Meter:
    """CPU seconds over a window and peak RSS, for named groups of PIDs."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil  # the "bench" extra: imported here, so the command exists without it

        self.gone = psutil.Error
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.start: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.rss_peak: dict[str, int] = dict.fromkeys(pids, 0)

    def begin(self) -> None:
        self.start = {n: _cpu(p) for n, p in self.procs.items()}

    def sample(self) -> None:
        for name, proc in self.procs.items():
            try:
                rss = proc.memory_info().rss
            except self.gone:
                continue
            self.rss_peak[name] = max(self.rss_peak[name], rss)

    def end(self) -> None:
        self.sample()
        self.cpu = {n: _cpu(p) - self.start.get(n, 0.0) for n, p in self.procs.items()}
        for name, proc in self.procs.items():
            self.rss_peak[name] = max(self.rss_peak[name], _hwm(proc.pid))

    def rss(self, name: str) -> int:
        try:
            return int(self.procs[name].memory_info().rss)
        except self.gone:
            return 0


class Progress:
    """A one-line progress bar on stderr, redrawn with ``\\r`` (plain text)."""

    def __init__(self, label: str, total: int, unit: str, enabled: bool = True) -> None:
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.t0 = time.monotonic()
        self.width = 0

    def draw(self, done: int, second: int, extra: str = "") -> None:
        if not self.enabled:
            return
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * 24)
        text = (
            f"\r{self.label:<10} [{bar:<24}] {done}/{self.total} {self.unit}"
            f"  {second} {extra}  {time.monotonic() - self.t0:5.1f}s"
        )
        self.width = max(self.width, len(text))
        sys.stderr.write(text.ljust(self.width))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- options ----------------------------------------------------------------------------------


@dataclass
class Options:
    mode: str = "e2e"
    shards: int = DEFAULT_SHARDS
    clients: int = DEFAULT_CLIENTS
    tickets: int = DEFAULT_TICKETS
    concurrency: int = DEFAULT_CONCURRENCY
    workers: int = DEFAULT_WORKERS
    uvloop: bool = True
    max_seconds: float = DEFAULT_MAX_SECONDS
    baseline: bool = True
    rounds: int = 1
    batch: int = 256
    in_flight: int = 4
    connections: int = IDLE_CONNECTIONS
    progress: bool = True
    json_path: str | None = None
    keep: str | None = None  # keep the data directory here (default: a deleted temp dir)

    @property
    def loop_flag(self) -> list[str]:
        return ["--uvloop"] if self.uvloop else []

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("json_path", "progress")}


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal shares (the first ones get the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# -- the load: visitors from worker processes --------------------------------------------------


async def drive_visits(
    label: str,
    front: str,
    cafile: Path,
    servers: dict[str, int],
    opts: Options,
    *,
    goal: int,
) -> dict[str, Any]:
    """Fire ``opts.clients`` visitors at ``front``; measure the servers in ``servers``.

    ``goal`` is what the progress bar counts the grants against (tickets for the
    real run, visitors for the baseline).
    """
    workers_n = max(1, min(opts.workers, opts.clients or 1))
    shares_c = split(opts.clients, workers_n)
    shares_k = split(max(opts.concurrency, workers_n), workers_n)
    timeout = min(60.0, opts.max_seconds)
    workers: list[Child] = []
    try:
        workers = list(
            await asyncio.gather(
                *(
                    spawn_child(
                        f"{label}-worker-{i + 1}",
                        ["-m", "ticketing.bench_worker", *opts.loop_flag],
                        stdin_lines=[
                            json.dumps(
                                {
                                    "mode": "visit",
                                    "front": front,
                                    "cafile": str(cafile),
                                    "clients": n,
                                    "concurrency": k,
                                    "timeout": timeout,
                                    "max_seconds": opts.max_seconds,
                                }
                            )
                        ],
                    )
                    for i, (n, k) in enumerate(zip(shares_c, shares_k, strict=True))
                )
            )
        )
        meter = Meter(servers)
        assigned = {w.name: n for w, n in zip(workers, shares_c, strict=True)}
        results = await _run_workers(label, workers, assigned, meter, opts, goal)
    finally:
        await stop_all(workers)
    return summarize_visits(results, meter, servers)


async def _run_workers(
    label: str,
    workers: list[Child],
    assigned: dict[str, int],
    meter: Meter,
    opts: Options,
    goal: int,
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
    readers = [asyncio.ensure_future(follow(w)) for w in workers]
    deadline = t0 + opts.max_seconds + 30.0  # the workers bound themselves; this is a backstop
    try:
        while not all(r.done() for r in readers) and time.monotonic() < deadline:
            await asyncio.wait(readers, timeout=SAMPLE_EVERY)
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
        "kinds": [],
        "tickets": [],
        "latency": [],
        "ends": [],
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
        for key in ("kinds", "tickets", "latency", "ends"):
            merged[key] += got[key]
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
        "errors": errors,
        "error_samples": dict(Counter(r["errors"]).most_common(5)),
        "latency_ms": {"p50": ms(50), "p95": ms(95), "p99": ms(99)},
        "cpu_s": {
            **{n: round(meter.cpu[n], 3) for n in servers},
            **{n: round(v, 3) for n, v in r["loadgen_cpu"].items()},
        },
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_ms_per_ticket": round(1000 * server_cpu / granted, 3) if granted else None,
        "loadgen_cpu_s": round(sum(r["loadgen_cpu"].values()), 3),
        "peak_rss_mb": {
            n: round(v / 2**20, 1) for n, v in {**meter.rss_peak, **r["loadgen_rss"]}.items()
        },
        "timeline": timeline(t0, kinds, ends),
        "ticket_ids": [t for k, t in zip(kinds, r["tickets"], strict=True) if k == "ticket"],
        "missing_workers": r["missing_workers"],
    }


# -- e2e: baseline, then the real thing ------------------------------------------------------------


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
                            "ticketing.bench_baseline",
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
                "ticketing.bench_baseline",
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
    cluster = LocalCluster(data, names, shard_args=opts.loop_flag)
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
    with _data_dir(opts) as data:
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


# -- ledger: main's ledger alone ---------------------------------------------------------------------


async def run_ledger(opts: Options) -> dict[str, Any]:
    from .main_server import MainServer

    names = shard_names(opts.shards)
    out: dict[str, Any] = {"mode": "ledger", "options": opts.public(), "machine": machine()}
    with _data_dir(opts) as data:
        keys = write_cluster_keys(data / "keys", names)
        children: list[Child] = []
        main = MainServer(data_dir=data)
        main.set_certificate_path(keys)
        recorded = 0
        last = 0.0

        def on_sale(fresh: list[dict[str, Any]]) -> None:
            nonlocal recorded, last
            recorded += len(fresh)
            last = time.monotonic()

        main.sale_listeners.append(on_sale)
        try:
            children = list(
                await asyncio.gather(
                    *(
                        spawn_child(
                            f"synthetic-{n}",
                            [
                                "-m",
                                "ticketing.bench_ledger",
                                "--name",
                                n,
                                "--keys",
                                str(keys),
                                "--batch",
                                str(opts.batch),
                                "--in-flight",
                                str(opts.in_flight),
                                *opts.loop_flag,
                            ],
                        )
                        for n in names
                    )
                )
            )
            async with main:
                for c in children:
                    await main.connect_client_server("127.0.0.1", c.ready["tls_port"], 0)
                event_id = await main.init_tickets(
                    "Ledger bench", "synthetic", "10.00", opts.tickets
                )
                meter = Meter({"main": os.getpid(), **{c.name: c.pid for c in children}})
                bar = Progress("ledger", opts.tickets, "tickets recorded", opts.progress)
                meter.begin()
                t0 = time.monotonic()
                await main.distribute_tickets()
                deadline = t0 + opts.max_seconds
                drawn = 0.0
                while recorded < opts.tickets and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)  # fine-grained: the run lasts a few seconds
                    if time.monotonic() - drawn >= SAMPLE_EVERY:
                        drawn = time.monotonic()
                        meter.sample()
                        bar.draw(recorded, len(children), "shards")
                bar.draw(recorded, len(children), "shards")
                bar.close()
                meter.end()
                audit = (await main.audit(event_id)).as_dict()
                reports = [await _done_line(c) for c in children]
        finally:
            await stop_all(children)
    window = (last - t0) if recorded else 0.0
    out["ledger"] = {
        "tickets": opts.tickets,
        "recorded": recorded,
        "seconds": round(window, 3),
        "tickets_per_s": round(recorded / window, 1) if window else 0.0,
        "batch": opts.batch,
        "in_flight_per_shard": opts.in_flight,
        "reports": sum(int(r.get("reports", 0)) for r in reports if r),
        "refused": sum(int(r.get("refused", 0)) for r in reports if r),
        "cpu_s": {n: round(v, 3) for n, v in meter.cpu.items()},
        "main_cpu_us_per_ticket": round(1e6 * meter.cpu["main"] / recorded, 1)
        if recorded
        else None,
        "peak_rss_mb": {n: round(v / 2**20, 1) for n, v in meter.rss_peak.items()},
        "audit": audit,
        "synchronous": main.synchronous,
    }
    out["ledger"]["target_met"] = out["ledger"]["tickets_per_s"] >= TARGET_LEDGER_TPS
    exact = audit["exact"] and audit["held"] == recorded == opts.tickets
    out["ok"] = bool(exact and not out["ledger"]["refused"])
    if not out["ok"]:
        out["problems"] = [f"recorded {recorded} of {opts.tickets}; audit {audit}"]
    return out


async def _done_line(child: Child) -> dict[str, Any] | None:
    try:
        async with asyncio.timeout(5.0):
            while True:
                tag, payload = await child.read()
                if tag == "DONE":
                    return payload  # type: ignore[no-any-return]
                if tag == "":
                    return None
    except TimeoutError:
        return None


# -- idle: connections held open on one shard -----------------------------------------------------------


async def run_idle(opts: Options) -> dict[str, Any]:
    from .shard_web import ADMISSION

    raise_fd_limit()
    out: dict[str, Any] = {"mode": "idle", "options": opts.public(), "machine": machine()}
    with _data_dir(opts) as data:
        cluster = LocalCluster(data, shard_names(1), shard_args=opts.loop_flag)
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
                + main.signer.sign(
                    ADMISSION,
                    {
                        "v": secrets.token_urlsafe(16),
                        "s": shard.name,
                        "e": event_id,
                        "n": secrets.token_urlsafe(12),
                    },
                    ttl,
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
                workers = list(
                    await asyncio.gather(
                        *(
                            spawn_child(
                                f"idle-worker-{j + 1}",
                                ["-m", "ticketing.bench_worker", *opts.loop_flag],
                                stdin_lines=[
                                    json.dumps(
                                        {
                                            "mode": "idle",
                                            "cafile": str(cluster.keys / "ca.crt"),
                                            "locations": part,
                                            "concurrency": max(1, opts.concurrency // workers_n),
                                            "timeout": 30.0,
                                            "max_seconds": opts.max_seconds,
                                        }
                                    )
                                ],
                            )
                            for j, part in enumerate(parts)
                        )
                    )
                )
                meter = Meter({**meter_pids, **{w.name: w.pid for w in workers}})
                rss_before = meter.rss("shard")
                result = await _hold_idle(workers, meter, opts)
                status = await main.call(shard.name, "status")
                rss_held = meter.rss("shard")
                meter.end()
                for w in workers:
                    await w.send("CLOSE")
                finals = [await _result_line(w, opts.max_seconds) for w in workers]
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
        "peak_rss_mb": {n: round(v / 2**20, 1) for n, v in meter.rss_peak.items()},
        "still_open_at_close": sum(int(f.get("open_at_close", 0)) for f in finals if f),
        "failure_samples": dict(
            sum((Counter(f.get("failed") or {}) for f in finals if f), Counter()).most_common(5)
        ),
    }
    out["idle"]["target_met"] = bool(
        held >= min(opts.connections, IDLE_CONNECTIONS) and rss_held <= TARGET_IDLE_RSS
    )
    out["ok"] = held == opts.connections
    if not out["ok"]:
        out["problems"] = [f"the shard held {held} of {opts.connections} connections"]
    return out


async def _hold_idle(workers: list[Child], meter: Meter, opts: Options) -> dict[str, Any]:
    bar = Progress("idle", opts.connections, "connections", opts.progress)
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


async def _result_line(w: Child, max_seconds: float) -> dict[str, Any] | None:
    try:
        async with asyncio.timeout(max_seconds):
            while True:
                tag, payload = await w.read()
                if tag == "RESULT":
                    return payload  # type: ignore[no-any-return]
                if tag == "":
                    return None
    except TimeoutError:
        return None


# -- output -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


class _data_dir:
    """A fresh temporary directory (deleted after), or ``--keep DIR`` (must be new)."""

    def __init__(self, opts: Options) -> None:
        self.keep = opts.keep
        self.path: Path | None = None

    def __enter__(self) -> Path:
        if self.keep:
            self.path = Path(self.keep)
            if self.path.exists() and any(self.path.iterdir()):
                raise SystemExit(f"--keep {self.keep}: the directory must be new or empty")
            self.path.mkdir(parents=True, exist_ok=True)
        else:
            self.path = Path(tempfile.mkdtemp(prefix="ticketing-bench-"))
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path is not None and not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:,.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_e2e(out: dict[str, Any]) -> str:
    t, b = out["ticketing"], out.get("baseline") or {}
    o = out["options"]
    head = (
        f"e2e: {o['shards']} shards, {o['clients']} visitors, {o['tickets']} tickets, "
        f"concurrency {o['concurrency']}, {o['workers']} worker processes, "
        f"{'uvloop' if o['uvloop'] else 'asyncio'}, {out['machine']['cpus']} CPUs"
        + (f", {o['rounds']} rounds (medians)" if o["rounds"] > 1 else "")
    )

    def row(name: str, key: Callable[[dict[str, Any]], Any]) -> tuple[str, str, str]:
        return (name, _fmt(key(b)) if b else "-", _fmt(key(t)))

    def lat(p: str) -> Callable[[dict[str, Any]], Any]:
        return lambda r: r["latency_ms"][p]

    def rss(r: dict[str, Any]) -> str:
        return ", ".join(f"{n} {v:.0f}" for n, v in r["peak_rss_mb"].items() if "worker" not in n)

    rows: list[tuple[str, ...]] = [
        ("", "baseline", "ticketing"),
        row("visitors finished", lambda r: r["finished"]),
        row("visitors/s", lambda r: r["visitors_per_s"]),
        row("tickets granted", lambda r: r["granted"]),
        row("tickets/s", lambda r: r["tickets_per_s"]),
        row("time-to-ticket p50 ms", lat("p50")),
        row("time-to-ticket p95 ms", lat("p95")),
        row("time-to-ticket p99 ms", lat("p99")),
        row("sold-out answers", lambda r: r["sold_out"]),
        row("errors", lambda r: r["errors"]),
        row("server CPU s", lambda r: r["server_cpu_s"]),
        row("server CPU ms/ticket", lambda r: r["server_cpu_ms_per_ticket"]),
        row("load generator CPU s", lambda r: r["loadgen_cpu_s"]),
    ]
    verdicts = [r["ticketing"]["verdict"] for r in out["rounds"]]
    audits = [r["ticketing"]["audit"] for r in out["rounds"]]
    every = f" (all {len(verdicts)} rounds)" if len(verdicts) > 1 else ""
    checks = [
        ("oversold", _fmt(sum(v["oversold"] for v in verdicts)) + every),
        (
            "distinct tickets == granted",
            ", ".join(f"{v['distinct']} == {v['granted']}" for v in verdicts),
        ),
        (
            "unconfirmed grants",
            _fmt(sum(v["unconfirmed"] for v in verdicts)) + every,
        ),
        (
            "audit",
            ("exact" if all(a["exact"] for a in audits) else "NOT EXACT") + every,
        ),
        (
            "audit detail",
            f"total {t['audit']['total']}, unassigned {t['audit']['unassigned']}, "
            f"pools {t['audit']['in_pools']}, held {t['audit']['held']}, sold {t['audit']['sold']}",
        ),
    ]
    lines = [head, "", _table(rows), ""]
    for name, r in (("baseline", b), ("ticketing", t)):
        if r:
            cpu = ", ".join(f"{n} {s:.2f}" for n, s in r["cpu_s"].items())
            lines.append(f"{name} CPU s: {cpu}")
            lines.append(f"{name} peak RSS MiB: {rss(r)}")
    if b:
        lines.append(
            f"harness overhead (this process during the baseline): {b['harness_cpu_s']:.2f} s CPU"
        )
    lines.append("")
    lines += [f"{k:<28} {v_}" for k, v_ in checks]
    if "ratio" in out:
        r = out["ratio"]
        met = "met" if r["target_met"] else "MISSED"
        lines.append(
            f"{'throughput vs baseline':<28} {r['throughput']:.2f}x (target >= {r['target']}: {met})"
        )
        if len(r["per_round"]) > 1:
            per = ", ".join(_fmt(x) for x in r["per_round"])
            lines.append(f"{'ratio per round':<28} {per} (table: median rounds)")
        if r["server_cpu_per_ticket"]:
            lines.append(f"{'server CPU/ticket vs baseline':<28} {r['server_cpu_per_ticket']:.2f}x")
    for name, r in (("baseline", b), ("ticketing", t)):
        for msg, n in (r.get("error_samples") or {}).items():
            lines.append(f"{name} error x{n}: {msg}")
    lines.append("RESULT: " + ("ok" if out["ok"] else "FAILED: " + "; ".join(out["problems"])))
    return "\n".join(lines)


def format_ledger(out: dict[str, Any]) -> str:
    r = out["ledger"]
    a = r["audit"]
    rows = [
        ("", "ledger"),
        ("tickets recorded", _fmt(r["recorded"])),
        ("seconds", _fmt(r["seconds"])),
        ("tickets/s (durable)", _fmt(r["tickets_per_s"])),
        ("batch (sales/request)", _fmt(r["batch"])),
        ("reports in flight/shard", _fmt(r["in_flight_per_shard"])),
        ("report_sales requests", _fmt(r["reports"])),
        ("main CPU us/ticket", _fmt(r["main_cpu_us_per_ticket"])),
    ]
    met = "met" if r["target_met"] else "MISSED"
    lines = [
        f"ledger: {out['options']['shards']} synthetic shards, synchronous={r['synchronous']}, "
        f"{'uvloop' if out['options']['uvloop'] else 'asyncio'}",
        "",
        _table(rows),
        "",
        "CPU s: " + ", ".join(f"{n} {s:.2f}" for n, s in r["cpu_s"].items()),
        "peak RSS MiB: " + ", ".join(f"{n} {v:.0f}" for n, v in r["peak_rss_mb"].items()),
        f"audit: {'exact' if a['exact'] else 'NOT EXACT'} (total {a['total']}, held {a['held']})",
        f"target >= {TARGET_LEDGER_TPS:,} tickets/s: {met}",
        "RESULT: " + ("ok" if out["ok"] else "FAILED: " + "; ".join(out.get("problems", []))),
    ]
    return "\n".join(lines)


def format_idle(out: dict[str, Any]) -> str:
    r = out["idle"]
    rows = [
        ("", "idle"),
        ("connections asked", _fmt(r["connections"])),
        ("held by the shard", _fmt(r["held_by_shard"])),
        ("failed", _fmt(r["failed"])),
        ("opened/s", _fmt(r["opened_per_s"])),
        ("shard RSS MiB before", _fmt(r["shard_rss_mb_before"])),
        ("shard RSS MiB held", _fmt(r["shard_rss_mb_held"])),
        ("shard KiB/connection", _fmt(r["shard_kib_per_connection"])),
    ]
    met = "met" if r["target_met"] else "MISSED"
    lines = [
        f"idle: 1 shard, {'uvloop' if out['options']['uvloop'] else 'asyncio'}",
        "",
        _table(rows),
        "",
        "peak RSS MiB: " + ", ".join(f"{n} {v:.0f}" for n, v in r["peak_rss_mb"].items()),
        f"target: {IDLE_CONNECTIONS:,} idle connections within 1 GiB shard RSS: {met}",
        *(f"failed x{n}: {msg}" for msg, n in r["failure_samples"].items()),
        "RESULT: " + ("ok" if out["ok"] else "FAILED: " + "; ".join(out.get("problems", []))),
    ]
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------


MODES: dict[
    str,
    tuple[
        Callable[[Options], Coroutine[Any, Any, dict[str, Any]]], Callable[[dict[str, Any]], str]
    ],
] = {
    "e2e": (run_e2e, format_e2e),
    "ledger": (run_ledger, format_ledger),
    "idle": (run_idle, format_idle),
}


def options_from_args(args: argparse.Namespace) -> Options:
    tickets = args.tickets
    if tickets is None:
        tickets = LEDGER_TICKETS if args.mode == "ledger" else DEFAULT_TICKETS
    for name in ("shards", "clients", "concurrency", "workers", "batch", "in_flight", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if tickets < 0 or args.connections < 0 or args.max_seconds <= 0:
        raise SystemExit("--tickets/--connections must be >= 0 and --max-seconds > 0")
    return Options(
        mode=args.mode,
        shards=args.shards,
        clients=args.clients,
        tickets=tickets,
        concurrency=args.concurrency,
        workers=args.workers,
        uvloop=args.uvloop == "on",
        max_seconds=args.max_seconds,
        baseline=not args.no_baseline,
        rounds=args.rounds,
        batch=args.batch,
        in_flight=args.in_flight,
        connections=args.connections,
        progress=not args.quiet,
        json_path=args.json,
        keep=args.keep,
    )


def run_bench(opts: Options) -> dict[str, Any]:
    run, _ = MODES[opts.mode]
    if opts.uvloop:
        import uvloop

        return uvloop.run(run(opts))
    return asyncio.run(run(opts))


def cmd_bench(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    out = run_bench(opts)
    print(MODES[opts.mode][1](out), flush=True)
    if opts.json_path:
        Path(opts.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json_path).write_text(json.dumps(out, indent=1) + "\n")
    return 0 if out["ok"] else 1


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``ticketing`` command's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="benchmark: e2e (with a bare-stack baseline), ledger, idle",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--mode", choices=tuple(MODES), default="e2e")
    # The cluster and the sale
    p.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help="K shard processes")
    p.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="N visitors")
    p.add_argument(
        "--tickets",
        type=int,
        default=None,
        help=f"M tickets (default {DEFAULT_TICKETS}; {LEDGER_TICKETS} in ledger mode)",
    )
    # The load generator
    p.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="visitors in flight (total)"
    )
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="load-generator processes")
    p.add_argument("--uvloop", choices=("on", "off"), default="on", help="every process's loop")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help="bound on each load phase; unfinished visitors count as errors",
    )
    p.add_argument("--no-baseline", action="store_true", help="e2e: skip the bare-stack run")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="e2e: baseline/ticketing pairs in ABBA order; the table shows the medians",
    )
    # Ledger mode
    p.add_argument("--batch", type=int, default=256, help="ledger: sales per report")
    p.add_argument("--in-flight", type=int, default=4, help="ledger: reports in flight per shard")
    # Idle mode
    p.add_argument(
        "--connections", type=int, default=IDLE_CONNECTIONS, help="idle: WSS connections to hold"
    )
    # Output
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--keep", metavar="DIR", help="keep keys, ledger and journals in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_bench)
    return p
