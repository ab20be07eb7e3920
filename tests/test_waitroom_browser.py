"""The waiting page in Chromium: proof of work, the pre-queue countdown, the place in
line with its ETA, then the ticket on the shard's page. Screenshots in artifacts/."""

from __future__ import annotations

import time

import aiohttp
import pytest

from tests.browser import artifact, browser_context
from tests.test_waitroom import JSON, front
from ticketing.front.pow import DEFAULT_POW_BITS, solve

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


async def test_waiting_page_counts_down_shows_the_place_then_the_ticket(
    make_cluster, ca_context
) -> None:
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Premiere", "Doors at eight", "30.00", 10)
    await cluster.main.distribute_tickets()
    start = time.time() + 6.0
    await cluster.main.update_event(
        event_id,
        sale_starts_at=start,
        prequeue_order="arrival",  # so the three below are surely ahead of the browser
        pow_bits=DEFAULT_POW_BITS,
        release_rate=1.0,  # one a second: the browser waits its turn visibly
    )
    # Room for the three ahead (who never come for their turn) and the browser: a
    # released visitor who does not come holds a place in the window for 15 s.
    await front(cluster, min_window=4)
    url = f"{cluster.front}events/{event_id}"
    ahead = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ca_context),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )
        for _ in range(3)
    ]
    try:
        for s in ahead:  # three visitors enter first (API clients solve the work too)
            async with s.get(url, headers=JSON) as resp:
                asked = await resp.json()
            entry = cluster.front.rstrip("/") + asked["location"] + solve(asked["challenge"], 16)
            async with s.get(entry, headers=JSON) as resp:
                assert (await resp.json())["status"] == "queued"

        async with browser_context() as context:
            page = await context.new_page()
            t0 = time.perf_counter()
            await page.goto(url)  # the challenge page solves the work and enters
            await page.wait_for_selector("#prequeue:not([hidden])", timeout=20_000)
            work_s = time.perf_counter() - t0
            countdown = await page.text_content("[data-testid=countdown]")
            assert "queue=" in page.url  # a reload keeps the place
            await page.screenshot(path=str(artifact("waitroom-prequeue.png")), full_page=True)

            await page.wait_for_selector("#line:not([hidden])", timeout=20_000)  # the start
            position = int(await page.text_content("[data-testid=position]") or "0")
            eta = await page.text_content("[data-testid=eta]")
            await page.screenshot(path=str(artifact("waitroom-position.png")), full_page=True)
            await page.reload()  # still in line, same place or better
            await page.wait_for_selector("#line:not([hidden])", timeout=10_000)
            again = int(await page.text_content("[data-testid=position]") or "0")

            await page.wait_for_selector("[data-testid=ticket-id]:not(:empty)", timeout=30_000)
            ticket = await page.text_content("[data-testid=ticket-id]")
            shard_port = cluster.shards[0].https_port
            assert f":{shard_port}/" in page.url
            await page.screenshot(path=str(artifact("waitroom-ticket.png")), full_page=True)
    finally:
        for s in ahead:
            await s.close()

    print(f"\nproof of work ({DEFAULT_POW_BITS} bits) + entry in Chromium: {work_s:.2f} s")
    assert countdown and countdown.endswith(" s") and 0 < int(countdown.split()[0]) <= 6
    assert 2 <= position <= 4 and eta and eta.endswith(" s")  # three were ahead
    assert 1 <= again <= position
    assert ticket and ticket.startswith(f"{event_id}-")
    audit = await cluster.main.audit()
    assert audit.exact and audit.held == 1
