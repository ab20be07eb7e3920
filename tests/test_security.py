"""Issue 9: each attack, performed against real servers on 127.0.0.1 (real TLS, real sockets).

Every test asserts the safe outcome *and* that legitimate use still works. Clients
that must look like different machines bind their source address to another
loopback address (127.0.0.2, ...): Linux routes all of 127/8 to ``lo``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.test_admission import mint
from tests.test_market import PASSWORD, open_shop
from ticketing import RedirectServer
from ticketing.edge import SSL_READ_BUFFER, EdgeLimits, _AcceptErrorFilter
from ticketing.market.api import OPERATOR_ENV
from ticketing.ratelimit import LogThrottle, Rate, RateLimiter
from ticketing.visitor import VISITOR_COOKIE, public_id
from ticketing.web_client import WebClient, ws_url

pytestmark = pytest.mark.timeout(60)

OPERATOR = "operator-secret-0123456789"


class Browser:
    """A browser on its own machine: a cookie jar and a source address of its own."""

    def __init__(self, ctx: ssl.SSLContext, base: str, address: str = "127.0.0.1") -> None:
        self.ctx, self.base, self.address = ctx, base.rstrip("/"), address
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(ssl=ctx, local_addr=(address, 0), force_close=True),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    @property
    def origin(self) -> str:
        return self.base

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        same_origin: bool = True,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        """As the marketplace page calls the API (JSON, its own Origin), unless told otherwise."""
        hdrs = dict(headers or {})
        kwargs: dict[str, Any] = {}
        if raw is not None:
            kwargs["data"] = raw
        elif method != "GET":
            kwargs["json"] = {} if body is None else body
        if same_origin and method != "GET":
            hdrs.setdefault("Origin", self.origin)
        async with self.session.request(method, self.base + path, headers=hdrs, **kwargs) as r:
            data = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, data, r

    async def admission(self, path: str = "/") -> tuple[int, str | None, Any]:
        async with self.session.get(
            self.base + path, allow_redirects=False, headers={"Accept": "application/json"}
        ) as r:
            return r.status, r.headers.get("Location"), await r.json(content_type=None)

    async def ticket(self, event: int) -> dict[str, Any]:
        status, location, body = await self.admission(f"/events/{event}")
        assert status == 302 and location, body
        async with WebClient(self.ctx, source=self.address) as ws_client:
            outcome = await ws_client.claim(location)
        assert outcome.kind == "ticket", outcome
        return outcome.message

    async def signup(self, email: str) -> None:
        status, body, _ = await self.call(
            "POST", "/api/v1/accounts", {"email": email, "password": PASSWORD}
        )
        assert status == 201, body

    async def close(self) -> None:
        await self.session.close()


BrowserFactory = Callable[..., Browser]


@pytest.fixture
async def browser(ca_context: ssl.SSLContext) -> AsyncIterator[BrowserFactory]:
    made: list[Browser] = []

    def factory(base: str, address: str = "127.0.0.1") -> Browser:
        made.append(Browser(ca_context, base, address))
        return made[-1]

    yield factory
    for b in made:
        await b.close()


def token_claims(location: str) -> dict[str, Any]:
    token = parse_qs(urlsplit(location).query)["token"][0]
    body = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def errors_shape(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]


# -- 1. the admission URL must not give the visitor's orders away ---------------------


async def test_a_leaked_admission_url_does_not_give_away_the_visitors_orders(
    make_cluster, browser
) -> None:
    shop = await open_shop(make_cluster)
    victim = browser(shop.cluster.front)
    status, location, _ = await victim.admission(f"/events/{shop.event}")
    assert status == 302 and location
    secret = next(c.value for c in victim.session.cookie_jar if c.key == VISITOR_COOKIE)
    claims = token_claims(location)
    assert secret not in location and claims["v"] == public_id(secret) != secret
    async with WebClient(victim.ctx) as ws_client:
        msg = (await ws_client.claim(location)).message
    order_id = msg["order_id"]

    # The thief saw the URL: the token's visitor claim as a cookie gets them nothing.
    thief = browser(shop.cluster.front, "127.0.0.2")
    thief.session.cookie_jar.update_cookies({VISITOR_COOKIE: claims["v"]})
    status, body, _ = await thief.call("GET", "/api/v1/orders")
    assert status == 200 and body["orders"] == []
    for method, path, payload in (
        ("GET", f"/api/v1/orders/{order_id}", None),
        ("POST", f"/api/v1/orders/{order_id}/pay", {"card": "tok_visa"}),
        ("POST", f"/api/v1/orders/{order_id}/cancel", {}),
    ):
        status, body, _ = await thief.call(method, path, payload)
        assert status == 403 and errors_shape(body), (path, body)
    await thief.signup("thief@example.com")  # signing up claims nothing of the victim's
    assert (await thief.call("GET", "/api/v1/orders"))[1]["orders"] == []
    assert (await thief.call("GET", "/api/v1/tickets"))[1]["tickets"] == []

    # The victim still owns and pays for the order.
    status, body, _ = await victim.call("GET", "/api/v1/orders")
    assert [o["id"] for o in body["orders"]] == [order_id]
    status, body, _ = await victim.call(
        "POST", f"/api/v1/orders/{order_id}/pay", {"card": "tok_visa"}
    )
    assert status == 200 and body["status"] == "complete"
    assert shop.payments.charge_count == 1


# -- 2. a failed WebSocket handshake leaves nothing behind on the shard ---------------


async def test_failed_upgrades_leave_no_state_on_the_shard(make_cluster, ca_context) -> None:
    cluster = await make_cluster(1, redirect=True)
    await cluster.main.init_tickets("Show", "", "10", 5)
    await cluster.main.distribute_tickets()
    shard = cluster.shards[0]
    visitors = [secrets.token_urlsafe(16) for _ in range(100)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_context)) as s:
        for v in visitors:  # a plain GET with a valid token: no Upgrade header
            url = f"https://127.0.0.1:{shard.https_port}/ws?token={mint(cluster, 'shard-1', visitor=v)}"
            async with s.get(url) as resp:
                assert resp.status == 426
    # Each claim ends with its TCP connection (before the fix: 100 phantoms, forever).
    await asyncio.wait_for(_until(lambda: shard._web.live == {}), 5)
    assert shard._web.connections == 0 and shard._web.gate.connections == 0
    # Those visitors are not locked out: a real upgrade with a fresh token works.
    async with WebClient(ca_context) as client:
        token = mint(cluster, "shard-1", visitor=visitors[-1])
        outcome = await client.claim(f"https://127.0.0.1:{shard.https_port}/?token={token}")
    assert outcome.kind == "ticket", outcome
    assert shard._web.connections == 0  # and that connection's claim went with it


async def test_one_live_connection_per_visitor_still_holds(make_cluster, ca_context) -> None:
    cluster = await make_cluster(1, redirect=True)
    await cluster.main.init_tickets("Show", "", "10", 5)
    await cluster.main.distribute_tickets()
    shard = cluster.shards[0]
    visitor = secrets.token_urlsafe(16)
    first = (
        f"https://127.0.0.1:{shard.https_port}/?token={mint(cluster, 'shard-1', visitor=visitor)}"
    )
    async with connect(ws_url(first), ssl=ca_context):
        second = f"https://127.0.0.1:{shard.https_port}/?token={mint(cluster, 'shard-1', visitor=visitor)}"
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url(second), ssl=ca_context):
                pass
        assert info.value.response.status_code == 409
    await asyncio.wait_for(_until(lambda: shard._web.connections == 0), 10)


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - the server side closes on its own schedule
        await asyncio.sleep(0.01)


# -- 3. the front: slow clients, caps, buffers, logs ------------------------------------


async def front_with(make_cluster: Any, **opts: Any) -> Any:
    cluster = await make_cluster(1)
    await cluster.main.init_tickets("Show", "", "10", 50)
    await cluster.main.distribute_tickets()
    cluster.redirect = RedirectServer(cluster.main, **opts)
    await cluster.redirect.create_server(0)
    return cluster


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (EOF or reset); fails after ``seconds``."""
    t0 = time.monotonic()
    async with asyncio.timeout(seconds):
        try:
            while await reader.read(1024):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
    return time.monotonic() - t0


