"""The ledger's decision and the marketplace rules, without sockets or a running main.

Each rule object is built over a real SQLite ledger file, a fake clock and the test
payment provider: the dependencies a :class:`~ticketing.market.MarketContext` names.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKENDS
from tests.pgserver import fresh_database
from ticketing.errors import TokenError
from ticketing.ledger import (
    OrderKind,
    OrderStatus,
    Principal,
    SqlLedger,
    decide_sales,
    open_ledger,
)
from ticketing.market import Conflict, MarketContext, Notice, Unauthorized
from ticketing.market.checkout import Checkout
from ticketing.market.holds import Holds
from ticketing.market.payment import TestPaymentProvider
from ticketing.market.resale import Resale
from ticketing.market.waitlist import Waitlist
from ticketing.tokens import TokenSigner
from ticketing.wire import Admission, Sale, SessionClaims

pytestmark = pytest.mark.timeout(30)

SHARD = "shard-1"
HOLD = 60.0


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the decision on a batch of sales (a plain function) -------------------------------


def order(serial: int, visitor: str, account: int | None = None) -> dict[str, Any]:
    return {"event_id": 1, "serial": serial, "visitor": visitor, "account_id": account,
            "shard": SHARD}  # fmt: skip


def test_decide_takes_new_sales_from_the_shards_pool() -> None:
    d = decide_sales(SHARD, 1, 1, [Sale(1, 0, "a"), Sale(1, 1, "b")], [])
    assert [s.serial for s in d.new] == [0, 1] and not d.refused and not d.dupes


def test_decide_answers_a_resent_sale_with_its_order() -> None:
    existing = order(0, "a")
    d = decide_sales(SHARD, 1, 1, [Sale(1, 0, "a")], [existing])
    assert d.dupes == [(Sale(1, 0, "a"), existing)] and not d.new


def test_decide_refuses_a_stale_epoch_a_foreign_ticket_and_a_second_ticket() -> None:
    assert decide_sales(SHARD, 1, 2, [Sale(1, 0, "a")], []).refusals()[0]["reason"] == "stale_epoch"
    # The database did not find ticket 0 in the shard's pool (the conditional update).
    d = decide_sales(SHARD, 1, 1, [Sale(1, 0, "a"), Sale(1, 1, "b")], [])
    d.not_in_pool({(1, 1)})
    assert [s.serial for s in d.new] == [1] and d.refused == [
        (Sale(1, 0, "a"), "not_in_pool", None)
    ]
    mine = order(5, "a")
    d = decide_sales(SHARD, 1, 1, [Sale(1, 0, "a")], [mine])
    assert d.refused == [(Sale(1, 0, "a"), "visitor_has_ticket", mine)]


def test_decide_allows_one_ticket_per_visitor_and_account_within_a_batch() -> None:
    sales = [Sale(1, 0, "a", 7), Sale(1, 1, "a"), Sale(1, 2, "b", 7), Sale(1, 3, "c")]
    d = decide_sales(SHARD, 1, 1, sales, [])
    assert [s.serial for s in d.new] == [0, 3]
    assert [(s.serial, why) for s, why, _ in d.refused] == [
        (1, "visitor_has_ticket"),
        (2, "visitor_has_ticket"),
    ]


# -- the rules over a ledger file ------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlLedger]:
    """The same ledger code on each backend: a SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = str(tmp_path / "ledger.sqlite3")
    else:
        url = await fresh_database(request.getfixturevalue("postgres_admin"))
    led = await open_ledger(url, synchronous="OFF")
    yield led
    await led.close()


async def on_sale(ledger: SqlLedger, tickets: int = 3) -> int:
    """An event whose tickets all sit in one (imaginary) shard's pool."""
    event = await ledger.create_event("Gig", "", 2500, tickets)
    await ledger.register_shard(SHARD, "127.0.0.1", 1, 2, 1.0)
    await ledger.assign(event.id, {SHARD: (1, [(0, tickets)])})
    return event.id


