"""The REST API over real HTTPS on the redirect server, with real grants through shards."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.shop import PASSWORD, Shop, open_shop
from ticketing.errors import ConfigError
from ticketing.market.api import OPERATOR_ENV, OPERATOR_FILE_ENV, operator_token_from_env
from ticketing.market.sessions import COOKIE_NAME
from ticketing.web_client import WebClient

pytestmark = pytest.mark.timeout(60)

OPERATOR = "operator-secret-0123456789"


class Client:
    """One browser-like visitor: cookie jar, trusts the cluster CA."""

    def __init__(self, shop: Shop, ssl_context: ssl.SSLContext, source: str | None = None) -> None:
        self.shop = shop
        self.web = WebClient(ssl_context, timeout=30, source=source)
        self.base = shop.cluster.front.rstrip("/")

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if body is not None:
            kwargs["json"] = body
        elif raw is None and method != "GET":
            kwargs["json"] = {}  # as the page does: state changes are always JSON (CSRF)
        if raw is not None:
            kwargs["data"] = raw
        async with self.web.session.request(method, self.base + path, **kwargs) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def signup(self, email: str) -> dict[str, Any]:
        status, body = await self.call(
            "POST", "/api/v1/accounts", {"email": email, "password": PASSWORD}
        )
        assert status == 201, body
        return body["account"]

    async def ticket(self) -> dict[str, Any]:
        """Through the redirect and the shard's WSS, as the page does."""
        outcome = await self.web.get_ticket(f"{self.base}/events/{self.shop.event}")
        assert outcome.kind == "ticket", outcome
        return outcome.message

    async def bought(self) -> str:
        """Get a ticket and pay for it; returns its ticket id."""
        msg = await self.ticket()
        status, body = await self.call(
            "POST", f"/api/v1/orders/{msg['order_id']}/pay", {"card": "tok_visa"}
        )
        assert status == 200, body
        return str(msg["ticket_id"])

    async def listed(self, email: str, price_cents: int = 3000) -> dict[str, Any]:
        """Sign up as ``email``, buy a ticket and list it; returns the listing."""
        await self.signup(email)
        ticket = await self.bought()
        status, listing = await self.call(
            "POST", "/api/v1/listings", {"ticket_id": ticket, "price_cents": price_cents}
        )
        assert status == 201, listing
        return listing


ClientFactory = Callable[..., Client]


@pytest.fixture
async def client(ca_context: ssl.SSLContext) -> AsyncIterator[ClientFactory]:
    made: list[Client] = []

    def factory(shop: Shop, source: str | None = None) -> Client:
        """``source``: the loopback address to connect from (per-address limits apply)."""
        c = Client(shop, ca_context, source)
        made.append(c)
        return c

    yield factory
    for c in made:
        await c.web.close()


def error(body: Any, status: int, got: int, *, field: str | None = None, match: str = "") -> None:
    """An error in the API's shape, with the expected status, field and message."""
    assert got == status, body
    assert isinstance(body, dict) and len(body["errors"]) == 1, body
    err = body["errors"][0]
    assert err.get("field") == field, body
    assert match.lower() in err["message"].lower(), body


# -- accounts --------------------------------------------------------------------


async def test_signup_signin_signout_and_me(make_cluster, client) -> None:
    shop = await open_shop(make_cluster)
    c = client(shop)
    assert await c.call("GET", "/api/v1/me") == (200, {"signed_in": False, "account": None})
    async with c.web.session.post(
        c.base + "/api/v1/accounts", json={"email": " Ann@Example.com ", "password": PASSWORD}
    ) as resp:
        assert resp.status == 201
        account = (await resp.json())["account"]
        cookie = resp.cookies[COOKIE_NAME]
    assert account["email"] == "ann@example.com"
    assert cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "Lax"
    token = cookie.value
    status, me = await c.call("GET", "/api/v1/me")
    assert status == 200 and me["signed_in"] and me["account"]["id"] == account["id"]

    status, out = await c.call("DELETE", "/api/v1/session")
    assert status == 200 and out["signed_out"]
    assert (await c.call("GET", "/api/v1/me"))[1]["signed_in"] is False
    # The old token, replayed, is revoked.
    replay = {"Cookie": f"{COOKIE_NAME}={token}"}
    assert (await c.call("GET", "/api/v1/me", headers=replay))[1]["signed_in"] is False

    status, body = await c.call(
        "POST", "/api/v1/session", {"email": "ann@example.com", "password": PASSWORD}
    )
    assert status == 200 and body["account"]["id"] == account["id"]
    assert (await c.call("GET", "/api/v1/me"))[1]["account"]["email"] == "ann@example.com"