async def test_front_closes_idle_and_slow_header_clients(make_cluster, ca_context) -> None:
    limits = EdgeLimits(handshake_timeout=0.5, header_timeout=1.0)
    cluster = await front_with(make_cluster, limits=limits)
    port = cluster.redirect.port
    # A TCP client that never starts TLS: dropped after the handshake timeout.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await closed_within(reader, 5) < 3
    writer.close()
    # A TLS client sending one header line at a time: dropped after the header timeout.
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ca_context)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    sent, t0 = 0, time.monotonic()
    with pytest.raises((ConnectionError, ssl.SSLError, TimeoutError)):
        async with asyncio.timeout(5):
            while True:  # bounded by the timeout above
                writer.write(f"X-Slow-{sent}: 1\r\n".encode())
                await writer.drain()
                sent += 1
                if not await _readable_eof(reader, 0.25):
                    continue
                raise ConnectionError("closed by the server")
    assert time.monotonic() - t0 < 3 and sent < 12
    writer.close()
    assert cluster.redirect.gate.connections == 0
    # Legitimate requests are served as before, including keep-alive ones.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_context)) as s:
        for _ in range(3):
            async with s.get(cluster.front + "health") as resp:
                assert resp.status == 200 and await resp.json() == {"status": "up"}


async def _readable_eof(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closed within ``seconds``; False when it is still open."""
    try:
        data = await asyncio.wait_for(reader.read(1024), seconds)
    except TimeoutError:
        return False
    return data == b""


async def test_front_refuses_beyond_its_caps_cheaply_and_recovers(
    make_cluster, ca_context, caplog
) -> None:
    limits = EdgeLimits(max_connections=100, max_per_address=20, handshake_timeout=30)
    cluster = await front_with(make_cluster, limits=limits)
    gate, port = cluster.redirect.gate, cluster.redirect.port
    caplog.set_level(logging.WARNING, "ticketing.edge")
    flood = [await asyncio.open_connection("127.0.0.1", port) for _ in range(60)]
    await asyncio.wait_for(_until(lambda: gate.refused >= 40), 10)
    assert gate.connections == 20  # the rest were aborted before any TLS work
    closed = [await _readable_eof(r, 2) or r.at_eof() for r, _ in flood[40:]]
    assert all(closed)
    refusals = [r for r in caplog.records if "refusing connections" in r.getMessage()]
    assert 1 <= len(refusals) <= 2  # 40 refusals, one log line
    # Another address is served meanwhile.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ca_context, local_addr=("127.0.0.2", 0))
    ) as s:
        async with s.get(cluster.front + "health") as resp:
            assert resp.status == 200
    for _, w in flood:
        w.close()
    await asyncio.wait_for(_until(lambda: gate.connections == 0), 10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_context)) as s:
        async with s.get(cluster.front + "health") as resp:  # the flooder's address, again
            assert resp.status == 200


async def test_tls_read_buffers_are_capped_on_our_servers_only(make_cluster, ca_context) -> None:
    import asyncio.sslproto

    cluster = await front_with(make_cluster)
    shard = cluster.shards[0]
    for gate, port in (
        (cluster.redirect.gate, cluster.redirect.port),
        (shard._web.gate, shard.https_port),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ca_context)
        await asyncio.wait_for(_until(lambda g=gate: g.connections == 1), 5)
        (tls,) = gate._live
        assert tls.max_size == len(tls._ssl_buffer) == SSL_READ_BUFFER == 16 * 1024
        writer.close()
    assert asyncio.sslproto.SSLProtocol.max_size == 256 * 1024  # nothing patched process-wide


def test_accept_errors_and_refusals_are_logged_at_most_once_per_interval() -> None:
    now = [0.0]
    throttle_log = logging.getLogger("tests.throttle")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    throttle_log.addHandler(handler)
    throttle_log.setLevel(logging.INFO)
    try:
        throttle = LogThrottle(throttle_log, 10, clock=lambda: now[0])
        assert sum(throttle.log(logging.INFO, "k", "refused %s", i) for i in range(1000)) == 1
        now[0] += 11
        assert throttle.log(logging.INFO, "k", "refused %s", "again")
        assert records == ["refused 0", "refused again (and 999 more like it in the last 11 s)"]
    finally:
        throttle_log.removeHandler(handler)
    accept = _AcceptErrorFilter(10)
    record = logging.LogRecord("asyncio", logging.ERROR, "", 0, accept.MESSAGE, (), None)
    other = logging.LogRecord("asyncio", logging.ERROR, "", 0, "Task was destroyed", (), None)
    assert sum(accept.filter(record) for _ in range(500)) == 1
    assert accept.filter(other)  # anything else asyncio says passes


# -- 4. admissions are rate-limited per address and per visitor --------------------------


async def test_admissions_are_rate_limited_per_address_and_per_visitor(
    make_cluster, browser
) -> None:
    cluster = await front_with(
        make_cluster,
        admissions_per_address=Rate(burst=5, per_second=0.01),
        admissions_per_visitor=Rate(burst=2, per_second=0.01),
    )
    hoarders = [browser(cluster.front) for _ in range(25)]  # fresh cookie jars, one address
    answers = [await b.admission() for b in hoarders]
    statuses = [s for s, _, _ in answers]
    assert statuses.count(302) == 5 and statuses.count(429) == 20, statuses
    limited = next(b for s, _, b in answers if s == 429)
    assert limited["status"] == "rate_limited" and errors_shape(limited)
    async with hoarders[-1].session.get(cluster.front, allow_redirects=False) as resp:
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        assert resp.content_type == "text/html"  # browsers get a page
    # A buyer elsewhere is admitted; the same buyer reloading is limited as a visitor.
    buyer = browser(cluster.front, "127.0.0.2")
    statuses = [(await buyer.admission())[0] for _ in range(4)]
    assert statuses == [302, 302, 302, 429]  # fresh, then the visitor's burst of 2


async def test_rate_limiter_refills_and_forgets_old_keys() -> None:
    now = [0.0]
    limiter = RateLimiter(Rate(burst=2, per_second=0.5), clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(2.0)]
    now[0] += 2.0
    assert limiter.take("a") == 0.0 and limiter.take("b") == 0.0
    limiter.MAX_KEYS = 10  # type: ignore[misc]
    for i in range(50):
        limiter.take(i)
    assert len(limiter) == 10
    assert Rate.parse("30/60") == Rate(30, 0.5) and Rate.parse("5/50/5") == Rate(5, 0.1)
    with pytest.raises(ValueError):
        Rate.parse("lots")


async def test_resale_purchase_and_waiting_list_need_an_account(make_cluster, browser) -> None:
    shop = await open_shop(make_cluster, tickets=1)
    seller = browser(shop.cluster.front)
    await seller.signup("seller@example.com")
    msg = await seller.ticket(shop.event)
    await seller.call("POST", f"/api/v1/orders/{msg['order_id']}/pay", {"card": "tok_visa"})
    status, listing, _ = await seller.call(
        "POST", "/api/v1/listings", {"ticket_id": msg["ticket_id"], "price_cents": 2000}
    )
    assert status == 201
    stranger = browser(shop.cluster.front, "127.0.0.2")  # no account, no cookie
    status, body, _ = await stranger.call("POST", f"/api/v1/listings/{listing['id']}/buy")
    assert status == 401 and errors_shape(body)
    status, body, _ = await stranger.call("POST", f"/api/v1/events/{shop.event}/waitlist")
    assert status == 401 and errors_shape(body)
    status, body, _ = await seller.call("GET", f"/api/v1/listings/{listing['id']}")
    assert body["status"] == "active"  # not locked by the stranger
    buyer = browser(shop.cluster.front, "127.0.0.3")
    await buyer.signup("buyer@example.com")
    status, body, _ = await buyer.call("POST", f"/api/v1/listings/{listing['id']}/buy")
    assert status == 201


async def test_holds_are_capped_per_account(make_cluster, browser) -> None:
    shop = await open_shop(make_cluster, tickets=5)
    ann = browser(shop.cluster.front)
    await ann.signup("ann@example.com")
    await ann.ticket(shop.event)
    # The same account in another browser (another visitor) gets no second hold.
    other = browser(shop.cluster.front, "127.0.0.2")
    status, body, _ = await other.call(
        "POST", "/api/v1/session", {"email": "ann@example.com", "password": PASSWORD}
    )
    assert status == 200
    status, location, _ = await other.admission(f"/events/{shop.event}")
    async with WebClient(other.ctx) as ws_client:
        outcome = await ws_client.claim(location or "")
    orders = (await ann.call("GET", "/api/v1/orders"))[1]["orders"]
    assert outcome.kind != "ticket" or outcome.message["order_id"] == orders[0]["id"]
    assert len(orders) == 1


# -- 5. one ticket per account, also for tickets claimed on sign-in -----------------------


async def test_signing_in_does_not_bypass_one_ticket_per_account(make_cluster, browser) -> None:
    shop = await open_shop(make_cluster, tickets=5)
    ann = browser(shop.cluster.front)
    await ann.signup("ann@example.com")
    mine = await ann.ticket(shop.event)
    await ann.call("POST", f"/api/v1/orders/{mine['order_id']}/pay", {"card": "tok_visa"})
    anonymous = browser(shop.cluster.front, "127.0.0.2")  # another browser, not signed in
    msg = await anonymous.ticket(shop.event)
    await anonymous.call("POST", f"/api/v1/orders/{msg['order_id']}/pay", {"card": "tok_visa"})
    status, _, _ = await anonymous.call(
        "POST", "/api/v1/session", {"email": "ann@example.com", "password": PASSWORD}
    )
    assert status in (200, 409)
    tickets = (await ann.call("GET", "/api/v1/tickets"))[1]["tickets"]
    assert [t["ticket_id"] for t in tickets if t["event"]["id"] == shop.event] == [
        mine["ticket_id"]
    ]


# -- 6. CSRF: Origin and JSON required for state changes; WebSocket Origin checked ---------


async def test_cross_origin_requests_cannot_change_state(make_cluster, browser) -> None:
    shop = await open_shop(make_cluster)
    victim = browser(shop.cluster.front)
    await victim.signup("victim@example.com")
    msg = await victim.ticket(shop.event)
    order = f"/api/v1/orders/{msg['order_id']}"
    status, _, _ = await victim.call("POST", f"{order}/pay", {"card": "tok_visa"})
    assert status == 200
    evil = f"https://127.0.0.1:{shop.cluster.shards[0].https_port}"  # same site, other port
    # A no-cors fetch from there: the victim's cookies, a simple content type.
    for headers, raw, expected in (
        ({"Origin": evil, "Content-Type": "text/plain"}, "{}", 403),
        ({"Origin": evil, "Content-Type": "application/json"}, "{}", 403),  # no preflight
        ({"Content-Type": "text/plain"}, "{}", 415),  # a form or beacon without Origin
        ({"Content-Type": "application/x-www-form-urlencoded"}, "a=b", 415),
        ({}, b"", 415),  # body-less POST of no type
    ):
        status, body, _ = await victim.call(
            "POST", f"{order}/cancel", raw=raw, headers=headers, same_origin=False
        )
        assert status == expected and errors_shape(body), (headers, body)
    assert (await victim.call("GET", order))[1]["status"] == "complete"
    # The live socket refuses a foreign page and serves the front's own.
    ws_url_ = victim.base + "/api/v1/ws"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with victim.session.ws_connect(ws_url_, origin=evil):
            pass
    assert info.value.status == 403
    async with victim.session.ws_connect(ws_url_, origin=victim.origin) as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "hello"
    # The page's own requests still work.
    status, body, _ = await victim.call("POST", f"{order}/cancel", {})
    assert status == 200 and body["status"] == "cancelled", body


# -- 7. malformed input is a 4xx with {"errors": [...]}, never a 500 ------------------------


async def test_malformed_inputs_are_4xx_not_500(make_cluster, browser, monkeypatch) -> None:
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    shop = await open_shop(make_cluster)
    c = browser(shop.cluster.front)
    await c.signup("fuzz@example.com")
    admin = {"Authorization": f"Bearer {OPERATOR}"}
    deep = '{"a": ' + "[" * 30_000 + "]" * 30_000 + "}"
    event = {"name": "X", "description": "", "price": "1.00", "count": 1}
    cases: list[tuple[str, str, Any, dict[str, str]]] = [
        ("GET", "/api/v1/listings?event=%C2%B2", None, {}),
        ("GET", "/api/v1/listings?min_price=%D9%A3", None, {}),
        ("GET", "/api/v1/orders/%C2%B2", None, {}),
        ("GET", "/api/v1/admin/audit?event=%C2%B2", None, admin),
        ("GET", "/events/%C2%B2", None, {}),
        ("GET", "/events/" + "9" * 30, None, {}),
        ("POST", "/api/v1/listings", {"ticket_id": "1-" + "9" * 23, "price_cents": 100}, {}),
        ("POST", "/api/v1/listings", {"ticket_id": "²-1", "price_cents": 100}, {}),
        ("POST", "/api/v1/accounts", deep, {"Content-Type": "application/json"}),
        ("POST", "/api/v1/accounts", "{}", {"Content-Type": "application/json; charset=foo-bar"}),
        ("POST", "/api/v1/accounts", '{"email": "\\ud800@x.io", "password": "x"}', {}),
        ("POST", "/api/v1/session", '{"email": "\\ud800@x.io", "password": "xxxxxxxxxxx"}', {}),
        ("POST", "/api/v1/admin/events", dict(event, name="\ud800"), admin),
        ("POST", "/api/v1/admin/events", dict(event, description="a\udfffb"), admin),
        ("POST", "/api/v1/admin/events", dict(event, price="NaN"), admin),
        ("POST", "/api/v1/admin/events", dict(event, price="Infinity"), admin),
        ("POST", "/api/v1/admin/events", dict(event, price="1e30"), admin),
        ("POST", "/api/v1/admin/events", dict(event, price=1e30), admin),
        ("POST", "/api/v1/admin/events", '{"name": "X", "price": NaN, "count": 1}', admin),
    ]
    for method, path, body, headers in cases:
        hdrs = {"Content-Type": "application/json", **headers}
        if isinstance(body, str):
            status, answer, _ = await c.call(method, path, raw=body, headers=hdrs)
        elif body is not None:
            raw = json.dumps(body)  # "\ud800" stays an escape, as an attacker sends it
            status, answer, _ = await c.call(method, path, raw=raw, headers=hdrs)
        else:
            status, answer, _ = await c.call(method, path, headers=headers)
        assert 400 <= status < 500, (path, body, status, answer)
        if path.startswith("/api/"):
            assert errors_shape(answer), (path, answer)
    shard = shop.cluster.shards[0]
    async with c.session.get(f"https://127.0.0.1:{shard.https_port}/event?id=%C2%B2") as resp:
        assert resp.status == 404 and errors_shape(await resp.json())
    async with c.session.get(f"https://127.0.0.1:{shard.https_port}/event?id={shop.event}") as r:
        assert r.status == 200 and (await r.json())["name"] == "Opening night"
    status, body, _ = await c.call("POST", "/api/v1/admin/events", event, headers=admin)
    assert status == 201  # the well-formed one still works
    await shop.assert_exact()


# -- 8. public health is up or down; details need the operator token ----------------------


async def test_public_health_says_only_up_or_down(make_cluster, browser, monkeypatch) -> None:
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    shop = await open_shop(make_cluster)
    c = browser(shop.cluster.front)
    status, body, _ = await c.call("GET", "/health")
    assert (status, body) == (200, {"status": "up"})
    shard = shop.cluster.shards[0]
    async with c.session.get(f"https://127.0.0.1:{shard.https_port}/health") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "up"}
    status, body, _ = await c.call(
        "GET", "/api/v1/admin/status", headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert status == 200 and body["shards"][0]["url"].startswith("https://")
    await shard.close()  # the only shard goes away
    await asyncio.wait_for(_until(lambda: not shop.cluster.main.online_shards()), 10)
    status, body, _ = await c.call("GET", "/health")
    assert (status, body) == (503, {"status": "down"})


# -- 9. sign-in abuse: lockouts per address, a throttle per address, a bounded hash queue ----


async def test_strangers_cannot_lock_an_owner_out(make_cluster, browser) -> None:
    shop = await open_shop(make_cluster)
    owner = browser(shop.cluster.front, "127.0.0.2")
    await owner.signup("owner@example.com")
    await owner.call("DELETE", "/api/v1/session")
    attacker = browser(shop.cluster.front)
    for email in (
        "owner@example.com",
        "OWNER@example.com",
        " Owner@Example.com",
        "owner@EXAMPLE.com",
        "Owner@example.com",
    ):
        status, _, _ = await attacker.call(
            "POST", "/api/v1/session", {"email": email, "password": "not the password"}
        )
        assert status == 401
    status, body, resp = await attacker.call(
        "POST", "/api/v1/session", {"email": "owner@example.com", "password": PASSWORD}
    )
    assert status == 429 and int(resp.headers["Retry-After"]) > 60  # the guesser waits
    status, body, _ = await owner.call(
        "POST", "/api/v1/session", {"email": "owner@example.com", "password": PASSWORD}
    )
    assert status == 200 and body["signed_in"]  # the owner, elsewhere, does not


async def test_signin_floods_are_refused_before_hashing(make_cluster, browser) -> None:
    shop = await open_shop(make_cluster)
    accounts = shop.market.accounts
    assert accounts is not None
    before = accounts.hashes
    flood = browser(shop.cluster.front)
    answers = await asyncio.gather(
        *(
            flood.call(
                "POST", "/api/v1/session", {"email": f"nobody{i}@example.com", "password": PASSWORD}
            )
            for i in range(40)
        )
    )
    statuses = sorted(s for s, _, _ in answers)
    assert statuses.count(429) >= 30 and set(statuses) == {401, 429}, statuses
    assert accounts.hashes - before <= 10  # one address: its burst at most
    limited = next(r for s, _, r in answers if s == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    legit = browser(shop.cluster.front, "127.0.0.2")
    t0 = time.monotonic()
    await legit.signup("real@example.com")
    assert time.monotonic() - t0 < 10


async def test_a_full_hashing_queue_answers_429_at_once(make_cluster, browser) -> None:
    shop = await open_shop(make_cluster)
    accounts = shop.market.accounts
    assert accounts is not None
    accounts.max_hashing = 2
    # Many addresses (a botnet): no per-address limit applies, the queue bound does.
    crowd = [browser(shop.cluster.front, f"127.0.1.{i}") for i in range(1, 13)]
    answers = await asyncio.gather(
        *(
            b.call("POST", "/api/v1/session", {"email": f"n{i}@example.com", "password": PASSWORD})
            for i, b in enumerate(crowd)
        )
    )
    statuses = sorted(s for s, _, _ in answers)
    assert statuses.count(429) >= 6 and set(statuses) <= {401, 429}, statuses
    busy = next(body for s, body, _ in answers if s == 429)
    assert "try again" in busy["errors"][0]["message"]
    assert accounts.hashing == 0
    await crowd[0].signup("after@example.com")  # the queue drained: sign-ups work


# -- 10. the shard page links only to the configured front --------------------------------


async def test_the_shard_page_links_only_to_the_configured_front(
    make_cluster, browser, ca_context
) -> None:
    cluster = await front_with(make_cluster, public_origin="https://tickets.example")
    c = browser(cluster.front)
    status, location, _ = await c.admission()
    assert status == 302 and location and "front=" not in location
    assert token_claims(location)["f"] == "https://tickets.example"
    # A forged Host header changes nothing.
    async with c.session.get(
        cluster.front, allow_redirects=False, headers={"Host": "evil.example"}
    ) as resp:
        forged = resp.headers["Location"]
    assert "evil" not in forged and token_claims(forged)["f"] == "https://tickets.example"
    async with WebClient(ca_context) as ws_client:
        outcome = await ws_client.claim(location)
    assert outcome.kind == "ticket" and outcome.message["front"] == "https://tickets.example"
    shard = cluster.shards[0]
    async with c.session.get(f"https://127.0.0.1:{shard.https_port}/app.js") as resp:
        page = await resp.text()
    assert 'params.get("front")' not in page and "msg.front" in page