async def grant(ledger: SqlLedger, event: int, serial: int, p: Principal) -> dict[str, Any]:
    accepted, refused, fresh = await ledger.record_sales(
        SHARD, 1, [Sale(event, serial, p.visitor, p.account_id)], HOLD
    )
    assert not refused and len(fresh) == 1
    return fresh[0]


def rules(ledger: SqlLedger, clock: FakeClock) -> tuple[MarketContext, Holds, Checkout]:
    ctx = MarketContext(ledger, clock=clock, hold_seconds=HOLD)
    holds = Holds(ctx)
    return ctx, holds, Checkout(ctx, holds, TestPaymentProvider())


async def test_order_ids_come_from_the_database(ledger: SqlLedger) -> None:
    event = await on_sale(ledger, 5)
    _, _, fresh = await ledger.record_sales(
        SHARD, 1, [Sale(event, s, f"v{s}") for s in range(5)], HOLD
    )
    ids = [o["id"] for o in fresh]
    assert ids == sorted(ids) and len(set(ids)) == 5
    for o in fresh:  # each id is the row the database made for that ticket
        row = await ledger.reader().order(OrderKind.PRIMARY, o["id"])
        assert row is not None and (row["serial"], row["visitor"]) == (o["serial"], o["visitor"])


async def test_expiry_returns_the_ticket_and_mains_count_follows(ledger: SqlLedger) -> None:
    """No repair call: the ledger's own stock count moves with the commit."""
    clock = FakeClock()
    _, holds, _ = rules(ledger, clock)
    event = await on_sale(ledger, 2)
    held = await grant(ledger, event, 0, Principal("ann"))
    held2 = await grant(ledger, event, 1, Principal("bob"))
    assert ledger.unassigned_count(event) == 0
    clock.now = held["expires_at"] + 1
    assert await holds.sweep() is None  # nothing left to wait for
    assert ledger.unassigned_count(event) == 2
    for o in (held, held2):
        row = await ledger.reader().order(OrderKind.PRIMARY, o["id"])
        assert row is not None and row["status"] == OrderStatus.EXPIRED
    assert (await ledger.audit()).unassigned == 2


async def test_a_released_ticket_goes_to_the_head_of_the_waiting_list(
    ledger: SqlLedger,
) -> None:
    clock = FakeClock()
    ctx, holds, checkout = rules(ledger, clock)
    seen: list[Notice] = []
    ctx.watchers.append(seen.append)
    waitlist = Waitlist(ctx)
    event = await on_sale(ledger, 1)
    ann, carl = Principal("ann"), Principal("carl", 3)
    held = await grant(ledger, event, 0, ann)
    await waitlist.join(carl, event)
    assert (await waitlist.status(carl, event))["position"] == 1
    await checkout.cancel(OrderKind.PRIMARY, held["id"], ann)
    status = await waitlist.status(carl, event)
    assert status["status"] == "offered"
    offer = await ledger.reader().order(OrderKind.PRIMARY, status["order_id"])
    assert offer is not None and offer["visitor"] == "carl"
    assert [n.type for n in seen if n.owner == carl] == ["offer"]
    assert ledger.unassigned_count(event) == 0  # it never went back to the pool


async def test_pay_completes_and_a_decline_keeps_the_hold(ledger: SqlLedger) -> None:
    clock = FakeClock()
    _, _, checkout = rules(ledger, clock)
    event = await on_sale(ledger, 2)
    ann, bob = Principal("ann"), Principal("bob")
    a, b = await grant(ledger, event, 0, ann), await grant(ledger, event, 1, bob)
    paid = await checkout.pay(OrderKind.PRIMARY, a["id"], ann, "tok_visa")
    assert paid["status"] == OrderStatus.COMPLETE
    with pytest.raises(Conflict):
        await checkout.pay(OrderKind.PRIMARY, a["id"], ann, "tok_visa")
    with pytest.raises(Exception, match="declined"):
        await checkout.pay(OrderKind.PRIMARY, b["id"], bob, "tok_decline")
    row = await ledger.reader().order(OrderKind.PRIMARY, b["id"])
    assert row is not None and row["status"] == OrderStatus.AWAITING_PAYMENT
    audit = await ledger.audit()
    assert audit.exact and (audit.sold, audit.held) == (1, 1)


