"""Which answer the front gives a visitor, and the order of those told to wait: no I/O.

The rule (issue 10): "sold out" only when no ticket is unassigned, in a live shard's
pool, or stranded on an unreachable shard that is not fenced yet. While tickets are
out of reach the visitor is told to wait and comes back by itself; the
:class:`WaitingRoom` then keeps the order they first arrived in: a visitor is let
through only while the stock within reach covers everyone still waiting ahead of
it, so a later arrival cannot take the last tickets from an earlier one just by
retrying at a luckier moment, and while stock is plentiful nobody is held up.

Places are kept without trusting the client: the arrival time travels in a *place*
token the front signs (``wire.PLACE``, claim ``t``). A visitor sent back by a shard
that lost main, or coming back from "please wait", presents it; the front checks
its own signature and that it belongs to this visitor's cookie, and the admission
token it then signs carries the same ``t``, which the shard's queue is ordered by.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..main.stock import StockView

DEFAULT_RETRY_AFTER = 1.0  # seconds between a waiting page's retries


class Answer(enum.Enum):
    REDIRECT = "redirect"  # 302 to a shard with an admission token
    WAIT = "wait"  # tickets remain but not for this visitor right now: retry
    UNAVAILABLE = "unavailable"  # no shard online at all: 503 + Retry-After
    SOLD_OUT = "sold_out"


def choose_answer(view: StockView, *, waiting_ahead: int = 0) -> Answer:
    """The answer for one visitor, from where the stock is and who waits ahead of it.

    ``waiting_ahead``: visitors who arrived before this one and still wait for a
    turn. It goes now only if the stock within reach covers them all (first come,
    first served; no one-at-a-time trickle when there is plenty).
    """
    if view.remaining == 0:
        return Answer.SOLD_OUT
    if view.online_shards == 0:
        return Answer.UNAVAILABLE
    if view.routable and waiting_ahead < view.in_live_pools + view.unassigned:
        return Answer.REDIRECT
    return Answer.WAIT  # stranded stock, or the earlier waiters need what is left


@dataclass
class _Entry:
    arrived: float
    seen: float


@dataclass
class WaitingRoom:
    """The visitors told "please wait", by place token nonce, oldest arrival first.

    A waiter that has not come back for ``stale_after`` seconds has left (closed the
    tab) and no longer holds anyone up. Times: ``arrived`` is the place token's
    arrival time, ``now`` any one clock; both are seconds.
    """

    stale_after: float = 4 * DEFAULT_RETRY_AFTER
    max_waiters: int = 1_000_000  # a bound on memory; beyond it nobody is gated
    _waiting: dict[str, _Entry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self, nonce: str, arrived: float, now: float) -> None:
        """``nonce`` was told to wait (again) at ``now``."""
        entry = self._waiting.get(nonce)
        if entry is not None:
            entry.seen = now
        elif len(self._waiting) < self.max_waiters:
            self._waiting[nonce] = _Entry(arrived, now)

    def leave(self, nonce: str) -> None:
        """``nonce`` was let through (or is no longer waiting)."""
        self._waiting.pop(nonce, None)

    def ahead(self, nonce: str, arrived: float, now: float) -> int:
        """How many who arrived before ``arrived`` are still waiting (not ``nonce``)."""
        self._prune(now)
        return sum(1 for n, e in self._waiting.items() if e.arrived < arrived and n != nonce)

    def _prune(self, now: float) -> None:
        stale = [n for n, e in self._waiting.items() if now - e.seen > self.stale_after]
        for n in stale:
            del self._waiting[n]
