"""Resale: listing a held ticket, changing or withdrawing it, and buying one."""

from __future__ import annotations

from typing import Any

import aiosqlite

from ..wire import ticket_id
from .base import RESALE, Effects, Notice, check_price, check_version, fetch, parse_ticket_id
from .errors import Conflict, Forbidden, NotFound, Unauthorized
from .ownership import Principal
from .views import OrderViews


class ResaleMixin(OrderViews):
    """Listings go ``active`` -> ``locked`` (a buyer's checkout) -> ``sold``, or ``withdrawn``."""

    async def listings(
        self,
        *,
        event_id: int | None = None,
        min_price: int | None = None,
        max_price: int | None = None,
        seller: Principal | None = None,
        viewer: Principal | None = None,
    ) -> list[dict[str, Any]]:
        """Open listings (cheapest first), or all of ``seller``'s listings."""
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if seller is not None:
            cond, cargs = seller.match("l.")
            where.append(cond)
            args += cargs
        else:
            where.append("l.status IN ('active', 'locked')")
        for cond, value in (
            ("l.event_id = ?", event_id),
            ("l.price_cents >= ?", min_price),
            ("l.price_cents <= ?", max_price),
        ):
            if value is not None:
                where.append(cond)
                args.append(value)
        rows = await fetch(
            self.ledger.db,
            "SELECT l.*, r.expires_at AS locked_until FROM listings l LEFT JOIN resale_orders r"
            " ON r.listing_id = l.id AND r.status = 'awaiting_payment'"
            f" WHERE {' AND '.join(where)} ORDER BY l.price_cents, l.id LIMIT 500",
            args,
        )
        return [self._listing_view(dict(r), viewer) for r in rows]

    async def listing(self, listing_id: int, viewer: Principal | None = None) -> dict[str, Any]:
        found = await self._listings_by_id([listing_id], viewer)
        if listing_id not in found:
            raise NotFound(f"no listing {listing_id}")
        return found[listing_id]

    async def _listing_row(self, db: aiosqlite.Connection, listing_id: int) -> dict[str, Any]:
        rows = await fetch(
            db,
            "SELECT l.*, r.expires_at AS locked_until FROM listings l LEFT JOIN resale_orders r"
            " ON r.listing_id = l.id AND r.status = 'awaiting_payment' WHERE l.id = ?",
            (listing_id,),
        )
        if not rows:
            raise NotFound(f"no listing {listing_id}")
        return dict(rows[0])

    def _check_listing_unlocked(self, row: dict[str, Any]) -> None:
        if row["status"] == "locked":
            left = max(0, round((row["locked_until"] or 0) - self.clock()))
            raise Conflict(
                "this listing is locked: a buyer is checking out"
                f" (for up to {left // 60}:{left % 60:02d} more); try again after the hold ends"
            )
        if row["status"] == "sold":
            raise Conflict("this listing is already sold")
        if row["status"] == "withdrawn":
            raise Conflict("this listing was withdrawn")

    async def create_listing(
        self, p: Principal, ticket: object, price_cents: object
    ) -> dict[str, Any]:
        """List a ticket ``p`` holds (sold to them) for resale at ``price_cents``."""
        if p.account_id is None:
            raise Unauthorized("sign in to sell a ticket")
        event_id, serial = parse_ticket_id(ticket)
        price = check_price(price_cents)
        now = self.clock()
        async with self.ledger.transaction() as db:
            rows = await fetch(
                db, "SELECT * FROM owners WHERE event_id = ? AND serial = ?", (event_id, serial)
            )
            if not rows:
                raise NotFound(
                    f"ticket {ticket_id(event_id, serial)} is not a sold ticket", "ticket_id"
                )
            owner = dict(rows[0])
            if not p.owns(owner):
                raise Forbidden("you can only list a ticket you hold", "ticket_id")
            listed = await fetch(
                db,
                "SELECT id FROM listings WHERE event_id = ? AND serial = ?"
                " AND status IN ('active', 'locked')",
                (event_id, serial),
            )
            if listed:
                raise Conflict(
                    f"this ticket is already listed (listing {listed[0][0]})", "ticket_id"
                )
            cur = await db.execute(
                "INSERT INTO listings(event_id, serial, visitor, account_id, price_cents, status,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'active', ?, ?)",
                (event_id, serial, owner["visitor"], owner["account_id"], price, now, now),
            )
            listing_id = cur.lastrowid
        assert listing_id is not None
        await self._finish(Effects(notices=[Notice("listings", {"listing_id": listing_id})]))
        return await self.listing(listing_id, p)

    async def edit_listing(
        self, p: Principal, listing_id: int, price_cents: object, version: int | None = None
    ) -> dict[str, Any]:
        price = check_price(price_cents)
        async with self.ledger.transaction() as db:
            row = await self._seller_listing(db, listing_id, p, version)
            await db.execute(
                "UPDATE listings SET price_cents = ?, version = version + 1, updated_at = ?"
                " WHERE id = ? AND status = 'active' AND version = ?",
                (price, self.clock(), listing_id, row["version"]),
            )
        await self._finish(Effects(notices=[Notice("listings", {"listing_id": listing_id})]))
        return await self.listing(listing_id, p)

    async def withdraw_listing(
        self, p: Principal, listing_id: int, version: int | None = None
    ) -> dict[str, Any]:
        async with self.ledger.transaction() as db:
            row = await self._seller_listing(db, listing_id, p, version)
            await db.execute(
                "UPDATE listings SET status = 'withdrawn', version = version + 1, updated_at = ?"
                " WHERE id = ? AND status = 'active' AND version = ?",
                (self.clock(), listing_id, row["version"]),
            )
        await self._finish(Effects(notices=[Notice("listings", {"listing_id": listing_id})]))
        return await self.listing(listing_id, p)

    async def _seller_listing(
        self, db: aiosqlite.Connection, listing_id: int, p: Principal, version: int | None
    ) -> dict[str, Any]:
        """The seller's listing, unlocked and at ``version``: safe to change in this transaction."""
        row = await self._listing_row(db, listing_id)
        if not p.owns(row):
            raise Forbidden("only the seller can change this listing")
        self._check_listing_unlocked(row)
        check_version(row, version, "listing")
        return row

    async def buy_listing(self, p: Principal, listing_id: int) -> dict[str, Any]:
        """Start a resale checkout: the listing is locked for the hold time, for ``p`` only."""
        now = self.clock()
        async with self.ledger.transaction() as db:
            row = await self._listing_row(db, listing_id)
            if p.owns(row):
                raise Forbidden("you cannot buy your own listing")
            self._check_listing_unlocked(row)
            cur = await db.execute(
                "UPDATE listings SET status = 'locked', version = version + 1, updated_at = ?"
                " WHERE id = ? AND status = 'active'",
                (now, listing_id),
            )
            if cur.rowcount != 1:
                raise Conflict("this listing is no longer available")
            cur = await db.execute(
                "INSERT INTO resale_orders(listing_id, event_id, serial, visitor, account_id,"
                " price_cents, status, created_at, expires_at) VALUES"
                " (?, ?, ?, ?, ?, ?, 'awaiting_payment', ?, ?)",
                (
                    listing_id,
                    row["event_id"],
                    row["serial"],
                    p.visitor,
                    p.account_id,
                    row["price_cents"],
                    now,
                    now + self.main.hold_seconds,
                ),
            )
            order_id = cur.lastrowid
        assert order_id is not None
        await self._finish(
            Effects(notices=[Notice("listings", {"listing_id": listing_id})], wake=True)
        )
        return await self.order(RESALE.name, order_id, p)
