"""One load-generator process of ``ticketing bench`` (``python -m ticketing.bench.worker``).

The benchmark runs the client side in worker processes so that the load generator
is neither a single-process bottleneck nor counted as server CPU. A worker talks to
its parent over stdin/stdout, one line per message:

- parent -> worker: one JSON config line, then ``GO`` (start now), and in ``idle``
  mode ``CLOSE`` (let the held connections go);
- worker -> parent: ``READY``, ``P {"done", "granted"}`` progress every 0.25 s,
  ``HOLDING {...}`` (idle mode), and finally ``RESULT {...}``.

Modes:

- ``visit``: ``clients`` visitors, at most ``concurrency`` in flight, each a fresh
  :class:`~ticketing.web_client.WebClient` doing what a browser does (GET the
  redirect, follow it to the WSS, one request, one answer). The same code serves the
  ticketing run and the bare-stack baseline. With ``rate`` (the fault benchmark)
  visitors instead *arrive* at a steady rate, each one following "please wait" and
  "go back to the front" answers (``persistent``) until it has a final answer.
- ``idle``: open one WSS connection per given admission URL and hold it, sending
  nothing, until told to close.
- ``wait``: ``clients`` visitors enter the front's waiting room (a pre-queue) and
  keep their place, polling as the page does, until told to close.

Every loop is bounded: ``max_seconds`` caps the whole run.
"""

from __future__ import annotations

import asyncio
import json
import resource
import ssl
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urljoin

from websockets.asyncio.client import ClientConnection, connect

from ..process import raise_fd_limit, tune_gc, wait_for_stop
from ..tokens import peek_claims
from ..web_client import Outcome, VisitClock, WebClient, ws_url

PROGRESS_EVERY = 0.25  # seconds between progress lines


def emit(tag: str, payload: Any = None) -> None:
    line = tag if payload is None else f"{tag} {json.dumps(payload, separators=(',', ':'))}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


_stdin: asyncio.StreamReader | None = None


async def read_line() -> str:
    """The parent's next line; ``""`` once it has closed our stdin (or exited)."""
    global _stdin
    if _stdin is None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 << 20)  # the idle config lists every URL
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        _stdin = reader
    return (await _stdin.readline()).decode().strip()


