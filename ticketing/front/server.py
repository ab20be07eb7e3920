"""The public front door: sends each browser to a shard with stock, with a signed token.

``GET /`` (latest event) or ``GET /events/{id}``: pick an online shard weighted by
its remaining stock, mint an admission token (visitor, shard, event, expiry, nonce;
Ed25519-signed by main) and answer ``302`` to the shard's page. The visitor id is a
random id kept in an HttpOnly cookie, so one browser is one visitor. Sold out or no
shard online: a clear page, or JSON for clients that ``Accept: application/json``.

:class:`FrontDoor` is the admission path, reading a
:class:`~ticketing.front.source.RoutingSource`. :class:`RedirectServer` is the
embedded front (``--fronts 0``): in main's process, routing on main's live state,
signing with main's key, with the marketplace (``api.py``) and dashboard mounted on
the same app. A front process (``front/node.py``, ``FrontServer``) routes on the
view main pushes and signs with its own certified key.

Abuse: admissions are rate-limited per client address and per visitor (429 with
``Retry-After``); connections go through a :class:`~ticketing.edge.ConnectionGate`
(caps, TLS and header timeouts); the public ``/health`` says only up or down.
The token carries the visitor's public id (:func:`~ticketing.visitor.public_id`),
never the cookie, and the configured front origin (``f``), never the ``Host``.
"""

from __future__ import annotations

import asyncio
import html
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web

from ..csrf import PUBLIC_ORIGINS
from ..edge import FRONT_LIMITS, ConnectionGate, EdgeLimits, claim_arrival
from ..errors import TokenError
from ..headers import SECURITY_HEADERS
from ..logs import add_secret
from ..main.release import line_orders
from ..main.server import MainServer
from ..main.stock import Route
from ..metrics import FrontMetrics
from ..operator import operator_token_from_env
from ..ratelimit import Rate, RateLimiter, retry_after
from ..tls import browser_server_context
from ..visitor import VISITOR_COOKIE, public_id, set_visitor_cookie, valid_visitor
from ..wire import Admission, LineOrders, LineReport, Place
from .admission import DEFAULT_RETRY_AFTER, Answer, WaitingRoom, choose_answer
from .dashboard import mount_dashboard
from .forwarding import forwarded_client
from .observe import metrics_handler, observe_middleware
from .queue import ARRIVED_AT, QueueDoor, QueueOptions, event_of
from .source import MainSource, RoutingSource

if TYPE_CHECKING:
    from ..market import Market

log = logging.getLogger("ticketing.redirect")

# Admission rate limits (defaults; ``None`` turns one off). A NAT or a mobile
# carrier puts many real buyers behind one address, hence the generous burst.
ADMISSIONS_PER_ADDRESS = Rate(burst=30, per_second=0.5)
ADMISSIONS_PER_VISITOR = Rate(burst=5, per_second=0.1)
KEEPALIVE_TIMEOUT = 15.0
ADMISSION_ROUTES = (
    "admission-latest",
    "admission",
)  # where a visitor may join a line  # an idle keep-alive connection (or slow later headers) is closed


def origin_of(host: str, port: int) -> str:
    """``https://host:port`` for a bound address (a wildcard becomes ``localhost``)."""
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


