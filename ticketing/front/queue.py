"""The waiting room on the front's HTTP port: the gate, the long-poll, the page.

:meth:`QueueDoor.gate` runs first in the front's admission: a visitor goes straight
on while nobody waits, the sale has started and the shards have room
(:class:`~ticketing.front.waitroom.ReleaseRate`); otherwise it gets a signed queue
ticket and ``{"status": "queued", "position", "eta_s", ...}`` (JSON) or the waiting
page (``queue_page/``). The page and :class:`~ticketing.web_client.WebClient`
long-poll ``GET /events/{id}/queue?token=...``: the answer comes when the visitor
is released, the event sells out, or after a while (sooner near the head) with the
new position. A ticker releases the head of each line every ``tick`` seconds.

Refusals: a queue ticket of another visitor (copied to another browser) or not
signed by us: 403. Proof of work (an event's ``pow_bits``): a new entry needs a
solved challenge (``pow.py``), a wrong one is 403 with a fresh challenge. Live
entries per client address are capped (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import TokenError
from ..ledger.records import Event
from ..metrics import FrontMetrics
from ..visitor import VISITOR_COOKIE, public_id, valid_visitor
from ..wire import Place, QueueTicket
from .pow import PowGate
from .waitroom import ClockSequencer, Line, ReleaseRate, Sequencer, eta_seconds, prequeue_rank

if TYPE_CHECKING:
    from ..main.server import MainServer

log = logging.getLogger("ticketing.queue")


REFUSED = "this place in line is another browser's, or no longer valid: join the line again"


@dataclass(frozen=True)
class QueueOptions:
    """The waiting room's knobs (``RedirectServer(queue=...)``)."""

    enabled: bool = True
    # Release rate (ReleaseRate): visitors in flight to the shards
    min_window: int = 64
    target_delay: float = 1.0
    # Timeouts
    tick: float = 0.1  # seconds between releases
    poll_timeout: float = 10.0  # the longest long-poll (under the keep-alive timeout)
    hold_eta: float = 20.0  # waiters due within this many seconds long-poll; others call back
    max_poll_gap: float = 60.0  # the longest a far-back waiter is told to wait between polls
    stale_after: float = 90.0  # a waiter silent that long has left (> max_poll_gap + slack)
    ticket_ttl: float = 12 * 3600.0  # a queue ticket's life (pre-queues can be long)
    # Limits
    entries_per_address: int | None = 50  # live entries per client address; None: no cap


@dataclass(frozen=True)
class Pass:
    """The gate lets the visitor on; ``arrived``: its queue entry's time (unix s), if any."""

    arrived: float | None = None


@functools.cache
def _file(name: str) -> bytes:
    return resources.files("ticketing.front.queue_page").joinpath(name).read_bytes()


def _page() -> str:
    return _file("index.html").decode()


