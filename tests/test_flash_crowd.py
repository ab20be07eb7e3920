"""A flash crowd over real TLS: main + 3 shard processes, more buyers than tickets."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from pathlib import Path

import pytest

from ticketing.cluster import LocalCluster, shard_names
from ticketing.web_client import WebClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TICKETS = 1_000
CLIENTS = 1_500


async def test_flash_crowd_sells_each_ticket_exactly_once(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, shard_names(3), load_test=True) as cluster:
        main = cluster.main
        assert main
        event = await main.init_tickets("Flash sale", "1,000 seats", "49.50", TICKETS)
        given = await main.distribute_tickets()
        assert sorted(given.values()) == [333, 333, 334]
        ctx = ssl.create_default_context(cafile=str(cluster.keys / "ca.crt"))

        async def visit() -> object:
            async with WebClient(ctx, timeout=120) as client:
                return await client.get_ticket(cluster.front_url)

        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*(visit() for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - t0

        kinds = Counter(o.kind for o in outcomes)
        tickets = [o.ticket_id for o in outcomes if o.kind == "ticket"]
        errors = [o.message for o in outcomes if o.kind not in ("ticket", "sold_out")]
        assert errors == []
        assert kinds == {"ticket": TICKETS, "sold_out": CLIENTS - TICKETS}
        assert len(set(tickets)) == TICKETS
        assert {t.split("-")[0] for t in tickets} == {str(event)}
        assert all(o.message["price_cents"] == 4950 for o in outcomes if o.kind == "ticket")

        audit = await main.audit()
        assert audit.exact, audit.problems
        assert (audit.held, audit.unassigned, audit.in_pools) == (TICKETS, 0, 0)
        latencies = sorted(o.timings["total"] for o in outcomes if o.kind == "ticket")
        print(
            f"\nflash crowd: {CLIENTS} clients, {TICKETS} tickets in {elapsed:.1f}s "
            f"({TICKETS / elapsed:.0f} tickets/s); time-to-ticket p50 "
            f"{latencies[len(latencies) // 2] * 1000:.0f} ms, p95 "
            f"{latencies[int(len(latencies) * 0.95)] * 1000:.0f} ms"
        )
