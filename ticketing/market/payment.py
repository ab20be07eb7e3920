"""Payments: the provider interface the marketplace uses, and an in-memory test provider.

Every charge carries an idempotency key (one per order), so a retried request after a
timeout or a crash cannot charge the buyer twice: the provider answers a repeated key
with the original charge.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Protocol

from ..errors import TicketingError


@dataclass(frozen=True)
class Charge:
    """A successful charge."""

    id: str
    amount_cents: int
    currency: str
    status: str = "succeeded"


@dataclass(frozen=True)
class Refund:
    """A full refund of one charge."""

    id: str
    charge_id: str
    amount_cents: int


class PaymentDeclined(TicketingError):
    """The card was refused; ``code`` is machine-readable (``"card_declined"``)."""

    def __init__(self, message: str = "your card was declined", code: str = "card_declined"):
        super().__init__(message, code)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class PaymentError(TicketingError):
    """Any other payment failure: bad request, unknown card, refund refused, ..."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PaymentProvider(Protocol):
    """What the marketplace needs from a payment provider."""

    async def charge(
        self, *, amount_cents: int, currency: str, card_token: str, idempotency_key: str
    ) -> Charge:
        """Charge once per ``idempotency_key``; raise PaymentDeclined or PaymentError."""
        ...

    async def refund(self, charge_id: str) -> Refund:
        """Refund a charge in full; PaymentError when unknown or already refunded."""
        ...


class TestPaymentProvider:
    """In-memory provider for tests and demos.

    Card tokens: ``tok_visa`` succeeds, ``tok_decline`` is declined, ``tok_slow``
    succeeds after ``slow_seconds``; any other token is a :class:`PaymentError`.
    Only successful charges are remembered under their idempotency key, so a declined
    attempt can be retried with the same key and another card.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, *, slow_seconds: float = 2.0) -> None:
        self.slow_seconds = slow_seconds
        self.charge_count = 0
        self.charges: list[Charge] = []
        self.refunds: list[Refund] = []
        self._by_key: dict[str, tuple[tuple[int, str, str], Charge]] = {}
        self._by_id: dict[str, Charge] = {}
        self._refunded: set[str] = set()
        # One lock per key: concurrent calls with a key wait for the first to finish,
        # then find its charge instead of making a second one.
        self._key_locks: dict[str, asyncio.Lock] = {}

    async def charge(
        self, *, amount_cents: int, currency: str, card_token: str, idempotency_key: str
    ) -> Charge:
        """Charge the card, or return the earlier charge made with ``idempotency_key``."""
        if type(amount_cents) is not int or amount_cents <= 0:
            raise PaymentError("amount_cents must be a positive integer")
        if not idempotency_key:
            raise PaymentError("an idempotency key is required")
        request = (amount_cents, currency, card_token)
        lock = self._key_locks.setdefault(idempotency_key, asyncio.Lock())
        async with lock:
            if idempotency_key in self._by_key:
                original_request, original = self._by_key[idempotency_key]
                if request != original_request:
                    raise PaymentError("idempotency key reused with different parameters")
                return original
            await self._authorise(card_token)
            charge = Charge(f"ch_{secrets.token_hex(12)}", amount_cents, currency)
            self.charge_count += 1
            self.charges.append(charge)
            self._by_id[charge.id] = charge
            self._by_key[idempotency_key] = (request, charge)
            return charge

    async def _authorise(self, card_token: str) -> None:
        # Yield even on the fast path, like a network call would.
        await asyncio.sleep(self.slow_seconds if card_token == "tok_slow" else 0)
        if card_token == "tok_decline":
            raise PaymentDeclined()
        if card_token not in ("tok_visa", "tok_slow"):
            raise PaymentError(f"unknown card token {card_token!r}")

    async def refund(self, charge_id: str) -> Refund:
        """Refund a charge in full, once."""
        await asyncio.sleep(0)
        # No await below: the check and the update cannot interleave with another refund.
        charge = self._by_id.get(charge_id)
        if charge is None:
            raise PaymentError(f"no such charge {charge_id!r}")
        if charge_id in self._refunded:
            raise PaymentError(f"charge {charge_id!r} is already refunded")
        self._refunded.add(charge_id)
        refund = Refund(f"re_{secrets.token_hex(12)}", charge_id, charge.amount_cents)
        self.refunds.append(refund)
        return refund
