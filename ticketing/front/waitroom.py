"""The waiting room's rules, without I/O: arrival numbers, the line, its shape.

A flash crowd arrives faster than the shards can serve it. The front gives every
visitor beyond what the shards take an entry in a per-event :class:`Line`,
released strictly in order of rank up to the watermark main sets for the whole
cluster (``main/release.py``). Entries travel in signed queue tickets
(``wire.QueueTicket``), so a place survives a reload and a front restart: a ticket
the line does not know (the front restarted, or the visitor came to another
front) is put back at its rank.

Order across fronts: ranks come from a :class:`Sequencer`. :class:`ClockSequencer`
(the default) numbers arrivals by the front's wall clock in microseconds,
strictly increasing on each front, so fronts agree on arrival order to within
their clock skew (NTP on a LAN: well under 10 ms) with no round trip and nothing
to lose on a restart. :class:`LeasedSequencer` takes blocks of numbers from a
central counter (main's) for hosts whose clocks cannot be trusted; its tolerance
is one block's lifetime. Either plugs in behind the same one-method interface.
A front knows its own line exactly and the others' from their sketches
(``wire.LineSketch``, :func:`ahead_in`), so a shown position counts every front.

Pre-queue: before an event's sale start, entries get a random rank below every
number a sequencer hands out (or their arrival number, in ``arrival`` order), so at
the start they are released in shuffled order, then later arrivals behind them in
arrival order; the draw is signed into the ticket, hence stable across restarts.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..wire import LINE_HEAD, LineSketch

PREQUEUE_SPAN = 1 << 52  # pre-queue ranks are in [-SPAN, 0): ahead of every sequence number
SKETCH_MARKS = 128  # ranks in a line's sketch: other fronts' positions are off by < len/256


class Sequencer(Protocol):
    """Hands out arrival numbers for an event, comparable across the cluster."""

    def next(self, event: int, at: float | None = None) -> int:
        """A new, unique number; ``at``: when the visitor came (unix s), if known."""
        ...

    def horizon(self, event: int, oldest: float | None = None) -> int:
        """No later ``next`` is below this (main releases nothing at or past it);
        ``oldest``: the earliest ``at`` a later ``next`` may still be given."""
        ...


@dataclass
class ClockSequencer:
    """Microseconds of the wall clock when the visitor came (no coordination).

    ``at`` (the connection's arrival at the edge, ``edge.HELLO_GRACE``) orders visitors
    by when they came rather than by when their handshake's turn did, but never below a horizon
    already reported (then the horizon itself): stamps older than ``max_age`` do not
    hold the horizon back, so a socket that says nothing cannot stall the line.
    """

    clock: Callable[[], float] = time.time
    max_age: float = 2.0  # seconds: how far back a stamp may hold the horizon
    _floor: int = 0  # the highest horizon reported: every later number is at least this
    _issued: dict[int, None] = field(default_factory=dict)  # recent numbers (unique)

    def next(self, event: int, at: float | None = None) -> int:
        number = max(self._us(self.clock() if at is None else at), self._floor)
        while number in self._issued:  # two visitors in the same microsecond
            number += 1
        self._issued[number] = None
        if len(self._issued) > 1 << 16:
            del self._issued[next(iter(self._issued))]
        return number

    def horizon(self, event: int, oldest: float | None = None) -> int:
        now = self.clock()
        if oldest is not None:
            now = min(now, max(oldest, now - self.max_age))
        self._floor = max(self._floor, self._us(now))
        return self._floor

    @staticmethod
    def _us(t: float) -> int:
        return int(t * 1_000_000)


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

    def next(self, event: int, at: float | None = None) -> int:
        leased, numbers, used = self._block(event)
        self._blocks[event] = (leased, numbers, used + 1)
        return numbers[used]

    def horizon(self, event: int, oldest: float | None = None) -> int:
        _, numbers, used = self._block(event)
        return numbers[used]

    def _block(self, event: int) -> tuple[float, range, int]:
        """The event's live block, leasing a fresh one when it is used up or too old."""
        now = self.clock()
        got = self._blocks.get(event)
        if got is None or got[2] >= len(got[1]) or now - got[0] > self.block_ttl:
            got = self._blocks[event] = (now, self.lease(event, self.block), 0)
        return got


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

    def release_upto(self, upto: int, now: float) -> list[int]:
        """Let every waiter ranked ``upto`` or lower through (main's watermark)."""
        return self.release(bisect.bisect_right(self._order, upto), now)

    def head(self, n: int = LINE_HEAD) -> tuple[int, ...]:
        """The ``n`` lowest waiting ranks, ascending."""
        return tuple(self._order[:n])

    def sketch(self, marks: int = SKETCH_MARKS) -> LineSketch:
        """The line's shape for other fronts: every ``step``-th rank."""
        step = max(1, math.ceil(len(self._order) / marks))
        return LineSketch(len(self._order), step, tuple(self._order[::step]))

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


def ahead_in(sketch: LineSketch, rank: int) -> int:
    """About how many waiters of the sketched line are ranked below ``rank``.

    Exact while the line is no longer than its marks (``step`` 1); else the middle
    of what the marks allow, off by at most ``step / 2``.
    """
    below = bisect.bisect_left(sketch.marks, rank)  # marks ranked below
    if below == 0:
        return 0
    low = (below - 1) * sketch.step + 1  # that mark and everyone before it
    high = min(below * sketch.step, sketch.waiting)  # everyone before the next mark
    return (low + high) // 2


def eta_seconds(ahead: int, rate: float) -> float:
    """Visitors ahead divided by the release rate (one decimal)."""
    return round(ahead / rate, 1) if rate > 0 else 0.0