async def test_account_errors_are_clear(make_cluster, client) -> None:
    shop = await open_shop(make_cluster)
    c = client(shop)
    await c.signup("dup@example.com")
    status, body = await c.call(
        "POST", "/api/v1/accounts", {"email": "DUP@example.com", "password": PASSWORD}
    )
    error(body, 409, status, field="email", match="already exists")
    status, body = await c.call(
        "POST", "/api/v1/accounts", {"email": "not-an-email", "password": PASSWORD}
    )
    error(body, 400, status, field="email", match="valid email")
    status, body = await c.call(
        "POST", "/api/v1/accounts", {"email": "x@example.com", "password": "short"}
    )
    error(body, 400, status, field="password", match="at least 10")
    status, body = await c.call("POST", "/api/v1/accounts", {"email": "x@example.com"})
    error(body, 400, status, field="password", match="string")
    status, body = await c.call(
        "POST", "/api/v1/session", {"email": "dup@example.com", "password": "wrong password"}
    )
    error(body, 401, status, match="wrong email or password")
    status, body = await c.call(
        "POST", "/api/v1/session", {"email": "nobody@example.com", "password": PASSWORD}
    )
    error(body, 401, status, match="wrong email or password")


async def test_repeated_failed_signins_are_throttled_per_email(make_cluster, client) -> None:
    shop = await open_shop(make_cluster)
    c = client(shop)
    await c.signup("eve@example.com")
    await c.call("DELETE", "/api/v1/session")
    wrong = {"email": "eve@example.com", "password": "not the password"}
    for _ in range(5):
        status, body = await c.call("POST", "/api/v1/session", wrong)
        error(body, 401, status, match="wrong email or password")
    right = {"email": "EVE@example.com", "password": PASSWORD}
    status, body = await c.call("POST", "/api/v1/session", right)
    error(body, 429, status, field="email", match="too many failed sign-ins")
    status, body = await c.call(  # another account is not locked out
        "POST", "/api/v1/session", {"email": "other@example.com", "password": PASSWORD}
    )
    error(body, 401, status, match="wrong email or password")


async def test_malformed_requests_get_4xx_not_500(make_cluster, client) -> None:
    shop = await open_shop(make_cluster)
    c = client(shop)
    json_header = {"Content-Type": "application/json"}
    status, body = await c.call("POST", "/api/v1/accounts", raw=b"{not json", headers=json_header)
    error(body, 400, status, match="not valid JSON")
    status, body = await c.call("POST", "/api/v1/accounts", raw=b"\xff\xfe", headers=json_header)
    error(body, 400, status, match="not valid JSON")
    status, body = await c.call("POST", "/api/v1/accounts", raw=b"[1, 2]", headers=json_header)
    error(body, 400, status, match="JSON object")
    status, body = await c.call(
        "POST", "/api/v1/accounts", raw="email=a", headers={"Content-Type": "text/plain"}
    )
    error(body, 415, status, match="Content-Type: application/json")
    big = json.dumps({"email": "a@example.com", "password": "x" * 100_000})
    status, body = await c.call("POST", "/api/v1/accounts", raw=big, headers=json_header)
    error(body, 413, status, match="too large")
    status, body = await c.call("GET", "/api/v1/nothing-here")
    error(body, 404, status)
    status, body = await c.call("PUT", "/api/v1/me")
    error(body, 405, status)
    status, body = await c.call("GET", "/api/v1/listings?min_price=cheap")
    error(body, 400, status, field="min_price")
    status, body = await c.call("GET", "/api/v1/orders/999999999999")
    error(body, 404, status)
    status, body = await c.call("POST", "/api/v1/listings", {"ticket_id": "x", "price_cents": 1})
    error(body, 401, status, match="sign in")
    status, body = await c.call("POST", "/api/v1/orders/1/pay", {"card": 42})
    error(body, 400, status, field="card")
    status, body = await c.call(
        "POST", "/api/v1/orders/1/pay", {"card": "tok_visa", "version": "1"}
    )
    error(body, 400, status, field="version")


