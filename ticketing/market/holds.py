"""Holds that end: expiry and cancellation, where the ticket goes, and the sweeper.

A released ticket goes to the head of its event's waiting list (a new held order
for that entry), else back to main's pool. The sweeper expires every overdue,
unlocked hold in one commit, then sleeps until the next stored deadline (or until
woken by a new hold), so a restarted main expires overdue holds at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ..errors import NotLeader
from ..ledger import LedgerTx, ListingStatus, OrderKind, OrderStatus, TicketState, owner_of
from ..wire import ticket_id
from .context import Effects, MarketContext, Notice, log


class Holds:
    """Closing held orders and handing their tickets on; the sweeper loop."""

    def __init__(
        self,
        ctx: MarketContext,
        *,
        # Timeouts
        pay_timeout: float = 120.0,
        sweep_interval: float = 5.0,
    ) -> None:
        self.ctx = ctx
        self.pay_timeout = pay_timeout
        self.sweep_interval = sweep_interval
        self._wake = asyncio.Event()
        self._next_sweep = float("inf")  # when the sweeper plans to wake up on its own
        ctx.wake = self._wake.set

    async def close(
        self,
        tx: LedgerTx,
        kind: OrderKind,
        order: dict[str, Any],
        status: OrderStatus,
        now: float,
        fx: Effects,
        *,
        ticket_from: TicketState = TicketState.HELD,
    ) -> bool:
        """Expire or cancel an order and put what it held back on sale."""
        if not await tx.set_order_status(kind, order["id"], order["status"], status):
            return False
        if kind is OrderKind.PRIMARY:
            await self.release(tx, order["event_id"], order["serial"], ticket_from, now, fx)
            fx.counts.append(("released", order["event_id"]))
        else:
            await tx.set_listing_status(
                order["listing_id"], ListingStatus.LOCKED, ListingStatus.ACTIVE, now
            )
            fx.notices.append(Notice("listings", {"listing_id": order["listing_id"]}))
        order = dict(order, status=status, version=order["version"] + 1)
        events = await self.ctx.event_names()
        fx.notices.append(
            Notice("order", {"order": self.ctx.order_json(kind, order, events)}, owner_of(order))
        )
        return True

    async def release(
        self,
        tx: LedgerTx,
        event_id: int,
        serial: int,
        src: TicketState,
        now: float,
        fx: Effects,
    ) -> None:
        """A ticket comes back: to the head of the waiting list, else to main's pool."""
        while (entry := await tx.waitlist_head(event_id)) is not None:
            if await tx.has_ticket(event_id, owner_of(entry)):
                await tx.skip_waitlist_entry(entry["id"])
                continue
            order = await tx.insert_offer(
                event_id, serial, owner_of(entry), now, self.ctx.hold_seconds
            )
            if src is not TicketState.HELD:
                await tx.set_ticket_state(event_id, serial, src, TicketState.HELD)
            await tx.mark_offered(entry["id"], order["id"], now)
            events = await self.ctx.event_names()
            fx.notices.append(
                Notice(
                    "offer",
                    {"order": self.ctx.order_json(OrderKind.PRIMARY, order, events)},
                    owner_of(entry),
                )
            )
            fx.notices.append(Notice("waitlist", {"event_id": event_id}))
            fx.wake = True
            log.info(
                "ticket %s offered to waiting list entry %d",
                ticket_id(event_id, serial),
                entry["id"],
            )
            return
        await tx.set_ticket_state(event_id, serial, src, TicketState.UNASSIGNED)

    # -- the sweeper -------------------------------------------------------------------

    def on_sales(self, fresh: list[dict[str, Any]]) -> None:
        """Main recorded new holds: recompute the next deadline if one is due earlier.

        Only then: a sweep per sales batch held the ledger lock for most of a flash sale.
        """
        if min(o["expires_at"] for o in fresh) < self._next_sweep:
            self._wake.set()

    async def sweep(self, now: float | None = None) -> float | None:
        """Expire every overdue, unlocked hold in one commit; returns the next deadline."""
        now = self.ctx.clock() if now is None else now
        fx = Effects()
        expired = 0
        async with self.ctx.ledger.transaction() as tx:
            stale = await tx.abandon_stale_payments(now - self.pay_timeout, now)
            if stale:
                log.warning("%d payment locks abandoned after %.0fs", stale, self.pay_timeout)
            for kind in OrderKind:
                for row in await tx.overdue_orders(kind, now):
                    expired += await self.close(tx, kind, row, OrderStatus.EXPIRED, now, fx)
            due = await tx.next_deadline(self.pay_timeout)
        await self.ctx.finish(fx)
        if expired:
            log.info("expired %d holds", expired)
        return due

    async def run(self) -> None:
        """Sweep on every deadline, for ever (cancel to stop)."""
        while True:
            self._wake.clear()
            self._next_sweep = float("inf")  # a hold made during the sweep: sweep again
            try:
                due = await self.sweep()
            except NotLeader:  # a newer main leads and sweeps from the stored deadlines
                log.info("hold sweeper stopped: %s", "another main leads")
                return
            except Exception:  # keep sweeping: a stopped sweeper would hold tickets forever
                log.exception("sweep failed")
                due = None
            delay = self.sweep_interval
            if due is not None:
                delay = min(delay, due - self.ctx.clock())
            delay = max(delay, 0.005)
            self._next_sweep = self.ctx.clock() + delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
