"""One release order for every front's waiting room, decided by main. No I/O.

Each front numbers its arrivals with ranks that are comparable across the cluster
(``front/waitroom.py``: wall-clock microseconds, or leased blocks) and reports its
lines every waiting-room tick (``wire.LineReport``: the lowest waiting ranks, the
line's shape, visitors sent straight on). Main measures the grant rate from its own
ledger (:class:`ReleaseRate`), so it knows how many visitors the shards can take
now, and answers each report with the same *watermark* for every front
(``wire.LineOrders.upto``): the rank of the n-th lowest waiter across all lines.
Every front releases its waiters up to it, so the fronts' lines move as one line.

The watermark never passes a front's *horizon* (the rank its next arrival would
get, in each report), so a waiter a front has not reported yet is never skipped:
the fronts release in exact rank order. Main never releases before every front
says the sale has started, so a pre-queue's shuffled ranks go in one order too.

Tolerance: ranks order arrivals as the fronts' clocks saw them, so two arrivals on
different fronts go in the wrong order only when they are closer than the clock
skew between the fronts' hosts plus the difference in how long each front took
to read the request (its TLS handshake backlog). A front applies a watermark when
main answers its own report, so the fronts release the same ranks up to one tick
apart in time; main never lets more visitors through than tickets are left, so
that cannot decide who gets one.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..ledger.records import Event
from ..wire import LineOrders, LineReport
from .stock import StockView

# The release window (ReleaseRate): visitors in flight to the shards
MIN_WINDOW = 64
TARGET_DELAY = 1.0  # seconds of the measured grant rate
PATIENCE = 5.0  # seconds: at least this long a released visitor is taken to be on its way
TRANSIT_MEMORY = 10.0  # seconds: the transit estimate is the least latency seen that long
REPORT_STALE = 3.0  # seconds: a front silent that long has no line here any more


class _Log:
    """Counts in time order (monotonic seconds) with their running total, trimmed from
    the old end: every line report reads totals and rates, and a log holds up to
    ``flight_window`` of entries (walking them was most of a report's CPU in main)."""

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, t: float, n: int) -> None:
        self.entries.append((t, n))
        self.total += n

    def trim(self, before: float) -> None:
        """Drop the entries older than ``before``."""
        entries = self.entries
        while entries and entries[0][0] < before:
            self.total -= entries.popleft()[1]

    def rate(self, window: float, now: float | None) -> float:
        """Counts per second over the last ``window`` seconds before ``now`` (over the
        log's span if shorter, at least 1 s); the log holds that window (trimmed)."""
        if not self.entries:
            return 0.0
        end = self.entries[-1][0] if now is None else now
        self.trim(end - window)
        if not self.entries:
            return 0.0
        span = max(1.0, min(window, self.entries[-1][0] - self.entries[0][0]))
        return self.total / span


class _Tally:
    """One kind of count (releases, grants) in both windows it is read over: the
    flight window (in flight, patience) and the rate window (rates)."""

    def __init__(self) -> None:
        self.flight, self.recent = _Log(), _Log()

    def add(self, t: float, n: int) -> None:
        self.flight.add(t, n)
        self.recent.add(t, n)


