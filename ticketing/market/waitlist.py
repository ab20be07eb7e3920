"""The waiting list of a sold-out event: join, see your place, leave."""

from __future__ import annotations

from typing import Any

import aiosqlite

from .base import Effects, MarketBase, Notice, fetch
from .errors import Conflict, NotFound
from .ownership import Principal


class WaitlistMixin(MarketBase):
    """Entries wait in join order; :mod:`.expiry` offers returned tickets to the head."""

    async def _available(self, db: aiosqlite.Connection, event_id: int) -> int:
        rows = await fetch(
            db,
            "SELECT count(*) FROM tickets WHERE event_id = ? AND state IN ('unassigned', 'pool')",
            (event_id,),
        )
        return int(rows[0][0])

    async def _event_row(self, event_id: int) -> dict[str, Any]:
        event = await self.ledger.event(event_id)
        if event is None:
            raise NotFound(f"no event {event_id}")
        return event.public()

    async def _has_ticket(self, db: aiosqlite.Connection, event_id: int, p: Principal) -> bool:
        """An active order or a held ticket for the event, by visitor or by account."""
        rows = await fetch(
            db,
            "SELECT 1 FROM orders WHERE event_id = ? AND status IN ('awaiting_payment', 'complete')"
            " AND (visitor = ? OR account_id = ?)"
            " UNION ALL SELECT 1 FROM owners WHERE event_id = ? AND (visitor = ? OR account_id = ?)",
            (event_id, p.visitor, p.account_id, event_id, p.visitor, p.account_id),
        )
        return bool(rows)

    async def join_waitlist(self, p: Principal, event_id: int) -> dict[str, Any]:
        """Join a sold-out event's waiting list; returns the entry with its position."""
        await self._event_row(event_id)
        async with self.ledger.transaction() as db:
            if await self._available(db, event_id):
                raise Conflict(
                    "tickets for this event are still on sale: get one from the start page"
                )
            if await self._has_ticket(db, event_id, p):
                raise Conflict("you already have a ticket for this event")
            where, args = p.match()
            mine = await fetch(
                db,
                f"SELECT id FROM waitlist WHERE event_id = ? AND status = 'waiting' AND {where}",
                (event_id, *args),
            )
            if mine:
                raise Conflict("you are already on this waiting list")
            await db.execute(
                "INSERT INTO waitlist(event_id, visitor, account_id, status, joined_at)"
                " VALUES (?, ?, ?, 'waiting', ?)",
                (event_id, p.visitor, p.account_id, self.clock()),
            )
        await self._finish(Effects(notices=[Notice("waitlist", {"event_id": event_id})]))
        return await self.waitlist_status(p, event_id)

    async def waitlist_status(self, p: Principal, event_id: int) -> dict[str, Any]:
        """The requester's place: ``position`` (1 = next) or their offer, and the length."""
        await self._event_row(event_id)
        db = self.ledger.db
        where, args = p.match()
        rows = await fetch(
            db,
            f"SELECT * FROM waitlist WHERE event_id = ? AND {where}"
            " AND status IN ('waiting', 'offered') ORDER BY id DESC LIMIT 1",
            (event_id, *args),
        )
        length = (
            await fetch(
                db,
                "SELECT count(*) FROM waitlist WHERE event_id = ? AND status = 'waiting'",
                (event_id,),
            )
        )[0][0]
        out: dict[str, Any] = {"event_id": event_id, "length": length, "status": None}
        if rows:
            entry = dict(rows[0])
            out.update(status=entry["status"], joined_at=entry["joined_at"])
            if entry["status"] == "waiting":
                ahead = await fetch(
                    db,
                    "SELECT count(*) FROM waitlist WHERE event_id = ? AND status = 'waiting'"
                    " AND id <= ?",
                    (event_id, entry["id"]),
                )
                out["position"] = ahead[0][0]
            else:
                out["order_id"] = entry["order_id"]
        return out

    async def leave_waitlist(self, p: Principal, event_id: int) -> dict[str, Any]:
        where, args = p.match()
        async with self.ledger.transaction() as db:
            cur = await db.execute(
                f"UPDATE waitlist SET status = 'left' WHERE event_id = ? AND status = 'waiting'"
                f" AND {where}",
                (event_id, *args),
            )
            if cur.rowcount == 0:
                raise NotFound("you are not on this waiting list")
        await self._finish(Effects(notices=[Notice("waitlist", {"event_id": event_id})]))
        return await self.waitlist_status(p, event_id)
