"""The marketplace's JSON REST API and front page, mounted on the redirect server's app.

Everything is under ``/api/v1``; the front page is served at ``/app/``. Errors are
``{"errors": [{"message": ..., "field": ...}]}`` with 400 (bad input, bad JSON),
401 (not signed in, wrong credentials), 402 (card declined), 403 (not yours,
operators disabled), 404, 409 (wrong state, locked, stale ``version``), 413 (body
over the app's ``client_max_size``).

Identity: a middleware reads the session cookie (a signed token: no DB lookup) and
sets ``request["account_id"]``, which the redirect server puts in the admission
token, so a signed-in buyer's order carries the account. API and page requests
also get the ``ticketing_visitor`` cookie when they have none; the market only ever
sees that cookie's public id (:func:`ticketing.visitor.public_id`), the same one
the front puts in admission tokens.

Abuse: state-changing requests need a same-origin (or no) ``Origin`` and
``Content-Type: application/json`` (415 otherwise; :mod:`ticketing.csrf`), and so
does the live WebSocket's ``Origin``. Bodies are UTF-8 JSON objects without
``NaN``/``Infinity`` or lone surrogates, read within ``body_timeout``. Sign-ups and
sign-ins are rate-limited per client address (429 with ``Retry-After``), failed
sign-ins per (email, address), and the password-hashing queue is bounded (429).

Operators: ``/api/v1/admin/...`` needs ``Authorization: Bearer <token>`` matching
``TICKETING_OPERATOR_TOKEN`` (or the contents of ``TICKETING_OPERATOR_TOKEN_FILE``),
compared in constant time; with neither set, those endpoints answer 403.

Routes::

    GET    /api/v1/openapi.json                this API's OpenAPI 3.1 description (openapi.py)
    GET    /api/v1/me                          who am I ({"account": ...|null})
    POST   /api/v1/accounts                    sign up {email, password} (signs in)
    POST   /api/v1/session                     sign in {email, password}
    DELETE /api/v1/session                     sign out (revokes the session)
    GET    /api/v1/events[/{id}]               events with availability
    GET|POST|DELETE /api/v1/events/{id}/waitlist   position / join / leave
    GET    /api/v1/orders                      my orders (primary and resale)
    GET    /api/v1/orders/{id}                 POST .../pay {card, version?}, .../cancel
    GET    /api/v1/resale-orders/{id}          POST .../pay, .../cancel (same rules)
    GET    /api/v1/tickets                     tickets I hold, with their listing
    GET    /api/v1/listings?event=&min_price=&max_price=&mine=1
    POST   /api/v1/listings                    {ticket_id, price_cents}
    GET|PATCH|DELETE /api/v1/listings/{id}     read / {price_cents, version?} / withdraw
    POST   /api/v1/listings/{id}/buy           lock it for my checkout
    GET    /api/v1/ws                          WebSocket: offers, order and list changes
    POST   /api/v1/admin/events                {name, description, price, count}
    PATCH  /api/v1/admin/events/{id}           {sale_starts_at, prequeue_order, pow_bits, release_rate}
    POST   /api/v1/admin/events/{id}/distribute
    GET    /api/v1/admin/status, /api/v1/admin/audit?event=

Errors also: 408 (body too slow), 415 (not JSON), 429 (rate limited; ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import secrets
import warnings
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from ..csrf import origin_allowed, refusal
from ..errors import Overloaded, TicketingError, ValidationError
from ..headers import SECURITY_HEADERS
from ..ledger import Principal
from ..ledger.records import MAX_POW_BITS, PREQUEUE_ORDERS, WAITROOM_SETTINGS
from ..main.server import MainServer, price_to_cents
from ..operator import OPERATOR_ENV, OPERATOR_FILE_ENV, operator_token_from_env
from ..ratelimit import Rate, RateLimiter, retry_after
from ..visitor import VISITOR_COOKIE, public_id, set_visitor_cookie, valid_visitor
from ..wire import SessionClaims
from .checks import MAX_PRICE_CENTS
from .context import Notice
from .errors import Conflict, Forbidden, MarketError, NotFound, TooManyAttempts, Unauthorized
from .openapi import handle_openapi
from .service import Market
from .sessions import COOKIE_NAME, cookie_kwargs

log = logging.getLogger("ticketing.api")

PREFIX = "/api/v1"
FRONT = "/app/"
FRONT_FILES = ("index.html", "app.js", "style.css")
MARKET = web.AppKey("market", Market)
VISITOR = web.RequestKey("visitor", str)
SESSION = web.RequestKey("session", SessionClaims)
ACCOUNT_ID = "account_id"  # the front reads this plain key (see front/server.py)

# Limits
MAX_EVENT_TICKETS = 1_000_000
MAX_NAME = 200
MAX_DESCRIPTION = 2000
ID = r"{id:[0-9]{1,12}}"  # ASCII only (\d takes "²"); longer ids are simply not found
SIGNINS_PER_ADDRESS = Rate(burst=10, per_second=10 / 60)  # sign-ups and sign-ins

# Timeouts
BODY_TIMEOUT = 10.0  # a request body must arrive within this (slow-body clients)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The rest (no-referrer, no framing, nosniff...) comes from the redirect app's hook.
FRONT_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": SECURITY_HEADERS["Content-Security-Policy"]
    + "; img-src 'self' data:",
}
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def error_response(status: int, message: str, field: str | None = None) -> web.Response:
    error: dict[str, Any] = {"message": message}
    if field is not None:
        error["field"] = field
    return web.json_response(
        {"errors": [error]}, status=status, headers={"Cache-Control": "no-store"}
    )


def ok(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status, headers={"Cache-Control": "no-store"})


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_text(value: Any) -> None:
    """Every string (and key) in a parsed body must be real Unicode: no lone surrogates.

    JSON's ``"\\ud800"`` decodes to a str that SQLite and UTF-8 cannot store.
    """
    stack: list[tuple[Any, str | None]] = [(value, None)]
    while stack:
        item, field = stack.pop()
        texts: list[Any] = []
        if isinstance(item, dict):
            texts = list(item)
            stack.extend((v, field or (k if isinstance(k, str) else None)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, field) for v in item)
        elif isinstance(item, str):
            texts = [item]
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError("text must be valid Unicode", field) from None


async def read_json(request: web.Request, timeout: float = BODY_TIMEOUT) -> dict[str, Any]:
    """The request's JSON object body; 400 for anything else, 413 when too large."""
    if not request.can_read_body:
        return {}
    if request.content_type != "application/json":
        raise ValidationError("send a JSON object with Content-Type: application/json")
    if (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
        raise ValidationError("JSON bodies must be UTF-8")
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="the request body came too slowly") from None
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ValidationError(f"the body is not valid JSON: {why}") from None
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object")
    check_text(body)
    return body


