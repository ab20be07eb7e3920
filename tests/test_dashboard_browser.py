"""The live operator dashboard at /admin/ in a real browser, with a screenshot."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from tests.browser import artifact, browser_context
from ticketing.operator import OPERATOR_ENV
from ticketing.web_client import WebClient

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

OPERATOR = "dashboard-operator-0123456789"


async def _buy(ctx: ssl.SSLContext, front: str, event: int, pay: bool) -> None:
    async with WebClient(ctx, timeout=30) as client:
        outcome = await client.get_ticket(f"{front}events/{event}")
        assert outcome.kind == "ticket", outcome
        if pay:
            url = f"{front}api/v1/orders/{outcome.message['order_id']}/pay"
            async with client.session.post(url, json={"card": "tok_visa"}) as resp:
                assert resp.status == 200


async def test_dashboard_shows_sales_shards_and_fencings_live(
    make_cluster, monkeypatch, ca_context
) -> None:
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    cluster = await make_cluster(2, redirect=True)
    main = cluster.main
    event = await main.init_tickets("Dashboard night", "", "20.00", 40)
    await main.distribute_tickets()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_context)) as s:
        async with s.get(cluster.front + "admin/data") as resp:
            assert resp.status == 401  # the data needs the operator token; the page does not
    await asyncio.gather(*(_buy(ca_context, cluster.front, event, i < 3) for i in range(10)))
    epoch = await main.reclaim_shard("shard-2")

    async with browser_context(viewport={"width": 1100, "height": 1000}) as context:
        page = await context.new_page()
        await page.goto(cluster.front + "admin/")
        await page.fill("#token", "not-the-operator-token")
        await page.click("button[type=submit]")
        await page.wait_for_selector("#signin-error:has-text('credential')", timeout=10_000)

        await page.fill("#token", OPERATOR)
        await page.click("button[type=submit]")
        card = f"[data-testid=event-{event}]"
        await page.wait_for_selector(card, timeout=10_000)
        sold = page.locator(f"[data-testid=event-{event}-sold] b")
        held = page.locator(f"[data-testid=event-{event}-held] b")
        assert await sold.text_content() == "3" and await held.text_content() == "7"

        await _buy(ca_context, cluster.front, event, False)  # live: the page follows
        await page.wait_for_selector(
            f"[data-testid=event-{event}-held] b:has-text('8')", timeout=10_000
        )
        rows = page.locator("[data-testid=shards] tbody tr")
        assert await rows.count() == 2
        await page.wait_for_selector("[data-testid=shards] td.up >> nth=1", timeout=15_000)
        fencings = await page.text_content("[data-testid=fencings]")
        assert fencings and f"shard-2 fenced at epoch {epoch}" in fencings
        await page.screenshot(path=str(artifact("dashboard.png")), full_page=True)
