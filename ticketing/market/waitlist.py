"""The waiting list of a sold-out event: join, see your place, leave.

Entries wait in join order; :class:`~.holds.Holds` offers returned tickets to the head.
"""

from __future__ import annotations

from typing import Any

from ..ledger import Principal, WaitlistStatus
from .context import Effects, MarketContext, Notice
from .errors import Conflict, NotFound, Unauthorized


def waitlist_changed(event_id: int) -> Effects:
    return Effects(notices=[Notice("waitlist", {"event_id": event_id})])


class Waitlist:
    def __init__(self, ctx: MarketContext) -> None:
        self.ctx = ctx

    async def _check_event(self, event_id: int) -> None:
        if await self.ctx.ledger.event(event_id) is None:
            raise NotFound(f"no event {event_id}")

    async def join(self, p: Principal, event_id: int) -> None:
        """Join a sold-out event's waiting list (signed in: an offer is a held ticket)."""
        if p.account_id is None:
            raise Unauthorized("sign in to join the waiting list")
        await self._check_event(event_id)
        async with self.ctx.ledger.transaction() as tx:
            if await tx.available(event_id):
                raise Conflict(
                    "tickets for this event are still on sale: get one from the start page"
                )
            if await tx.has_ticket(event_id, p):
                raise Conflict("you already have a ticket for this event")
            entry = await tx.waitlist_entry(event_id, p)
            if entry is not None and entry["status"] == WaitlistStatus.WAITING:
                raise Conflict("you are already on this waiting list")
            await tx.join_waitlist(event_id, p, self.ctx.clock())
        await self.ctx.finish(waitlist_changed(event_id))

    async def status(self, p: Principal, event_id: int) -> dict[str, Any]:
        """The requester's place: ``position`` (1 = next) or their offer, and the length."""
        await self._check_event(event_id)
        tx = self.ctx.ledger.reader()
        waiting = await tx.waiting_by_event()
        out: dict[str, Any] = {
            "event_id": event_id,
            "length": waiting.get(event_id, 0),
            "status": None,
        }
        entry = await tx.waitlist_entry(event_id, p)
        if entry is not None:
            out.update(status=entry["status"], joined_at=entry["joined_at"])
            if "position" in entry:
                out["position"] = entry["position"]
            else:
                out["order_id"] = entry["order_id"]
        return out

    async def leave(self, p: Principal, event_id: int) -> None:
        async with self.ctx.ledger.transaction() as tx:
            if not await tx.leave_waitlist(event_id, p):
                raise NotFound("you are not on this waiting list")
        await self.ctx.finish(waitlist_changed(event_id))
