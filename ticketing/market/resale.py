"""Resale: listing a held ticket, changing or withdrawing it, and buying one.

Listings go ``active`` -> ``locked`` (a buyer's checkout) -> ``sold``, or
``withdrawn``; the price can change only while the listing is unlocked.
"""

from __future__ import annotations

from typing import Any

from ..ledger import LedgerTx, ListingStatus, Principal
from ..wire import ticket_id
from .checks import check_price, check_version, parse_ticket_id
from .context import Effects, MarketContext, Notice
from .errors import Conflict, Forbidden, NotFound, Unauthorized


def listing_changed(listing_id: int, *, wake: bool = False) -> Effects:
    return Effects(notices=[Notice("listings", {"listing_id": listing_id})], wake=wake)


class Resale:
    """The resale rules over the ledger; every change is one transaction."""

    def __init__(self, ctx: MarketContext) -> None:
        self.ctx = ctx

    async def _listing(self, tx: LedgerTx, listing_id: int) -> dict[str, Any]:
        row = await tx.listing(listing_id)
        if row is None:
            raise NotFound(f"no listing {listing_id}")
        return row

    def _check_unlocked(self, row: dict[str, Any]) -> None:
        if row["status"] == ListingStatus.LOCKED:
            left = max(0, round((row["locked_until"] or 0) - self.ctx.clock()))
            raise Conflict(
                "this listing is locked: a buyer is checking out"
                f" (for up to {left // 60}:{left % 60:02d} more); try again after the hold ends"
            )
        if row["status"] == ListingStatus.SOLD:
            raise Conflict("this listing is already sold")
        if row["status"] == ListingStatus.WITHDRAWN:
            raise Conflict("this listing was withdrawn")

    async def create(self, p: Principal, ticket: object, price_cents: object) -> int:
        """List a ticket ``p`` holds (sold to them) for resale; returns the listing id."""
        if p.account_id is None:
            raise Unauthorized("sign in to sell a ticket")
        event_id, serial = parse_ticket_id(ticket)
        price = check_price(price_cents)
        async with self.ctx.ledger.transaction() as tx:
            owner = await tx.owner(event_id, serial)
            if owner is None:
                raise NotFound(
                    f"ticket {ticket_id(event_id, serial)} is not a sold ticket", "ticket_id"
                )
            if not p.owns(owner):
                raise Forbidden("you can only list a ticket you hold", "ticket_id")
            listed = await tx.open_listing_id(event_id, serial)
            if listed is not None:
                raise Conflict(f"this ticket is already listed (listing {listed})", "ticket_id")
            listing_id = await tx.insert_listing(owner, price, self.ctx.clock())
        await self.ctx.finish(listing_changed(listing_id))
        return listing_id

    async def _seller_listing(
        self, tx: LedgerTx, listing_id: int, p: Principal, version: int | None
    ) -> dict[str, Any]:
        """The seller's listing, unlocked and at ``version``: safe to change in this transaction."""
        row = await self._listing(tx, listing_id)
        if not p.owns(row):
            raise Forbidden("only the seller can change this listing")
        self._check_unlocked(row)
        check_version(row, version, "listing")
        return row

    async def edit(
        self, p: Principal, listing_id: int, price_cents: object, version: int | None = None
    ) -> None:
        price = check_price(price_cents)
        async with self.ctx.ledger.transaction() as tx:
            row = await self._seller_listing(tx, listing_id, p, version)
            if not await tx.set_listing_price(listing_id, price, row["version"], self.ctx.clock()):
                raise Conflict("this listing changed meanwhile; reload and try again")
        await self.ctx.finish(listing_changed(listing_id))

    async def withdraw(self, p: Principal, listing_id: int, version: int | None = None) -> None:
        async with self.ctx.ledger.transaction() as tx:
            row = await self._seller_listing(tx, listing_id, p, version)
            await tx.set_listing_status(
                listing_id,
                ListingStatus.ACTIVE,
                ListingStatus.WITHDRAWN,
                self.ctx.clock(),
                row["version"],
            )
        await self.ctx.finish(listing_changed(listing_id))

    async def buy(self, p: Principal, listing_id: int) -> int:
        """Start a resale checkout: the listing is locked for the hold time, for ``p`` only.

        Returns the resale order's id.
        """
        if p.account_id is None:  # a checkout locks the listing: not for anonymous hoarders
            raise Unauthorized("sign in to buy a resale ticket")
        now = self.ctx.clock()
        async with self.ctx.ledger.transaction() as tx:
            row = await self._listing(tx, listing_id)
            if p.owns(row):
                raise Forbidden("you cannot buy your own listing")
            self._check_unlocked(row)
            if not await tx.set_listing_status(
                listing_id, ListingStatus.ACTIVE, ListingStatus.LOCKED, now
            ):
                raise Conflict("this listing is no longer available")
            order_id = await tx.insert_resale_order(row, p, now, self.ctx.hold_seconds)
        await self.ctx.finish(listing_changed(listing_id, wake=True))
        return order_id