# -- operators -------------------------------------------------------------------


async def test_operator_endpoints_are_disabled_without_a_credential(
    make_cluster, client, monkeypatch
) -> None:
    monkeypatch.delenv(OPERATOR_ENV, raising=False)
    monkeypatch.delenv(OPERATOR_FILE_ENV, raising=False)
    shop = await open_shop(make_cluster)
    c = client(shop)
    for method, path in (
        ("POST", "/api/v1/admin/events"),
        ("POST", f"/api/v1/admin/events/{shop.event}/distribute"),
        ("GET", "/api/v1/admin/status"),
        ("GET", "/api/v1/admin/audit"),
    ):
        status, body = await c.call(
            method, path, headers={"Authorization": "Bearer anything-at-all"}
        )
        error(body, 403, status, match=f"disabled: set {OPERATOR_ENV}")


async def test_operator_endpoints_with_a_credential(make_cluster, client, monkeypatch) -> None:
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    shop = await open_shop(make_cluster, shards=2)
    c = client(shop)
    event = {"name": "Late show", "description": "Standing", "price": "12.50", "count": 10}
    status, body = await c.call("POST", "/api/v1/admin/events", event)
    error(body, 401, status, match="credential required")
    status, body = await c.call(
        "POST", "/api/v1/admin/events", event, headers={"Authorization": "Bearer " + "x" * 26}
    )
    error(body, 401, status, match="wrong operator credential")
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    status, body = await c.call("POST", "/api/v1/admin/events", dict(event, count=0), headers=auth)
    error(body, 400, status, field="count")
    status, body = await c.call(
        "POST", "/api/v1/admin/events", dict(event, price="1.234"), headers=auth
    )
    error(body, 400, status, field="price")
    status, body = await c.call("POST", "/api/v1/admin/events", dict(event, name=""), headers=auth)
    error(body, 400, status, field="name")

    status, body = await c.call("POST", "/api/v1/admin/events", event, headers=auth)
    assert status == 201 and body["event"]["price_cents"] == 1250
    new = body["event"]["id"]
    status, body = await c.call("POST", f"/api/v1/admin/events/{new}/distribute", headers=auth)
    assert status == 200 and sum(body["given"].values()) == 10 and len(body["given"]) == 2
    status, body = await c.call("POST", "/api/v1/admin/events/999/distribute", headers=auth)
    error(body, 404, status)
    status, body = await c.call("GET", "/api/v1/admin/status", headers=auth)
    assert status == 200 and {s["name"] for s in body["shards"]} == {"shard-1", "shard-2"}
    status, body = await c.call("GET", "/api/v1/admin/audit", headers=auth)
    assert status == 200 and body["exact"] and body["total"] == 15 and body["market_problems"] == []
    status, events = await c.call("GET", "/api/v1/events")
    assert [e["name"] for e in events["events"]] == ["Opening night", "Late show"]


def test_operator_token_configuration(tmp_path: Path) -> None:
    assert operator_token_from_env({}) is None
    assert operator_token_from_env({OPERATOR_ENV: OPERATOR}) == OPERATOR
    secret = tmp_path / "operator-token"
    secret.write_text(OPERATOR + "\n")
    assert operator_token_from_env({OPERATOR_FILE_ENV: str(secret)}) == OPERATOR
    with pytest.raises(ConfigError, match="at least 16"):
        operator_token_from_env({OPERATOR_ENV: "admin"})  # no weak default either
    with pytest.raises(ConfigError, match="cannot read"):
        operator_token_from_env({OPERATOR_FILE_ENV: str(tmp_path / "missing")})


