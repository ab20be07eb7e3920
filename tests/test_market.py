"""The marketplace rules on a real cluster (TLS links, shards, SQLite), no HTTP.

Holds come from real grants on a shard; time is moved with an injected clock and
the sweeper is called directly, except where real time is the point (restart).
The shared helpers (``Shop``, ``open_shop``, ...) are in ``tests/shop.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conftest import BACKENDS
from tests.shop import (
    PASSWORD,
    Clock,
    GatedProvider,
    Shop,
    account,
    open_shop,
    signed_in,
    visitor,
    when_closed,
)
from ticketing.market import (
    Conflict,
    Forbidden,
    Market,
    NotFound,
    PaymentFailed,
    Principal,
    Unauthorized,
)
from ticketing.market.payment import TestPaymentProvider
from ticketing.redirect_server import RedirectServer

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.parametrize("ledger_backend", BACKENDS, indirect=True),  # same rules, both
]


# -- checkout holds ------------------------------------------------------------


async def test_a_grant_is_a_held_order_until_its_expiry(make_cluster) -> None:
    shop = await open_shop(make_cluster, hold=30.0)
    before = time.time()
    order = await shop.grant(visitor("ann"))
    assert order["status"] == "awaiting_payment"
    assert before + 29 < order["expires_at"] <= time.time() + 30
    assert await shop.ticket_state(shop.event, order["serial"]) == "held"
    await shop.market.sweep()  # not due yet
    assert (await shop.order(order["id"]))["status"] == "awaiting_payment"
    await shop.assert_exact()


async def test_expiry_puts_the_ticket_back_in_mains_pool(make_cluster) -> None:
    shop = await open_shop(make_cluster, tickets=1, hold=30.0)
    main = shop.cluster.main
    order = await shop.grant(visitor("ann"))
    assert main.ledger.unassigned_count(shop.event) == 0
    sold_out = await shop.request(visitor("bob"))
    assert sold_out["type"] == "sold_out"

    shop.clock.advance(31)
    await shop.market.sweep()
    assert (await shop.order(order["id"]))["status"] == "expired"
    assert await shop.ticket_state(shop.event, order["serial"]) == "unassigned"
    assert (
        main.ledger.unassigned_count(shop.event) == 1
    )  # main's counts follow, so the redirect admits again
    audit = await shop.assert_exact()
    assert audit["unassigned"] == 1 and audit["held"] == 0

    # The shard gets it back through need_stock on the next arrival.
    again = await shop.grant(visitor("bob"))
    assert again["serial"] == order["serial"] and again["status"] == "awaiting_payment"
    with pytest.raises(Conflict, match="expired"):
        await shop.market.pay("order", order["id"], visitor("ann"), "tok_visa")
    assert shop.payments.charge_count == 0
    await shop.assert_exact()


async def test_cancel_releases_the_hold(make_cluster) -> None:
    shop = await open_shop(make_cluster, tickets=1)
    ann = visitor("ann")
    order = await shop.grant(ann)
    with pytest.raises(Forbidden):
        await shop.market.cancel("order", order["id"], visitor("eve"))
    with pytest.raises(Conflict, match="changed since"):
        await shop.market.cancel("order", order["id"], ann, version=order["version"] + 5)
    done = await shop.market.cancel("order", order["id"], ann, version=order["version"])
    assert done["status"] == "cancelled"
    assert await shop.ticket_state(shop.event, order["serial"]) == "unassigned"
    assert shop.cluster.main.ledger.unassigned_count(shop.event) == 1
    with pytest.raises(Conflict, match="cancelled"):
        await shop.market.pay("order", order["id"], ann, "tok_visa")
    with pytest.raises(Conflict, match="cancelled"):
        await shop.market.cancel("order", order["id"], ann)
    assert shop.payments.charge_count == 0
    await shop.assert_exact()


# -- payment ---------------------------------------------------------------------


async def test_pay_completes_and_the_buyer_holds_the_ticket(make_cluster) -> None:
    shop = await open_shop(make_cluster)
    ann = visitor("ann")
    order = await shop.grant(ann)
    paid = await shop.market.pay("order", order["id"], ann, "tok_visa", version=order["version"])
    assert paid["status"] == "complete"
    assert await shop.ticket_state(shop.event, order["serial"]) == "sold"
    assert shop.payments.charge_count == 1
    assert shop.payments.charges[0].amount_cents == 2500
    tickets = await shop.market.tickets_of(ann)
    assert [t["ticket_id"] for t in tickets] == [f"{shop.event}-{order['serial']}"]
    audit = await shop.assert_exact()
    assert audit["sold"] == 1


async def test_paying_twice_charges_once(make_cluster) -> None:
    shop = await open_shop(make_cluster)
    ann = visitor("ann")
    order = await shop.grant(ann)
    await shop.market.pay("order", order["id"], ann, "tok_visa")
    with pytest.raises(Conflict, match="already paid"):
        await shop.market.pay("order", order["id"], ann, "tok_visa")
    assert shop.payments.charge_count == 1


async def test_concurrent_double_pay_charges_once(make_cluster) -> None:
    shop = await open_shop(make_cluster)
    shop.market.payments = TestPaymentProvider(slow_seconds=0.2)
    ann = visitor("ann")
    order = await shop.grant(ann)
    results = await asyncio.gather(
        *(shop.market.pay("order", order["id"], ann, "tok_slow") for _ in range(10)),
        return_exceptions=True,
    )
    paid = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(paid) == 1 and len(refused) == 9, results
    assert all("in progress" in r.message or "already paid" in r.message for r in refused)
    assert shop.payments.charge_count == 1
    await shop.assert_exact()


async def test_paying_someone_elses_order_is_refused(make_cluster) -> None:
    shop = await open_shop(make_cluster)
    order = await shop.grant(visitor("ann"))
    with pytest.raises(Forbidden, match="someone else"):
        await shop.market.pay("order", order["id"], visitor("eve"), "tok_visa")
    with pytest.raises(NotFound):
        await shop.market.pay("order", 999, visitor("eve"), "tok_visa")
    assert shop.payments.charge_count == 0
    assert (await shop.order(order["id"]))["status"] == "awaiting_payment"


async def test_a_decline_keeps_the_hold_until_expiry(make_cluster) -> None:
    shop = await open_shop(make_cluster, hold=30.0)
    ann = visitor("ann")
    order = await shop.grant(ann)
    with pytest.raises(PaymentFailed, match="declined"):
        await shop.market.pay("order", order["id"], ann, "tok_decline")
    assert (await shop.order(order["id"]))["status"] == "awaiting_payment"
    assert await shop.ticket_state(shop.event, order["serial"]) == "held"
    assert shop.payments.charge_count == 0
    # Still payable with another card before the expiry...
    paid = await shop.market.pay("order", order["id"], ann, "tok_visa")
    assert paid["status"] == "complete" and shop.payments.charge_count == 1

    # ...but a declined hold that then runs out expires as usual.
    bob = visitor("bob")
    other = await shop.grant(bob)
    with pytest.raises(PaymentFailed):
        await shop.market.pay("order", other["id"], bob, "tok_decline")
    shop.clock.advance(31)
    await shop.market.sweep()
    assert (await shop.order(other["id"]))["status"] == "expired"
    await shop.assert_exact()


async def test_pay_locks_before_charging_so_expiry_waits_for_it(make_cluster) -> None:
    """The defined outcome: a payment that locked the order before expiry completes it."""
    shop = await open_shop(make_cluster, hold=30.0)
    provider = shop.market.payments = GatedProvider()
    ann = visitor("ann")
    order = await shop.grant(ann)
    paying = asyncio.create_task(shop.market.pay("order", order["id"], ann, "tok_visa"))
    await asyncio.wait_for(provider.charging.wait(), 10)
    assert await shop.payment_states(order["id"]) == ["pending"]  # locked before the charge
    # The hold runs out while the card is being charged: the sweeper leaves it alone.
    await shop.market.sweep(now=order["expires_at"] + 1)
    assert (await shop.order(order["id"]))["status"] == "awaiting_payment"
    with pytest.raises(Conflict, match="in progress"):
        await shop.market.cancel("order", order["id"], ann)
    provider.gate.set()
    paid = await paying
    assert paid["status"] == "complete"
    assert await shop.payment_states(order["id"]) == ["succeeded"]
    assert provider.charge_count == 1 and not provider.refunds
    await shop.assert_exact()


async def test_an_abandoned_payment_lock_lets_the_hold_expire(make_cluster) -> None:
    """A lock older than pay_timeout (a crash mid-charge) no longer protects the hold."""
    shop = await open_shop(make_cluster, hold=30.0)
    market = shop.market
    provider = market.payments = GatedProvider()
    ann = visitor("ann")
    order = await shop.grant(ann)
    paying = asyncio.create_task(market.pay("order", order["id"], ann, "tok_visa"))
    await asyncio.wait_for(provider.charging.wait(), 10)
    await market.sweep(now=order["expires_at"] + market.pay_timeout + 1)
    assert (await shop.order(order["id"]))["status"] == "expired"
    assert await shop.payment_states(order["id"]) == ["failed"]
    provider.gate.set()  # the provider answers after all: the charge is refunded
    with pytest.raises(Conflict, match="refunded"):
        await paying
    assert provider.charge_count == 1 and len(provider.refunds) == 1
    assert await shop.payment_states(order["id"]) == ["refunded"]
    await shop.assert_exact()


async def test_concurrent_pay_and_expiry_give_one_consistent_outcome(make_cluster) -> None:
    """Race pay against the sweeper in both orders and in between; charges always match.

    Either the payment locks the order first (complete, charged once, the expiry
    skips it) or the expiry commits first (expired, pay refused, never charged).
    """
    schedules = [(0.0, 0.0), (0.001, 0.0), (0.0, 0.001), (0.0, 0.003), (0.003, 0.0), (0.002, 0.002)]
    shop = await open_shop(make_cluster, tickets=4 * len(schedules), hold=30.0)
    market = shop.market
    outcomes: list[str] = []
    for i in range(4 * len(schedules)):
        pay_delay, sweep_delay = schedules[i % len(schedules)]
        p = visitor(f"racer{i}")
        order = await shop.grant(p)

        async def pay_later(
            p: Principal = p, order_id: int = order["id"], delay: float = pay_delay
        ) -> dict[str, Any]:
            await asyncio.sleep(delay)
            return await market.pay("order", order_id, p, "tok_visa")

        async def sweep_later(
            due: float = order["expires_at"] + 1, delay: float = sweep_delay
        ) -> None:
            await asyncio.sleep(delay)
            await market.sweep(now=due)

        pay, _ = await asyncio.gather(pay_later(), sweep_later(), return_exceptions=True)
        final = await shop.order(order["id"])
        if isinstance(pay, dict):
            assert final["status"] == pay["status"] == "complete"
            assert await shop.ticket_state(shop.event, order["serial"]) == "sold"
        else:
            assert isinstance(pay, Conflict), pay
            assert final["status"] == "expired"
            assert await shop.ticket_state(shop.event, order["serial"]) == "unassigned"
        outcomes.append(final["status"])
    complete = outcomes.count("complete")
    assert set(outcomes) == {"complete", "expired"}  # both orders really happened
    assert shop.payments.charge_count == complete and not shop.payments.refunds
    audit = await shop.assert_exact()
    assert audit["sold"] == complete and audit["held"] == 0


async def test_real_time_expiry_by_the_background_sweeper(make_cluster) -> None:
    shop = await open_shop(make_cluster, hold=1.0)
    shop.market.clock = time.time
    order = await shop.grant(visitor("ann"))
    closed = when_closed(shop.market, order["id"])
    expired = await asyncio.wait_for(closed, 5)
    assert expired["status"] == "expired"
    assert order["expires_at"] <= time.time() < order["expires_at"] + 1.0  # on time
    assert (await shop.order(order["id"]))["status"] == "expired"
    await shop.assert_exact()


async def test_expiry_survives_a_restart_of_main(make_cluster, keys) -> None:
    """Overdue holds expire at start; future ones on time, from the stored expires_at."""
    hold = 2.0
    shop = await open_shop(make_cluster, hold=hold)
    shop.market.clock = time.time
    early = await shop.grant(visitor("early"))
    await asyncio.sleep(1.0)  # real time: the second hold ends one second later
    late = await shop.grant(visitor("late"))
    cluster = shop.cluster
    assert cluster.redirect
    await cluster.redirect.close()
    await cluster.main.close()
    # Down while the first hold runs out.
    await asyncio.sleep(max(0.0, early["expires_at"] + 0.1 - time.time()))

    from ticketing import MainServer

    main = MainServer(data_dir=cluster.data, hold_seconds=hold, ledger_url=cluster.main.ledger_url)
    main.set_certificate_path(keys)
    redirect = RedirectServer(main)
    cluster.main, cluster.redirect = main, redirect  # closed by the fixture
    await redirect.create_server(0)
    assert redirect.market
    closed = when_closed(redirect.market, late["id"])
    restarted = Shop(cluster, shop.event, Clock())
    assert (await restarted.order(early["id"]))["status"] == "expired"  # at start
    assert (await restarted.order(late["id"]))["status"] == "awaiting_payment"
    assert time.time() < late["expires_at"]
    assert (await asyncio.wait_for(closed, 5))["status"] == "expired"
    assert late["expires_at"] <= time.time() < late["expires_at"] + 1.0  # on time
    audit = await restarted.assert_exact()
    assert audit["held"] == 0 and audit["unassigned"] == 2
    assert main.ledger.unassigned_count(shop.event) == 2


# -- ownership --------------------------------------------------------------------


async def test_ownership_account_or_visitor_and_sign_in_claims(make_cluster) -> None:
    shop = await open_shop(make_cluster)
    market = shop.market
    anon = visitor("walkin")
    order = await shop.grant(anon)  # bought as a visitor
    acct, _ = await market.signup("walkin@example.com", PASSWORD, visitor("elsewhere"))
    # Another browser signed in to the account does not own the visitor's order...
    with pytest.raises(Forbidden):
        await market.order("order", order["id"], Principal(visitor("elsewhere").visitor, acct.id))
    # ...until the visitor signs in: then the order is the account's, everywhere.
    await market.signin("walkin@example.com", PASSWORD, anon)
    assert (await shop.order(order["id"]))["account_id"] == acct.id
    assert (await market.order("order", order["id"], Principal("x" * 22, acct.id)))["id"]
    with pytest.raises(Forbidden):
        await market.order("order", order["id"], anon)  # signed out: the visitor alone no more

    signed_in = await account(shop, "sally")
    mine = await shop.grant(signed_in)  # the shard reported the account with the sale
    assert (await shop.order(mine["id"]))["account_id"] == signed_in.account_id
    with pytest.raises(Forbidden):
        await market.pay("order", mine["id"], Principal(signed_in.visitor), "tok_visa")
    assert shop.payments.charge_count == 0


async def test_signup_and_signin_errors(make_cluster) -> None:
    shop = await open_shop(make_cluster)
    market = shop.market
    await market.signup("dup@example.com", PASSWORD, visitor("a"))
    with pytest.raises(Conflict, match="already exists"):
        await market.signup("DUP@example.com", PASSWORD, visitor("b"))
    with pytest.raises(Unauthorized, match="wrong email or password"):
        await market.signin("dup@example.com", "wrong password!", visitor("b"))


async def test_sign_out_is_revoked_and_survives_a_restart(make_cluster, keys) -> None:
    shop = await open_shop(make_cluster)
    market = shop.market
    _, token = await market.signup("out@example.com", PASSWORD, visitor("a"))
    claims = market.session(token)
    assert claims is not None
    assert await market.signout(claims)
    assert market.session(token) is None
    # A new Market over the same ledger still refuses it.
    again = Market(shop.cluster.main)
    await again.start()
    try:
        assert again.session(token) is None
        _, fresh = await again.signin("out@example.com", PASSWORD, visitor("a"))
        assert again.session(fresh) is not None
    finally:
        await again.close()


# -- resale --------------------------------------------------------------------------


async def test_resale_list_edit_withdraw_and_rules(make_cluster) -> None:
    shop = await open_shop(make_cluster)
    market = shop.market
    seller = await account(shop, "seller")
    await shop.buy(seller)
    tid = f"{shop.event}-0"
    with pytest.raises(Unauthorized):
        await market.create_listing(Principal(seller.visitor), tid, 3000)  # signed out
    other = await account(shop, "other")
    with pytest.raises(Forbidden):
        await market.create_listing(other, tid, 3000)
    with pytest.raises(NotFound):
        await market.create_listing(seller, f"{shop.event}-4", 3000)  # not sold
    listing = await market.create_listing(seller, tid, 3000)
    assert listing["status"] == "active" and listing["price_cents"] == 3000
    with pytest.raises(Conflict, match="already listed"):
        await market.create_listing(seller, tid, 3100)

    edited = await market.edit_listing(seller, listing["id"], 2800, version=listing["version"])
    assert edited["price_cents"] == 2800 and edited["version"] == listing["version"] + 1
    with pytest.raises(Conflict, match="changed since"):
        await market.edit_listing(seller, listing["id"], 2700, version=listing["version"])
    with pytest.raises(Forbidden):
        await market.edit_listing(other, listing["id"], 1)
    with pytest.raises(Forbidden, match="your own listing"):
        await market.buy_listing(seller, listing["id"])

    withdrawn = await market.withdraw_listing(seller, listing["id"])
    assert withdrawn["status"] == "withdrawn"
    with pytest.raises(Conflict, match="withdrawn"):
        await market.buy_listing(other, listing["id"])
    with pytest.raises(Conflict, match="withdrawn"):
        await market.edit_listing(seller, listing["id"], 2000)
    relisted = await market.create_listing(seller, tid, 2500)
    assert relisted["id"] != listing["id"]
    await shop.assert_exact()


async def test_resale_purchase_locks_transfers_and_keeps_the_audit_exact(make_cluster) -> None:
    shop = await open_shop(make_cluster, hold=30.0)
    market = shop.market
    seller, buyer = await account(shop, "seller"), await account(shop, "buyer")
    await shop.buy(seller)
    listing = await market.create_listing(seller, f"{shop.event}-0", 4000)

    checkout = await market.buy_listing(buyer, listing["id"])
    assert checkout["kind"] == "resale" and checkout["status"] == "awaiting_payment"
    locked = await market.listing(listing["id"])
    assert locked["status"] == "locked" and locked["locked_until"] == checkout["expires_at"]
    with pytest.raises(Conflict, match="locked"):
        await market.edit_listing(seller, listing["id"], 100)
    with pytest.raises(Conflict, match="locked"):
        await market.withdraw_listing(seller, listing["id"])
    with pytest.raises(Conflict, match="locked"):
        await market.buy_listing(await account(shop, "third"), listing["id"])
    with pytest.raises(Forbidden):
        await market.pay("resale", checkout["id"], seller, "tok_visa")
    await shop.assert_exact()

    paid = await market.pay("resale", checkout["id"], buyer, "tok_visa")
    assert paid["status"] == "complete"
    assert (await market.listing(listing["id"]))["status"] == "sold"
    assert [t["ticket_id"] for t in await market.tickets_of(buyer)] == [f"{shop.event}-0"]
    assert await market.tickets_of(seller) == []
    assert shop.payments.charge_count == 2
    assert shop.payments.charges[-1].amount_cents == 4000
    audit = await shop.assert_exact()
    assert audit["sold"] == 1  # the ledger sees one sold ticket; the resale moved its owner
    # The new holder can resell it; the old one cannot.
    with pytest.raises(Forbidden):
        await market.create_listing(seller, f"{shop.event}-0", 5000)
    assert (await market.create_listing(buyer, f"{shop.event}-0", 5000))["status"] == "active"


async def test_resale_expiry_and_cancel_unlock_the_listing(make_cluster) -> None:
    shop = await open_shop(make_cluster, hold=30.0)
    market = shop.market
    seller, buyer = await account(shop, "seller"), await account(shop, "buyer")
    await shop.buy(seller)
    listing = await market.create_listing(seller, f"{shop.event}-0", 4000)

    first = await market.buy_listing(buyer, listing["id"])
    shop.clock.advance(31)
    await market.sweep()
    assert (await shop.order(first["id"], "resale"))["status"] == "expired"
    assert (await market.listing(listing["id"]))["status"] == "active"
    with pytest.raises(Conflict, match="expired"):
        await market.pay("resale", first["id"], buyer, "tok_visa")

    second = await market.buy_listing(buyer, listing["id"])
    await market.cancel("resale", second["id"], buyer)
    unlocked = await market.listing(listing["id"])
    assert unlocked["status"] == "active"
    edited = await market.edit_listing(seller, listing["id"], 3500, version=unlocked["version"])
    assert edited["price_cents"] == 3500
    assert shop.payments.charge_count == 1  # only the seller's original purchase
    await shop.assert_exact()


async def test_fifty_concurrent_purchase_attempts_give_one_lock(make_cluster) -> None:
    shop = await open_shop(make_cluster)
    market = shop.market
    seller = await account(shop, "seller")
    await shop.buy(seller)
    listing = await market.create_listing(seller, f"{shop.event}-0", 4000)
    with pytest.raises(Unauthorized):  # a checkout locks the listing: signed in only
        await market.buy_listing(visitor("anonymous"), listing["id"])
    buyers = [signed_in(f"buyer{i}", i) for i in range(50)]
    results = await asyncio.gather(
        *(market.buy_listing(b, listing["id"]) for b in buyers), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, dict)]
    assert len(won) == 1, results
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, dict))
    assert (await market.ledger.reader().listing(listing["id"]))["status"] == "locked"
    await shop.assert_exact()


async def test_listings_filter_by_event_and_price(make_cluster) -> None:
    shop = await open_shop(make_cluster)
    market = shop.market
    other_event = await shop.cluster.main.init_tickets("Matinee", "", "10.00", 2)
    await shop.cluster.main.distribute_tickets(other_event)
    s1, s2, s3 = [await account(shop, n) for n in ("s1", "s2", "s3")]
    for p, price in ((s1, 2000), (s2, 5000)):
        order = await shop.grant(p)
        await market.pay("order", order["id"], p, "tok_visa")
        await market.create_listing(p, f"{shop.event}-{order['serial']}", price)
    order = await shop.grant(s3, other_event)
    await market.pay("order", order["id"], s3, "tok_visa")
    await market.create_listing(s3, f"{other_event}-{order['serial']}", 3000)

    def prices(rows: list[dict[str, Any]]) -> list[int]:
        return [r["price_cents"] for r in rows]

    assert prices(await market.listings()) == [2000, 3000, 5000]
    assert prices(await market.listings(event_id=shop.event)) == [2000, 5000]
    assert prices(await market.listings(event_id=other_event)) == [3000]
    assert prices(await market.listings(min_price=2500)) == [3000, 5000]
    assert prices(await market.listings(max_price=3000)) == [2000, 3000]
    assert prices(await market.listings(event_id=shop.event, min_price=2001, max_price=5000)) == [
        5000
    ]
    mine = await market.listings(seller=s2, viewer=s2)
    assert prices(mine) == [5000] and mine[0]["mine"]


# -- waiting list ------------------------------------------------------------------


async def test_waiting_list_gets_released_tickets_in_order(make_cluster) -> None:
    shop = await open_shop(make_cluster, tickets=2, hold=30.0)
    market = shop.market
    ann, ben = visitor("ann"), visitor("ben")
    with pytest.raises(Conflict, match="still on sale"):
        await market.join_waitlist(signed_in("early", 1), shop.event)
    a = await shop.grant(ann)
    b = await shop.grant(ben)
    with pytest.raises(Conflict, match="already have a ticket"):
        await market.join_waitlist(Principal(ann.visitor, 10_001), shop.event)
    with pytest.raises(Unauthorized, match="sign in"):
        await market.join_waitlist(visitor("w0"), shop.event)

    w1, w2, w3 = signed_in("w1", 2), await account(shop, "w2"), signed_in("w3", 3)
    for i, p in enumerate((w1, w2, w3), 1):
        entry = await market.join_waitlist(p, shop.event)
        assert entry["position"] == i and entry["length"] == i
    with pytest.raises(Conflict, match="already on"):
        await market.join_waitlist(w1, shop.event)
    await market.leave_waitlist(w3, shop.event)
    assert (await market.waitlist_status(w2, shop.event))["position"] == 2

    notices: list[Any] = []
    market.watchers.append(notices.append)
    await market.cancel("order", a["id"], ann)  # first release -> head of the list
    status = await market.waitlist_status(w1, shop.event)
    assert status["status"] == "offered"
    offer = await shop.order(status["order_id"])
    assert offer["visitor"] == w1.visitor and offer["serial"] == a["serial"]
    assert offer["status"] == "awaiting_payment" and offer["shard"] == "main"
    assert offer["expires_at"] >= shop.clock() + 29  # its own, fresh hold
    assert await shop.ticket_state(shop.event, a["serial"]) == "held"
    assert (await market.waitlist_status(w2, shop.event))["position"] == 1
    offers = [n for n in notices if n.type == "offer"]
    assert len(offers) == 1 and offers[0].owner == w1
    assert offers[0].data["order"]["id"] == offer["id"]

    shop.clock.advance(31)  # both holds (ben's and w1's offer) run out
    await market.sweep()
    assert (await shop.order(b["id"]))["status"] == "expired"
    assert (await shop.order(offer["id"]))["status"] == "expired"
    w2_status = await market.waitlist_status(w2, shop.event)
    assert w2_status["status"] == "offered"  # next in line got one of them
    w2_order = await shop.order(w2_status["order_id"])
    assert w2_order["account_id"] == w2.account_id
    paid = await market.pay("order", w2_order["id"], w2, "tok_visa")
    assert paid["status"] == "complete"
    # Nobody else waits: the other ticket went back to main's pool.
    audit = await shop.assert_exact()
    assert audit["unassigned"] == 1 and audit["sold"] == 1 and audit["held"] == 0
    assert shop.cluster.main.ledger.unassigned_count(shop.event) == 1


async def test_cancelled_booking_is_refunded_and_goes_to_the_waiting_list(make_cluster) -> None:
    shop = await open_shop(make_cluster, tickets=1)
    market = shop.market
    ann = await account(shop, "ann")
    paid = await shop.buy(ann)
    waiter = signed_in("waiter", 1)
    await market.join_waitlist(waiter, shop.event)
    listing = await market.create_listing(ann, f"{shop.event}-0", 3000)
    with pytest.raises(Conflict, match="listed"):
        await market.cancel("order", paid["id"], ann)
    await market.withdraw_listing(ann, listing["id"])
    cancelled = await market.cancel("order", paid["id"], ann)
    assert cancelled["status"] == "cancelled"
    assert len(shop.payments.refunds) == 1
    assert shop.payments.refunds[0].charge_id == shop.payments.charges[0].id
    assert await market.tickets_of(ann) == []
    offered = await market.waitlist_status(waiter, shop.event)
    assert offered["status"] == "offered"
    audit = await shop.assert_exact()
    assert audit["held"] == 1 and audit["sold"] == 0


async def test_the_audit_notices_a_broken_market(make_cluster) -> None:
    shop = await open_shop(make_cluster)
    ann = await account(shop, "ann")
    await shop.buy(ann)
    await shop.assert_exact()
    sold = (await shop.market.tickets_of(ann))[0]["ticket_id"]
    async with shop.market.ledger.transaction() as tx:  # a bug that loses an owner row
        await tx.remove_owner(*map(int, sold.split("-")))
    audit = await shop.market.audit()
    assert not audit["exact"] and "have an owner" in audit["market_problems"][0]
