"""The waiting room on a front's HTTP port: the gate, the long-poll, the page.

The same code runs in every front: main's embedded one and front processes.
:meth:`QueueDoor.gate` runs first in the front's admission: a visitor goes straight
on while nobody waits anywhere, the sale has started and main gave this front room
for it; otherwise it gets a queue ticket signed with this front's key and
``{"status": "queued", "position", "eta_s", ...}`` (JSON) or the waiting page
(``queue_page/``). The page and :class:`~ticketing.web_client.WebClient`
long-poll ``GET /events/{id}/queue?queue=...``: the answer comes when the visitor
is released, the event sells out, or after a while (sooner near the head) with the
new position.

Releasing: every ``tick`` the door reports its lines to main (``wire.LineReport``
through its *uplink*: in-process for the embedded front, the front link for a
front process) and main answers one cluster-wide watermark (``main/release.py``):
the door releases its waiters ranked up to it, so all fronts release in one order.
While main cannot be reached nobody is released or sent straight on; entries are
still made (a place in line, not an error).

Refusals: a queue ticket of another visitor (copied to another browser), or not
signed by a certified front (a revoked front's): 403. Proof of work (an event's
``pow_bits``): a new entry needs a solved challenge of this front (``pow.py``), a
wrong one is 403 with a fresh challenge. Live entries per client address are
capped (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import html
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from ..changes import Changes
from ..errors import TokenError
from ..ledger.records import Event
from ..main.release import MIN_WINDOW, TARGET_DELAY
from ..metrics import FrontMetrics
from ..visitor import VISITOR_COOKIE, public_id, valid_visitor
from ..wire import LineOrders, LineReport, Place, QueueTicket
from .pow import PowGate
from .source import RoutingSource
from .waitroom import ClockSequencer, Line, Sequencer, ahead_in, eta_seconds, prequeue_rank

log = logging.getLogger("ticketing.queue")


REFUSED = "this place in line is another browser's, or no longer valid: join the line again"

# When the visitor's connection came (edge.claim_arrival: its accept, or its hello), on
# the first request of a connection: its rank in line, and its arrival claim.
ARRIVED_AT = web.RequestKey("arrived_at", float)
_UNRANKED = web.RequestKey("unranked", bool)  # ARRIVED_AT still counts as to come

# A door's lines to main, main's orders back (None: main cannot be reached now).
Uplink = Callable[[dict[int, LineReport]], Awaitable[dict[int, LineOrders] | None]]
_EVENT_FIELDS = frozenset(f.name for f in dataclasses.fields(Event))
UNRANKED_FRESH = 0.01  # s: handshakes under way are counted as seen this recently
KICK_GAP = 0.025  # s: the least time between two reports to main (kicks included)
KICK_PASSES = 8  # passes main must have given for spending half of them to kick a report
PAUSED_POLL = 1.0  # s: the longest a long-poll is held while main is away (then: "paused")


class Arrivals(Protocol):
    """The edge's connections (accepted or hello in) that have had no request yet
    (:class:`~ticketing.edge.ConnectionGate`): visitors who came and are not ranked."""

    def oldest_unclaimed(self) -> float | None: ...
    def unclaimed_before(self, stamp: float, limit: int) -> int: ...
    def unclaimed(self) -> list[float]: ...


def event_of(info: dict[str, Any]) -> Event:
    """An event's settings from its public fields (a front process's pushed view)."""
    return Event(**{k: v for k, v in info.items() if k in _EVENT_FIELDS})


@dataclass(frozen=True)
class QueueOptions:
    """The waiting room's knobs (``RedirectServer(queue=...)``)."""

    enabled: bool = True
    # Timeouts
    tick: float = 0.1  # seconds between reports to main (and releases) while a line moves
    # ... and while no line anywhere holds anyone and passes are left: main's CPU per
    # second goes with the reports (a spent half of the passes reports at once)
    quiet_tick: float = 0.25
    poll_timeout: float = 10.0  # the longest long-poll (under the keep-alive timeout)
    hold_eta: float = 20.0  # waiters due within this many seconds long-poll; others call back
    max_poll_gap: float = 60.0  # the longest a far-back waiter is told to wait between polls
    stale_after: float = 90.0  # a waiter silent that long has left (> max_poll_gap + slack)
    first_word: float = 1.0  # an event's first visitor here waits this long for main's orders
    # The edge takes new TLS handshakes one at a time while a line covers every ticket
    # left: the sale ends sooner, at some cost in order (README, Waiting room)
    trickle: bool = False
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
    """Every event's line on one front, reported to main and released by its orders."""

    def __init__(
        self,
        source: RoutingSource,
        options: QueueOptions | None = None,
        *,
        uplink: Uplink,
        sequencer: Sequencer | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: FrontMetrics | None = None,
    ) -> None:
        self.source = source
        self.uplink = uplink
        self.metrics = metrics
        self.options = options or QueueOptions()
        self.sequencer = sequencer or ClockSequencer(clock)
        self.clock, self.monotonic = clock, monotonic
        self.lines: dict[int, Line] = {}
        self.events: dict[int, Event] = {}
        self.orders: dict[int, LineOrders] = {}  # main's last word, per event
        # Since when (unix s) the lines cover every ticket left: ClientHellos from
        # then on trickle (ConnectionGate.trickle); None: not crowded, or no trickle.
        self.crowded_since: float | None = None
        # Main did not answer the last report (it is away, or another main is taking
        # over): nobody moves, and the waiters hear so every PAUSED_POLL seconds.
        self.paused = False
        self._reported_at = 0.0  # the wall-clock time of the last report
        self.upto: dict[int, int] = {}  # the watermark released to (never goes back)
        self._budget: dict[int, int] = {}  # straight passes left until the next orders
        self._direct: dict[int, int] = {}  # straight passes not reported yet
        self._wakers: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._pow: PowGate | None = None
        self._kick = asyncio.Event()  # report now: a first visitor, passes running low
        self._granted: dict[int, int] = {}  # straight passes main gave in its last orders
        self._straight_upto: dict[int, float] = {}  # the latest stamp sent straight on
        self.changes = Changes()  # notified after every tick (main's orders applied)
        self._asked: dict[int, float] = {}  # event -> until when visitors wait for orders
        self._last_prune = 0.0
        # The front's admission for a released visitor: the shard URL with its token
        # (None: not now, it goes through the front's door as any visitor).
        self.admit: Callable[[web.Request, int, float], str | None] | None = None
        # The connections that have had no request yet (the front's
        # ConnectionGate), besides those of first requests in progress (_arriving).
        self.pending: Arrivals | None = None
        self._arriving: Counter[float] = Counter()
        self._unranked_at = -1.0  # when _unranked_ranks was read (time.monotonic)
        self._unranked_ranks: list[int] = []
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

    def _gate(self) -> PowGate:
        if self._pow is None:  # this front's challenges only: a solution is used once here
            signer = self.source.signer
            self._pow = PowGate(signer, signer.verifier())
        return self._pow

    def line(self, event_id: int) -> Line:
        if event_id not in self.lines:
            self.lines[event_id] = Line(stale_after=self.options.stale_after)
        return self.lines[event_id]

    @contextlib.contextmanager
    def arriving(self, request: web.Request, stamp: float) -> Iterator[None]:
        """A request that may rank a visitor at ``stamp`` is being answered: until the
        gate has placed it, the horizon reported to main stays at or below ``stamp``
        and main counts it as arriving."""
        self._arriving[stamp] += 1
        request[_UNRANKED] = True
        try:
            yield
        finally:
            self._placed(request)

    def _placed(self, request: web.Request) -> None:
        """The gate has decided about this request's visitor (no await from here)."""
        stamp = request.get(ARRIVED_AT)
        if request.get(_UNRANKED) and stamp is not None:
            request[_UNRANKED] = False
            self._arriving[stamp] -= 1
            if not self._arriving[stamp]:
                del self._arriving[stamp]

    def _came_before(self, stamp: float | None, limit: int) -> int:
        """How many who came earlier than ``stamp`` are not ranked yet (their handshake
        or request is under way), counted up to ``limit``: going straight on may not
        take the room they would find when their turn at the gate comes."""
        if limit <= 0:
            return limit
        if stamp is None:  # a later request on a kept-alive connection: it comes now
            stamp = time.time()  # the edge's clock
        oldest = self._oldest_arrival()
        if oldest is None or oldest >= stamp:
            return 0  # mostly: nobody earlier is still on the way in
        count = sum(n for s, n in self._arriving.items() if s < stamp)
        if self.pending is not None:
            count += self.pending.unclaimed_before(stamp, limit)
        return min(count, limit)

    def _oldest_arrival(self) -> float | None:
        """The earliest time a visitor not ranked yet may still be ranked at."""
        edge = None if self.pending is None else self.pending.oldest_unclaimed()
        return min((*self._arriving, *(() if edge is None else (edge,))), default=None)

    def _unranked(self) -> list[int]:
        """Ranks (µs, ascending) of visitors who came and are not ranked yet (accepted
        within the grace, or their hello in; their first request not answered): main counts them
        toward the tickets spoken for (``LineReport.arriving``). Kept for
        ``UNRANKED_FRESH`` (real time): a crowd has thousands of handshakes under way."""
        mono = time.monotonic()
        if mono - self._unranked_at >= UNRANKED_FRESH:
            edge = self.pending.unclaimed() if self.pending is not None else []
            stamps = sorted([*self._arriving, *edge])
            self._unranked_at, self._unranked_ranks = mono, [int(s * 1e6) for s in stamps]
        return self._unranked_ranks

    def _remaining(self, event_id: int) -> int:
        return self.source.routes(event_id).view().remaining

    def _passed(self, event_id: int, rank: int) -> bool:
        """Main's watermark is past ``rank``: its turn has come (on any front)."""
        upto = self.upto.get(event_id)
        return upto is not None and rank <= upto

    # -- the gate -----------------------------------------------------------------

    async def gate(self, request: web.Request, event: Event, visitor: str) -> Pass | web.Response:
        """Let the visitor (public id) on, or answer with its place in line."""
        if not self.options.enabled:
            return Pass()
        self.events[event.id] = event
        line = self.line(event.id)
        if event.id not in self.orders:
            await self._first_word(event.id)
        # From here on no await: this visitor is placed now, in line or straight on.
        stamp = request.get(ARRIVED_AT)
        self._placed(request)
        now = self.clock()
        started = event.sale_starts_at is None or now >= event.sale_starts_at
        token = request.query.get("queue", "")
        if token:
            ticket = self._ticket(token, visitor, event.id)
            if ticket is None:
                return self._refused(request, event, REFUSED)
            if line.released(ticket.rank) or self._passed(event.id, ticket.rank):
                return Pass(ticket.issued)
            self._join(line, ticket.rank, ticket.issued, request.remote or "?")
            return self._queued(request, event, ticket, token)
        if self._remaining(event.id) == 0:
            return Pass()  # sold out: the front says so
        if self._has_place(request, visitor, event.id):
            return Pass()  # already through once (sent back by a shard, or told to wait)
        if started and not len(line) and self._straight_on(event.id, stamp):
            self._sent_on(event.id, 1)
            self.counts["direct"] += 1
            return Pass()
        return self._enter(request, event, visitor, started)

    def _straight_on(self, event_id: int, stamp: float | None) -> bool:
        """Whether a visitor at an empty line goes straight on (taking a pass).

        Only with a pass left for everyone who came earlier and is still on its way in
        (each takes one when it reaches the gate), and those keep theirs even if main's
        next orders give none: one who came before someone sent straight on goes on
        too. Near the end of a sale (passes at least half the tickets left) nobody goes
        before anyone earlier still on the way: no ticket can then go to a later one.
        """
        budget = self._budget.get(event_id, 0)
        # (At or before: stamps have the kernel's jiffy resolution, a tie is a tie.)
        if stamp is not None and stamp <= self._straight_upto.get(event_id, float("-inf")):
            self._budget[event_id] = max(0, budget - 1)
            return True  # its pass was kept for it
        ahead = self._came_before(stamp, budget)
        if budget <= ahead or (ahead and 2 * budget >= self._remaining(event_id)):
            return False
        self._budget[event_id] = budget - 1
        granted = self._granted.get(event_id, 0)
        if granted >= KICK_PASSES and 2 * self._budget[event_id] < granted:
            self._kick.set()  # half the passes are spent: ask for more now
        now = time.time() if stamp is None else stamp
        self._straight_upto[event_id] = max(self._straight_upto.get(event_id, now), now)
        return True

    async def _first_word(self, event_id: int) -> None:
        """Wait (at most ``first_word`` seconds, once per event) for main's first
        orders for an event new on this front: its first visitor in a quiet sale
        goes straight on instead of into a line of one."""
        deadline = self._asked.setdefault(event_id, self.monotonic() + self.options.first_word)
        left = deadline - self.monotonic()
        if left > 0:
            self._kick.set()  # report now, not at the next tick
            with contextlib.suppress(TimeoutError):
                await self.changes.wait_for(lambda: event_id in self.orders, left)

    def _enter(
        self, request: web.Request, event: Event, visitor: str, started: bool
    ) -> Pass | web.Response:
        """A new entry, after the proof of work when the event asks for one (a Pass:
        its turn has come already)."""
        line, address = self.line(event.id), request.remote or "?"
        if event.pow_bits > 0:
            gate = self._gate()
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
        seq = self.sequencer.next(event.id, request.get(ARRIVED_AT))
        rank = seq if started else prequeue_rank(event.prequeue_order, seq)
        if started and self._passed(event.id, rank):
            # Below a watermark main gave before this front's first report (another
            # front's horizon bounded it): its turn has come; main counts it sent on.
            self._sent_on(event.id, 1)
            self.counts["direct"] += 1
            return Pass()
        ticket = QueueTicket(visitor, event.id, seq, rank, round(self.clock(), 3))
        token = ticket.sign(self.source.signer, self.options.ticket_ttl)
        self._join(line, rank, ticket.issued, address)
        self.counts["entered"] += 1
        return self._queued(request, event, ticket, token)

    def _join(self, line: Line, rank: int, issued: float, address: str) -> None:
        """Into line; the first one in an empty line reports at once (main learns of
        a line, and this front's horizon, now rather than a quiet tick later)."""
        if not len(line):
            self._kick.set()
        line.join(rank, issued, address, self.monotonic())

    def _sent_on(self, event_id: int, n: int) -> None:
        """``n`` visitors go on that main has not counted: the next report says so."""
        self._direct[event_id] = self._direct.get(event_id, 0) + n

    def _has_place(self, request: web.Request, visitor: str, event_id: int) -> bool:
        """A place token a certified front signed for this visitor and event (``wire.Place``)."""
        token = request.query.get("place", "")
        if not token:
            return False
        try:
            held = Place.verify(self.source.places, token)
        except TokenError:
            return False
        return held.visitor == visitor and held.event == event_id

    def _ticket(self, token: str, visitor: str, event_id: int) -> QueueTicket | None:
        """The visitor's entry, signed by any certified front (a reload may land on
        another front); None for another visitor's, a forged or a revoked front's."""
        try:
            ticket = QueueTicket.verify(self.source.places, token)
        except TokenError:
            return None
        return ticket if ticket.visitor == visitor and ticket.event == event_id else None

    # -- answers ------------------------------------------------------------------

    def state(self, event: Event, ticket: QueueTicket, token: str) -> dict[str, Any]:
        """What the page and API clients see about one entry."""
        line = self.line(event.id)
        base = f"/events/{event.id}"
        out: dict[str, Any] = {
            "status": "queued",
            "queue": token,
            "location": f"{base}?queue={token}",
            "poll": f"{base}/queue?queue={token}",
            "event": {"id": event.id, "name": event.name},
        }
        if line.released(ticket.rank) or self._passed(event.id, ticket.rank):
            return dict(out, status="released")
        if self._remaining(event.id) == 0:
            if self.metrics is not None:  # a waiter's final answer (released: the redirect's)
                self.metrics.admissions.labels("sold_out").inc()
            return dict(out, status="sold_out")
        starts_in = 0.0 if event.sale_starts_at is None else event.sale_starts_at - self.clock()
        speed = self._speed(event)
        waiting = len(line) + self._others_ahead(event.id, None)
        if starts_in > 0:  # pre-queue: the order is drawn at the start
            return dict(
                out,
                prequeue=True,
                position=None,
                waiting=waiting,
                starts_in_s=round(starts_in, 1),
                sale_starts_at=event.sale_starts_at,
                eta_s=round(starts_in, 1),
                release_rate=round(speed, 1),
                # Call back shortly before the start, then hold a poll through it.
                next_poll_s=self._gap(starts_in - self.options.poll_timeout / 2),
            )
        # Not counted: visitors who came earlier and are still handshaking. Measured
        # in a crowd, that made positions worse (position error p95 1,100-1,400
        # instead of 20-65): a stamp older than the sequencer's max_age is ranked at
        # the horizon, behind those it seemed to be ahead of.
        position = line.position(ticket.rank) + self._others_ahead(event.id, ticket.rank)
        eta = eta_seconds(position - 1, speed)
        return dict(
            out,
            prequeue=False,
            position=position,
            waiting=waiting,
            eta_s=eta,
            release_rate=round(speed, 1),
            paused=self.paused,
            # Back before the turn can come even if the line moves twice as fast.
            next_poll_s=0.0
            if eta <= self.options.hold_eta
            else self._gap((eta - self.options.hold_eta) / 2),
        )

    def _others_ahead(self, event_id: int, rank: int | None) -> int:
        """Waiters on the other fronts ranked below ``rank`` (None: all of them), from
        their sketches in main's last orders, less those released since."""
        orders = self.orders.get(event_id)
        if orders is None or not orders.others:
            return 0
        upto = self.upto.get(event_id)
        total = 0
        for sketch in orders.others:
            ahead = sketch.waiting if rank is None else ahead_in(sketch, rank)
            if upto is not None:  # the sketch is older than the watermark
                ahead -= min(ahead, ahead_in(sketch, upto + 1))
            total += ahead
        return total

    def _speed(self, event: Event) -> float:
        """The release rate an ETA assumes: main's measure for the whole cluster,
        else (no word from main yet) the cap or main's first window per second."""
        orders = self.orders.get(event.id)
        if orders is not None and orders.rate > 0:
            return orders.rate
        fallback = MIN_WINDOW / TARGET_DELAY
        return fallback if event.release_rate is None else min(fallback, event.release_rate)

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
        challenge = self._gate().challenge(visitor, event.id, event.pow_bits)
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

    def _refused(
        self, request: web.Request, event: Event, message: str, *, page: bool = True
    ) -> web.Response:
        payload = {
            "status": "refused",
            "errors": [{"message": message}],
            "location": f"/events/{event.id}",  # join the line afresh
        }
        if not page:
            return web.json_response(payload, status=403)
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
        info = await self.source.event_info(int(request.match_info["event_id"]))
        if info is None:  # JSON, as every answer here: the page's script asks
            return web.json_response(
                {"status": "no_event", "errors": [{"message": "no such event"}]}, status=404
            )
        event = event_of(info)
        cookie = request.cookies.get(VISITOR_COOKIE, "")
        token = request.query.get("queue", "")
        ticket = self._ticket(token, public_id(cookie), event.id) if valid_visitor(cookie) else None
        if ticket is None:
            return self._refused(request, event, REFUSED, page=False)
        self.events[event.id] = event
        line = self.line(event.id)
        if not self._passed(event.id, ticket.rank):
            self._join(line, ticket.rank, ticket.issued, request.remote or "?")
        first = self.state(event, ticket, token)
        if first["status"] != "queued" or first["next_poll_s"] > 0:
            return self._polled(request, event, ticket, first)
        if first["prequeue"]:  # wake at the start
            hold = min(self.options.poll_timeout, first["starts_in_s"] + self.options.tick)
        else:  # near the head: hear the release at once; the page counts the ETA down
            hold = self.options.poll_timeout
        if self.paused:  # nothing moves until main is back: say so now and then
            hold = min(hold, PAUSED_POLL)
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
        return self._polled(request, event, ticket, self.state(event, ticket, token))

    def _polled(
        self, request: web.Request, event: Event, ticket: QueueTicket, state: dict[str, Any]
    ) -> web.Response:
        """A long-poll's answer; released: with the shard to go to (``redirect``), so
        the page goes straight there instead of back through the front first."""
        if state["status"] == "released" and self.admit is not None:
            where = self.admit(request, event.id, ticket.issued)
            if where is not None:
                state = dict(state, redirect=where)
        return self._closing(web.json_response(state), state)

    async def handle_script(self, request: web.Request) -> web.Response:
        return web.Response(body=_file("queue.js"), content_type="text/javascript")

    # -- releasing ----------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await self.tick()
            except Exception:  # a bug here must not stop every line
                log.exception("waiting room tick failed")
            with contextlib.suppress(TimeoutError):  # a kick reports at once
                await asyncio.wait_for(self._kick.wait(), self._next_tick())
            self._kick.clear()
            # Kicks come with visitors: at most one report per KICK_GAP (and a kick for
            # passes only after KICK_PASSES / 2 went: each such report carries that many).
            await asyncio.sleep(max(0.0, min(KICK_GAP, self.options.tick) - (loop.time() - began)))

    def _next_tick(self) -> float:
        """``tick`` while a line here or elsewhere holds someone, or main is away;
        ``quiet_tick`` while every line is empty (then passes decide, and a front
        that runs low on them kicks a report)."""
        if self.paused or any(len(line) for line in self.lines.values()):
            return self.options.tick
        if any(self._others_ahead(e, None) for e in self.orders if self._remaining(e)):
            return self.options.tick  # its horizon bounds the release of theirs
        return max(self.options.tick, self.options.quiet_tick)

    def report(self) -> dict[int, LineReport]:
        """Every open line, as main's release decision needs it; sold-out events
        hear "sold out" here instead (no I/O)."""
        now, mono = self.clock(), self.monotonic()
        prune = mono - self._last_prune >= 1.0
        if prune:
            self._last_prune = mono
        reports: dict[int, LineReport] = {}
        oldest = self._oldest_arrival()
        # The edge does not know the event: every open line counts them (over-counts
        # only while several events sell at once on one front).
        arriving = len(self._unranked())
        self._reported_at = now
        for event_id, line in self.lines.items():
            event = self.events.get(event_id)
            if event is None:
                continue
            if prune:
                line.prune(mono)
            if self.metrics is not None:
                self.metrics.waiting.labels(str(event_id)).set(len(line))
            if self._remaining(event_id) == 0:
                self._wake(event_id, None)  # everyone hears "sold out" now
                continue
            started = event.sale_starts_at is None or now >= event.sale_starts_at
            reports[event_id] = LineReport(
                started,
                line.head(),
                line.sketch(),
                self.sequencer.horizon(event_id, oldest),
                self._direct.get(event_id, 0),
                arriving,
            )
        return reports

    def apply(self, reports: dict[int, LineReport], orders: dict[int, LineOrders] | None) -> None:
        """Main's answer to ``reports``: release up to its watermark (no I/O).

        None (main unreachable): nobody is released or sent straight on until it
        answers again; the lines keep their places.
        """
        if orders is None:
            self._budget.clear()
            self.crowded_since = None
            return
        mono = self.monotonic()
        for event_id, sent in reports.items():  # reported now; later passes go next time
            self._direct[event_id] = self._direct.get(event_id, 0) - sent.direct
        for event_id, got in orders.items():
            line = self.lines.get(event_id)
            if line is None:
                continue
            self.orders[event_id] = got
            self._budget[event_id] = self._granted[event_id] = got.direct
            old = self.upto.get(event_id)
            if got.upto is not None and (old is None or got.upto > old):
                self.upto[event_id] = got.upto  # a new main may start lower: keep ours
            if event_id in self.upto:
                released = line.release_upto(self.upto[event_id], mono)
                if released:
                    self.counts["released"] += len(released)
                    self._wake(event_id, released)
                    # Joined since the report, below the watermark: main did not
                    # count them (it releases what the reports show).
                    shown = set(reports[event_id].head) if event_id in reports else set()
                    late = sum(1 for r in released if r not in shown)
                    if late:
                        self._sent_on(event_id, late)
        # Every ticket left is spoken for by those who came before the report: a
        # later arrival can only get one if someone ahead leaves, so its TLS
        # handshake waits (ConnectionGate.trickle) and the CPU goes to those ahead.
        full = self.options.trickle and any(
            self.orders[e].full for e in reports if e in self.orders
        )
        if not full:
            self.crowded_since = None
        elif self.crowded_since is None:
            self.crowded_since = self._reported_at

    async def tick(self) -> None:
        """Report the lines to main and release what it says."""
        reports = self.report()
        if reports:
            orders = await self.uplink(reports)
            self.apply(reports, orders)
            if self.paused != (orders is None):
                self.paused = orders is None
                for event_id in reports:  # the pages say "paused" (or not) at once
                    self._wake(event_id, None)
        self.changes.notify()

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