def query_int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise ValidationError(f"{name} must be a whole number", name)
    return int(value)


def optional_version(body: Mapping[str, Any]) -> int | None:
    version = body.get("version")
    if version is not None and type(version) is not int:
        raise ValidationError("version must be an integer", "version")
    return version


def principal(request: web.Request) -> Principal:
    return Principal(request[VISITOR], request.get(ACCOUNT_ID))


def path_id(request: web.Request) -> int:
    return int(request.match_info["id"])


class MarketAPI:
    """Routes, middlewares and the live socket hub for one :class:`Market`."""

    def __init__(
        self,
        market: Market,
        main: MainServer,
        *,
        operator_token: str | None = None,
        # Limits (None turns it off)
        signins_per_address: Rate | None = SIGNINS_PER_ADDRESS,
    ) -> None:
        self.market = market
        self.main = main  # the operator endpoints act on main: events, distribution
        self.operator_token = operator_token
        self.signin_limiter = RateLimiter(signins_per_address) if signins_per_address else None
        self.sockets: dict[web.WebSocketResponse, Principal] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._files = {
            name: resources.files("ticketing.market.page").joinpath(name).read_bytes()
            for name in FRONT_FILES
        }

    def setup(self, app: web.Application) -> None:
        """Mount on ``app`` (pass as ``RedirectServer(main, setup=api.setup)``)."""
        app[MARKET] = self.market
        app.middlewares.append(self._identity)
        app.middlewares.append(self._errors)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        p = PREFIX
        app.add_routes(
            [
                web.get("/app", self.handle_front_redirect),
                web.get(FRONT, self.handle_front),
                web.get(FRONT + "{name}", self.handle_front),
                web.get(f"{p}/openapi.json", handle_openapi),
                web.get(f"{p}/me", self.handle_me),
                web.post(f"{p}/accounts", self.handle_signup),
                web.post(f"{p}/session", self.handle_signin),
                web.delete(f"{p}/session", self.handle_signout),
                web.get(f"{p}/events", self.handle_events),
                web.get(f"{p}/events/{ID}", self.handle_event),
                web.get(f"{p}/events/{ID}/waitlist", self.handle_waitlist),
                web.post(f"{p}/events/{ID}/waitlist", self.handle_join_waitlist),
                web.delete(f"{p}/events/{ID}/waitlist", self.handle_leave_waitlist),
                web.get(f"{p}/orders", self.handle_orders),
                web.get(f"{p}/tickets", self.handle_tickets),
                web.get(f"{p}/listings", self.handle_listings),
                web.post(f"{p}/listings", self.handle_create_listing),
                web.get(f"{p}/listings/{ID}", self.handle_listing),
                web.patch(f"{p}/listings/{ID}", self.handle_edit_listing),
                web.delete(f"{p}/listings/{ID}", self.handle_withdraw_listing),
                web.post(f"{p}/listings/{ID}/buy", self.handle_buy_listing),
                web.get(f"{p}/ws", self.handle_ws),
                web.post(f"{p}/admin/events", self.handle_admin_create_event),
                web.patch(f"{p}/admin/events/{ID}", self.handle_admin_event_settings),
                web.post(f"{p}/admin/events/{ID}/distribute", self.handle_admin_distribute),
                web.get(f"{p}/admin/status", self.handle_admin_status),
                web.get(f"{p}/admin/audit", self.handle_admin_audit),
            ]
        )
        for kind, base in (("order", "orders"), ("resale", "resale-orders")):
            app.add_routes(
                [
                    web.get(f"{p}/{base}/{ID}", self._order_handler(kind, "get")),
                    web.post(f"{p}/{base}/{ID}/pay", self._order_handler(kind, "pay")),
                    web.post(f"{p}/{base}/{ID}/cancel", self._order_handler(kind, "cancel")),
                ]
            )

    # -- lifecycle ----------------------------------------------------------------------

    async def _on_startup(self, app: web.Application) -> None:
        await self.market.start()
        self.market.watchers.append(self.deliver)

    async def _on_shutdown(self, app: web.Application) -> None:
        for ws in list(self.sockets):
            await ws.close(message=b"server shutting down")

    async def _on_cleanup(self, app: web.Application) -> None:
        if self.deliver in self.market.watchers:
            self.market.watchers.remove(self.deliver)
        for task in list(self._tasks):
            task.cancel()
        await self.market.close()

    # -- middlewares -----------------------------------------------------------------------

    @web.middleware
    async def _identity(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        claims = self.market.session(request.cookies.get(COOKIE_NAME))
        if claims is not None:
            with warnings.catch_warnings():  # a plain key: the redirect's documented contract
                warnings.simplefilter("ignore", web.NotAppKeyWarning)
                request[ACCOUNT_ID] = claims.account_id  # the redirect puts it in the token
            request[SESSION] = claims
        fresh = None
        if request.path.startswith((PREFIX, "/app")):
            visitor = request.cookies.get(VISITOR_COOKIE, "")
            if not valid_visitor(visitor):
                visitor = fresh = secrets.token_urlsafe(16)
            request[VISITOR] = public_id(visitor)  # the market never sees the secret
        resp = await handler(request)
        if fresh is not None and not resp.prepared:
            set_visitor_cookie(resp, fresh)
        return resp

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(PREFIX):
            return await handler(request)
        refused = refusal(request)
        if refused is not None:
            return error_response(*refused)
        try:
            return await handler(request)
        except MarketError as exc:
            resp = error_response(exc.status, exc.message, exc.field)
            if exc.status == 401:
                resp.headers["WWW-Authenticate"] = (
                    "Bearer" if "/admin/" in request.path else "Cookie"
                )
            if isinstance(exc, TooManyAttempts):
                resp.headers["Retry-After"] = retry_after(exc.retry_after)
            return resp
        except Overloaded as exc:
            resp = error_response(429, exc.message)
            resp.headers["Retry-After"] = retry_after(exc.retry_after)
            return resp
        except ValidationError as exc:
            return error_response(400, exc.message, exc.field)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.reason
            if exc.status == 413:
                message = "the request body is too large"
            resp = error_response(exc.status, message)
            if "Allow" in exc.headers:
                resp.headers["Allow"] = exc.headers["Allow"]
            return resp
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal error")

    # -- front page ---------------------------------------------------------------------------

    async def handle_front_redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(FRONT)

    async def handle_front(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        body = self._files.get(name)
        if body is None:
            raise web.HTTPNotFound(text="not found\n")
        ctype = CONTENT_TYPES[Path(name).suffix]
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=FRONT_HEADERS)

    # -- accounts --------------------------------------------------------------------------

    async def _account_json(self, account_id: int | None) -> dict[str, Any] | None:
        if account_id is None:
            return None
        account = await self.market.account(account_id)
        if account is None:
            return None
        return {"id": account.id, "email": account.email, "created_at": account.created_at}

    async def handle_me(self, request: web.Request) -> web.Response:
        account = await self._account_json(request.get(ACCOUNT_ID))
        return ok({"signed_in": account is not None, "account": account})

    async def _signed_in(self, request: web.Request, status: int, *, new: bool) -> web.Response:
        address = request.remote or "?"
        if self.signin_limiter is not None:
            wait = self.signin_limiter.take(address)
            if wait > 0:  # before any hashing: a flood from one address costs nothing
                raise TooManyAttempts(
                    f"too many sign-in attempts; try again in {math.ceil(wait)} s", None, wait
                )
        body = await read_json(request)
        email, password, p = body.get("email"), body.get("password"), principal(request)
        if new:
            account, token = await self.market.signup(email, password, p)
        else:
            account, token = await self.market.signin(email, password, p, address)
        # A new session replaces the old one: revoke it so it cannot be replayed.
        await self.market.signout(request.get(SESSION))
        resp = ok({"signed_in": True, "account": await self._account_json(account.id)}, status)
        assert self.market.sessions is not None
        resp.set_cookie(COOKIE_NAME, token, **cookie_kwargs(self.market.sessions.ttl))
        return resp

    async def handle_signup(self, request: web.Request) -> web.Response:
        return await self._signed_in(request, 201, new=True)

    async def handle_signin(self, request: web.Request) -> web.Response:
        return await self._signed_in(request, 200, new=False)

    async def handle_signout(self, request: web.Request) -> web.Response:
        revoked = await self.market.signout(request.get(SESSION))
        resp = ok({"signed_in": False, "signed_out": revoked})
        kwargs = cookie_kwargs(0)
        resp.del_cookie(
            COOKIE_NAME,
            path=kwargs["path"],
            secure=kwargs["secure"],
            httponly=kwargs["httponly"],
            samesite=kwargs["samesite"],
        )
        return resp

    # -- events and the waiting list --------------------------------------------------------

    async def handle_events(self, request: web.Request) -> web.Response:
        return ok({"events": await self.market.events_overview()})

    async def handle_event(self, request: web.Request) -> web.Response:
        event_id = path_id(request)
        for event in await self.market.events_overview():
            if event["id"] == event_id:
                return ok(event)
        raise NotFound(f"no event {event_id}")

    async def handle_waitlist(self, request: web.Request) -> web.Response:
        return ok(await self.market.waitlist_status(principal(request), path_id(request)))

    async def handle_join_waitlist(self, request: web.Request) -> web.Response:
        return ok(await self.market.join_waitlist(principal(request), path_id(request)), 201)

    async def handle_leave_waitlist(self, request: web.Request) -> web.Response:
        return ok(await self.market.leave_waitlist(principal(request), path_id(request)))

    # -- orders and tickets --------------------------------------------------------------------

    def _order_handler(self, kind: str, action: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            p, order_id = principal(request), path_id(request)
            if action == "get":
                return ok(await self.market.order(kind, order_id, p))
            body = await read_json(request)
            version = optional_version(body)
            if action == "pay":
                return ok(await self.market.pay(kind, order_id, p, body.get("card"), version))
            return ok(await self.market.cancel(kind, order_id, p, version))

        return handler

    async def handle_orders(self, request: web.Request) -> web.Response:
        return ok({"orders": await self.market.orders_of(principal(request))})

    async def handle_tickets(self, request: web.Request) -> web.Response:
        return ok({"tickets": await self.market.tickets_of(principal(request))})

    # -- resale ----------------------------------------------------------------------------------

    async def handle_listings(self, request: web.Request) -> web.Response:
        p = principal(request)
        mine = request.query.get("mine", "") in ("1", "true", "yes")
        listings = await self.market.listings(
            event_id=query_int(request, "event"),
            min_price=query_int(request, "min_price"),
            max_price=query_int(request, "max_price"),
            seller=p if mine else None,
            viewer=p,
        )
        return ok({"listings": listings})

    async def handle_listing(self, request: web.Request) -> web.Response:
        return ok(await self.market.listing(path_id(request), principal(request)))

    async def handle_create_listing(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        listing = await self.market.create_listing(
            principal(request), body.get("ticket_id"), body.get("price_cents")
        )
        return ok(listing, 201)

    async def handle_edit_listing(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        listing = await self.market.edit_listing(
            principal(request), path_id(request), body.get("price_cents"), optional_version(body)
        )
        return ok(listing)

    async def handle_withdraw_listing(self, request: web.Request) -> web.Response:
        listing = await self.market.withdraw_listing(
            principal(request), path_id(request), query_int(request, "version")
        )
        return ok(listing)

    async def handle_buy_listing(self, request: web.Request) -> web.Response:
        return ok(await self.market.buy_listing(principal(request), path_id(request)), 201)

    # -- live updates ------------------------------------------------------------------------------

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        if not origin_allowed(request):  # another site's page must not listen in
            raise Forbidden("cross-origin WebSocket refused")
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
        await ws.prepare(request)
        p = principal(request)
        self.sockets[ws] = p
        try:
            await ws.send_json({"type": "hello", "signed_in": p.account_id is not None})
            async for msg in ws:  # the page only listens; anything it sends is ignored
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.sockets.pop(ws, None)
        return ws

    def deliver(self, notice: Notice) -> None:
        """Push a market notice to the open sockets it concerns (never blocks the market)."""
        text = json.dumps(notice.message())
        owner = notice.owner
        for ws, p in list(self.sockets.items()):
            if owner is None or p.owns({"visitor": owner.visitor, "account_id": owner.account_id}):
                task = asyncio.ensure_future(self._send(ws, text))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _send(ws: web.WebSocketResponse, text: str) -> None:
        try:
            await ws.send_str(text)
        except (ConnectionError, RuntimeError):
            pass  # closed meanwhile; the page reconnects and reloads

    # -- operators -------------------------------------------------------------------------------

    def _require_operator(self, request: web.Request) -> None:
        if self.operator_token is None:
            raise Forbidden(
                f"operator endpoints are disabled: set {OPERATOR_ENV} (or {OPERATOR_FILE_ENV})"
                " for the main server to enable them"
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("operator credential required: Authorization: Bearer <token>")
        if not hmac.compare_digest(given.strip().encode(), self.operator_token.encode()):
            raise Unauthorized("wrong operator credential")

    async def handle_admin_create_event(self, request: web.Request) -> web.Response:
        self._require_operator(request)
        body = await read_json(request)
        name, description = body.get("name"), body.get("description", "")
        price, count = body.get("price"), body.get("count")
        if not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_NAME:
            raise ValidationError(f"name must be 1 to {MAX_NAME} characters", "name")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise ValidationError(
                f"description must be at most {MAX_DESCRIPTION} characters", "description"
            )
        if isinstance(price, bool) or not isinstance(price, str | int | float):
            raise ValidationError('price must be an amount such as "25.00"', "price")
        if isinstance(price, str) and len(price) > 20:
            raise ValidationError('price must be an amount such as "25.00"', "price")
        try:
            cents = price_to_cents(price)
        except ValueError as exc:
            raise ValidationError(str(exc), "price") from exc
        if cents > MAX_PRICE_CENTS:
            raise ValidationError(f"price must be at most {MAX_PRICE_CENTS // 100}", "price")
        if type(count) is not int or not 0 < count <= MAX_EVENT_TICKETS:
            raise ValidationError(
                f"count must be a whole number from 1 to {MAX_EVENT_TICKETS}", "count"
            )
        event_id = await self.main.init_tickets(name.strip(), description, price, count)
        return ok({"event": (await self._event(event_id))}, 201)

    async def handle_admin_event_settings(self, request: web.Request) -> web.Response:
        """The waiting-room settings: sale start, pre-queue order, proof of work, rate cap."""
        self._require_operator(request)
        event_id = path_id(request)
        await self._event(event_id)
        body = await read_json(request)
        unknown = sorted(set(body) - set(WAITROOM_SETTINGS))
        if unknown:
            raise ValidationError(f"unknown field {unknown[0]!r}", unknown[0])
        start, order = body.get("sale_starts_at"), body.get("prequeue_order", "random")
        bits, rate = body.get("pow_bits", 0), body.get("release_rate")
        if start is not None and not (_real(start) and 0 <= start < 1e11):
            raise ValidationError("sale_starts_at must be unix seconds or null", "sale_starts_at")
        if order not in PREQUEUE_ORDERS:
            raise ValidationError(
                f"prequeue_order must be one of {PREQUEUE_ORDERS}", "prequeue_order"
            )
        if type(bits) is not int or not 0 <= bits <= MAX_POW_BITS:
            raise ValidationError(f"pow_bits must be 0 to {MAX_POW_BITS}", "pow_bits")
        if rate is not None and not (_real(rate) and 0 < rate <= 1e6):
            raise ValidationError("release_rate must be a positive number or null", "release_rate")
        settings = {k: body[k] for k in WAITROOM_SETTINGS if k in body}
        event = await self.main.update_event(event_id, **settings)
        return ok({"event": event.public()})

    async def _event(self, event_id: int) -> dict[str, Any]:
        event = await self.main.event(event_id)
        if event is None:
            raise NotFound(f"no event {event_id}")
        return event.public()

    async def handle_admin_distribute(self, request: web.Request) -> web.Response:
        self._require_operator(request)
        event_id = path_id(request)
        await self._event(event_id)
        try:
            given = await self.main.distribute_tickets(event_id)
        except TicketingError as exc:
            raise Conflict(str(exc)) from exc
        return ok({"event_id": event_id, "given": given})

    async def handle_admin_status(self, request: web.Request) -> web.Response:
        self._require_operator(request)
        return ok(await self.main.status())

    async def handle_admin_audit(self, request: web.Request) -> web.Response:
        self._require_operator(request)
        return ok(await self.market.audit(query_int(request, "event")))


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def mount_marketplace(app: web.Application, main: MainServer) -> Market:
    """The default wiring: a Market with the test payment provider, operators from env."""
    market = Market(main)
    MarketAPI(market, main, operator_token=operator_token_from_env()).setup(app)
    return market
