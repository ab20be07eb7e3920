"""``--fault`` mode: a steady crowd, one fault mid-sale, and what every visitor saw.

Main (+ front) runs as its own ``ticketing main`` process (so it can be killed and
restarted on its files), the shards as ``ticketing shard`` processes; for
``partition-shard`` main reaches shard-1 through a :class:`~.relay.Relay` that goes
silent. Visitors arrive at ``--arrival-rate`` per second for ``--duration`` seconds
from the worker processes (``load.drive_visits``), each following "please wait"
and "back to the front" answers until it has a final one. A monitor polls the
front's ``/health`` (and, for kill-main, the shards') to time the detection and the
fencing. :func:`analyze` turns the visitors' own records into the figures; it is a
plain function so tests can feed it made-up visits.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import secrets
import sqlite3
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from ..cluster import (
    LOAD_TEST_MAIN_ARGS,
    LOAD_TEST_SHARD_ARGS,
    Child,
    FrontProcess,
    ShardProcess,
    front_names,
    shard_names,
)
from ..ledger import SqlLedger, open_ledger
from ..market.api import OPERATOR_ENV
from ..process import raise_fd_limit
from ..tls import write_cluster_keys
from .checks import check_sale, percentile
from .children import spawn_child
from .load import TIMELINE_STEP, drive_visits
from .options import TARGET_FAILOVER_S, Options
from .pgserver import PostgresServer, find_bin, free_port, fresh_database
from .relay import Relay
from .workspace import DataDir, machine

EVENT = 1  # the event ``ticketing main --tickets`` creates on a fresh ledger
POLL = 0.1  # seconds between the monitor's looks
SETTLE = 30.0  # at most this long for the cluster to heal after the load
REFUSED = ("sold_out", "error", "unavailable", "refused")


# -- the analysis: plain functions ---------------------------------------------------


def inversions(
    arrivals: Sequence[float],
    ends: Sequence[float],
    kinds: Sequence[str],
    window: tuple[float, float],
) -> dict[str, int]:
    """First-come-first-served inversions: a visitor refused (sold out, error) while
    someone who arrived later got a ticket. Counted per refused visitor, ``inside``
    when its visit overlapped the fault ``window`` (start, end), else ``outside``."""
    holders = [a for a, k in zip(arrivals, kinds, strict=True) if k == "ticket"]
    latest = max(holders, default=float("-inf"))
    out = {"inside": 0, "outside": 0}
    for a, e, k in zip(arrivals, ends, kinds, strict=True):
        if k in REFUSED and a < latest:
            out["inside" if a <= window[1] and e >= window[0] else "outside"] += 1
    return out


def false_sold_outs(
    ends: Sequence[float], kinds: Sequence[str], unsold_at_end: int, last_grant: float | None
) -> int:
    """Visitors told "sold out" while a ticket remained: at all when tickets were
    still unsold when the sale ended, else those who heard it before the server
    granted its last ticket (``last_grant``, on the visitors' clock; None: nothing
    was granted).

    By the server's grant, not the last buyer's answer: on a loaded machine a "yours"
    can reach its buyer after another visitor has heard "sold out", although that
    last ticket was granted (and the stock gone) before.
    """
    sold_outs = [e for e, k in zip(ends, kinds, strict=True) if k == "sold_out"]
    if unsold_at_end:
        return len(sold_outs)
    if last_grant is None:
        return 0
    return sum(1 for e in sold_outs if e < last_grant)


async def last_grant_at(ledger: SqlLedger, event_id: int) -> float | None:
    """When main recorded the event's last grant (its newest order), on this machine's
    monotonic clock, the visitors' (the ledger keeps wall-clock times)."""
    last = await ledger.last_sale_at(event_id)
    return None if last is None else last - time.time() + time.monotonic()