# -- checkout ------------------------------------------------------------------------


async def test_checkout_over_http(make_cluster, client) -> None:
    shop = await open_shop(make_cluster, hold=60.0)
    ann, eve = client(shop), client(shop)
    account = await ann.signup("ann@example.com")
    msg = await ann.ticket()  # the session rides in the admission token
    assert 59 <= msg["hold_seconds"] <= 60
    order_id = msg["order_id"]
    assert (await shop.order(order_id))["account_id"] == account["id"]
    status, body = await ann.call("GET", "/api/v1/orders")
    assert status == 200 and [o["id"] for o in body["orders"]] == [order_id]
    order = body["orders"][0]
    assert order["status"] == "awaiting_payment" and 55 < order["seconds_left"] <= 60

    status, body = await eve.call("GET", f"/api/v1/orders/{order_id}")
    error(body, 403, status, match="someone else")
    status, body = await eve.call("POST", f"/api/v1/orders/{order_id}/pay", {"card": "tok_visa"})
    error(body, 403, status, match="someone else")
    status, body = await ann.call("POST", f"/api/v1/orders/{order_id}/pay", {"card": "tok_decline"})
    error(body, 402, status, field="card", match="declined")
    assert shop.payments.charge_count == 0
    status, body = await ann.call("GET", f"/api/v1/orders/{order_id}")
    assert body["status"] == "awaiting_payment"
    status, body = await ann.call(
        "POST", f"/api/v1/orders/{order_id}/pay", {"card": "tok_visa", "version": 1}
    )
    error(body, 409, status, field="version", match="changed since")
    status, body = await ann.call(
        "POST",
        f"/api/v1/orders/{order_id}/pay",
        {"card": "tok_visa", "version": order["version"] + 1},
    )
    assert status == 200 and body["status"] == "complete", body
    status, body = await ann.call("POST", f"/api/v1/orders/{order_id}/pay", {"card": "tok_visa"})
    error(body, 409, status, match="already paid")
    assert shop.payments.charge_count == 1
    status, body = await ann.call("GET", "/api/v1/tickets")
    assert [t["ticket_id"] for t in body["tickets"]] == [msg["ticket_id"]]
    await shop.assert_exact()


async def test_cancel_puts_the_ticket_back_on_sale_through_the_redirect(
    make_cluster, client
) -> None:
    shop = await open_shop(make_cluster, tickets=1, shards=2)
    ann, bob = client(shop), client(shop)
    msg = await ann.ticket()
    status, _, body = await bob.web.admission(f"{bob.base}/events/{shop.event}")
    assert body["status"] == "sold_out"
    status, body = await ann.call("POST", f"/api/v1/orders/{msg['order_id']}/cancel", {})
    assert status == 200 and body["status"] == "cancelled"
    status, body = await ann.call("POST", f"/api/v1/orders/{msg['order_id']}/cancel", {})
    error(body, 409, status, match="cancelled")
    again = await bob.ticket()  # main has it again; a shard asks for it
    assert again["ticket_id"] == msg["ticket_id"]
    audit = await shop.assert_exact()
    assert audit["held"] == 1


# -- resale -----------------------------------------------------------------------------


