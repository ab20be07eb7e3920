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

from ..ledger import LedgerTx, ListingStatus, OrderKind, OrderStatus, PaymentState, Principal
from ..ledger import TicketState as T
from .checks import check_card, check_version
from .context import Effects, MarketContext, Notice, log
from .errors import Conflict, Forbidden, PaymentFailed
from .holds import Holds
from .orders import owned
from .payment import PaymentDeclined, PaymentError, PaymentProvider


def check_open(order: dict[str, Any]) -> None:
    """Only a held order can be paid or cancelled as a hold."""
    status = order["status"]
    if status == OrderStatus.COMPLETE:
        raise Conflict("this order is already paid")
    if status == OrderStatus.EXPIRED:
        raise Conflict("the hold on this order has expired; the ticket went back on sale")
    if status == OrderStatus.CANCELLED:
        raise Conflict("this order was cancelled")


class Checkout:
    """Pay and cancel, for primary and resale orders alike."""

    def __init__(self, ctx: MarketContext, holds: Holds, payments: PaymentProvider) -> None:
        self.ctx = ctx
        self.holds = holds
        self.payments = payments

    async def pay(
        self, kind: OrderKind, order_id: int, p: Principal, card: object, version: int | None = None
    ) -> dict[str, Any]:
        """Pay an order held by ``p``; returns the completed order's row."""
        card = check_card(card)
        now = self.ctx.clock()
        fx = Effects()
        overdue = False
        key, payment_id = "", None
        async with self.ctx.ledger.transaction() as tx:
            order = await owned(tx, kind, order_id, p)
            check_version(order, version, "order")
            check_open(order)
            if order["expires_at"] <= now:
                # Overdue but not swept yet: expiry wins, and it commits now.
                overdue = await self.holds.close(tx, kind, order, OrderStatus.EXPIRED, now, fx)
            else:
                if await tx.payment_pending(kind, order_id):
                    raise Conflict("a payment for this order is already in progress")
                order["version"] = await tx.bump_order_version(kind, order_id)
                key = f"{kind.value}-{order_id}-v{order['version']}"
                payment_id = await tx.start_payment(kind, order_id, key, order["price_cents"], now)
        if overdue:
            await self.ctx.finish(fx)
            raise Conflict("the hold on this order has expired; the ticket went back on sale")
        assert payment_id is not None
        # The charge and its settlement must not be cut in half by a dropped request.
        return await asyncio.shield(self._charge(kind, order, card, key, payment_id))

    async def _charge(
        self, kind: OrderKind, order: dict[str, Any], card: str, key: str, payment_id: int
    ) -> dict[str, Any]:
        charge_id: str | None = None
        failure: tuple[PaymentState, PaymentFailed] | None = None
        try:
            if order["price_cents"] > 0:
                charge = await self.payments.charge(
                    amount_cents=order["price_cents"],
                    currency=self.ctx.currency,
                    card_token=card,
                    idempotency_key=key,
                )
                charge_id = charge.id
        except PaymentDeclined as exc:
            failure = (PaymentState.DECLINED, PaymentFailed(exc.message, "card"))
        except PaymentError as exc:
            failure = (PaymentState.FAILED, PaymentFailed(f"payment failed: {exc.message}", "card"))
        except Exception as exc:  # the provider broke: unlock, never leave it pending
            log.exception("payment provider failed")
            failure = (PaymentState.FAILED, PaymentFailed(f"payment failed: {exc}", "card"))
        now = self.ctx.clock()
        fx = Effects(wake=True)
        won = False
        async with self.ctx.ledger.transaction() as tx:
            if failure is not None:
                state, error = failure
                await tx.finish_payment(payment_id, state, now, message=error.message)
                # Unlocked again: if the hold ran out meanwhile, it ends now.
                current = await tx.order(kind, order["id"])
                if (
                    current is not None
                    and current["status"] == OrderStatus.AWAITING_PAYMENT
                    and current["expires_at"] <= now
                ):
                    await self.holds.close(tx, kind, current, OrderStatus.EXPIRED, now, fx)
            else:
                won = await self._complete(tx, kind, order, now, fx)
                await tx.finish_payment(
                    payment_id, PaymentState.SUCCEEDED, now, charge_id=charge_id
                )
        await self.ctx.finish(fx)
        if failure is not None:
            raise failure[1]
        if not won:
            await self._refund(payment_id, charge_id)
            raise Conflict("this order could not be completed; your payment was refunded")
        row = await self.ctx.ledger.reader().order(kind, order["id"])
        assert row is not None
        return row

    async def _complete(
        self, tx: LedgerTx, kind: OrderKind, order: dict[str, Any], now: float, fx: Effects
    ) -> bool:
        """Paid: the order completes and the buyer holds the ticket. False if it was lost."""
        if not await tx.set_order_status(
            kind, order["id"], OrderStatus.AWAITING_PAYMENT, OrderStatus.COMPLETE
        ):
            return False
        if kind is OrderKind.PRIMARY:
            await tx.set_ticket_state(order["event_id"], order["serial"], T.HELD, T.SOLD)
            await tx.add_owner(order, now)
            fx.counts.append(("sold", order["event_id"]))
        else:
            await tx.set_listing_status(
                order["listing_id"], ListingStatus.LOCKED, ListingStatus.SOLD, now
            )
            await tx.transfer_owner(order, now)
            fx.notices.append(Notice("listings", {"listing_id": order["listing_id"]}))
        return True

    async def _refund(self, payment_id: int, charge_id: str | None) -> None:
        refund_id = None
        if charge_id is not None:
            refund_id = (await self.payments.refund(charge_id)).id
        async with self.ctx.ledger.transaction() as tx:
            await tx.finish_payment(
                payment_id, PaymentState.REFUNDED, self.ctx.clock(), refund_id=refund_id
            )

    async def cancel(
        self, kind: OrderKind, order_id: int, p: Principal, version: int | None = None
    ) -> None:
        """Cancel a held order (the ticket goes back on sale), or a paid booking (refunded)."""
        now = self.ctx.clock()
        fx = Effects()
        refund: dict[str, Any] | None = None
        async with self.ctx.ledger.transaction() as tx:
            order = await owned(tx, kind, order_id, p)
            check_version(order, version, "order")
            if order["status"] == OrderStatus.COMPLETE:
                refund = await self._cancel_booking(tx, kind, order, p, now, fx)
            else:
                check_open(order)
                if await tx.payment_pending(kind, order_id):
                    raise Conflict(
                        "a payment for this order is in progress; it cannot be cancelled"
                    )
                await self.holds.close(tx, kind, order, OrderStatus.CANCELLED, now, fx)
        await self.ctx.finish(fx)
        if refund is not None:
            await self._refund(refund["id"], refund["charge_id"])

    async def _cancel_booking(
        self,
        tx: LedgerTx,
        kind: OrderKind,
        order: dict[str, Any],
        p: Principal,
        now: float,
        fx: Effects,
    ) -> dict[str, Any] | None:
        """A paid primary ticket still held by its buyer, unlisted: cancel and refund."""
        if kind is OrderKind.RESALE:
            raise Conflict("a ticket bought on resale cannot be cancelled; list it for resale")
        event_id, serial = order["event_id"], order["serial"]
        holder = await tx.owner(event_id, serial)
        if holder is None or holder["order_id"] != order["id"] or holder["resale_order_id"]:
            raise Conflict("this ticket has been resold; the booking cannot be cancelled")
        if not p.owns(holder):
            raise Forbidden("this ticket belongs to someone else")
        if await tx.open_listing_id(event_id, serial) is not None:
            raise Conflict("this ticket is listed for resale; withdraw the listing first")
        await tx.remove_owner(event_id, serial)
        await self.holds.close(tx, kind, order, OrderStatus.CANCELLED, now, fx, ticket_from=T.SOLD)
        return await tx.succeeded_payment(kind, order["id"])