def answer_timeline(
    t0: float, arrivals: Sequence[float], ends: Sequence[float], kinds: Sequence[str]
) -> dict[str, Any]:
    """Arrivals and final answers per ``TIMELINE_STEP`` seconds since the first arrival."""
    n = int(max([*ends, *arrivals, t0]) - t0) * int(1 / TIMELINE_STEP) + 2
    rows: dict[str, list[int]] = {k: [0] * n for k in ("arrivals", "ticket", "sold_out", "other")}
    for a in arrivals:
        rows["arrivals"][min(n - 1, int((a - t0) / TIMELINE_STEP))] += 1
    for e, k in zip(ends, kinds, strict=True):
        row = k if k in ("ticket", "sold_out") else "other"
        rows[row][min(n - 1, int((e - t0) / TIMELINE_STEP))] += 1
    while n > 1 and not any(r[n - 1] for r in rows.values()):
        n -= 1
    return {"step_s": TIMELINE_STEP, **{k: v[:n] for k, v in rows.items()}}


def analyze(
    visitors: dict[str, Any],
    *,
    fault_t: float,
    marks: dict[str, float | None],
    stranded: set[int],
    unsold_at_end: int,
    last_grant: float | None,
    grace: float,
) -> dict[str, Any]:
    """The figures of one fault run, from every visitor's own record.

    ``marks``: monotonic times of ``detected``, ``fenced``, ``recovered`` (None when
    it did not happen); the fault window runs from ``fault_t`` to ``recovered``
    (else the last answer) plus ``grace``. ``stranded``: serials in the victim's
    pool at the fault. ``last_grant``: when the server granted the last ticket
    (:func:`last_grant_at`).
    """
    t0 = visitors["t0"]
    kinds, ends, arrivals = visitors["kinds"], visitors["ends"], visitors["arrivals"]
    silences: list[float] = visitors["silences"]
    recovered = marks.get("recovered") or max(ends, default=fault_t)
    window = (fault_t, recovered + grace)
    fenced = marks.get("fenced")
    elsewhere = sorted(
        e
        for e, k, t in zip(ends, kinds, visitors["tickets"], strict=True)
        if k == "ticket"
        and t
        and int(t.split("-")[1]) in stranded
        and e >= (fenced if fenced is not None else fault_t)
    )
    after_fault = sorted(
        e for e, k in zip(ends, kinds, strict=True) if k == "ticket" and e > fault_t
    )
    # Once every shard had lost main (kill-main), a ticket can only come from a new main.
    detected = marks.get("detected")
    new_main = [e for e in after_fault if detected is not None and e >= detected]

    def since_fault(t: float | None) -> float | None:
        return None if t is None else round(t - fault_t, 3)

    counts = Counter(kinds)
    return {
        "visitors": len(kinds),
        "answers": dict(counts),
        "waited": sum(1 for w in visitors["waits"] if w),
        "sent_back": sum(1 for h in visitors["hops"] if h),
        "false_sold_outs": false_sold_outs(ends, kinds, unsold_at_end, last_grant),
        "fcfs_inversions": inversions(arrivals, ends, kinds, window),
        "longest_silence_s": round(max(silences, default=0.0), 3),
        "silence_p99_s": percentile(silences, 99),
        "fault_at_s": round(fault_t - t0, 3),
        "window_s": [round(window[0] - t0, 3), round(window[1] - t0, 3)],
        "detected_after_s": since_fault(marks.get("detected")),
        "fenced_after_s": since_fault(fenced),
        "recovered_after_s": since_fault(marks.get("recovered")),
        "stranded": len(stranded),
        "stranded_sold_elsewhere": len(elsewhere),
        "stranded_first_sold_after_s": since_fault(elsewhere[0] if elsewhere else None),
        "stranded_last_sold_after_s": since_fault(elsewhere[-1] if elsewhere else None),
        "first_ticket_after_fault_s": since_fault(after_fault[0] if after_fault else None),
        "led_after_s": since_fault(marks.get("led")),
        "first_ticket_new_main_s": since_fault(new_main[0] if new_main else None),
        "timeline": answer_timeline(t0, arrivals, ends, kinds),
    }