async def test_resale_over_http(make_cluster, client) -> None:
    shop = await open_shop(make_cluster, hold=60.0)
    seller, buyer = client(shop), client(shop)
    await seller.signup("seller@example.com")
    await buyer.signup("buyer@example.com")  # a checkout locks the listing: signed in only
    ticket = await seller.bought()
    status, body = await seller.call(
        "POST", "/api/v1/listings", {"ticket_id": ticket, "price_cents": 0}
    )
    error(body, 400, status, field="price_cents")
    status, listing = await seller.call(
        "POST", "/api/v1/listings", {"ticket_id": ticket, "price_cents": 3000}
    )
    assert status == 201 and listing["status"] == "active"
    lid = listing["id"]
    status, body = await buyer.call(
        "GET", f"/api/v1/listings?event={shop.event}&min_price=2000&max_price=3000"
    )
    assert [x["id"] for x in body["listings"]] == [lid] and body["listings"][0]["mine"] is False
    status, body = await buyer.call("GET", "/api/v1/listings?max_price=2999")
    assert body["listings"] == []
    status, body = await seller.call("GET", "/api/v1/listings?mine=1")
    assert [x["id"] for x in body["listings"]] == [lid] and body["listings"][0]["mine"]

    status, body = await seller.call(
        "PATCH", f"/api/v1/listings/{lid}", {"price_cents": 3200, "version": listing["version"]}
    )
    assert status == 200 and body["price_cents"] == 3200
    status, body = await buyer.call("PATCH", f"/api/v1/listings/{lid}", {"price_cents": 1})
    error(body, 403, status, match="only the seller")
    status, body = await seller.call("POST", f"/api/v1/listings/{lid}/buy")
    error(body, 403, status, match="your own listing")

    status, checkout = await buyer.call("POST", f"/api/v1/listings/{lid}/buy")
    assert status == 201 and checkout["kind"] == "resale" and checkout["price_cents"] == 3200
    status, body = await seller.call("PATCH", f"/api/v1/listings/{lid}", {"price_cents": 5000})
    error(body, 409, status, match="locked")
    status, body = await seller.call("DELETE", f"/api/v1/listings/{lid}")
    error(body, 409, status, match="locked")
    status, body = await buyer.call("GET", f"/api/v1/listings/{lid}")
    assert body["status"] == "locked" and body["locked_until"] == checkout["expires_at"]

    status, body = await buyer.call(
        "POST", f"/api/v1/resale-orders/{checkout['id']}/pay", {"card": "tok_visa"}
    )
    assert status == 200 and body["status"] == "complete"
    status, body = await buyer.call("GET", "/api/v1/tickets")
    assert [t["ticket_id"] for t in body["tickets"]] == [ticket]
    status, body = await seller.call("GET", "/api/v1/tickets")
    assert body["tickets"] == []
    status, body = await seller.call("DELETE", f"/api/v1/listings/{lid}")
    error(body, 409, status, match="already sold")
    assert shop.payments.charge_count == 2
    await shop.assert_exact()


async def test_withdraw_over_http(make_cluster, client) -> None:
    shop = await open_shop(make_cluster)
    seller = client(shop)
    listing = await seller.listed("seller@example.com")
    status, body = await seller.call("DELETE", f"/api/v1/listings/{listing['id']}?version=99")
    error(body, 409, status, field="version")
    status, body = await seller.call(
        "DELETE", f"/api/v1/listings/{listing['id']}?version={listing['version']}"
    )
    assert status == 200 and body["status"] == "withdrawn"
    assert (await seller.call("GET", "/api/v1/listings"))[1]["listings"] == []


async def test_fifty_concurrent_purchase_attempts_over_http_give_one_lock(
    make_cluster, client
) -> None:
    shop = await open_shop(make_cluster)
    seller = client(shop)
    listing = await seller.listed("seller@example.com")
    # Signed-in buyers (a checkout locks the listing), from a few addresses each: the
    # front limits sign-ups per address.
    buyers = [client(shop, f"127.0.1.{i // 8 + 1}") for i in range(50)]
    for i, b in enumerate(buyers):
        await b.signup(f"buyer{i}@example.com")
    results = await asyncio.gather(
        *(b.call("POST", f"/api/v1/listings/{listing['id']}/buy") for b in buyers)
    )
    statuses = sorted(s for s, _ in results)
    assert statuses == [201] + [409] * 49, statuses
    winner = next(b for b, (s, _) in zip(buyers, results, strict=True) if s == 201)
    order = next(body for s, body in results if s == 201)
    status, body = await winner.call(
        "POST", f"/api/v1/resale-orders/{order['id']}/pay", {"card": "tok_visa"}
    )
    assert status == 200 and body["status"] == "complete"
    assert shop.payments.charge_count == 2
    await shop.assert_exact()


