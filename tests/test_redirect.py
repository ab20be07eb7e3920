"""The redirect server: where it sends visitors, and what it says when it cannot."""

from __future__ import annotations

import secrets
from collections import Counter
from urllib.parse import urlsplit

import aiohttp
import pytest

from ticketing.web_client import WebClient

pytestmark = pytest.mark.timeout(60)


async def test_visitors_go_only_to_shards_with_stock(make_cluster, ca_context) -> None:
    cluster = await make_cluster(3, redirect=True)
    await cluster.main.init_tickets("Show", "", "10", 30)
    await cluster.main.distribute_tickets(weights={"shard-1": 0, "shard-2": 1, "shard-3": 0})
    ports = Counter()
    for _ in range(20):
        async with WebClient(ca_context) as client:
            status, location, body = await client.admission(cluster.front)
        assert status == 302 and body["status"] == "redirect" and location == body["location"]
        ports[urlsplit(location).port] += 1
    assert set(ports) == {cluster.shards[1].https_port}


async def test_a_dry_shard_gets_half_of_the_richest_shards_stock(make_cluster, ca_context) -> None:
    cluster = await make_cluster(2, redirect=True)
    await cluster.main.init_tickets("Show", "", "10", 10)
    await cluster.main.distribute_tickets(weights={"shard-1": 0, "shard-2": 1})
    dry, rich = cluster.shards
    token = cluster.main.signer.sign(
        "admission", {"v": "v" * 20, "s": "shard-1", "e": 1, "n": secrets.token_hex(8)}, 60
    )
    async with WebClient(ca_context) as client:
        outcome = await client.claim(f"https://127.0.0.1:{dry.https_port}/?token={token}")
    assert outcome.kind == "ticket"
    assert outcome.ticket_id == "1-5"  # the lowest of the tail half moved from shard-2
    audit = await cluster.main.audit()
    assert audit.exact and audit.pools == {"shard-1": 4, "shard-2": 5} and audit.held == 1
    assert len(rich.dispenser.pools[1]) == 5 and rich.dispenser.pools[1].ranges() == [(0, 5)]


async def test_sold_out_is_a_page_for_browsers_and_json_for_clients(
    make_cluster, ca_context
) -> None:
    cluster = await make_cluster(1, redirect=True)
    await cluster.main.init_tickets("Gone", "", "10", 0)
    await cluster.main.distribute_tickets()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_context)) as s:
        async with s.get(cluster.front, allow_redirects=False) as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "sold out" in page and "data-testid=status" in page
            assert "data-testid=waitlist-link href=/app/" in page
        async with s.get(cluster.front, headers={"Accept": "application/json"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "sold_out"


async def test_no_shard_online_is_503_not_500(make_cluster, ca_context) -> None:
    cluster = await make_cluster(0, redirect=True)
    await cluster.main.init_tickets("Show", "", "10", 5)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_context)) as s:
        async with s.get(cluster.front, headers={"Accept": "application/json"}) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "5"
            assert (await resp.json())["status"] == "unavailable"
        async with s.get(cluster.front.rstrip("/") + "/events/not-a-number") as resp:
            assert resp.status == 404


async def test_an_offline_shard_gets_no_new_visitors(make_cluster, ca_context) -> None:
    cluster = await make_cluster(2, redirect=True, reclaim_after=None)
    await cluster.main.init_tickets("Show", "", "10", 20)
    await cluster.main.distribute_tickets()
    down, up = cluster.shards
    down._tls_server.close()  # main cannot reconnect: it stays offline
    assert down.link
    await down.link.close("network cut")
    await cluster.main.changes.wait_for(lambda: not cluster.main.shards["shard-1"].online, 10)
    ports = set()
    for _ in range(10):
        async with WebClient(ca_context) as client:
            status, location, _ = await client.admission(cluster.front)
        assert status == 302 and location
        ports.add(urlsplit(location).port)
    assert ports == {up.https_port}
    # Its tickets are not lost: they stay in its pool until it returns or is fenced.
    audit = await cluster.main.audit()
    assert audit.exact and audit.pools == {"shard-1": 10, "shard-2": 10}


async def test_pages_carry_security_headers(make_cluster, ca_context) -> None:
    cluster = await make_cluster(1, redirect=True)
    shard = f"https://127.0.0.1:{cluster.shards[0].https_port}/"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_context)) as s:
        for url in (shard, cluster.front, cluster.front + "app/"):
            async with s.get(url, allow_redirects=False) as resp:
                assert resp.headers["Referrer-Policy"] == "no-referrer", url
                assert resp.headers["X-Frame-Options"] == "DENY", url
                assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"], url
