"""Reading: orders, held tickets and listings as the API answers them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiosqlite

from ..wire import ticket_id
from .base import KINDS, RESALE, MarketBase, OrderKind, fetch
from .errors import Forbidden, NotFound
from .ownership import Principal


class OrderViews(MarketBase):
    """JSON views of orders (both kinds), of the tickets someone holds, of listings."""

    def order_json(
        self, kind: OrderKind, row: dict[str, Any], events: dict[int, dict[str, Any]]
    ) -> dict[str, Any]:
        now = self.clock()
        out = {
            "kind": kind.name,
            "id": row["id"],
            "ticket_id": ticket_id(row["event_id"], row["serial"]),
            "event": events.get(row["event_id"], {"id": row["event_id"]}),
            "price_cents": row["price_cents"],
            "currency": self.currency,
            "status": row["status"],
            "created_at": row["created_at"],
            "expires_at": row["expires_at"],
            "seconds_left": (
                round(max(0.0, row["expires_at"] - now), 1)
                if row["status"] == "awaiting_payment"
                else 0
            ),
            "version": row["version"],
        }
        if kind is RESALE:
            out["listing_id"] = row["listing_id"]
        return out

    async def order(self, kind_name: str, order_id: int, p: Principal) -> dict[str, Any]:
        kind = KINDS[kind_name]
        row = await self._owned(self.ledger.db, kind, order_id, p)
        return self.order_json(kind, row, await self._event_names())

    async def orders_of(self, p: Principal) -> list[dict[str, Any]]:
        """The requester's orders of both kinds, newest first."""
        where, args = p.match()
        events = await self._event_names()
        out = []
        for kind in KINDS.values():
            rows = await fetch(self.ledger.db, f"SELECT * FROM {kind.table} WHERE {where}", args)
            out += [self.order_json(kind, dict(r), events) for r in rows]
        return sorted(out, key=lambda o: -o["created_at"])

    async def tickets_of(self, p: Principal) -> list[dict[str, Any]]:
        """Sold tickets the requester holds now, with their open listing if any."""
        where, args = p.match("o.")
        events = await self._event_names()
        rows = await fetch(
            self.ledger.db,
            "SELECT o.*, l.id AS listing_id FROM owners o LEFT JOIN listings l"
            " ON l.event_id = o.event_id AND l.serial = o.serial"
            f" AND l.status IN ('active', 'locked') WHERE {where}"
            " ORDER BY o.event_id, o.serial",
            args,
        )
        listings = await self._listings_by_id([r["listing_id"] for r in rows if r["listing_id"]])
        return [
            {
                "ticket_id": ticket_id(r["event_id"], r["serial"]),
                "event": events.get(r["event_id"], {"id": r["event_id"]}),
                "order_id": r["order_id"],
                "resale_order_id": r["resale_order_id"],
                "since": r["since"],
                "listing": listings.get(r["listing_id"]) if r["listing_id"] else None,
            }
            for r in rows
        ]

    async def _owned(
        self, db: aiosqlite.Connection, kind: OrderKind, order_id: int, p: Principal
    ) -> dict[str, Any]:
        rows = await fetch(db, f"SELECT * FROM {kind.table} WHERE id = ?", (order_id,))
        if not rows:
            raise NotFound(f"no {'resale ' if kind is RESALE else ''}order {order_id}")
        row = dict(rows[0])
        if not p.owns(row):
            raise Forbidden("this order belongs to someone else")
        return row

    def _listing_json(self, row: dict[str, Any], locked_until: float | None) -> dict[str, Any]:
        return {
            "id": row["id"],
            "ticket_id": ticket_id(row["event_id"], row["serial"]),
            "event_id": row["event_id"],
            "price_cents": row["price_cents"],
            "currency": self.currency,
            "status": row["status"],
            "locked_until": locked_until if row["status"] == "locked" else None,
            "version": row["version"],
            "updated_at": row["updated_at"],
        }

    async def _listings_by_id(
        self, ids: Iterable[int], p: Principal | None = None
    ) -> dict[int, dict[str, Any]]:
        ids = list(ids)
        if not ids:
            return {}
        rows = await fetch(
            self.ledger.db,
            "SELECT l.*, r.expires_at AS locked_until FROM listings l LEFT JOIN resale_orders r"
            " ON r.listing_id = l.id AND r.status = 'awaiting_payment'"
            f" WHERE l.id IN ({','.join('?' * len(ids))})",
            ids,
        )
        return {r["id"]: self._listing_view(dict(r), p) for r in rows}

    def _listing_view(self, row: dict[str, Any], p: Principal | None) -> dict[str, Any]:
        out = self._listing_json(row, row.get("locked_until"))
        if p is not None:
            out["mine"] = p.owns(row)
        return out