def timeline_svg(out: dict[str, Any]) -> str:
    """The answers per 0.5 s as a small stacked-bar SVG, with the fault's marks."""
    f = out["fault"]
    tl = f["timeline"]
    step = tl["step_s"]
    n = max(1, len(tl["ticket"]))
    sums = [a + b + c for a, b, c in zip(tl["ticket"], tl["sold_out"], tl["other"], strict=True)]
    top = max([1, *sums, *tl["arrivals"]])
    w, h, pad = 760, 260, 40
    bw = (w - 2 * pad) / n
    ys = (h - 2 * pad) / top

    def x(t: float) -> float:
        return pad + t / step * bw

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif'"
        " font-size='11'>",
        f"<text x='{pad}' y='16'>{html.escape(out['title'])}: answers per {step:g} s"
        " (green ticket, grey sold out, red other; line: arrivals)</text>",
    ]
    for i in range(n):
        y = h - pad
        for row, color in (("ticket", "#2a2"), ("sold_out", "#999"), ("other", "#d33")):
            v = tl[row][i]
            if v:
                parts.append(
                    f"<rect x='{pad + i * bw:.1f}' y='{y - v * ys:.1f}' width='{max(bw - 1, 1):.1f}'"
                    f" height='{v * ys:.1f}' fill='{color}'/>"
                )
                y -= v * ys
    pts = " ".join(
        f"{pad + (i + 0.5) * bw:.1f},{h - pad - v * ys:.1f}" for i, v in enumerate(tl["arrivals"])
    )
    parts.append(f"<polyline points='{pts}' fill='none' stroke='#36c'/>")
    marks = (
        ("fault", "fault_at_s"),
        ("detected", "detected_after_s"),
        ("fenced", "fenced_after_s"),
        ("recovered", "recovered_after_s"),
    )
    for i, (label, key) in enumerate(marks):
        t = f.get(key)
        if t is None:
            continue
        t = t if key == "fault_at_s" else f["fault_at_s"] + t
        parts.append(
            f"<line x1='{x(t):.1f}' x2='{x(t):.1f}' y1='{pad}' y2='{h - pad}' stroke='#000'"
            " stroke-dasharray='3,3'/>"
            f"<text x='{x(t) + 2:.1f}' y='{pad + 10 + 12 * i}'>{label}</text>"
        )
    for s in range(0, int(n * step) + 1, 5):
        parts.append(f"<text x='{x(s):.1f}' y='{h - pad + 14}'>{s}s</text>")
    parts.append(f"<text x='4' y='{pad + 4}'>{top}</text></svg>")
    return "\n".join(parts)


# -- the run ---------------------------------------------------------------------------


@dataclass
class MainProcess:
    """``ticketing main`` in its own process, restartable on the same files and port.

    A standby prints READY only once it leads: ``ready_timeout`` bounds that wait."""

    data: Path
    args: list[str]
    port: int = 0
    name: str = "main"
    ready_timeout: float = 30.0
    child: Child | None = None
    log: Any = None

    async def start(self) -> None:
        if self.log is None:
            self.log = (self.data / f"{self.name}.log").open("ab")  # noqa: SIM115, ASYNC230 - closed in stop()
        args = [*self.args, "--port", str(self.port)]
        self.child = await spawn_child(self.name, args, stderr=self.log, timeout=self.ready_timeout)
        self.port = int(self.child.ready["port"])

    def kill(self) -> None:
        if self.child and self.child.proc.returncode is None:
            self.child.proc.kill()

    async def stop(self) -> None:
        if self.child:
            await self.child.stop()
        if self.log:
            self.log.close()
            self.log = None


