"""The WSS door of a shard: only a valid, unused token for this shard gets in."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ticketing.shard import web
from ticketing.tokens import TokenSigner
from ticketing.web_client import WebClient, ws_url

pytestmark = pytest.mark.timeout(60)


def shard_url(shard: Any, token: str) -> str:
    return f"https://127.0.0.1:{shard.https_port}/?event=1&token={token}"


def mint(
    cluster: Any,
    shard: str,
    *,
    ttl: float = 60,
    signer: TokenSigner | None = None,
    visitor: str | None = None,
    event: int = 1,
) -> str:
    claims = {
        "v": visitor or secrets.token_urlsafe(16),
        "s": shard,
        "e": event,
        "n": secrets.token_urlsafe(12),
    }
    return (signer or cluster.main.signer).sign("admission", claims, ttl)


async def refused_status(url: str, ctx: ssl.SSLContext) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(url), ssl=ctx):
            pass
    return info.value.response.status_code


@pytest.fixture
async def cluster(make_cluster: Any) -> Any:
    c = await make_cluster(2, redirect=True)
    await c.main.init_tickets("Show", "", "10", 6)
    await c.main.distribute_tickets()
    return c


async def final_answer(ws: Any) -> dict[str, Any]:
    """The first message that is not "pending" (a loaded machine can take a second)."""
    while (msg := json.loads(await ws.recv()))["type"] == "pending":
        pass
    return msg  # type: ignore[no-any-return]


async def assert_nothing_left_the_pools(cluster: Any, held: int = 0) -> None:
    audit = await cluster.main.audit()
    assert audit.exact and audit.held == held and audit.in_pools == 6 - held


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda c: mint(c, "shard-1", signer=TokenSigner()), id="forged"),
        pytest.param(lambda c: mint(c, "shard-1", ttl=-1), id="expired"),
        pytest.param(lambda c: mint(c, "shard-2"), id="other-shard"),
        pytest.param(lambda c: "", id="no-token"),
        pytest.param(lambda c: "not.a-token", id="garbage"),
        pytest.param(lambda c: "x" * 5000, id="oversized"),
        pytest.param(lambda c: c.main.signer.sign("session", {"v": "a"}, 60), id="wrong-type"),
    ],
)
async def test_bad_tokens_are_refused_before_the_upgrade(cluster, ca_context, make_token) -> None:
    shard1 = cluster.shards[0]
    assert await refused_status(shard_url(shard1, make_token(cluster)), ca_context) == 403
    await assert_nothing_left_the_pools(cluster)
    # The shard keeps serving: a good token still works.
    async with WebClient(ca_context) as client:
        outcome = await client.claim(shard_url(shard1, mint(cluster, "shard-1")))
    assert outcome.kind == "ticket"
    await assert_nothing_left_the_pools(cluster, held=1)


async def test_a_token_is_single_use(cluster, ca_context) -> None:
    location = shard_url(cluster.shards[0], mint(cluster, "shard-1"))
    async with WebClient(ca_context) as client:
        first = await client.claim(location)
        replay = await client.claim(location)
    assert first.kind == "ticket"
    assert (replay.kind, replay.status) == ("refused", 403)
    assert "already used" in replay.message["message"]
    await assert_nothing_left_the_pools(cluster, held=1)


async def test_one_live_connection_per_visitor(cluster, ca_context) -> None:
    shard = cluster.shards[0]
    visitor = secrets.token_urlsafe(16)
    first_url = ws_url(shard_url(shard, mint(cluster, "shard-1", visitor=visitor)))
    async with connect(first_url, ssl=ca_context) as first:
        second = shard_url(shard, mint(cluster, "shard-1", visitor=visitor))
        assert await refused_status(second, ca_context) == 409
        await assert_nothing_left_the_pools(cluster)
        await first.send(json.dumps({"type": "request"}))
        answer = await final_answer(first)
    assert answer["type"] == "ticket"
    # Later, the same visitor (new token, same shard or another) gets the same ticket back.
    async with WebClient(ca_context) as client:
        again = await client.claim(shard_url(shard, mint(cluster, "shard-1", visitor=visitor)))
        other = cluster.shards[1]
        elsewhere = await client.claim(shard_url(other, mint(cluster, "shard-2", visitor=visitor)))
    assert again.ticket_id == elsewhere.ticket_id == answer["ticket_id"]
    await assert_nothing_left_the_pools(cluster, held=1)


async def test_the_redirect_gives_one_visitor_one_ticket(cluster, ca_context) -> None:
    async with WebClient(ca_context) as client:
        outcomes = [await client.get_ticket(cluster.front) for _ in range(3)]
    assert {o.kind for o in outcomes} == {"ticket"}
    assert len({o.ticket_id for o in outcomes}) == 1
    await assert_nothing_left_the_pools(cluster, held=1)


async def test_bad_messages_get_errors_and_oversized_ones_close(cluster, ca_context) -> None:
    url = ws_url(shard_url(cluster.shards[0], mint(cluster, "shard-1")))
    async with connect(url, ssl=ca_context) as ws:
        await ws.send("{not json")
        assert json.loads(await ws.recv())["type"] == "error"
        await ws.send(json.dumps({"type": "something-else"}))
        assert json.loads(await ws.recv())["type"] == "error"
        await ws.send("x" * 10_000)
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    await assert_nothing_left_the_pools(cluster)


async def test_a_visitor_who_leaves_before_the_grant_takes_nothing(cluster, ca_context) -> None:
    shard = cluster.shards[0]
    lowest = shard.dispenser.pools[1].ranges()[0][0]
    shard._ready.clear()  # hold grants back, as while main is unreachable
    url = ws_url(shard_url(shard, mint(cluster, "shard-1")))
    async with connect(url, ssl=ca_context) as ws:
        await ws.send(json.dumps({"type": "request"}))
        await shard.changes.wait_for(lambda: shard.dispenser.queued() == 1, 10)
    await shard.changes.wait_for(lambda: shard.dispenser.queued() == 0, 10)  # noticed the close
    shard._ready.set()
    shard._wake.set()
    await assert_nothing_left_the_pools(cluster)
    async with WebClient(ca_context) as client:
        outcome = await client.claim(shard_url(shard, mint(cluster, "shard-1")))
    assert outcome.ticket_id == f"1-{lowest}"  # the one the leaver would have had


async def test_sold_out_and_unknown_event_answers(make_cluster, ca_context) -> None:
    cluster = await make_cluster(1, redirect=True)
    event = await cluster.main.init_tickets("Tiny", "", "0", 1)
    await cluster.main.distribute_tickets()
    async with WebClient(ca_context) as a, WebClient(ca_context) as b:
        assert (await a.get_ticket(cluster.front)).kind == "ticket"
        sold = await b.get_ticket(cluster.front)
        status, location, body = await b.admission(cluster.front.rstrip("/") + "/events/99")
    assert sold.kind == "sold_out" and sold.message["event"]["id"] == event
    assert (status, location, body["status"]) == (404, None, "no_event")


async def test_one_ticket_per_signed_in_account_across_browsers(cluster, ca_context) -> None:
    """Two browsers (two visitor ids) of one account get the same ticket."""

    def for_account(shard: str) -> str:
        claims = {
            "v": secrets.token_urlsafe(16),
            "s": shard,
            "e": 1,
            "n": secrets.token_urlsafe(12),
            "a": 42,
        }
        return cluster.main.signer.sign("admission", claims, 60)

    one, two = cluster.shards
    async with WebClient(ca_context) as a, WebClient(ca_context) as b:
        first = await a.claim(shard_url(one, for_account("shard-1")))
        second = await b.claim(shard_url(two, for_account("shard-2")))
    assert first.kind == second.kind == "ticket"
    assert first.ticket_id == second.ticket_id
    await assert_nothing_left_the_pools(cluster, held=1)


async def test_a_visitor_whose_ticket_waits_for_main_hears_pending_until_it_comes(
    cluster: Any, ca_context: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "PENDING_EVERY", 0.05)
    confirm = asyncio.Event()  # main records the shard's sales only once this is set
    record = cluster.main._record

    async def held_back(*args: Any) -> Any:
        await confirm.wait()
        return await record(*args)

    monkeypatch.setattr(cluster.main, "_record", held_back)
    url = ws_url(shard_url(cluster.shards[0], mint(cluster, "shard-1")))
    async with connect(url, ssl=ca_context) as ws:
        await ws.send(json.dumps({"type": "request"}))
        first, second = json.loads(await ws.recv()), json.loads(await ws.recv())
        assert first["type"] == second["type"] == "pending"
        assert 0 < first["waited_s"] <= second["waited_s"]
        confirm.set()
        answer = await final_answer(ws)
    assert answer["type"] == "ticket"
    # The Python client hears them too (the benchmarks' "longest wait without an
    # answer" counts them) and goes on waiting for the answer.
    confirm.clear()
    heard = 0

    def pending() -> None:
        nonlocal heard
        heard += 1
        if heard == 3:
            confirm.set()  # main confirms after the third

    async with WebClient(ca_context) as client:
        url = shard_url(cluster.shards[0], mint(cluster, "shard-1"))
        out = await client.claim(url, on_pending=pending)
    assert out.kind == "ticket" and heard >= 3
    await assert_nothing_left_the_pools(cluster, held=2)
