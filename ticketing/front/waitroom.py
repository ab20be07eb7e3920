"""The waiting room's rules, without I/O: arrival numbers, the line, the release rate.

A flash crowd arrives faster than the shards can serve it. The front lets visitors
through at the rate the shards take them (:class:`ReleaseRate`) and gives everyone
beyond that an entry in a per-event :class:`Line`, released strictly in order of
rank. Entries travel in signed queue tickets (``wire.QueueTicket``), so a place
survives a reload and a front restart: a ticket the line does not know (the front
restarted) is put back at its rank.

Order across fronts (issue 11 makes fronts separate processes): ranks come from a
:class:`Sequencer`. :class:`ClockSequencer` (the default) numbers arrivals by the
front's wall clock in microseconds, strictly increasing on each front, so fronts
agree on arrival order to within their clock skew (NTP on a LAN: well under 10 ms)
with no round trip and nothing to lose on a restart. :class:`LeasedSequencer`
takes blocks of numbers from a central counter (main's) for hosts whose clocks
cannot be trusted; its tolerance is one block's lifetime. Either plugs in behind
the same one-method interface.

Pre-queue: before an event's sale start, entries get a random rank below every
number a sequencer hands out (or their arrival number, in ``arrival`` order), so at
the start they are released in shuffled order, then later arrivals behind them in
arrival order; the draw is signed into the ticket, hence stable across restarts.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

PREQUEUE_SPAN = 1 << 52  # pre-queue ranks are in [-SPAN, 0): ahead of every sequence number


class Sequencer(Protocol):
    """Hands out arrival numbers for an event, increasing across the cluster."""

    def next(self, event: int) -> int: ...


@dataclass
class ClockSequencer:
    """Microseconds of the wall clock, strictly increasing per front (no coordination)."""

    clock: Callable[[], float] = time.time
    _last: int = 0

    def next(self, event: int) -> int:
        self._last = max(self._last + 1, int(self.clock() * 1_000_000))
        return self._last


@dataclass
class LeasedSequencer:
    """Numbers from blocks leased from a central counter (``lease(event, n)``).

    A block is used for at most ``block_ttl`` seconds, then dropped (gaps are
    harmless): two fronts' arrivals are in order unless they are closer in time
    than that. ``lease`` is main's counter in-process; a separate front's link
    prefetches blocks behind the same call.
    """

    lease: Callable[[int, int], range]
    block: int = 256
    block_ttl: float = 0.25
    clock: Callable[[], float] = time.monotonic
    _blocks: dict[int, tuple[float, range, int]] = field(default_factory=dict)

    def next(self, event: int) -> int:
        now = self.clock()
        got = self._blocks.get(event)
        if got is None or got[2] >= len(got[1]) or now - got[0] > self.block_ttl:
            got = (now, self.lease(event, self.block), 0)
        at, numbers, used = got
        self._blocks[event] = (at, numbers, used + 1)
        return numbers[used]


def prequeue_rank(order: str, seq: int, rng: random.Random | None = None) -> int:
    """The rank of an entry made before the sale start (``random`` or ``arrival``)."""
    if order == "arrival":
        return seq - PREQUEUE_SPAN * 2  # below every random draw too, in arrival order
    return -(rng or random).randrange(1, PREQUEUE_SPAN)


@dataclass
class _Waiter:
    issued: float  # unix s of the entry: the admission's arrival claim once released
    address: str
    seen: float  # last poll (monotonic)


@dataclass
class Line:
    """One event's waiting visitors by rank, and those released recently.

    ``stale_after``: a waiter that has not polled for that long has left (it no
    longer holds anyone up). ``keep_released``: how long a released ticket stays a
    pass (a reload after release still goes through).
    """

    stale_after: float = 30.0
    keep_released: float = 300.0
    _order: list[int] = field(default_factory=list)  # waiting ranks, ascending
    _waiters: dict[int, _Waiter] = field(default_factory=dict)
    _released: dict[int, float] = field(default_factory=dict)  # rank -> when (monotonic)
    _per_address: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._order)

    def entries_from(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def join(self, rank: int, issued: float, address: str, now: float) -> None:
        """Put ``rank`` in line (again, after a front restart); a known one is only seen."""
        if rank in self._released:
            return
        waiter = self._waiters.get(rank)
        if waiter is not None:
            waiter.seen = now
            return
        self._waiters[rank] = _Waiter(issued, address, now)
        self._per_address[address] = self._per_address.get(address, 0) + 1
        if not self._order or rank > self._order[-1]:
            self._order.append(rank)  # the usual case: the newest arrival
        else:
            bisect.insort(self._order, rank)

    def released(self, rank: int) -> bool:
        return rank in self._released

    def waiting(self, rank: int) -> bool:
        return rank in self._waiters

    def position(self, rank: int) -> int:
        """1 for the head of the line; counts only waiters ahead of ``rank``."""
        return bisect.bisect_left(self._order, rank) + 1

    def seen(self, rank: int, now: float) -> None:
        waiter = self._waiters.get(rank)
        if waiter is not None:
            waiter.seen = now

    def release(self, n: int, now: float) -> list[int]:
        """Let the first ``n`` waiters through; returns their ranks."""
        out = self._order[:n]
        del self._order[:n]
        for rank in out:
            self._forget(rank)
            self._released[rank] = now
        return out

    def prune(self, now: float) -> list[int]:
        """Drop waiters gone silent and old releases; returns the dropped waiters."""
        gone = [r for r, w in self._waiters.items() if now - w.seen > self.stale_after]
        if gone:
            dropped = set(gone)
            self._order = [r for r in self._order if r not in dropped]
            for rank in gone:
                self._forget(rank)
        old = [r for r, t in self._released.items() if now - t > self.keep_released]
        for rank in old:
            del self._released[rank]
        return gone

    def _forget(self, rank: int) -> None:
        waiter = self._waiters.pop(rank)
        left = self._per_address[waiter.address] - 1
        if left:
            self._per_address[waiter.address] = left
        else:
            del self._per_address[waiter.address]


@dataclass
class ReleaseRate:
    """How many visitors may go to the shards now, measured from main's grants.

    A window of visitors *in flight* (let through in the last ``flight_window``
    seconds, minus tickets granted in that time): it is ``target_delay`` seconds of
    the measured grant rate, at least ``min_window``, so the shards' queues stay
    about ``target_delay`` long, and never more than the tickets left. ``cap``: at
    most that many per second (an event's configured ``release_rate``). Times are
    monotonic seconds.
    """

    cap: float | None = None
    min_window: int = 64
    target_delay: float = 1.0
    flight_window: float = 5.0  # a released visitor who never came stops counting then
    _releases: deque[tuple[float, int]] = field(default_factory=deque)
    _grants: deque[tuple[float, int]] = field(default_factory=deque)
    _remaining: int | None = None
    _budget: float = 0.0  # the cap's token bucket
    _last: float | None = None

    def observe(self, remaining: int, now: float) -> None:
        """Main's count of unsold tickets now: the drop since last time was granted."""
        if self._remaining is not None and remaining < self._remaining:
            self._grants.append((now, self._remaining - remaining))
        self._remaining = remaining
        if self.cap is not None and self._last is not None:
            self._budget = min(max(1.0, self.cap), self._budget + (now - self._last) * self.cap)
        self._last = now
        self._expire(now)

    def allowance(self, now: float, *, slack: int = 0) -> int:
        """Visitors that may go now (0 while the window is full or the cap spent).

        Never more in flight than the tickets left (plus ``slack``): at the end of a
        sale a visitor let through should find a ticket, not lose it to a later
        arrival on a luckier shard. Releases from the line use no slack; a visitor
        arriving at an empty line gets ``min_window`` of it (a few admissions that
        are never used, as in a quiet sale, must not start a line).
        """
        self._expire(now)
        in_flight = max(0, _total(self._releases) - _total(self._grants))
        window = max(self.min_window, round(self.grant_rate() * self.target_delay))
        room = max(0, window - in_flight)
        if self._remaining is not None:
            room = min(room, max(0, self._remaining + slack - in_flight))
        if self.cap is not None:
            room = min(room, int(self._budget))
        return room

    def released(self, n: int, now: float) -> None:
        if n > 0:
            self._releases.append((now, n))
            self._budget = max(0.0, self._budget - n)

    def grant_rate(self) -> float:
        return _rate(self._grants, self.flight_window)

    def release_rate(self) -> float:
        """Visitors let through per second, lately: the waiting page's ETA divides by it."""
        return _rate(self._releases, self.flight_window)

    def expected_rate(self) -> float:
        """The rate an ETA assumes: measured, else the cap, else the window per delay."""
        measured = self.release_rate()
        if measured > 0:
            return measured if self.cap is None else min(measured, self.cap)
        fallback = self.min_window / self.target_delay
        return fallback if self.cap is None else min(fallback, self.cap)

    def _expire(self, now: float) -> None:
        for log in (self._releases, self._grants):
            while log and now - log[0][0] > self.flight_window:
                log.popleft()


def _total(log: deque[tuple[float, int]]) -> int:
    return sum(n for _, n in log)


def _rate(log: deque[tuple[float, int]], window: float) -> float:
    """Events per second over the log's span (at least 1 s, at most ``window``)."""
    if not log:
        return 0.0
    span = max(1.0, min(window, log[-1][0] - log[0][0]))
    return _total(log) / span


def eta_seconds(ahead: int, rate: float) -> float:
    """Visitors ahead divided by the release rate (one decimal)."""
    return round(ahead / rate, 1) if rate > 0 else 0.0