@dataclass
class Monitor:
    """Polls main's operator status (and the shards' health) until stopped; keeps the marks."""

    front: str
    victim: str
    ctx: ssl.SSLContext
    operator_token: str
    shard_urls: list[str] = field(default_factory=list)  # polled for kill-main only
    fault_t: float | None = None
    epoch0: int | None = None
    marks: dict[str, float | None] = field(
        default_factory=lambda: {"detected": None, "fenced": None, "recovered": None}
    )
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stop.set()

    async def _get(self, s: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
        auth = {"Authorization": f"Bearer {self.operator_token}"}
        try:
            async with s.get(url, timeout=aiohttp.ClientTimeout(total=1.0), headers=auth) as resp:
                return dict(await resp.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def run(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ctx)) as s:
            while not self._stop.is_set():
                now = time.monotonic()
                status = await self._get(s, self.front + "api/v1/admin/status")
                me = next(
                    (x for x in (status or {}).get("shards", []) if x["name"] == self.victim),
                    None,
                )
                if me and self.epoch0 is None:
                    self.epoch0 = me["epoch"]
                if self.fault_t is not None:
                    self._mark(now, status, me)
                    if self.shard_urls:
                        linked = [await self._get(s, u) for u in self.shard_urls]
                        if self.marks["detected"] is None and all(
                            h is not None and h["status"] != "up" for h in linked
                        ):
                            self.marks["detected"] = now
                        if self.marks["detected"] and all(
                            h and h["status"] == "up" for h in linked
                        ):
                            self.marks["recovered"] = self.marks["recovered"] or now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), POLL)

    def _mark(self, now: float, status: dict[str, Any] | None, me: dict[str, Any] | None) -> None:
        m = self.marks
        if self.shard_urls:  # kill-main: the shards' view decides (above)
            return
        if me is None:
            return
        if m["detected"] is None and not me["online"]:
            m["detected"] = now
        if m["fenced"] is None and self.epoch0 is not None and me["epoch"] > self.epoch0:
            m["fenced"] = m["recovered"] = now
        if m["detected"] and me["online"] and m["recovered"] is None:
            m["recovered"] = now  # the partition healed before the fence


def stranded_serials(ledger: Path, shard: str) -> set[int]:
    """Serials in ``shard``'s pool right now, read straight from main's ledger (WAL)."""
    with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT serial FROM tickets WHERE event_id = ? AND state = 'pool' AND shard = ?",
            (EVENT, shard),
        ).fetchall()
    return {int(r[0]) for r in rows}


def _mark_led(marks: dict[str, float | None], started: asyncio.Future[None]) -> None:
    """The standby printed READY: it leads (not when it failed or was stopped)."""
    if not started.cancelled() and started.exception() is None:
        marks["led"] = time.monotonic()


@contextlib.asynccontextmanager
async def shared_ledger(opts: Options) -> AsyncIterator[str]:
    """The standby run's PostgreSQL ledger: ``--ledger`` (an empty database), else a
    fresh database on a throwaway server started for the run and stopped after it."""
    if opts.ledger:
        yield opts.ledger
        return
    if not find_bin("initdb"):
        raise SystemExit(
            "--standby needs PostgreSQL: --ledger postgresql://USER@HOST/DB (an empty database),"
            " or PostgreSQL's server programs (initdb, pg_ctl; Debian: postgresql) for a"
            " throwaway server"
        )
    server = PostgresServer()
    try:
        await asyncio.to_thread(server.start)
        yield await fresh_database(server.admin_url)
    finally:
        await asyncio.to_thread(server.stop)


