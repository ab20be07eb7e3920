"""Checkout: paying and cancelling orders, and their payment records.

Pay against expiry (the one outcome)
------------------------------------
``pay`` first locks the order in one transaction: it must be ``awaiting_payment``,
unexpired, unlocked (and at the client's ``version`` if given); the version is
bumped and a ``pending`` payment is written. Only then is the card charged, with
the idempotency key ``<kind>-<id>-v<version>``. A payment that locked the order
before its expiry therefore completes it even when the charge answers later; an
order the sweeper expired first is refused (409) without any charge. A decline
unlocks the order (the hold stays until its expiry; an overdue one expires at once).
A lock older than ``pay_timeout`` (a crash mid-charge) is abandoned by the sweeper,
and if a charge still succeeds for an order that is no longer payable, it is refunded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiosqlite

from ..errors import ValidationError
from ..wire import ticket_id
from .base import KINDS, PRIMARY, RESALE, Effects, Notice, OrderKind, check_version, fetch, log
from .errors import Conflict, Forbidden, PaymentFailed
from .expiry import ExpiryMixin
from .ownership import Principal, owner_of
from .payment import PaymentDeclined, PaymentError

# Limits
MAX_CARD_TOKEN = 128


class CheckoutMixin(ExpiryMixin):
    """Pay and cancel, for primary and resale orders alike."""

    async def pay(
        self,
        kind_name: str,
        order_id: int,
        p: Principal,
        card: object,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Pay an order held by ``p`` (see the module docstring for the race rules)."""
        kind = KINDS[kind_name]
        if not isinstance(card, str) or not 0 < len(card) <= MAX_CARD_TOKEN:
            raise ValidationError("card must be a card token such as 'tok_visa'", "card")
        now = self.clock()
        fx = Effects()
        overdue = False
        key, payment_id = "", None
        async with self.ledger.transaction() as db:
            order = await self._owned(db, kind, order_id, p)
            check_version(order, version, "order")
            self._check_open(order)
            if order["expires_at"] <= now:
                # Overdue but not swept yet: expiry wins, and it commits now.
                overdue = await self._close_order(db, kind, order, "expired", now, fx)
            else:
                if await self._pending(db, kind, order_id):
                    raise Conflict("a payment for this order is already in progress")
                order["version"] += 1
                await db.execute(
                    f"UPDATE {kind.table} SET version = ? WHERE id = ?",
                    (order["version"], order_id),
                )
                key = f"{kind.name}-{order_id}-v{order['version']}"
                cur = await db.execute(
                    "INSERT INTO payments(kind, order_id, idempotency_key, amount_cents, state,"
                    " started_at) VALUES (?, ?, ?, ?, 'pending', ?)",
                    (kind.name, order_id, key, order["price_cents"], now),
                )
                payment_id = cur.lastrowid
        if overdue:
            await self._finish(fx)
            raise Conflict("the hold on this order has expired; the ticket went back on sale")
        assert payment_id is not None
        # The charge and its settlement must not be cut in half by a dropped request.
        return await asyncio.shield(self._charge(kind, order, card, key, payment_id))

    async def _charge(
        self, kind: OrderKind, order: dict[str, Any], card: str, key: str, payment_id: int
    ) -> dict[str, Any]:
        charge_id: str | None = None
        failure: tuple[str, PaymentFailed] | None = None  # (payment state, error to raise)
        try:
            if order["price_cents"] > 0:
                charge = await self.payments.charge(
                    amount_cents=order["price_cents"],
                    currency=self.currency,
                    card_token=card,
                    idempotency_key=key,
                )
                charge_id = charge.id
        except PaymentDeclined as exc:
            failure = ("declined", PaymentFailed(exc.message, "card"))
        except PaymentError as exc:
            failure = ("failed", PaymentFailed(f"payment failed: {exc.message}", "card"))
        except Exception as exc:  # the provider broke: unlock, never leave it pending
            log.exception("payment provider failed")
            failure = ("failed", PaymentFailed(f"payment failed: {exc}", "card"))
        now = self.clock()
        fx = Effects(wake=True)
        won = False
        async with self.ledger.transaction() as db:
            if failure is not None:
                await db.execute(
                    "UPDATE payments SET state = ?, message = ?, finished_at = ? WHERE id = ?",
                    (failure[0], failure[1].message, now, payment_id),
                )
                # Unlocked again: if the hold ran out meanwhile, it ends now.
                rows = await fetch(db, f"SELECT * FROM {kind.table} WHERE id = ?", (order["id"],))
                current = dict(rows[0])
                if current["status"] == "awaiting_payment" and current["expires_at"] <= now:
                    await self._close_order(db, kind, current, "expired", now, fx)
            else:
                won = await self._complete(db, kind, order, now, fx)
                await db.execute(
                    "UPDATE payments SET state = 'succeeded', charge_id = ?, finished_at = ?"
                    " WHERE id = ?",
                    (charge_id, now, payment_id),
                )
        await self._finish(fx)
        if failure is not None:
            raise failure[1]
        if not won:
            await self._refund(payment_id, charge_id)
            raise Conflict("this order could not be completed; your payment was refunded")
        return await self.order(kind.name, order["id"], owner_of(order))

    async def _refund(self, payment_id: int, charge_id: str | None) -> None:
        refund_id = None
        if charge_id is not None:
            refund_id = (await self.payments.refund(charge_id)).id
        async with self.ledger.transaction() as db:
            await db.execute(
                "UPDATE payments SET state = 'refunded', refund_id = ?, finished_at = ?"
                " WHERE id = ?",
                (refund_id, self.clock(), payment_id),
            )

    @staticmethod
    def _check_open(order: dict[str, Any]) -> None:
        status = order["status"]
        if status == "complete":
            raise Conflict("this order is already paid")
        if status == "expired":
            raise Conflict("the hold on this order has expired; the ticket went back on sale")
        if status == "cancelled":
            raise Conflict("this order was cancelled")

    async def _pending(self, db: aiosqlite.Connection, kind: OrderKind, order_id: int) -> bool:
        rows = await fetch(
            db,
            "SELECT 1 FROM payments WHERE kind = ? AND order_id = ? AND state = 'pending'",
            (kind.name, order_id),
        )
        return bool(rows)

    async def _complete(
        self,
        db: aiosqlite.Connection,
        kind: OrderKind,
        order: dict[str, Any],
        now: float,
        fx: Effects,
    ) -> bool:
        """Paid: the order completes and the buyer holds the ticket. False if it was lost."""
        cur = await db.execute(
            f"UPDATE {kind.table} SET status = 'complete', version = version + 1"
            " WHERE id = ? AND status = 'awaiting_payment'",
            (order["id"],),
        )
        if cur.rowcount != 1:
            return False
        key = (order["event_id"], order["serial"])
        if kind is PRIMARY:
            await self._set_ticket(db, key, "held", "sold")
            await db.execute(
                "INSERT INTO owners(event_id, serial, visitor, account_id, order_id, since)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (*key, order["visitor"], order["account_id"], order["id"], now),
            )
        else:
            await db.execute(
                "UPDATE listings SET status = 'sold', version = version + 1, updated_at = ?"
                " WHERE id = ? AND status = 'locked'",
                (now, order["listing_id"]),
            )
            cur = await db.execute(
                "UPDATE owners SET visitor = ?, account_id = ?, resale_order_id = ?, since = ?"
                " WHERE event_id = ? AND serial = ?",
                (order["visitor"], order["account_id"], order["id"], now, *key),
            )
            if cur.rowcount != 1:
                raise ValueError(f"ticket {ticket_id(*key)} has no owner to sell from")
            fx.notices.append(Notice("listings", {"listing_id": order["listing_id"]}))
        return True

    async def cancel(
        self, kind_name: str, order_id: int, p: Principal, version: int | None = None
    ) -> dict[str, Any]:
        """Cancel a held order (the ticket goes back on sale), or a paid booking (refunded)."""
        kind = KINDS[kind_name]
        now = self.clock()
        fx = Effects()
        refund: dict[str, Any] | None = None
        async with self.ledger.transaction() as db:
            order = await self._owned(db, kind, order_id, p)
            check_version(order, version, "order")
            if order["status"] == "complete":
                refund = await self._cancel_booking(db, kind, order, p, now, fx)
            else:
                self._check_open(order)
                if await self._pending(db, kind, order_id):
                    raise Conflict(
                        "a payment for this order is in progress; it cannot be cancelled"
                    )
                await self._close_order(db, kind, order, "cancelled", now, fx)
        await self._finish(fx)
        if refund is not None:
            await self._refund(refund["id"], refund["charge_id"])
        return await self.order(kind_name, order_id, p)

    async def _cancel_booking(
        self,
        db: aiosqlite.Connection,
        kind: OrderKind,
        order: dict[str, Any],
        p: Principal,
        now: float,
        fx: Effects,
    ) -> dict[str, Any] | None:
        """A paid primary ticket still held by its buyer, unlisted: cancel and refund."""
        if kind is RESALE:
            raise Conflict("a ticket bought on resale cannot be cancelled; list it for resale")
        key = (order["event_id"], order["serial"])
        rows = await fetch(db, "SELECT * FROM owners WHERE event_id = ? AND serial = ?", key)
        if not rows or rows[0]["order_id"] != order["id"] or rows[0]["resale_order_id"]:
            raise Conflict("this ticket has been resold; the booking cannot be cancelled")
        if not p.owns(dict(rows[0])):
            raise Forbidden("this ticket belongs to someone else")
        listed = await fetch(
            db,
            "SELECT id FROM listings WHERE event_id = ? AND serial = ?"
            " AND status IN ('active', 'locked')",
            key,
        )
        if listed:
            raise Conflict("this ticket is listed for resale; withdraw the listing first")
        await db.execute("DELETE FROM owners WHERE event_id = ? AND serial = ?", key)
        await self._close_order(db, kind, order, "cancelled", now, fx, ticket_from="sold")
        paid = await fetch(
            db,
            "SELECT id, charge_id FROM payments WHERE kind = ? AND order_id = ?"
            " AND state = 'succeeded'",
            (kind.name, order["id"]),
        )
        return dict(paid[0]) if paid else None
