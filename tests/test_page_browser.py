"""The buyer's page in a real browser: redirect, WSS, a ticket on screen."""

from __future__ import annotations

import pytest

from tests.browser import artifact, browser_context

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


async def test_browser_gets_a_ticket_through_the_redirect(make_cluster) -> None:
    cluster = await make_cluster(2, redirect=True)
    await cluster.main.init_tickets("Opening night", "General admission", "25.00", 5)
    await cluster.main.distribute_tickets()

    async with browser_context() as context:
        page = await context.new_page()
        await page.goto(cluster.front)
        # The redirect put us on a shard's HTTPS port with an admission token.
        shard_ports = {s.https_port for s in cluster.shards}
        assert int(page.url.split(":")[2].split("/")[0]) in shard_ports
        await page.wait_for_selector("[data-testid=ticket-id]:not(:empty)", timeout=20_000)
        ticket_id = await page.text_content("[data-testid=ticket-id]")
        status = await page.text_content("[data-testid=status]")
        countdown = await page.text_content("[data-testid=countdown]")
        await page.screenshot(path=str(artifact("ticket-page.png")), full_page=True)

    assert status == "You have a ticket!"
    assert ticket_id and ticket_id.startswith("1-")
    assert countdown and countdown.startswith("1") and ":" in countdown  # ~15:00 hold
    audit = await cluster.main.audit()
    assert audit.exact and audit.held == 1 and audit.in_pools == 4
