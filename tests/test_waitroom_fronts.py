"""The waiting room across front processes: one line, real sockets, real TLS.

Two :class:`~ticketing.front.node.FrontServer` objects in this process, each on its
own port and its own link to main (mutual TLS), as two front processes would be.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ticketing.changes import wait_any
from ticketing.cluster import LOAD_TEST_FRONT_OPTIONS
from ticketing.front.node import FrontServer
from ticketing.front.pow import solve
from ticketing.front.queue import QueueOptions
from ticketing.tokens import peek_claims
from ticketing.web_client import WebClient

pytestmark = pytest.mark.timeout(60)

JSON = {"Accept": "application/json"}


async def open_front(cluster: Any, name: str, key_path: Path | None = None) -> FrontServer:
    port = await cluster.main.serve_fronts(0)
    options = {
        **LOAD_TEST_FRONT_OPTIONS,
        "queue": QueueOptions(tick=0.05, entries_per_address=None),
    }
    front = FrontServer(name, mains=[("127.0.0.1", port)], key_path=key_path, **options)
    front.set_certificate_path(cluster.keys)
    await front.create_server(0)
    await front.wait_linked()
    return front


def url(front: FrontServer, event_id: int, query: str = "") -> str:
    return f"https://127.0.0.1:{front.port}/events/{event_id}" + (f"?{query}" if query else "")


async def ask(s: aiohttp.ClientSession, where: str) -> tuple[int, dict[str, Any]]:
    async with s.get(where, headers=JSON, allow_redirects=False) as resp:
        return resp.status, await resp.json()


def session(ca_context) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ca_context), cookie_jar=aiohttp.CookieJar(unsafe=True)
    )


async def ticks(fronts: list[FrontServer], condition: Any) -> None:
    """Until ``condition()`` holds after some waiting-room tick of the fronts."""
    await wait_any([f.queue.changes for f in fronts], condition, 10)


async def test_two_fronts_release_one_crowd_in_arrival_order(make_cluster, ca_context) -> None:
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Two doors, one line", "", "10", 6)
    await cluster.main.distribute_tickets()
    await cluster.main.update_event(event_id, release_rate=0.001)  # everyone waits at first
    fronts = [await open_front(cluster, "front-1"), await open_front(cluster, "front-2")]
    released: list[int] = []
    clients = [WebClient(ca_context, timeout=30) for _ in range(12)]
    try:
        entries = []
        for i, c in enumerate(clients):  # one after the other, alternating fronts
            status, _, body = await c.admission(url(fronts[i % 2], event_id))
            assert status == 200 and body["status"] == "queued", body
            entries.append(body)
        tokens = [e["queue"] for e in entries]
        ranks = [peek_claims(t)["r"] for t in tokens]
        assert ranks == sorted(ranks)
        kids = [peek_claims(t)["kid"] for t in tokens]  # each front signs with its own key
        assert kids == ["front-1", "front-2"] * 6
        for f in fronts:  # spy on each door's releases
            line = f.queue.line(event_id)
            original = line.release

            def spy(n: int, now: float, original: Any = original) -> list[int]:
                out = original(n, now)
                released.extend(out)
                return out

            line.release = spy  # type: ignore[method-assign]
        # Both fronts have the other's line in main's last orders: positions count both.
        await ticks(
            fronts,
            lambda: all(
                (o := f.queue.orders.get(event_id)) and [s.waiting for s in o.others] == [6]
                for f in fronts
            ),
        )
        positions = []
        for i, (c, token) in enumerate(zip(clients, tokens, strict=True)):
            _, _, body = await c.admission(url(fronts[i % 2], event_id, f"queue={token}"))
            positions.append(body["position"])
        assert positions == list(range(1, 13))
        _, _, moved = await clients[0].admission(url(fronts[1], event_id, f"queue={tokens[0]}"))
        assert moved["status"] == "queued" and moved["position"] == 1  # a reload at the other
        await cluster.main.update_event(event_id, release_rate=None)  # the line moves
        await ticks(fronts, lambda: all(f.queue.orders[event_id].rate > 1 for f in fronts))
        outcomes = await asyncio.gather(
            *(
                c.get_ticket(url(fronts[i % 2], event_id, f"queue={token}"))
                for i, (c, token) in enumerate(zip(clients, tokens, strict=True))
            )
        )
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        for f in fronts:
            await f.close()
    # The first six arrivals won, whichever front they came through.
    assert [o.kind for o in outcomes] == ["ticket"] * 6 + ["sold_out"] * 6
    # What main let go is always the lowest ranks, on both fronts: at least the first six
    # (more only if a released visitor took over 5 s to come: it stops counting then).
    gone = sorted(set(released))
    assert gone == ranks[: len(gone)] and len(gone) >= 6
    audit = await cluster.main.audit()
    assert audit.exact and audit.held == 6


async def test_a_revoked_fronts_tickets_are_refused_and_its_restart_brings_them_back(
    make_cluster, ca_context, tmp_path: Path
) -> None:
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Kept across fronts", "", "10", 4)
    await cluster.main.distribute_tickets()
    await cluster.main.update_event(event_id, release_rate=0.001, pow_bits=6)
    key = tmp_path / "front-1.signing.key"
    a, b = await open_front(cluster, "front-1", key), await open_front(cluster, "front-2")
    try:
        async with session(ca_context) as s:
            _, asked = await ask(s, url(a, event_id))
            assert (
                asked["status"] == "challenge"
                and peek_claims(asked["challenge"])["kid"] == "front-1"
            )
            solution = solve(asked["challenge"], asked["bits"])
            query = f"pow={asked['challenge']}&solution={solution}"
            status, elsewhere = await ask(s, url(b, event_id, query))
            assert status == 403 and elsewhere["status"] == "challenge"  # a's, not b's to check
            _, entered = await ask(s, url(a, event_id, query))
            token = entered["queue"]
            assert entered["status"] == "queued" and peek_claims(token)["kid"] == "front-1"
            rank = peek_claims(token)["r"]  # b knows a's line as it is now (one tick on)
            await ticks(
                [b], lambda: [o.marks for o in b.queue.orders[event_id].others] == [(rank,)]
            )
            status, there = await ask(s, url(b, event_id, f"queue={token}"))
            assert status == 200 and there["position"] == 1  # a certified front's ticket
            await a.close()  # its link closes: main revokes its key everywhere
            await ticks([b], lambda: "front-1" not in b.view.keys)
            status, refused = await ask(s, url(b, event_id, f"queue={token}"))
            assert status == 403 and refused["status"] == "refused"
            a = await open_front(cluster, "front-1", key)  # restarted, with its kept key
            await ticks([b], lambda: "front-1" in b.view.keys)
            for front in (a, b):  # the place survived the restart, at either front
                status, back = await ask(s, url(front, event_id, f"queue={token}"))
                assert status == 200 and back["position"] == 1, back
    finally:
        await a.close()
        await b.close()