class GatedSite(web.BaseSite):
    """An aiohttp site on plain TCP whose connections pass a :class:`ConnectionGate`."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, gate: ConnectionGate, backlog: int
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self.gate = host, port, gate
        self._server: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.gate.protocol_factory(server), self._host, self._port, backlog=self._backlog
        )

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])


def wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _page(
    title: str, body: str, status: int, refresh: tuple[float, str] | None = None
) -> web.Response:
    """A small page for browsers; styled by the front's sheet when the market is mounted.

    ``refresh``: (seconds, URL) the browser loads by itself (the waiting page).
    """
    meta = (
        f"<meta http-equiv=refresh content='{refresh[0]:g};url={html.escape(refresh[1])}'>"
        if refresh
        else ""
    )
    doc = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>{meta}"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<link rel=icon href='data:,'><link rel=stylesheet href=/app/style.css>"
        f"<title>{html.escape(title)}</title></head><body><main><section class=card>"
        f"<h1 data-testid=status>{html.escape(title)}</h1>{body}</section></main></body></html>"
    )
    return web.Response(text=doc, status=status, content_type="text/html")


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


class FrontDoor:
    """The front door's HTTPS app and admission path, on any :class:`RoutingSource`."""

    def __init__(
        self,
        source: RoutingSource,
        *,
        # Timeouts
        token_ttl: float = 60.0,
        place_ttl: float = 15 * 60.0,
        retry_after: float = DEFAULT_RETRY_AFTER,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        # Limits
        limits: EdgeLimits = FRONT_LIMITS,
        admissions_per_address: Rate | None = ADMISSIONS_PER_ADDRESS,
        admissions_per_visitor: Rate | None = ADMISSIONS_PER_VISITOR,
        # TLS for browsers (default: the subclass's own certificate)
        ssl_context: ssl.SSLContext | None = None,
        # The origin browsers use (e.g. "https://tickets.example"); default: the bound one
        public_origin: str | None = None,
        # The waiting room (front/queue.py); its lines are released by main's orders
        queue: QueueOptions | None = None,
    ) -> None:
        self.source = source
        self.token_ttl = token_ttl
        self.place_ttl, self.retry_after = place_ttl, retry_after
        self.waiting = WaitingRoom(stale_after=4 * retry_after + 1.0)
        self.keepalive_timeout = keepalive_timeout
        self.limits = limits
        self.by_address = RateLimiter(admissions_per_address) if admissions_per_address else None
        self.by_visitor = RateLimiter(admissions_per_visitor) if admissions_per_visitor else None
        self.ssl_context = ssl_context
        self.public_origin = public_origin.rstrip("/") if public_origin else None
        self.gate: ConnectionGate | None = None
        self.metrics = FrontMetrics()
        self.operator_token = operator_token_from_env()  # guards /metrics
        add_secret(self.operator_token)
        self.app = web.Application(
            client_max_size=64 * 1024,
            middlewares=[self._claim_arrival, observe_middleware(self.metrics)],
        )
        self.app[PUBLIC_ORIGINS] = [self.public_origin] if self.public_origin else []
        self.app.on_response_prepare.append(_add_security_headers)
        self.app.add_routes(
            [
                web.get("/", self.handle_root, name=ADMISSION_ROUTES[0]),
                web.get(
                    "/events/{event_id:[0-9]{1,12}}", self.handle_event, name=ADMISSION_ROUTES[1]
                ),
                web.get("/health", self.handle_health),
                web.get("/metrics", metrics_handler(self._exposition, lambda: self.operator_token)),
            ]
        )
        self.market: Market | None = None  # the marketplace, when mounted in this process
        self.queue = QueueDoor(source, queue, uplink=self._exchange_lines, metrics=self.metrics)
        self.queue.admit = self._admit_released
        self.queue.mount(self.app)  # /events/{id}/queue, the long-poll
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    def _tls_context(self) -> ssl.SSLContext:
        raise NotImplementedError  # the subclass knows its certificate

    @web.middleware
    async def _claim_arrival(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The first request on a connection takes its ClientHello's time (edge.py);
        the waiting room counts it as still to be ranked until the answer."""
        arrived = claim_arrival(request.transport)
        if arrived is None:
            return await handler(request)
        request[ARRIVED_AT] = arrived
        if request.match_info.route.name not in ADMISSION_ROUTES:
            return await handler(request)  # ranks nobody (a poll, the marketplace)
        with self.queue.arriving(request, arrived):
            return await handler(request)

    async def _start(self) -> None:
        """Runs before the port opens (the subclass's own start-up)."""

    async def create_server(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve HTTPS on ``host:port``; returns the bound port."""
        await self._start()
        ctx = self.ssl_context or self._tls_context()
        self.runner = web.AppRunner(
            self.app, access_log=None, keepalive_timeout=self.keepalive_timeout
        )
        await self.runner.setup()
        self.gate = ConnectionGate("front", ctx, self.limits)
        self.gate.trickle = lambda: self.queue.crowded_since
        self.queue.pending = self.gate
        site = GatedSite(self.runner, host, port, self.gate, backlog=4096)
        await site.start()
        self.port = site.port
        if self.public_origin is None:
            self.public_origin = origin_of(host, self.port)
            self.app[PUBLIC_ORIGINS].append(self.public_origin)
        log.info("front door on https://%s:%d", host, self.port)
        return self.port

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.gate is not None:
            self.gate.close()  # whatever is still mid-handshake

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- handlers -------------------------------------------------------------------

    async def handle_root(self, request: web.Request) -> web.StreamResponse:
        latest = await self.source.latest_event()
        if latest is None:
            if not self.source.linked:  # a front that has not heard from main yet
                return self._admit_unknown(request)
            return self._answer(request, 404, "No event on sale", {"status": "no_event"})
        return await self._admit(request, latest)

    async def handle_event(self, request: web.Request) -> web.StreamResponse:
        return await self._admit(request, int(request.match_info["event_id"]))

    async def handle_health(self, request: web.Request) -> web.Response:
        """Up or down, nothing more (details: ``/api/v1/admin/status``, operators only)."""
        up = self.source.up()
        return web.json_response({"status": "up" if up else "down"}, status=200 if up else 503)

    def _throttled(self, request: web.Request, visitor: str | None) -> float:
        """Seconds to wait before this address (or visitor) may be admitted again; 0: now."""
        wait = 0.0
        if self.by_address is not None:
            wait = self.by_address.take(request.remote or "?")
        if wait == 0.0 and visitor is not None and self.by_visitor is not None:
            wait = self.by_visitor.take(visitor)
        return wait

    async def _exposition(self) -> bytes:
        """This front's series (the embedded front adds main's)."""
        return self.metrics.exposition()

    async def _exchange_lines(self, reports: dict[int, LineReport]) -> dict[int, LineOrders] | None:
        """The waiting room's uplink: these lines to main, main's orders back (None:
        main cannot be reached now). The subclass knows where main is."""
        return None

    async def _admit(self, request: web.Request, event_id: int) -> web.StreamResponse:
        event = await self.source.event_info(event_id)
        if event is None:
            if not self.source.linked:  # maybe it exists: main will tell when back
                return self._admit_unknown(request, event_id)
            return self._answer(request, 404, "No such event", {"status": "no_event"})
        visitor = request.cookies.get(VISITOR_COOKIE, "")
        fresh = not valid_visitor(visitor)
        if fresh:
            visitor = secrets.token_urlsafe(16)
        wait = self._throttled(request, None if fresh else public_id(visitor))
        if wait > 0:
            limited = self._answer(
                request,
                429,
                "Too many requests, try again shortly",
                {"status": "rate_limited", "errors": [{"message": "too many admissions"}]},
            )
            limited.headers["Retry-After"] = retry_after(wait)
            return limited
        # The waiting room's word first: let on (a Pass), or queued, challenged, refused.
        gate = await self.queue.gate(request, event_of(event), public_id(visitor))
        if isinstance(gate, web.StreamResponse):  # queued, or refused by the waiting room
            if fresh:
                set_visitor_cookie(gate, visitor)
            return gate
        info = {"event": event}
        resp: web.StreamResponse
        place, arrived = self._place(request, visitor, event_id)
        if gate.arrived is not None:
            arrived = min(arrived, gate.arrived)  # the queue entry is the arrival
        routes = self.source.routes(event_id)
        # The one place where "admit this visitor now or not" is decided.
        answer = choose_answer(
            routes.view(), waiting_ahead=self.waiting.ahead(place, arrived, time.monotonic())
        )
        shard = routes.pick() if answer is Answer.REDIRECT else None
        if answer is Answer.REDIRECT and shard is None:  # counts moved under us
            answer = Answer.WAIT
        if shard is not None:
            self.waiting.leave(place)
            resp = self._redirect(request, visitor, event_id, shard, arrived, place, info)
        elif answer is Answer.SOLD_OUT:
            self.waiting.leave(place)
            resp = self._answer(
                request,
                200,
                f"{event.get('name', 'This event')}: sold out",
                {"status": "sold_out", **info},
                "<p>Every ticket is taken right now. Tickets not paid for in time come"
                " back on sale, first to the waiting list."
                + (
                    " <a data-testid=waitlist-link href=/app/>Join the waiting list</a>."
                    if self.market
                    else ""
                )
                + "</p>",
            )
        else:
            resp = self._wait(request, answer, visitor, event_id, place, arrived, info)
        if fresh:
            set_visitor_cookie(resp, visitor)
        return resp

    def _place(self, request: web.Request, visitor: str, event_id: int) -> tuple[str, float]:
        """The visitor's place in line: (nonce, arrival time), from its place token.

        Only a token a certified front signed, for this visitor and event, counts; anything
        else (none, forged, expired, another visitor's) is a new arrival now.
        """
        token = request.query.get("place", "")
        if token:
            try:
                held = Place.verify(self.source.places, token)
            except TokenError:
                held = None
            if held is not None and held.visitor == public_id(visitor) and held.event == event_id:
                return held.nonce, held.arrived
        # A new arrival: when its connection said hello (a handshake's wait is not late).
        return secrets.token_urlsafe(12), round(request.get(ARRIVED_AT) or time.time(), 3)

    def _place_token(self, visitor: str, event_id: int, place: str, arrived: float) -> str:
        # The visitor's public id: the place token rides in URLs too.
        held = Place(public_id(visitor), event_id, place, arrived)
        return held.sign(self.source.signer, self.place_ttl)

    def _shard_location(
        self,
        request: web.Request,
        visitor: str,
        event_id: int,
        shard: Route,
        arrived: float,
        place: str,
    ) -> str:
        """The shard's page with a fresh admission token and the visitor's place."""
        admission = Admission.new(
            public_id(visitor),  # never the cookie itself: the URL can leak
            shard.name,
            event_id,
            request.get("account_id"),
            arrived=arrived,
            front=self.public_origin,  # the shard page links back here only
        )
        token = admission.sign(self.source.signer, self.token_ttl)
        self.metrics.admissions.labels("redirect").inc()
        location = (
            f"{shard.https_url}/?event={event_id}&token={token}"
            f"&place={self._place_token(visitor, event_id, place, arrived)}"
        )
        return location

    def _redirect(
        self,
        request: web.Request,
        visitor: str,
        event_id: int,
        shard: Route,
        arrived: float,
        place: str,
        info: dict[str, Any],
    ) -> web.StreamResponse:
        location = self._shard_location(request, visitor, event_id, shard, arrived, place)
        return web.json_response(
            {"status": "redirect", "location": location, **info},
            status=302,
            headers={"Location": location},
        )

    def _admit_released(self, request: web.Request, event_id: int, arrived: float) -> str | None:
        """Where a visitor the waiting room just released goes: a shard's URL with its
        admission (the same decision as the door's), or None to come through the door."""
        visitor = request.cookies.get(VISITOR_COOKIE, "")
        if not valid_visitor(visitor):
            return None
        place = secrets.token_urlsafe(12)
        routes = self.source.routes(event_id)
        ahead = self.waiting.ahead(place, arrived, time.monotonic())
        shard = (
            routes.pick()
            if choose_answer(routes.view(), waiting_ahead=ahead) is Answer.REDIRECT
            else None
        )
        if shard is None:
            return None
        return self._shard_location(request, visitor, event_id, shard, arrived, place)

    def _admit_unknown(self, request: web.Request, event_id: int | None = None) -> web.Response:
        """Main is away and this front does not know the event yet: come back shortly."""
        visitor = request.cookies.get(VISITOR_COOKIE, "")
        if not valid_visitor(visitor):
            visitor = secrets.token_urlsafe(16)
        place, arrived = secrets.token_urlsafe(12), round(time.time(), 3)
        if event_id is None:  # no place to keep without an event: a plain retry page
            self.metrics.admissions.labels(Answer.WAIT.value).inc()
            payload = {
                "status": Answer.WAIT.value,
                "retry_after": self.retry_after,
                "location": "/",
            }
            if wants_json(request):
                resp = web.json_response(payload)
            else:
                resp = _page(
                    "Please wait",
                    "<p>The sale is starting; this page retries by itself.</p>",
                    200,
                    refresh=(self.retry_after, "/"),
                )
            resp.headers["Retry-After"] = str(max(1, round(self.retry_after)))
        else:
            resp = self._wait(request, Answer.WAIT, visitor, event_id, place, arrived, {})
        set_visitor_cookie(resp, visitor)
        return resp

    def _wait(
        self,
        request: web.Request,
        answer: Answer,
        visitor: str,
        event_id: int,
        place: str,
        arrived: float,
        info: dict[str, Any],
    ) -> web.Response:
        """ "Please wait": a page that retries by itself, or JSON with ``retry_after``.

        The retry URL carries the place token, so the visitor keeps its place.
        """
        self.waiting.wait(place, arrived, time.monotonic())
        token = self._place_token(visitor, event_id, place, arrived)
        again = f"/events/{event_id}?place={token}"
        status = 503 if answer is Answer.UNAVAILABLE else 200
        # No shard at all is a longer outage than stock out of reach for a moment.
        pause = max(5.0, self.retry_after) if answer is Answer.UNAVAILABLE else self.retry_after
        payload = {
            "status": answer.value,
            "retry_after": pause,
            "location": again,
            "place": token,
            **info,
        }
        self.metrics.admissions.labels(answer.value).inc()
        if wants_json(request):
            resp = web.json_response(payload, status=status)
        else:
            title = (
                "No shard is online, try again shortly"
                if answer is Answer.UNAVAILABLE
                else "Please wait: you keep your place in line"
            )
            resp = _page(
                title,
                "<p>Tickets remain but cannot be handed out this second. This page"
                " retries by itself; you keep your place in line.</p>",
                status,
                refresh=(pause, again),
            )
        resp.headers["Retry-After"] = str(max(1, round(pause)))
        return resp

    def _answer(
        self,
        request: web.Request,
        status: int,
        title: str,
        payload: dict[str, Any],
        body: str = "<p>Please check back later.</p>",
    ) -> web.Response:
        self.metrics.admissions.labels(payload["status"]).inc()
        if wants_json(request):
            return web.json_response(payload, status=status)
        return _page(title, body, status)


class RedirectServer(FrontDoor):
    """The embedded front in main's process (``--fronts 0``). ``async with RedirectServer(main)``.

    Routes on main's live state and signs with main's key; the marketplace
    (``/app/``, ``/api/v1``) and the dashboard (``/admin/``) are mounted on its app.
    With front processes in front of it, the same app is their marketplace backend.
    """

    def __init__(
        self,
        main: MainServer,
        *,
        setup: Callable[[web.Application], None] | None = None,
        marketplace: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(MainSource(main), **options)
        self.main = main
        # First: behind a front process, the visitor's address comes signed by the front.
        self.app.middlewares.insert(0, forwarded_client(lambda: main.front_ring))
        mount_dashboard(self.app, main, lambda: self.operator_token)  # /admin/
        if marketplace:  # the REST API and front page (api.py); False to mount your own
            from ..market.api import mount_marketplace  # api imports this module

            self.market = mount_marketplace(self.app, main)
        if setup is not None:
            setup(self.app)

    async def _start(self) -> None:
        await self.main.start()

    async def _exchange_lines(self, reports: dict[int, LineReport]) -> dict[int, LineOrders] | None:
        return await line_orders(self.main, self.main.name, reports)  # in this process

    def _tls_context(self) -> ssl.SSLContext:
        assert self.main.credentials
        return browser_server_context(self.main.credentials)

    async def _exposition(self) -> bytes:
        """Main's series and the front's (one process, two registries)."""
        return await self.main.metrics_exposition() + self.metrics.exposition()