async def stop_or_orphaned() -> None:
    """Return on SIGTERM/SIGINT, or when the parent closes our stdin (it was killed):
    the benchmark's helper servers never outlive it."""

    async def orphaned() -> None:
        while await read_line():
            pass

    waits = [asyncio.ensure_future(wait_for_stop()), asyncio.ensure_future(orphaned())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def queue_record(out: Outcome, t0: float) -> list[float] | None:
    """``[rank, shown_at, position, eta_s, released_at]`` of a visitor who waited in
    line (times monotonic, like ``t0``; ``released_at`` 0 if never released), else None.

    The first position shown after the sale opened is the one judged (a pre-queue
    shows none): the benchmark compares it with the visitors actually released
    ahead of this one, and the ETA with the actual wait.
    """
    claims = peek_claims(out.queue_ticket) if out.queue_ticket else None
    shown = [(t, p, eta) for t, p, eta in out.queue if p]
    if claims is None or not shown:
        return None
    released = next((t for t, p, _ in out.queue if p == 0), None)
    t, position, eta = shown[0]
    return [
        float(claims.get("r", 0)),
        round(t0 + t, 4),
        float(position),
        eta,
        round(t0 + released, 4) if released is not None else 0.0,
    ]


def visit_steps(out: Outcome) -> list[float | None]:
    """Seconds from arrival to the front's first answer, the release from the line,
    the shard's socket open, and the final answer (None: not reached)."""
    released = next((t for t, p, _ in out.queue if p == 0), None)
    return [
        *(out.timings.get(k) for k in ("redirect",)),
        released,
        *(out.timings.get(k) for k in ("connect", "total")),
    ]


class Visits:
    """The ``visit`` mode: a bounded number of visitors, bounded concurrency and time."""

    def __init__(self, cfg: dict[str, Any], ctx: ssl.SSLContext) -> None:
        # Visitors take the fronts in turn, so every front gets its share of the crowd.
        self.fronts: list[str] = cfg["fronts"]
        self.clients: int = cfg["clients"]
        self.concurrency: int = max(1, cfg["concurrency"])
        self.timeout: float = cfg["timeout"]
        self.max_seconds: float = cfg["max_seconds"]
        self.rate: float | None = cfg.get("rate")  # arrivals per second, or as fast as allowed
        self.persistent: bool = bool(cfg.get("persistent"))
        self.ctx = ctx
        self.started = 0
        self.done = 0
        self.granted = 0
        # Per finished visitor: kind, ticket id, latency (s), end (monotonic, s).
        self.kinds: list[str] = []
        self.tickets: list[str | None] = []
        self.latency: list[float] = []
        self.ends: list[float] = []
        # Per finished visitor, for the fault benchmark: arrival (monotonic, s), the
        # "please wait" answers and front hops it followed, its longest silence (s).
        self.arrivals: list[float] = []
        self.dialed: list[float] = []  # when its first connection began (monotonic, s)
        self.waits: list[int] = []
        self.hops: list[int] = []
        self.silences: list[float] = []
        self.queue: list[list[float] | None] = []  # the waiting room: see queue_record
        self.steps: list[list[float | None]] = []  # where the time went: see visit_steps
        self.errors: Counter[str] = Counter()

    def next_front(self) -> str:
        """The front of the next visitor to start (round robin over ``fronts``)."""
        front = self.fronts[self.started % len(self.fronts)]
        self.started += 1
        return front

    async def visit(self, front: str) -> None:
        t0 = time.monotonic()
        async with WebClient(self.ctx, timeout=self.timeout, persistent=self.persistent) as client:
            out = await client.get_ticket(front)
        self.dialed.append(client.dialed_at if client.dialed_at is not None else t0)
        # When the final answer came (a shard's message), not when its socket closed.
        end = min(time.monotonic(), t0 + out.timings.get("total", float("inf")))
        self.arrivals.append(t0)
        self.waits.append(out.waits)
        self.hops.append(out.hops)
        # A visit that ended in an error got no real answer at all: all of it was silence.
        silence = end - t0 if out.kind == "error" else out.longest_silence
        self.silences.append(round(silence, 4))
        self.queue.append(queue_record(out, t0))
        self.steps.append([None if x is None else round(x, 4) for x in visit_steps(out)])
        self.kinds.append(out.kind)
        self.tickets.append(out.ticket_id)
        self.latency.append(out.timings.get("total", end - t0))
        self.ends.append(end)
        self.done += 1
        if out.kind == "ticket":
            self.granted += 1
        elif out.kind != "sold_out":
            self.errors[f"{out.kind}: {str(out.message.get('message', out.message))[:120]}"] += 1

    async def runner(self) -> None:
        while self.started < self.clients:
            await self.visit(self.next_front())

    async def paced(self) -> None:
        """Start one visitor every ``1 / rate`` seconds (``clients`` in all), unbounded
        concurrency: arrivals do not wait for earlier visitors to finish."""
        assert self.rate
        t0 = time.monotonic()
        visits: list[asyncio.Future[None]] = []
        for i in range(self.clients):
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            visits.append(asyncio.ensure_future(self.visit(self.next_front())))
        await asyncio.gather(*visits)

    async def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        runners = (
            [asyncio.ensure_future(self.paced())]
            if self.rate
            else [asyncio.ensure_future(self.runner()) for _ in range(self.concurrency)]
        )
        timed_out = False
        try:
            async with asyncio.timeout(self.max_seconds):
                await asyncio.gather(*runners)
        except TimeoutError:
            timed_out = True
        unfinished = self.clients - self.done
        if unfinished:
            self.errors[f"timeout: not finished within {self.max_seconds:g} s"] += unfinished
        return {
            "t0": t0,
            "t1": time.monotonic(),
            "timed_out": timed_out,
            "clients": self.clients,
            "unfinished": unfinished,
            "kinds": self.kinds,
            "tickets": self.tickets,
            "latency": [round(x, 6) for x in self.latency],
            "ends": self.ends,
            "arrivals": self.arrivals,
            "dialed": self.dialed,
            "waits": self.waits,
            "hops": self.hops,
            "silences": self.silences,
            "queue": self.queue,
            "steps": self.steps,
            "errors": dict(self.errors),
        }

    def progress(self) -> dict[str, int]:
        return {"done": self.done, "granted": self.granted}


class Idle:
    """The ``idle`` mode: hold one silent WSS connection per admission URL."""

    def __init__(self, cfg: dict[str, Any], ctx: ssl.SSLContext) -> None:
        self.locations: list[str] = cfg["locations"]
        self.concurrency: int = max(1, cfg["concurrency"])
        self.timeout: float = cfg["timeout"]
        self.max_seconds: float = cfg["max_seconds"]
        self.ctx = ctx
        self.conns: list[ClientConnection] = []
        self.failed: Counter[str] = Counter()
        self.next = 0

    async def opener(self) -> None:
        while self.next < len(self.locations):
            url = ws_url(self.locations[self.next])
            self.next += 1
            try:
                conn = await connect(
                    url,
                    ssl=self.ctx,
                    open_timeout=self.timeout,
                    max_size=1 << 16,
                    compression=None,
                )
            except Exception as exc:  # any failure is one failed connection, counted
                self.failed[f"{type(exc).__name__}: {str(exc)[:100]}"] += 1
            else:
                self.conns.append(conn)

    async def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        openers = [asyncio.ensure_future(self.opener()) for _ in range(self.concurrency)]
        try:
            async with asyncio.timeout(self.max_seconds):
                await asyncio.gather(*openers)
        except TimeoutError:
            self.failed["timeout"] += len(self.locations) - len(self.conns) - self.failed.total()
        t1 = time.monotonic()
        alive = sum(1 for c in self.conns if c.state.name == "OPEN")
        emit("HOLDING", {"open": alive, "failed": self.failed.total(), "seconds": t1 - t0})
        try:
            async with asyncio.timeout(self.max_seconds):
                while await read_line() not in ("CLOSE", ""):
                    pass
        except TimeoutError:
            pass
        still = sum(1 for c in self.conns if c.state.name == "OPEN")
        await asyncio.gather(*(c.close() for c in self.conns), return_exceptions=True)
        return {
            "opened": len(self.conns),
            "open_at_hold": alive,
            "open_at_close": still,
            "failed": dict(self.failed),
            "open_seconds": t1 - t0,
        }

    def progress(self) -> dict[str, int]:
        return {"done": len(self.conns) + self.failed.total(), "granted": len(self.conns)}


class Waiting:
    """The ``wait`` mode: visitors holding a place in a front's waiting room."""

    def __init__(self, cfg: dict[str, Any], ctx: ssl.SSLContext) -> None:
        self.front: str = cfg["front"]
        self.clients: int = cfg["clients"]
        self.concurrency: int = max(1, cfg["concurrency"])
        self.max_seconds: float = cfg["max_seconds"]
        self.ctx = ctx
        self.entered = 0
        self.failed: Counter[str] = Counter()
        self.clients_open: list[WebClient] = []
        self.polls: list[asyncio.Future[Any]] = []
        self.started = 0

    async def enter(self) -> None:
        while self.started < self.clients:
            self.started += 1
            client = WebClient(self.ctx, timeout=2 * self.max_seconds)
            self.clients_open.append(client)
            try:
                status, _, body = await client.admission(self.front)
            except Exception as exc:  # any failure is one visitor fewer, counted
                self.failed[f"{type(exc).__name__}: {str(exc)[:100]}"] += 1
                continue
            if body.get("status") != "queued":
                self.failed[f"{status} {body.get('status')}"] += 1
                continue
            self.entered += 1
            # Keep the place as the page does: poll when the front says so.
            poll = client.wait_in_line(urljoin(self.front, body["poll"]), body, VisitClock(), [])
            self.polls.append(asyncio.ensure_future(poll))

    async def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        openers = [asyncio.ensure_future(self.enter()) for _ in range(self.concurrency)]
        try:
            async with asyncio.timeout(self.max_seconds):
                await asyncio.gather(*openers)
        except TimeoutError:
            self.failed["timeout"] += self.clients - self.entered - self.failed.total()
        t1 = time.monotonic()
        emit("HOLDING", {"open": self.entered, "failed": self.failed.total(), "seconds": t1 - t0})
        try:
            async with asyncio.timeout(self.max_seconds):
                while await read_line() not in ("CLOSE", ""):
                    pass
        except TimeoutError:
            pass
        still = sum(1 for p in self.polls if not p.done())
        for p in self.polls:
            p.cancel()
        await asyncio.gather(*self.polls, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.clients_open), return_exceptions=True)
        return {"entered": self.entered, "open_at_close": still, "failed": dict(self.failed)}

    def progress(self) -> dict[str, int]:
        return {"done": self.entered + self.failed.total(), "granted": self.entered}


async def _report_progress(job: Visits | Idle | Waiting) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        emit("P", job.progress())


async def amain() -> int:
    raise_fd_limit()
    cfg = json.loads(await read_line())
    ctx = ssl.create_default_context(cafile=cfg["cafile"])
    modes: dict[str, type[Visits | Idle | Waiting]] = {
        "visit": Visits,
        "idle": Idle,
        "wait": Waiting,
    }
    job = modes[cfg["mode"]](cfg, ctx)
    tune_gc()  # a load generator is a busy server of its own
    emit("READY")
    if await read_line() != "GO":
        return 1
    reporter = asyncio.ensure_future(_report_progress(job))
    cpu0 = time.process_time()
    try:
        result = await job.run()
    finally:
        reporter.cancel()
    # Our own CPU and peak RSS: the parent cannot read them once we have exited.
    result["cpu_s"] = time.process_time() - cpu0
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    emit("P", job.progress())
    emit("RESULT", result)
    return 0


def main() -> int:
    use_uvloop = "--uvloop" in sys.argv[1:]
    if use_uvloop:
        import uvloop

        return uvloop.run(amain())
    return asyncio.run(amain())


if __name__ == "__main__":
    sys.exit(main())
