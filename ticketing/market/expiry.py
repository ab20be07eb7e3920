"""Holds that end: the sweeper, and where a released ticket goes (waiting list or pool)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiosqlite

from ..wire import ticket_id
from .base import KINDS, PRIMARY, Effects, Notice, OrderKind, fetch, log
from .ownership import owner_of
from .schema import WAITLIST_SHARD
from .views import OrderViews
from .waitlist import WaitlistMixin


class ExpiryMixin(WaitlistMixin, OrderViews):
    """Expire or cancel holds, hand the tickets on, and sweep on every deadline."""

    def _on_sales(self, fresh: list[dict[str, Any]]) -> None:
        # New holds: recompute the next deadline, but only when one is due before the
        # sweeper's planned wake-up (a sweep per sales batch held the ledger lock for
        # most of a flash sale).
        if min(o["expires_at"] for o in fresh) < self._next_sweep:
            self._wake.set()

    async def _close_order(
        self,
        db: aiosqlite.Connection,
        kind: OrderKind,
        order: dict[str, Any],
        status: str,
        now: float,
        fx: Effects,
        *,
        ticket_from: str = "held",
    ) -> bool:
        """Expire or cancel an order and put what it held back on sale."""
        cur = await db.execute(
            f"UPDATE {kind.table} SET status = ?, version = version + 1"
            " WHERE id = ? AND status = ?",
            (status, order["id"], order["status"]),
        )
        if cur.rowcount != 1:
            return False
        if kind is PRIMARY:
            await self._release(db, order["event_id"], order["serial"], ticket_from, now, fx)
        else:
            await db.execute(
                "UPDATE listings SET status = 'active', version = version + 1, updated_at = ?"
                " WHERE id = ? AND status = 'locked'",
                (now, order["listing_id"]),
            )
            fx.notices.append(Notice("listings", {"listing_id": order["listing_id"]}))
        order = dict(order, status=status, version=order["version"] + 1)
        events = await self._names(fx)
        fx.notices.append(
            Notice("order", {"order": self.order_json(kind, order, events)}, owner_of(order))
        )
        return True

    async def _set_ticket(
        self, db: aiosqlite.Connection, key: tuple[int, int], src: str, dst: str
    ) -> None:
        extra = ", shard = NULL, epoch = NULL" if dst == "unassigned" else ""
        cur = await db.execute(
            f"UPDATE tickets SET state = ?{extra} WHERE event_id = ? AND serial = ? AND state = ?",
            (dst, *key, src),
        )
        if cur.rowcount != 1:
            raise ValueError(f"ticket {ticket_id(*key)} is not {src}")

    async def _release(
        self,
        db: aiosqlite.Connection,
        event_id: int,
        serial: int,
        src: str,
        now: float,
        fx: Effects,
    ) -> None:
        """A ticket comes back: to the head of the waiting list, else to main's pool."""
        while True:
            rows = await fetch(
                db,
                "SELECT * FROM waitlist WHERE event_id = ? AND status = 'waiting'"
                " ORDER BY id LIMIT 1",
                (event_id,),
            )
            if not rows:
                break
            entry = dict(rows[0])
            if await self._has_ticket(db, event_id, owner_of(entry)):
                await db.execute(
                    "UPDATE waitlist SET status = 'skipped' WHERE id = ?", (entry["id"],)
                )
                continue
            price = (await fetch(db, "SELECT price_cents FROM events WHERE id = ?", (event_id,)))[
                0
            ][0]
            order = {
                "event_id": event_id,
                "serial": serial,
                "visitor": entry["visitor"],
                "account_id": entry["account_id"],
                "shard": WAITLIST_SHARD,
                "epoch": 0,
                "price_cents": price,
                "status": "awaiting_payment",
                "created_at": now,
                "expires_at": now + self.main.hold_seconds,
                "version": 1,
            }
            cur = await db.execute(
                "INSERT INTO orders(event_id, serial, visitor, account_id, shard, epoch,"
                " price_cents, status, created_at, expires_at, version) VALUES"
                " (:event_id, :serial, :visitor, :account_id, :shard, :epoch, :price_cents,"
                " :status, :created_at, :expires_at, :version)",
                order,
            )
            order["id"] = cur.lastrowid
            if src != "held":
                await self._set_ticket(db, (event_id, serial), src, "held")
            await db.execute(
                "UPDATE waitlist SET status = 'offered', order_id = ?, offered_at = ? WHERE id = ?",
                (order["id"], now, entry["id"]),
            )
            events = await self._names(fx)
            fx.notices.append(
                Notice("offer", {"order": self.order_json(PRIMARY, order, events)}, owner_of(entry))
            )
            fx.notices.append(Notice("waitlist", {"event_id": event_id}))
            fx.wake = True
            log.info(
                "ticket %s offered to waiting list entry %d",
                ticket_id(event_id, serial),
                entry["id"],
            )
            return
        await self._set_ticket(db, (event_id, serial), src, "unassigned")
        fx.restock = True

    async def sweep(self, now: float | None = None) -> float | None:
        """Expire every overdue, unlocked hold in one commit; returns the next deadline."""
        now = self.clock() if now is None else now
        fx = Effects()
        async with self.ledger.transaction() as db:
            stale = await db.execute(
                "UPDATE payments SET state = 'failed', finished_at = ?,"
                " message = 'abandoned: no answer from the payment provider in time'"
                " WHERE state = 'pending' AND started_at <= ?",
                (now, now - self.pay_timeout),
            )
            if stale.rowcount:
                log.warning(
                    "%d payment locks abandoned after %.0fs", stale.rowcount, self.pay_timeout
                )
            for kind in KINDS.values():
                for row in await fetch(
                    db,
                    f"SELECT * FROM {kind.table} o WHERE status = 'awaiting_payment'"
                    f" AND expires_at <= ? AND NOT EXISTS ({self._lock_sql(kind)})",
                    (now,),
                ):
                    await self._close_order(db, kind, dict(row), "expired", now, fx)
            due = await self._next_due(db)
        await self._finish(fx)
        n = sum(1 for x in fx.notices if x.type == "order")
        if n:
            log.info("expired %d holds", n)
        return due

    @staticmethod
    def _lock_sql(kind: OrderKind) -> str:
        return (
            "SELECT 1 FROM payments p WHERE p.state = 'pending'"
            f" AND p.kind = '{kind.name}' AND p.order_id = o.id"
        )

    async def _next_due(self, db: aiosqlite.Connection) -> float | None:
        dues: list[float] = []
        for kind in KINDS.values():
            rows = await fetch(
                db,
                f"SELECT MIN(expires_at) FROM {kind.table} o WHERE status = 'awaiting_payment'"
                f" AND NOT EXISTS ({self._lock_sql(kind)})",
            )
            if rows[0][0] is not None:
                dues.append(float(rows[0][0]))
        rows = await fetch(db, "SELECT MIN(started_at) FROM payments WHERE state = 'pending'")
        if rows[0][0] is not None:
            dues.append(float(rows[0][0]) + self.pay_timeout)
        return min(dues) if dues else None

    async def _sweep_loop(self) -> None:
        while True:
            self._wake.clear()
            self._next_sweep = float("inf")  # a hold made during the sweep: sweep again
            try:
                due = await self.sweep()
            except Exception:  # keep sweeping: a stopped sweeper would hold tickets forever
                log.exception("sweep failed")
                due = None
            delay = self.sweep_interval
            if due is not None:
                delay = min(delay, due - self.clock())
            delay = max(delay, 0.005)
            self._next_sweep = self.clock() + delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