async def wait_routable(urls: Sequence[str], ctx: ssl.SSLContext, seconds: float = 30.0) -> None:
    """Until every front's ``/health`` is up: linked to a main that has shards online."""
    async with (
        asyncio.timeout(seconds),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
    ):
        for url in urls:
            while True:
                try:
                    async with s.get(url + "health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(POLL)


@dataclass
class FaultRun:
    """What one run's cluster and crowd produced, for :func:`analyze`."""

    result: dict[str, Any]  # drive_visits' summary, with every visitor's record
    marks: dict[str, float | None]
    fault_t: float
    stranded: set[int]


async def _run_cluster(opts: Options, data: Path, ledger_url: str | None) -> FaultRun:
    """Start the cluster in ``data``, run the crowd, cause the fault; everything stopped after.

    With ``ledger_url`` (``--standby``): a leader and a standby main on it, the crowd
    through front processes given both mains' front link ports; the fault kills the
    leader, and the standby's READY (it leads) is the ``led`` mark.
    """
    assert opts.fault
    fault = opts.fault
    downtime = opts.fault_seconds
    if downtime is None:
        downtime = 3.0 if fault == "kill-main" else opts.reclaim_after + 5.0
    fault_at = opts.fault_at if opts.fault_at is not None else opts.duration * 0.4
    # Main's process reads the operator token from its environment (inherited): the
    # monitor reads the detailed status where operators do.
    operator = secrets.token_urlsafe(24)
    os.environ[OPERATOR_ENV] = operator
    hb = [
        f"--heartbeat-interval={opts.heartbeat_interval}",
        f"--heartbeat-timeout={opts.heartbeat_timeout}",
    ]
    names = shard_names(opts.shards)
    fronts_named = front_names(max(1, opts.fronts)) if ledger_url else []
    keys = write_cluster_keys(data / "keys", names, fronts=fronts_named)
    ctx = ssl.create_default_context(cafile=str(keys / "ca.crt"))
    shards: list[ShardProcess] = []
    fronts: list[FrontProcess] = []
    relay: Relay | None = None
    main: MainProcess | None = None
    standby: MainProcess | None = None
    led: asyncio.Future[None] | None = None
    heal: asyncio.TimerHandle | None = None
    logs = contextlib.ExitStack()  # the front processes' log files
    try:
        shards = list(
            await asyncio.gather(
                *(
                    ShardProcess.launch(
                        n, keys, data, extra_args=[*LOAD_TEST_SHARD_ARGS, *opts.loop_flag, *hb]
                    )
                    for n in names
                )
            )
        )
        victim = shards[0]
        specs: list[str] = []
        for p in shards:
            port = p.tls_port
            if fault == "partition-shard" and p is victim:
                relay = Relay("127.0.0.1", port)
                port = await relay.start()
            specs += ["--shard", f"127.0.0.1:{port}:{p.https_port}"]
        common = [
            *("-m", "ticketing", "main", "--keys", str(keys), "--data", str(data)),
            *("--reclaim-after", str(opts.reclaim_after), *LOAD_TEST_MAIN_ARGS, *hb),
        ]
        # The standby run: each main's front link port, chosen now (the fronts get both).
        link_ports = [free_port(), free_port()] if ledger_url else []
        if ledger_url:
            common += ["--ledger", ledger_url]
        main = MainProcess(
            data,
            [
                *common,
                *("--tickets", str(opts.tickets), *specs),
                *(("--front-port", str(link_ports[0])) if link_ports else ()),
            ],
        )
        await main.start()
        urls = [f"https://127.0.0.1:{main.port}/"]
        if ledger_url:
            # The standby waits for the lease and links the shards the ledger knows;
            # its READY (it leads) is the "led" mark. Bounded by the run's own bound.
            standby = MainProcess(
                data,
                [*common, "--standby", "--front-port", str(link_ports[1])],
                name="main-2",
                ready_timeout=opts.max_seconds + SETTLE,
            )
            led = asyncio.ensure_future(standby.start())
            front_args = [*LOAD_TEST_MAIN_ARGS, *hb, *opts.loop_flag]
            links = [f"127.0.0.1:{port}" for port in link_ports]
            for name in fronts_named:
                front_log = logs.enter_context((data / f"{name}.log").open("ab"))
                fronts.append(
                    await FrontProcess.launch(
                        name, keys, links, extra_args=front_args, stderr=front_log
                    )
                )
            urls = [f"https://127.0.0.1:{f.port}/" for f in fronts]
            await wait_routable(urls, ctx)
        front = urls[0]
        monitor = Monitor(
            front,
            victim.name,
            ctx,
            operator,
            [f"https://127.0.0.1:{p.https_port}/health" for p in shards]
            if fault == "kill-main"
            else [],
        )
        watching = asyncio.ensure_future(monitor.run())
        started: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        servers = {"main": main.child.pid if main.child else 0}
        servers.update({p.name: p.pid for p in [*shards, *fronts]})
        load = asyncio.ensure_future(
            drive_visits(
                "fault",
                urls,
                keys / "ca.crt",
                servers,
                opts,
                goal=opts.tickets,
                rate=opts.arrival_rate,
                started=started,
            )
        )
        t0 = await started
        await asyncio.sleep(max(0.0, t0 + fault_at - time.monotonic()))
        # kill-main strands nothing: the shards keep their stock.
        stranded = (
            set()
            if fault == "kill-main"
            else stranded_serials(data / "ledger.sqlite3", victim.name)
        )
        fault_t = monitor.fault_t = time.monotonic()
        if fault == "kill-shard":
            victim.kill()
        elif fault == "partition-shard":
            assert relay
            relay.partition()
            heal = asyncio.get_running_loop().call_later(downtime, relay.heal)
        elif led is not None:  # the standby takes over; the leader stays dead
            main.kill()
            led.add_done_callback(partial(_mark_led, monitor.marks))
        else:
            main.kill()
            await asyncio.sleep(downtime)
            await main.start()  # same ledger, same port: the front comes back
        result = await load
        if relay:
            relay.heal()
        # Let the cluster settle (fenced, healed, re-synced) before the audit.
        deadline = time.monotonic() + SETTLE
        while monitor.marks["recovered"] is None and time.monotonic() < deadline:  # noqa: ASYNC110 - marks come from polling
            await asyncio.sleep(POLL)
        monitor.stop()
        await watching
    finally:
        if heal:
            heal.cancel()
        await asyncio.gather(*(f.stop() for f in fronts), return_exceptions=True)
        if led is not None:
            led.cancel()  # a standby that never led: Child.spawn stops it by PID
            await asyncio.gather(led, return_exceptions=True)
        for m in (standby, main):
            if m:
                await m.stop()
        if relay:
            await relay.close()
        await asyncio.gather(*(p.stop() for p in shards), return_exceptions=True)
        logs.close()
    return FaultRun(result, monitor.marks, fault_t, stranded)


async def run_fault(opts: Options) -> dict[str, Any]:
    """One fault run: cluster, steady crowd, fault, then the checks and the figures."""
    assert opts.fault
    raise_fd_limit()
    out: dict[str, Any] = {"mode": "fault", "options": opts.public(), "machine": machine()}
    out["title"] = f"{opts.fault}, {opts.arrival_rate:g} visitors/s, {opts.tickets} tickets"
    if opts.standby:
        out["title"] += ", with a standby main"
    with DataDir(opts) as data:
        async with contextlib.AsyncExitStack() as stack:
            # The standby run shares a PostgreSQL ledger; the others keep SQLite in ``data``.
            ledger_url = (
                await stack.enter_async_context(shared_ledger(opts)) if opts.standby else None
            )
            run = await _run_cluster(opts, data, ledger_url)
            ledger = await open_ledger(ledger_url or data / "ledger.sqlite3")
            try:
                audit = (await ledger.audit(EVENT)).as_dict()
                last_grant = await last_grant_at(ledger, EVENT)
            finally:
                await ledger.close()
    result = run.result
    visitors = result.pop("visitors")
    verdict = check_sale(result["ticket_ids"], opts.tickets, audit, EVENT)
    figures = analyze(
        visitors,
        fault_t=run.fault_t,
        marks=run.marks,
        stranded=run.stranded,
        unsold_at_end=int(audit["unassigned"]) + int(audit["in_pools"]),
        last_grant=last_grant,
        grace=opts.heartbeat_timeout,
    )
    result.pop("ticket_ids")
    out.update(load=result, audit=audit, verdict=verdict.as_dict(), fault=figures)
    problems = list(verdict.problems)
    if figures["false_sold_outs"]:
        problems.append(
            f"{figures['false_sold_outs']} visitors told sold out while tickets remained"
        )
    if figures["fcfs_inversions"]["outside"]:
        problems.append(
            f"{figures['fcfs_inversions']['outside']} FCFS inversions outside the fault window"
        )
    if figures["detected_after_s"] is None:
        problems.append("the fault was never detected")
    if opts.standby and figures["led_after_s"] is None:
        problems.append("the standby never led")
    if opts.standby:
        took = figures["first_ticket_new_main_s"]
        out["failover_target"] = {
            "name": "kill -> first ticket under the new leader",
            "value_s": took,
            "target_s": TARGET_FAILOVER_S,
            "met": took is not None and took <= TARGET_FAILOVER_S,
        }
    out["ok"] = not problems
    out["problems"] = problems
    return out
