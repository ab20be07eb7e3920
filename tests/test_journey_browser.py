"""The buyer's whole journey in a real browser, across the front, the redirect and a shard.

Sign up, get a ticket through the redirect and the shard page, pay with the test
card on the front, see it under "my tickets", list it for resale; a second user
(a second browser context) buys it. The waiting list's live offer gets its own run.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser import artifact, browser_context
from tests.shop import PASSWORD, Shop, open_shop
from ticketing.web_client import WebClient

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

WAIT = 20_000  # ms


def tid(testid: str) -> str:
    return f"[data-testid='{testid}']"


async def open_front(context: Any, shop: Shop) -> Any:
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on(
        "response",
        lambda resp: errors.append(f"{resp.status} {resp.url}") if resp.status >= 400 else None,
    )
    page.js_errors = errors
    await page.goto(shop.cluster.front + "app/")
    await page.wait_for_selector("body[data-ready='1']", timeout=WAIT)
    return page


async def sign_up(page: Any, email: str) -> None:
    from playwright.async_api import expect

    await page.fill(tid("signup-email"), email)
    await page.fill(tid("signup-password"), PASSWORD)
    await page.click(tid("signup-submit"))
    await expect(page.locator(tid("whoami"))).to_have_text(f"Signed in as {email}", timeout=WAIT)


async def pay(page: Any) -> None:
    from playwright.async_api import expect

    await expect(page.locator(tid("checkout"))).to_be_visible(timeout=WAIT)
    await expect(page.locator(tid("checkout-countdown"))).to_have_text(
        re.compile(r"^\d+:\d\d$"), timeout=WAIT
    )
    await page.select_option(tid("checkout-card"), "tok_visa")
    await page.click(tid("pay"))
    await expect(page.locator(tid("checkout-status"))).to_have_text(
        "Paid: the ticket is yours", timeout=WAIT
    )


@pytest.mark.parametrize("door", ["embedded", "front-process"])
async def test_the_whole_journey(make_cluster, door: str) -> None:
    """``front-process``: the browser talks only to a separate ``ticketing front``."""
    from playwright.async_api import expect

    shop = await open_shop(make_cluster, shards=2, tickets=4, hold=120.0)
    if door == "front-process":
        await shop.cluster.add_front_process()
    async with browser_context() as ann_context:
        ann = await open_front(ann_context, shop)
        await sign_up(ann, "ann@example.com")

        # Get a ticket: the front's link goes through the redirect to a shard's page.
        await ann.click(tid(f"get-ticket-{shop.event}"))
        await ann.wait_for_selector(f"{tid('ticket-id')}:not(:empty)", timeout=WAIT)
        shard_ports = {s.https_port for s in shop.cluster.shards}
        assert int(ann.url.split(":")[2].split("/")[0]) in shard_ports
        ticket = await ann.text_content(tid("ticket-id"))
        assert ticket and ticket.startswith(f"{shop.event}-")
        await ann.screenshot(
            path=str(artifact(f"journey-1-shard-ticket-{door}.png")), full_page=True
        )

        # Checkout on the front, with the test card.
        await ann.click(tid("checkout-link"))
        await ann.wait_for_url(re.compile(r"/app/\?order=\d+"), timeout=WAIT)
        ann.js_errors.clear()  # only the front's errors count (the shard page has no favicon)
        await expect(ann.locator(tid("checkout-ticket"))).to_have_text(ticket, timeout=WAIT)
        await ann.screenshot(path=str(artifact("journey-2-checkout.png")), full_page=True)
        await pay(ann)
        assert shop.payments.charge_count == 1

        # My tickets, then list it for resale and change the price.
        mine = ann.locator(tid(f"ticket-{ticket}"))
        await expect(mine).to_be_visible(timeout=WAIT)
        await ann.fill(tid(f"list-price-{ticket}"), "30.00")
        await ann.click(tid(f"list-{ticket}"))
        await expect(ann.locator(tid(f"listing-price-{ticket}"))).to_have_text(
            "€30.00", timeout=WAIT
        )
        await ann.fill(tid(f"edit-price-{ticket}"), "28.50")
        await ann.click(tid(f"save-price-{ticket}"))
        await expect(ann.locator(tid(f"listing-price-{ticket}"))).to_have_text(
            "€28.50", timeout=WAIT
        )
        await ann.screenshot(path=str(artifact("journey-3-listed.png")), full_page=True)

        # A second user, in a second browser context, buys it.
        bob_context = await ann_context.browser.new_context(ignore_https_errors=True)
        bob = await open_front(bob_context, shop)
        await sign_up(bob, "bob@example.com")
        offer = bob.locator("[data-testid^='resale-price-']")
        await expect(offer).to_have_text("€28.50", timeout=WAIT)
        await bob.locator("[data-testid^='buy-']").click()
        await bob.wait_for_url(re.compile(r"/app/\?resale=\d+"), timeout=WAIT)
        # The seller's page learns live that the listing is locked.
        await expect(ann.locator(tid(f"listing-status-{ticket}"))).to_have_text(
            "locked", timeout=WAIT
        )
        await bob.screenshot(path=str(artifact("journey-4-resale-checkout.png")), full_page=True)
        await pay(bob)
        await expect(bob.locator(tid(f"ticket-{ticket}"))).to_be_visible(timeout=WAIT)
        await bob.screenshot(path=str(artifact("journey-5-buyer-tickets.png")), full_page=True)
        # ...and that the ticket has left "my tickets".
        await expect(ann.locator(tid(f"ticket-{ticket}"))).to_have_count(0, timeout=WAIT)
        await ann.screenshot(path=str(artifact("journey-6-seller-after-sale.png")), full_page=True)
        assert ann.js_errors == [] and bob.js_errors == []
        await bob_context.close()

    assert shop.payments.charge_count == 2
    assert [c.amount_cents for c in shop.payments.charges] == [2500, 2850]
    audit = await shop.assert_exact()
    assert audit["sold"] == 1 and audit["held"] == 0 and audit["total"] == 4


async def test_waiting_list_offer_arrives_live_in_the_browser(make_cluster, ca_context) -> None:
    from playwright.async_api import expect

    shop = await open_shop(make_cluster, tickets=1, hold=120.0)
    async with WebClient(ca_context) as holder:
        held = await holder.get_ticket(shop.cluster.front)
        assert held.kind == "ticket"
        async with browser_context() as context:
            page = await open_front(context, shop)
            await sign_up(page, "waiter@example.com")  # the waiting list is for accounts
            await page.click(tid(f"join-waitlist-{shop.event}"))
            await expect(page.locator(tid(f"waitlist-position-{shop.event}"))).to_have_text(
                "You are number 1 on the waiting list", timeout=WAIT
            )
            await page.screenshot(path=str(artifact("waitlist-1-joined.png")), full_page=True)

            base = shop.cluster.front.rstrip("/")
            cancel = f"{base}/api/v1/orders/{held.message['order_id']}/cancel"
            async with holder.session.post(cancel, json={}) as resp:
                assert resp.status == 200

            await expect(page.locator(tid("offer"))).to_be_visible(timeout=WAIT)
            await expect(page.locator(tid("offer-text"))).to_contain_text(held.message["ticket_id"])
            await page.screenshot(path=str(artifact("waitlist-2-offer.png")), full_page=True)
            await page.click(tid("offer-link"))
            await pay(page)
            assert page.js_errors == []
    assert shop.payments.charge_count == 1
    audit = await shop.assert_exact()
    assert audit["sold"] == 1