@dataclass
class ReleaseRate:
    """How many visitors may go to the shards now, measured from main's grants.

    A window of visitors *in flight* (let through in the last ``flight_window``
    seconds, minus tickets granted in that time), never more than the tickets
    left. By Little's law the shards' queues stay about ``target_delay`` long when
    the window is the grant rate times (``target_delay`` + the *transit*: how long a
    released visitor takes to reach a shard at all: its page, the redirect, the TLS
    handshake). The transit is estimated as the least latency (in flight / grant
    rate) seen over ``TRANSIT_MEMORY`` while the line was held back: a window of
    ``target_delay`` alone starves the shards whenever the transit is longer
    (measured: 64 in flight, 33 grants/s, shards 90 % idle under a crowd).
    ``cap``: at most that many per second (an event's configured
    ``release_rate``). Times are monotonic seconds.
    """

    cap: float | None = None
    min_window: int = MIN_WINDOW
    target_delay: float = TARGET_DELAY
    # A released visitor not granted within flight_window (it never came) stops
    # counting; well above the latency of a loaded machine (5 s was not: released
    # visitors still on their way stopped counting and more were let go than tickets).
    flight_window: float = 15.0
    rate_window: float = 5.0  # the grant and release rates are measured over this
    _releases: _Tally = field(default_factory=_Tally)
    _grants: _Tally = field(default_factory=_Tally)
    _remaining: int | None = None
    _budget: float = 0.0  # the cap's token bucket
    _last: float | None = None
    # (when, seconds), each sample smaller than those before it: the least is first
    # (a sample with a smaller one after it can never be the least again).
    _latency: deque[tuple[float, float]] = field(default_factory=deque)

    def observe(self, remaining: int, now: float) -> None:
        """Main's count of unsold tickets now: the drop since last time was granted."""
        if self._remaining is not None and remaining < self._remaining:
            self._grants.add(now, self._remaining - remaining)
        self._remaining = remaining
        if self.cap is not None and self._last is not None:
            self._budget = min(max(1.0, self.cap), self._budget + (now - self._last) * self.cap)
        self._last = now
        self._expire(now)

    def allowance(self, now: float) -> int:
        """Visitors that may go now (0 while the window is full or the cap spent).

        Never more on their way than the tickets left: at the end of a sale a visitor
        let through should find a ticket, not lose it to a later arrival on a luckier
        shard. A visitor released longer ago than ``patience`` and still not granted
        is taken for gone there (it still counts in the window for
        ``flight_window``): visitors who never come for their turn, as in a quiet
        sale or when a waiter gave up, must not hold the last tickets for long.
        """
        self._expire(now)
        in_flight = self.in_flight()
        window = max(
            self.min_window, round(self.grant_rate() * (self.target_delay + self.transit()))
        )
        room = max(0, window - in_flight)
        if self._remaining is not None:
            on_the_way = min(in_flight, self._released_since(now - self.patience()))
            room = min(room, max(0, self._remaining - on_the_way))
        if self.cap is not None:
            room = min(room, int(self._budget))
        return room

    def in_flight(self) -> int:
        return max(0, self._releases.flight.total - self._grants.flight.total)

    def patience(self) -> float:
        """How long a released visitor is expected on its way at most (then: gone)."""
        return max(PATIENCE, 2 * (self.target_delay + self.transit()))

    def _released_since(self, since: float) -> int:
        total = 0
        for t, n in reversed(self._releases.flight.entries):  # the newest first: stop at since
            if t < since:
                break
            total += n
        return total

    def held_back(self, now: float) -> None:
        """Visitors wait because the window is full: a sample of the latency."""
        rate, in_flight = self.grant_rate(), self.in_flight()
        if rate > 0 and in_flight >= self.min_window // 2:
            latency = in_flight / rate
            while self._latency and self._latency[-1][1] >= latency:
                self._latency.pop()
            self._latency.append((now, latency))

    def transit(self) -> float:
        """Seconds from release to a shard, as the least latency lately (0: not known)."""
        return self._latency[0][1] if self._latency else 0.0

    def released(self, n: int, now: float) -> None:
        if n > 0:
            self._releases.add(now, n)
            self._budget = max(0.0, self._budget - n)

    def grant_rate(self) -> float:
        return self._grants.recent.rate(self.rate_window, self._last)

    def release_rate(self) -> float:
        """Visitors let through per second, lately: the waiting page's ETA divides by it."""
        return self._releases.recent.rate(self.rate_window, self._last)

    def expected_rate(self) -> float:
        """The rate an ETA assumes: measured, else the cap, else the window per delay."""
        measured = self.release_rate()
        if measured > 0:
            return measured if self.cap is None else min(measured, self.cap)
        fallback = self.min_window / self.target_delay
        return fallback if self.cap is None else min(fallback, self.cap)

    def _expire(self, now: float) -> None:
        for tally in (self._releases, self._grants):
            tally.flight.trim(now - self.flight_window)
        while self._latency and now - self._latency[0][0] > TRANSIT_MEMORY:
            self._latency.popleft()


def watermark(reports: Iterable[LineReport], above: int | None, n: int) -> tuple[int | None, int]:
    """The rank of the ``n``-th lowest waiter above ``above`` across the reports'
    heads, and how many waiters that releases; ``(None, 0)`` when nobody waits.

    It stops short of what a front has not reported: past a head cut short, and at
    a front's horizon (an arrival there since its report is ranked at or above it),
    so a later report can never show a waiter below a watermark already given.
    """
    reports = list(reports)
    bounds = [r.head[-1] for r in reports if r.cut and r.head]
    bounds += [r.horizon - 1 for r in reports]
    bound = min(bounds, default=None)
    heads = [[rank for rank in r.head if above is None or rank > above] for r in reports]
    upto, count = None, 0
    for rank in itertools.islice(heapq.merge(*heads), n):
        if bound is not None and rank > bound:
            break
        upto, count = rank, count + 1
    return upto, count