# -- waiting list and live offers ---------------------------------------------------------


async def test_waiting_list_position_and_live_offer(make_cluster, client) -> None:
    shop = await open_shop(make_cluster, tickets=1, hold=60.0)
    holder, first, second = client(shop), client(shop), client(shop)
    status, body = await first.call("POST", f"/api/v1/events/{shop.event}/waitlist")
    error(body, 401, status, match="sign in")  # an offer is a held ticket: accounts only
    await holder.signup("holder@example.com")
    await first.signup("first@example.com")
    await second.signup("second@example.com")
    status, body = await first.call("POST", f"/api/v1/events/{shop.event}/waitlist")
    error(body, 409, status, match="still on sale")
    held = await holder.ticket()
    status, body = await holder.call("POST", f"/api/v1/events/{shop.event}/waitlist")
    error(body, 409, status, match="already have a ticket")

    await first.call("GET", "/api/v1/me")  # a visitor cookie before the socket opens
    async with first.web.session.ws_connect(first.base + "/api/v1/ws") as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "hello"
        status, body = await first.call("POST", f"/api/v1/events/{shop.event}/waitlist")
        assert status == 201 and body["position"] == 1 and body["status"] == "waiting"
        status, body = await second.call("POST", f"/api/v1/events/{shop.event}/waitlist")
        assert status == 201 and body["position"] == 2
        status, body = await second.call("GET", f"/api/v1/events/{shop.event}/waitlist")
        assert body["position"] == 2 and body["length"] == 2
        status, body = await second.call("POST", f"/api/v1/events/{shop.event}/waitlist")
        error(body, 409, status, match="already on")
        status, events = await second.call("GET", f"/api/v1/events/{shop.event}")
        assert events["sold_out"] and events["waitlist"] == 2

        await holder.call("POST", f"/api/v1/orders/{held['order_id']}/cancel", {})
        offer = await next_message(ws, "offer")
        order = offer["order"]
        assert order["ticket_id"] == held["ticket_id"] and order["status"] == "awaiting_payment"
        assert 55 < order["seconds_left"] <= 60

    status, body = await second.call("GET", f"/api/v1/events/{shop.event}/waitlist")
    assert body["position"] == 1
    status, body = await first.call("GET", f"/api/v1/events/{shop.event}/waitlist")
    assert body["status"] == "offered" and body["order_id"] == order["id"]
    status, body = await second.call(
        "POST", f"/api/v1/orders/{order['id']}/pay", {"card": "tok_visa"}
    )
    error(body, 403, status)
    status, body = await first.call(
        "POST", f"/api/v1/orders/{order['id']}/pay", {"card": "tok_visa"}
    )
    assert status == 200 and body["status"] == "complete"
    status, body = await second.call("DELETE", f"/api/v1/events/{shop.event}/waitlist")
    assert status == 200 and body["status"] is None and body["length"] == 0
    await shop.assert_exact()


async def next_message(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """The next live message of ``kind`` (others, such as list changes, are skipped)."""
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive_json()
            if msg["type"] == kind:
                return dict(msg)


async def test_front_page_is_served(make_cluster, client) -> None:
    shop = await open_shop(make_cluster)
    c = client(shop)
    async with c.web.session.get(c.base + "/app", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/app/"
    async with c.web.session.get(c.base + "/app/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert 'data-testid="checkout"' in await resp.text()
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert "ticketing_visitor" in resp.cookies
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        async with c.web.session.get(f"{c.base}/app/{name}") as resp:
            assert resp.status == 200 and resp.content_type == ctype
    async with c.web.session.get(c.base + "/app/../ledger.sqlite3") as resp:
        assert resp.status == 404
