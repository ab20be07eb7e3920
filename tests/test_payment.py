"""The in-memory payment provider: cards, idempotency under concurrency, refunds."""

from __future__ import annotations

import asyncio
import time

import pytest

from ticketing.errors import TicketingError
from ticketing.market.payment import (
    Charge,
    PaymentDeclined,
    PaymentError,
    PaymentProvider,
    Refund,
    TestPaymentProvider,
)

pytestmark = pytest.mark.timeout(30)

SLOW = 0.2


@pytest.fixture
def provider() -> TestPaymentProvider:
    return TestPaymentProvider(slow_seconds=SLOW)


async def pay(
    provider: PaymentProvider,
    key: str = "order-1",
    *,
    card: str = "tok_visa",
    amount: int = 2500,
    currency: str = "eur",
) -> Charge:
    return await provider.charge(
        amount_cents=amount, currency=currency, card_token=card, idempotency_key=key
    )


def test_not_collected_and_defaults() -> None:
    assert TestPaymentProvider.__test__ is False
    assert TestPaymentProvider().slow_seconds == 2.0


def test_errors_are_ticketing_errors() -> None:
    declined = PaymentDeclined()
    assert isinstance(declined, TicketingError)
    assert declined.code == "card_declined"
    assert str(declined) == "card_declined: your card was declined"
    assert isinstance(PaymentError("x"), TicketingError)
    assert str(PaymentError("no such charge")) == "no such charge"


async def test_success(provider: TestPaymentProvider) -> None:
    charge = await pay(provider)
    assert charge == Charge(charge.id, 2500, "eur", "succeeded")
    assert charge.id.startswith("ch_")
    assert provider.charge_count == 1
    assert provider.charges == [charge]


async def test_decline(provider: TestPaymentProvider) -> None:
    with pytest.raises(PaymentDeclined) as info:
        await pay(provider, card="tok_decline")
    assert info.value.code == "card_declined"
    assert provider.charge_count == 0
    assert provider.charges == []


async def test_slow_card_takes_slow_seconds(provider: TestPaymentProvider) -> None:
    start = time.monotonic()
    charge = await pay(provider, card="tok_slow")
    assert time.monotonic() - start >= SLOW
    assert charge.status == "succeeded"
    assert provider.charge_count == 1


async def test_fast_card_is_fast(provider: TestPaymentProvider) -> None:
    start = time.monotonic()
    await pay(provider)
    assert time.monotonic() - start < SLOW


@pytest.mark.parametrize("card", ["tok_unknown", "", "TOK_VISA"])
async def test_unknown_card(provider: TestPaymentProvider, card: str) -> None:
    with pytest.raises(PaymentError) as info:
        await pay(provider, card=card)
    assert not isinstance(info.value, PaymentDeclined)
    assert provider.charge_count == 0


@pytest.mark.parametrize("amount", [0, -1, True])
async def test_bad_amount(provider: TestPaymentProvider, amount: int) -> None:
    with pytest.raises(PaymentError):
        await pay(provider, amount=amount)
    assert provider.charge_count == 0


async def test_missing_idempotency_key(provider: TestPaymentProvider) -> None:
    with pytest.raises(PaymentError):
        await pay(provider, key="")


async def test_idempotent_sequential(provider: TestPaymentProvider) -> None:
    first = await pay(provider, "order-1")
    again = await pay(provider, "order-1")
    assert again == first
    assert provider.charge_count == 1
    other = await pay(provider, "order-2")
    assert other.id != first.id
    assert provider.charge_count == 2
    assert provider.charges == [first, other]


async def test_idempotent_concurrent(provider: TestPaymentProvider) -> None:
    results = await asyncio.gather(*(pay(provider, "order-1", card="tok_slow") for _ in range(50)))
    assert len({c.id for c in results}) == 1
    assert provider.charge_count == 1
    assert provider.charges == [results[0]]


async def test_distinct_keys_concurrent(provider: TestPaymentProvider) -> None:
    results = await asyncio.gather(
        *(pay(provider, f"order-{i}", card="tok_slow") for i in range(50))
    )
    assert len({c.id for c in results}) == 50
    assert provider.charge_count == 50


@pytest.mark.parametrize(
    "changes",
    [{"amount": 2600}, {"currency": "usd"}, {"card": "tok_slow"}],
)
async def test_key_reused_with_different_request(
    provider: TestPaymentProvider, changes: dict[str, object]
) -> None:
    await pay(provider, "order-1")
    with pytest.raises(PaymentError):
        await pay(provider, "order-1", **changes)  # type: ignore[arg-type]
    assert provider.charge_count == 1


async def test_declined_key_can_be_retried(provider: TestPaymentProvider) -> None:
    with pytest.raises(PaymentDeclined):
        await pay(provider, "order-1", card="tok_decline")
    charge = await pay(provider, "order-1", card="tok_visa")
    assert provider.charge_count == 1
    assert await pay(provider, "order-1", card="tok_visa") == charge


async def test_cancelled_first_attempt_does_not_block_key(provider: TestPaymentProvider) -> None:
    first = asyncio.create_task(pay(provider, "order-1", card="tok_slow"))
    second = asyncio.create_task(pay(provider, "order-1", card="tok_slow"))
    await asyncio.sleep(SLOW / 4)
    first.cancel()
    charge = await second
    assert first.cancelled()
    assert provider.charge_count == 1
    assert provider.charges == [charge]


async def test_refund(provider: TestPaymentProvider) -> None:
    charge = await pay(provider)
    refund = await provider.refund(charge.id)
    assert refund == Refund(refund.id, charge.id, 2500)
    assert refund.id.startswith("re_")
    assert provider.refunds == [refund]


async def test_refund_twice(provider: TestPaymentProvider) -> None:
    charge = await pay(provider)
    await provider.refund(charge.id)
    with pytest.raises(PaymentError):
        await provider.refund(charge.id)
    assert len(provider.refunds) == 1


async def test_refund_twice_concurrently(provider: TestPaymentProvider) -> None:
    charge = await pay(provider)
    results = await asyncio.gather(
        *(provider.refund(charge.id) for _ in range(10)), return_exceptions=True
    )
    assert sum(isinstance(r, Refund) for r in results) == 1
    assert sum(isinstance(r, PaymentError) for r in results) == 9
    assert len(provider.refunds) == 1


async def test_refund_unknown(provider: TestPaymentProvider) -> None:
    with pytest.raises(PaymentError):
        await provider.refund("ch_nope")
    assert provider.refunds == []