@dataclass
class _Front:
    at: float  # when its last report came (monotonic)
    report: LineReport


@dataclass
class _EventLine:
    rate: ReleaseRate
    upto: int | None = None
    fronts: dict[str, _Front] = field(default_factory=dict)


class ReleaseCoordinator:
    """Every front's lines, per event, and the one release order main gives them.

    ``report`` takes one front's lines and answers its orders (plain code: the
    front link's handler, or the embedded front's tick in main's process, call it).
    ``counts``: visitors sent straight on and released, cluster-wide (the bench).
    """

    def __init__(self, *, min_window: int = MIN_WINDOW, target_delay: float = TARGET_DELAY) -> None:
        self.min_window, self.target_delay = min_window, target_delay
        self.events: dict[int, _EventLine] = {}
        self.counts = {"direct": 0, "released": 0}

    def report(
        self, front: str, event: Event, line: LineReport, remaining: int, now: float
    ) -> LineOrders:
        """Take ``front``'s line of ``event`` (``remaining`` tickets unsold, ``now``
        monotonic) and decide: the watermark moves as far as the shards have room."""
        state = self.events.get(event.id)
        if state is None:
            rate = ReleaseRate(min_window=self.min_window, target_delay=self.target_delay)
            state = self.events[event.id] = _EventLine(rate)
        rate = state.rate
        rate.cap = event.release_rate
        rate.observe(remaining, now)
        rate.released(line.direct, now)
        self.counts["direct"] += line.direct
        state.fronts[front] = _Front(now, line)
        fresh = {name: f.report for name, f in state.fronts.items() if now - f.at <= REPORT_STALE}
        for name in [n for n in state.fronts if n not in fresh]:
            del state.fronts[name]
        started = all(r.started for r in fresh.values())
        if started and remaining > 0:
            n = rate.allowance(now)
            if n > 0:
                upto, count = watermark(fresh.values(), state.upto, n)
                if upto is not None:
                    state.upto = upto
                    rate.released(count, now)
                    self.counts["released"] += count
            if any(self._waiting(r, state.upto) for r in fresh.values()):
                rate.held_back(now)
        direct = 0
        if started and not any(self._waiting(r, state.upto) for r in fresh.values()):
            # Nobody waits anywhere: a share of the room for visitors at an empty line.
            room = rate.allowance(now)
            direct = math.ceil(room / len(fresh)) if room > 0 else 0
        # Those still handshaking count too: they came before anyone who comes now.
        waiting = sum(r.sketch.waiting + r.arriving for r in fresh.values())
        return LineOrders(
            upto=state.upto,
            direct=direct,
            rate=round(rate.expected_rate(), 2),
            others=tuple(r.sketch for name, r in fresh.items() if name != front),
            full=0 < remaining <= waiting + rate.in_flight(),
        )

    def forget(self, front: str) -> None:
        """``front`` is gone (its link closed): its lines hold nobody up any more."""
        for state in self.events.values():
            state.fronts.pop(front, None)

    @staticmethod
    def _waiting(report: LineReport, upto: int | None) -> bool:
        """Someone in this line is still waiting after the watermark ``upto``."""
        if report.sketch.waiting == 0:
            return False
        if upto is None or report.cut or not report.head:
            return True
        return report.head[-1] > upto


class _Main(Protocol):
    """What :func:`line_orders` needs of :class:`~ticketing.main.server.MainServer`."""

    lines: ReleaseCoordinator

    async def event(self, event_id: int) -> Event | None: ...
    def stock_view(self, event_id: int) -> StockView: ...


async def line_orders(
    main: _Main, front: str, reports: dict[int, LineReport]
) -> dict[int, LineOrders]:
    """Main's orders for ``front``'s lines (the embedded front's uplink, and the
    front link's ``FromFront.LINE`` handler); unknown events are left out."""
    now = time.monotonic()
    out: dict[int, LineOrders] = {}
    for event_id, line in reports.items():
        event = await main.event(event_id)
        if event is not None:
            remaining = main.stock_view(event_id).remaining
            out[event_id] = main.lines.report(front, event, line, remaining, now)
    return out