class QueueDoor:
    """Every event's line on one front, with its release rate and ticker."""

    def __init__(
        self,
        main: MainServer,
        options: QueueOptions | None = None,
        *,
        sequencer: Sequencer | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: FrontMetrics | None = None,
    ) -> None:
        self.main = main
        self.metrics = metrics
        self.options = options or QueueOptions()
        self.sequencer = sequencer or ClockSequencer(clock)
        self.clock, self.monotonic = clock, monotonic
        self.lines: dict[int, Line] = {}
        self.rates: dict[int, ReleaseRate] = {}
        self.events: dict[int, Event] = {}
        self._wakers: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._pow: PowGate | None = None
        self._verifier: Any = None
        self._last_prune = 0.0
        self.counts = {"direct": 0, "entered": 0, "released": 0}  # for the benchmark

    # -- wiring -------------------------------------------------------------------

    def mount(self, app: web.Application) -> None:
        app.add_routes(
            [
                web.get("/events/{event_id:[0-9]{1,12}}/queue", self.handle_poll),
                web.get("/queue/queue.js", self.handle_script),
            ]
        )
        app.cleanup_ctx.append(self._ticking)

    async def _ticking(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for fut in self._wakers.values():
            if not fut.done():
                fut.cancel()

    def _keys(self) -> tuple[Any, PowGate]:
        if self._pow is None:
            assert self.main.signer
            self._verifier = self.main.signer.verifier()
            self._pow = PowGate(self.main.signer, self._verifier)
        return self._verifier, self._pow

    def line(self, event_id: int) -> Line:
        if event_id not in self.lines:
            self.lines[event_id] = Line(stale_after=self.options.stale_after)
        return self.lines[event_id]

    def rate(self, event: Event) -> ReleaseRate:
        rate = self.rates.get(event.id)
        if rate is None:
            rate = self.rates[event.id] = ReleaseRate(
                min_window=self.options.min_window, target_delay=self.options.target_delay
            )
            rate.observe(self.main.stock_view(event.id).remaining, self.monotonic())
        rate.cap = event.release_rate
        return rate

    # -- the gate -----------------------------------------------------------------

    def gate(self, request: web.Request, event: Event, visitor: str) -> Pass | web.Response:
        """Let the visitor (public id) on, or answer with its place in line."""
        if not self.options.enabled:
            return Pass()
        self.events[event.id] = event
        now, mono = self.clock(), self.monotonic()
        started = event.sale_starts_at is None or now >= event.sale_starts_at
        line, rate = self.line(event.id), self.rate(event)
        token = request.query.get("queue", "")
        if token:
            ticket = self._ticket(token, visitor, event.id)
            if ticket is None:
                return self._refused(request, event, REFUSED)
            if line.released(ticket.rank):
                return Pass(ticket.issued)
            line.join(ticket.rank, ticket.issued, request.remote or "?", mono)
            return self._queued(request, event, ticket, token)
        if self.main.stock_view(event.id).remaining == 0:
            return Pass()  # sold out: the front says so
        if self._has_place(request, visitor, event.id):
            return Pass()  # already through once (sent back by a shard, or told to wait)
        if started and not len(line) and rate.allowance(mono, slack=rate.min_window) > 0:
            rate.released(1, mono)
            self.counts["direct"] += 1
            return Pass()
        return self._enter(request, event, visitor, started)

    def _enter(
        self, request: web.Request, event: Event, visitor: str, started: bool
    ) -> web.Response:
        """A new entry, after the proof of work when the event asks for one."""
        line, address = self.line(event.id), request.remote or "?"
        if event.pow_bits > 0:
            _, gate = self._keys()
            challenge, solution = request.query.get("pow", ""), request.query.get("solution", "")
            if not gate.check(challenge, solution, visitor, event.id, event.pow_bits):
                status = 403 if challenge else 200
                return self._challenge(request, event, visitor, status)
        cap = self.options.entries_per_address
        if cap is not None and line.entries_from(address) >= cap:
            resp = self._json_or_page(
                request, 429, {"status": "rate_limited", "errors": [{"message": "too many"}]}
            )
            resp.headers["Retry-After"] = "30"
            return resp
        seq = self.sequencer.next(event.id)
        rank = seq if started else prequeue_rank(event.prequeue_order, seq)
        ticket = QueueTicket(visitor, event.id, seq, rank, round(self.clock(), 3))
        assert self.main.signer
        token = ticket.sign(self.main.signer, self.options.ticket_ttl)
        line.join(rank, ticket.issued, address, self.monotonic())
        self.counts["entered"] += 1
        return self._queued(request, event, ticket, token)

    def _has_place(self, request: web.Request, visitor: str, event_id: int) -> bool:
        """A place token this front signed for this visitor and event (``wire.Place``)."""
        token = request.query.get("place", "")
        if not token:
            return False
        verifier, _ = self._keys()
        try:
            held = Place.verify(verifier, token)
        except TokenError:
            return False
        return held.visitor == visitor and held.event == event_id

    def _ticket(self, token: str, visitor: str, event_id: int) -> QueueTicket | None:
        verifier, _ = self._keys()
        try:
            ticket = QueueTicket.verify(verifier, token)
        except TokenError:
            return None
        return ticket if ticket.visitor == visitor and ticket.event == event_id else None

    # -- answers ------------------------------------------------------------------

    def state(self, event: Event, ticket: QueueTicket, token: str) -> dict[str, Any]:
        """What the page and API clients see about one entry."""
        line, rate = self.line(event.id), self.rate(event)
        base = f"/events/{event.id}"
        out: dict[str, Any] = {
            "status": "queued",
            "queue": token,
            "location": f"{base}?queue={token}",
            "poll": f"{base}/queue?queue={token}",
            "event": {"id": event.id, "name": event.name},
        }
        if line.released(ticket.rank):
            return dict(out, status="released")
        if self.main.stock_view(event.id).remaining == 0:
            if self.metrics is not None:  # a waiter's final answer (released: the redirect's)
                self.metrics.admissions.labels("sold_out").inc()
            return dict(out, status="sold_out")
        starts_in = 0.0 if event.sale_starts_at is None else event.sale_starts_at - self.clock()
        speed = rate.expected_rate()
        if starts_in > 0:  # pre-queue: the order is drawn at the start
            return dict(
                out,
                prequeue=True,
                position=None,
                waiting=len(line),
                starts_in_s=round(starts_in, 1),
                sale_starts_at=event.sale_starts_at,
                eta_s=round(starts_in, 1),
                release_rate=round(speed, 1),
                # Call back shortly before the start, then hold a poll through it.
                next_poll_s=self._gap(starts_in - self.options.poll_timeout / 2),
            )
        position = line.position(ticket.rank)
        eta = eta_seconds(position - 1, speed)
        return dict(
            out,
            prequeue=False,
            position=position,
            waiting=len(line),
            eta_s=eta,
            release_rate=round(speed, 1),
            # Back before the turn can come even if the line moves twice as fast.
            next_poll_s=0.0
            if eta <= self.options.hold_eta
            else self._gap((eta - self.options.hold_eta) / 2),
        )

    def _gap(self, seconds: float) -> float:
        """How long a waiter far from its turn waits before polling again (0: poll now).

        Only waiters close to their turn hold a connection open (a long-poll): 20,000
        waiters cannot each keep a socket on one front, and far back the position
        moves slowly anyway; the page counts the ETA down between polls.
        """
        return 0.0 if seconds <= 0 else round(min(self.options.max_poll_gap, max(1.0, seconds)), 1)

    def _queued(
        self, request: web.Request, event: Event, ticket: QueueTicket, token: str
    ) -> web.Response:
        return self._json_or_page(request, 200, self.state(event, ticket, token))

    def _challenge(
        self, request: web.Request, event: Event, visitor: str, status: int
    ) -> web.Response:
        _, gate = self._keys()
        challenge = gate.challenge(visitor, event.id, event.pow_bits)
        payload = {
            "status": "challenge",
            "challenge": challenge,
            "bits": event.pow_bits,
            "location": f"/events/{event.id}?pow={challenge}&solution=",
            "event": {"id": event.id, "name": event.name},
        }
        if status == 403:
            payload["errors"] = [{"message": "wrong or reused proof of work"}]
        return self._json_or_page(request, status, payload)

    def _refused(self, request: web.Request, event: Event, message: str) -> web.Response:
        payload = {
            "status": "refused",
            "errors": [{"message": message}],
            "location": f"/events/{event.id}",  # join the line afresh
        }
        return self._json_or_page(request, 403, payload)

    def _json_or_page(
        self, request: web.Request, status: int, payload: dict[str, Any]
    ) -> web.Response:
        if "application/json" in request.headers.get("Accept", ""):
            resp = web.json_response(payload, status=status)
        else:
            state = html.escape(json.dumps(payload), quote=True)
            resp = web.Response(
                text=_page().replace("{{STATE}}", state),
                status=status,
                content_type="text/html",
                headers={"Cache-Control": "no-store"},
            )
        return self._closing(resp, payload)

    def _closing(self, resp: web.Response, payload: dict[str, Any]) -> web.Response:
        """A waiter not back for a while does not keep an idle socket on the front."""
        if payload.get("next_poll_s", 0) > self.options.poll_timeout:
            resp.force_close()
        return resp

    # -- the long-poll ------------------------------------------------------------

    async def handle_poll(self, request: web.Request) -> web.Response:
        """A waiter close to its turn: answer when released, sold out, or after
        ``poll_timeout`` with the new position; one far back: answer now, with
        ``next_poll_s`` (the long-poll is the cheap part only near the head)."""
        event = await self.main.event(int(request.match_info["event_id"]))
        if event is None:
            raise web.HTTPNotFound()
        cookie = request.cookies.get(VISITOR_COOKIE, "")
        token = request.query.get("queue", "")
        ticket = self._ticket(token, public_id(cookie), event.id) if valid_visitor(cookie) else None
        if ticket is None:
            return self._refused(request, event, REFUSED)
        self.events[event.id] = event
        line = self.line(event.id)
        line.join(ticket.rank, ticket.issued, request.remote or "?", self.monotonic())
        first = self.state(event, ticket, token)
        if first["status"] != "queued" or first["next_poll_s"] > 0:
            return self._closing(web.json_response(first), first)
        if first["prequeue"]:  # wake at the start
            hold = min(self.options.poll_timeout, first["starts_in_s"] + self.options.tick)
        else:  # near the head: hear the release at once; the page counts the ETA down
            hold = self.options.poll_timeout
        key = (event.id, ticket.rank)
        fut = self._wakers.get(key)
        if fut is None or fut.done():
            fut = self._wakers[key] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(fut), hold)
        except TimeoutError:
            pass
        finally:
            if self._wakers.get(key) is fut and not fut.done():
                del self._wakers[key]
        line.seen(ticket.rank, self.monotonic())
        last = self.state(event, ticket, token)
        return self._closing(web.json_response(last), last)

    async def handle_script(self, request: web.Request) -> web.Response:
        return web.Response(body=_file("queue.js"), content_type="text/javascript")

    # -- releasing ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # a bug here must not stop every line
                log.exception("waiting room tick failed")
            await asyncio.sleep(self.options.tick)

    def tick(self) -> None:
        """Release the head of each line as far as the shards have room (no I/O)."""
        now, mono = self.clock(), self.monotonic()
        prune = mono - self._last_prune >= 1.0
        if prune:
            self._last_prune = mono
        for event_id, line in self.lines.items():
            event = self.events.get(event_id)
            if event is None:
                continue
            rate = self.rate(event)
            remaining = self.main.stock_view(event_id).remaining
            rate.observe(remaining, mono)
            if prune:
                line.prune(mono)
            if self.metrics is not None:
                self.metrics.waiting.labels(str(event_id)).set(len(line))
            if remaining == 0:
                self._wake(event_id, None)  # everyone hears "sold out" now
                continue
            if event.sale_starts_at is not None and now < event.sale_starts_at:
                continue
            n = min(len(line), rate.allowance(mono))
            if n:
                rate.released(n, mono)
                self.counts["released"] += n
                self._wake(event_id, line.release(n, mono))

    def _wake(self, event_id: int, ranks: list[int] | None) -> None:
        """Answer the long-polls of ``ranks`` (None: all of the event's) now."""
        keys = (
            [k for k in self._wakers if k[0] == event_id]
            if ranks is None
            else [(event_id, r) for r in ranks]
        )
        for key in keys:
            fut = self._wakers.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def waiting(self) -> int:
        """Visitors waiting in every line (metrics, the idle benchmark)."""
        return sum(len(line) for line in self.lines.values())
