"""First come, first served at one shard: queues, pools and grants, no I/O.

Arrivals wait in one queue per event, ordered by their arrival at the front (the
admission token's ``t``; a visitor sent back and re-admitted keeps its first one). :meth:`Dispenser.allocate` pairs the
oldest waiters with the lowest serials of the pool, synchronously, so no other
coroutine can slip in between reading the pool and changing it. The shard then
journals and reports the batch; :meth:`settle` applies main's answer and tells the
waiters. Nothing here awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..slices import RangeSet
from ..wire import Sale, ticket_id

Message = dict[str, Any]


@dataclass(eq=False)
class Waiter:
    """One browser asking for a ticket; ``future`` resolves to the message it gets."""

    visitor: str
    event: int
    account: int | None = None
    future: asyncio.Future[Message] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    arrived: float = field(default_factory=time.time)  # unix seconds, the front's clock

    @property
    def waiting(self) -> bool:
        return not self.future.done()

    def answer(self, message: Message) -> None:
        if not self.future.done():
            self.future.set_result(message)


@dataclass
class Pending:
    sale: Sale
    epoch: int
    waiter: Waiter | None


def ticket_message(order: dict[str, Any], event: dict[str, Any] | None) -> Message:
    return {
        "type": "ticket",
        "ticket_id": ticket_id(order["event_id"], order["serial"]),
        "order_id": order["id"],
        "event": event or {"id": order["event_id"]},
        "price_cents": order["price_cents"],
        "status": order["status"],
        "hold_expires_at": order["expires_at"],
        "hold_seconds": max(0.0, round(order["expires_at"] - time.time(), 1)),
    }


def sold_out_message(event: dict[str, Any] | None, event_id: int) -> Message:
    return {"type": "sold_out", "event": event or {"id": event_id}}


def retry_message(reason: str) -> Message:
    """Go back to the front for a fresh admission (the page and web client follow it)."""
    return {"type": "retry", "reason": reason}


class Dispenser:
    def __init__(self) -> None:
        self.events: dict[int, dict[str, Any]] = {}
        self.pools: dict[int, RangeSet] = {}
        self.queues: dict[int, deque[Waiter]] = {}
        self.unacked: dict[tuple[int, int], Pending] = {}

    # -- arrivals ------------------------------------------------------------

    def enqueue(self, waiter: Waiter) -> int:
        """Queue a waiter behind every earlier arrival; returns its position (1 = next).

        Usually that is the tail; a visitor re-admitted with an earlier arrival time
        goes ahead of the later arrivals still waiting (not of grants already made).
        """
        q = self.queues.setdefault(waiter.event, deque())
        i = len(q)
        while i > 0 and q[i - 1].arrived > waiter.arrived:
            i -= 1
        q.insert(i, waiter)
        return i + 1

    def queued(self, event: int | None = None) -> int:
        queues = self.queues.values() if event is None else [self.queues.get(event, deque())]
        return sum(1 for q in queues for w in q if w.waiting)

    def remaining(self, event: int) -> int:
        return len(self.pools.get(event, ()))

    # -- allocation ------------------------------------------------------------

    def allocate(self, epoch: int, limit: int) -> tuple[list[Pending], set[int]]:
        """Pair the oldest waiters with the lowest serials.

        Returns the batch (also remembered as unacknowledged) and the events that
        have waiters but an empty pool (they need stock from main).
        """
        batch: list[Pending] = []
        starving: set[int] = set()
        for event, q in self.queues.items():
            pool = self.pools.get(event)
            while q and len(batch) < limit:
                if not q[0].waiting:  # gave up (disconnected) before its grant
                    q.popleft()
                    continue
                serial = pool.take() if pool else None
                if serial is None:
                    starving.add(event)
                    break
                w = q.popleft()
                p = Pending(Sale(event, serial, w.visitor, w.account), epoch, w)
                self.unacked[(event, serial)] = p
                batch.append(p)
        return batch, starving

    def settle(
        self, accepted: Iterable[dict[str, Any]], refused: Iterable[dict[str, Any]]
    ) -> tuple[set[int], list[Sale]]:
        """Apply main's answer to reported grants.

        Accepted: the waiter gets its ticket. Refused: the serial goes back to the
        pool unless the ticket is no longer ours, and the waiter goes back to the
        head of its queue (or gets the ticket it already holds). Returns the events
        whose pools changed and the settled sales (to drop from the journal).
        """
        changed: set[int] = set()
        settled: list[Sale] = []
        for order in accepted:
            p = self.unacked.pop((order["event_id"], order["serial"]), None)
            if p is None:
                continue
            settled.append(p.sale)
            changed.add(p.sale.event)
            if p.waiter:
                p.waiter.answer(ticket_message(order, self.events.get(p.sale.event)))
        requeue: list[Waiter] = []
        for r in refused:
            p = self.unacked.pop((r["event"], r["serial"]), None)
            if p is None:
                continue
            settled.append(p.sale)
            changed.add(p.sale.event)
            if r["reason"] == "visitor_has_ticket":
                # Main refused the visitor, not the ticket: it is still ours to sell.
                self.pools.setdefault(p.sale.event, RangeSet()).put_back(p.sale.serial)
            if p.waiter is None:
                continue
            if r["reason"] == "visitor_has_ticket" and r.get("existing"):
                p.waiter.answer(ticket_message(r["existing"], self.events.get(p.sale.event)))
            else:
                requeue.append(p.waiter)
        for w in reversed(requeue):  # back to the head, in their original order
            self.queues.setdefault(w.event, deque()).appendleft(w)
        return changed, settled

    def send_back(self, message: Message, event: int | None = None) -> int:
        """Answer every waiter (of ``event``, or all) still waiting, queued or with a
        grant in flight, with ``message``; returns how many. Grants in flight stay
        unacknowledged: main settles them on the next sync."""
        n = 0
        for e in [event] if event is not None else list(self.queues):
            n += self.fail_event(e, message)
        for p in self.unacked.values():
            if p.waiter and p.waiter.waiting and (event is None or p.sale.event == event):
                p.waiter.answer(message)
                n += 1
        return n

    def fail_event(self, event: int, message: Message) -> int:
        """Answer every waiter of ``event`` (sold out); returns how many."""
        q = self.queues.pop(event, deque())
        n = 0
        for w in q:
            if w.waiting:
                w.answer(message)
                n += 1
        return n