async def test_resale_locks_for_one_buyer_and_only_an_unlocked_price_changes(
    ledger: SqlLedger,
) -> None:
    clock = FakeClock()
    ctx, _, checkout = rules(ledger, clock)
    resale = Resale(ctx)
    event = await on_sale(ledger, 1)
    seller, buyer = Principal("s", 1), Principal("b", 2)
    held = await grant(ledger, event, 0, seller)
    await checkout.pay(OrderKind.PRIMARY, held["id"], seller, "tok_visa")
    with pytest.raises(Unauthorized):
        await resale.create(Principal("anonymous"), f"{event}-0", 3000)
    listing = await resale.create(seller, f"{event}-0", 3000)
    await resale.edit(seller, listing, 3500)
    order_id = await resale.buy(buyer, listing)
    with pytest.raises(Conflict, match="locked"):
        await resale.edit(seller, listing, 4000)
    with pytest.raises(Conflict):
        await resale.buy(Principal("c", 3), listing)
    await checkout.pay(OrderKind.RESALE, order_id, buyer, "tok_visa")
    owner = await ledger.reader().owner(event, 0)
    assert owner is not None and owner["account_id"] == 2
    row = await ledger.reader().listing(listing)
    assert row is not None and (row["status"], row["price_cents"]) == ("sold", 3500)
    assert not await ledger.reader().market_problems(1)


# -- token claims (wire.py) --------------------------------------------------------------


def test_admission_claims_round_trip_and_refuse_malformed_ones() -> None:
    signer = TokenSigner()
    admission = Admission.new("visitor-id", "shard-2", 3, account=9)
    back = Admission.verify(signer.verifier(), admission.sign(signer, 60))
    assert (back.visitor, back.shard, back.event, back.nonce, back.account) == (
        "visitor-id", "shard-2", 3, admission.nonce, 9,
    )  # fmt: skip
    bad = signer.sign("admission", {"v": "x", "s": "shard-2", "e": "3", "n": "n"}, 60)
    with pytest.raises(TokenError, match="malformed"):
        Admission.verify(signer.verifier(), bad)
    session = SessionClaims.new(4, "ann@example.com").sign(signer, 60)
    with pytest.raises(TokenError, match="wrong token type"):
        Admission.verify(signer.verifier(), session)
    claims = SessionClaims.verify(signer.verifier(), session)
    assert (claims.account_id, claims.email) == (4, "ann@example.com")


# -- waiting for in-process state (changes.py) ------------------------------------------


async def test_changes_wake_waiters_and_time_out_without_a_change() -> None:
    import asyncio

    from ticketing.changes import Changes, wait_any

    changes, other = Changes(), Changes()
    state = {"n": 0}
    waiter = asyncio.ensure_future(changes.wait_for(lambda: state["n"] == 2, 5))
    for _ in range(2):
        await asyncio.sleep(0)
        state["n"] += 1
        changes.notify()
    await asyncio.wait_for(waiter, 1)
    both = asyncio.ensure_future(wait_any([changes, other], lambda: state["n"] == 3, 5))
    await asyncio.sleep(0)
    state["n"] = 3
    other.notify()
    await asyncio.wait_for(both, 1)
    state["n"] = 4  # changed, but nobody says so: the waiter does not poll
    with pytest.raises(TimeoutError):
        await changes.wait_for(lambda: state["n"] == 5, 0.05)


async def test_the_sweeper_of_a_deposed_main_stops(ledger: SqlLedger) -> None:
    """A newer term leads (and sweeps from the stored deadlines): the old one's sweeper
    ends quietly instead of failing on every deadline."""
    clock = FakeClock()
    _, holds, _ = rules(ledger, clock)
    await on_sale(ledger, 1)
    async with ledger.transaction() as tx:  # the newer main's term
        await tx._change(
            "INSERT INTO leadership(id, term, holder, expires_at) VALUES (1, 2, 'b', 0)"
        )
    ledger.fence_term = 1
    await asyncio.wait_for(holds.run(), 10)  # returns: it does not sweep again
