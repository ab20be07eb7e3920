"""Prometheus metrics on the front and on every shard, scraped during a real crowd."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ticketing.metrics import FrontMetrics, MainMetrics, ShardMetrics, refusal_reason
from ticketing.operator import OPERATOR_ENV, OPERATOR_FILE_ENV
from ticketing.web_client import WebClient

pytestmark = pytest.mark.timeout(90)

OPERATOR = "metrics-operator-0123456789"
TICKETS = 60
VISITORS = 90
PAID = 5

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


async def scrape(session: aiohttp.ClientSession, url: str, token: str | None = OPERATOR) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/plain"
        return parse(await resp.text())


def test_every_metric_follows_the_naming_conventions() -> None:
    for metrics in (MainMetrics(), FrontMetrics(), ShardMetrics()):
        names = [family.name for family in metrics.registry.collect()]
        assert len(names) == len(set(names))
        for family in metrics.registry.collect():
            assert family.name.startswith("ticketing_"), family.name
            assert family.documentation, family.name
            if family.type == "counter":  # the client adds _total to the samples' names
                assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
    a, b = MainMetrics(), MainMetrics()  # two servers in one process never collide
    a.granted.labels("1").inc(3)
    assert b.granted.labels("1")._value.get() == 0


@pytest.mark.parametrize(
    "reason, label",
    [
        ("expired", "expired"),
        ("bad signature", "forged"),
        ("token refused: already used", "replayed"),
        ("token is for another shard", "other_shard"),
        ("malformed claims", "malformed"),
        ("something new", "other"),
    ],
)
def test_refusal_reasons_are_a_bounded_set(reason: str, label: str) -> None:
    assert refusal_reason(reason) == label


async def test_metrics_need_the_operator_token(make_cluster, monkeypatch, ca_context) -> None:
    monkeypatch.delenv(OPERATOR_ENV, raising=False)
    monkeypatch.delenv(OPERATOR_FILE_ENV, raising=False)
    cluster = await make_cluster(1, redirect=True)
    shard = f"https://127.0.0.1:{cluster.shards[0].https_port}/metrics"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_context)) as s:
        for url in (cluster.front + "metrics", shard):
            async with s.get(url, headers={"Authorization": f"Bearer {OPERATOR}"}) as resp:
                assert resp.status == 403, url  # disabled, not open
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    cluster = await make_cluster(1, redirect=True)
    shard = f"https://127.0.0.1:{cluster.shards[0].https_port}/metrics"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_context)) as s:
        for url in (cluster.front + "metrics", shard):
            for auth in ({}, {"Authorization": "Bearer " + "x" * 27}):
                async with s.get(url, headers=auth) as resp:
                    assert resp.status == 401, (url, auth)
                    assert resp.headers["WWW-Authenticate"] == "Bearer"


async def _visit(ctx: ssl.SSLContext, front: str, event: int, payers: list[int]) -> tuple[str, Any]:
    """One buyer; the first ``len(payers)`` to get a ticket pay for it (who wins is
    the order of arrival at the front, not the order the visits were started in)."""
    async with WebClient(ctx, timeout=60) as client:
        outcome = await client.get_ticket(f"{front}events/{event}")
        if outcome.kind == "ticket" and payers:
            payers.pop()
            url = f"{front}api/v1/orders/{outcome.message['order_id']}/pay"
            async with client.session.post(url, json={"card": "tok_visa"}) as resp:
                assert resp.status == 200, await resp.text()
        return outcome.kind, outcome.message


async def test_a_scrape_during_a_crowd_matches_the_audit(
    make_cluster, monkeypatch, ca_context
) -> None:
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    cluster = await make_cluster(2, redirect=True, load_test=True)
    main = cluster.main
    event = await main.init_tickets("Scraped show", "", "10.00", TICKETS)
    await main.distribute_tickets(event)
    shard_urls = [f"https://127.0.0.1:{s.https_port}/metrics" for s in cluster.shards]
    connector = aiohttp.TCPConnector(ssl=ca_context)
    payers = list(range(PAID))
    async with aiohttp.ClientSession(connector=connector) as session:
        crowd = asyncio.gather(
            *(_visit(ca_context, cluster.front, event, payers) for _ in range(VISITORS))
        )
        during: list[Samples] = []
        while not crowd.done() and len(during) < 50:  # bounded: one scrape per 20 ms at most
            during.append(await scrape(session, cluster.front + "metrics"))
            await asyncio.sleep(0.02)
        outcomes = await crowd
        after = await scrape(session, cluster.front + "metrics")
        shards = [await scrape(session, url) for url in shard_urls]

        # A forged token is refused before the upgrade and counted by reason.
        bad = f"wss://127.0.0.1:{cluster.shards[0].https_port}/ws?token=not-a-token"
        with pytest.raises(InvalidStatus):
            async with connect(bad, ssl=ca_context):
                pass
        refused = await scrape(session, shard_urls[0])

    kinds = [k for k, _ in outcomes]
    assert kinds.count("ticket") == TICKETS and kinds.count("sold_out") == VISITORS - TICKETS
    audit = await main.audit(event)
    assert audit.exact and (audit.held, audit.sold) == (TICKETS - PAID, PAID)
    e = str(event)

    granted = total(after, "ticketing_tickets_granted_total", event=e)
    assert granted == audit.held + audit.sold == TICKETS
    assert total(after, "ticketing_tickets_sold_total", event=e) == PAID
    assert total(after, "ticketing_tickets", event=e, state="held") == audit.held
    assert total(after, "ticketing_tickets", event=e, state="sold") == audit.sold
    assert total(after, "ticketing_tickets", event=e, state="unassigned") == audit.unassigned
    assert total(after, "ticketing_tickets_released_total", event=e) == 0
    assert total(after, "ticketing_shard_up") == 2
    assert total(after, "ticketing_ledger_batch_size_sales_sum") == TICKETS
    assert total(after, "ticketing_ledger_commit_seconds_count") >= 1

    # Scrapes during the crowd: granted only grows, never past the tickets there are,
    # and the ledger's states always account for every ticket.
    series = [total(s, "ticketing_tickets_granted_total", event=e) for s in during]
    assert during and series == sorted(series) and series[-1] <= TICKETS
    for s in during:
        states = [total(s, "ticketing_tickets", event=e, state=st) for st in _STATES]
        assert sum(states) == TICKETS

    admissions = total(after, "ticketing_front_admissions_total", outcome="redirect")
    assert total(after, "ticketing_front_admissions_total") == VISITORS
    assert total(after, "ticketing_http_request_duration_seconds_count", route="/events/{event_id}")
    assert sum(total(s, "ticketing_shard_answers_total", type="ticket") for s in shards) == TICKETS
    answered = sum(total(s, "ticketing_shard_answers_total") for s in shards)
    admitted = sum(total(s, "ticketing_shard_admissions_total", outcome="admitted") for s in shards)
    assert answered == admitted == admissions  # every admitted visitor got an answer
    ttt = sum(total(s, "ticketing_time_to_ticket_seconds_count", type="ticket") for s in shards)
    assert ttt == TICKETS
    # Seconds from the request at the shard to the answer: each one is positive (the
    # sum once mixed the front's unix clock with the shard's monotonic one).
    waited = sum(total(s, "ticketing_time_to_ticket_seconds_sum", type="ticket") for s in shards)
    assert 0 < waited < 60 * TICKETS
    assert sum(total(s, "ticketing_shard_queue_length") for s in shards) == 0
    assert total(refused, "ticketing_shard_admissions_total", outcome="malformed") == 1


_STATES: Iterable[str] = ("unassigned", "pool", "held", "sold")
