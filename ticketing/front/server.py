"""The public front door: sends each browser to a shard with stock, with a signed token.

``GET /`` (latest event) or ``GET /events/{id}``: pick an online shard weighted by
its remaining stock, mint an admission token (visitor, shard, event, expiry, nonce;
Ed25519-signed by main) and answer ``302`` to the shard's page. The visitor id is a
random id kept in an HttpOnly cookie, so one browser is one visitor. Sold out or no
shard online: a clear page, or JSON for clients that ``Accept: application/json``.

It runs in the main server's process (it needs main's stock counts and key); the
marketplace API (``api.py``) is mounted on the same app when given.
"""

from __future__ import annotations

import html
import logging
import secrets
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from ..headers import SECURITY_HEADERS
from ..logs import add_secret
from ..main.server import MainServer
from ..metrics import FrontMetrics
from ..operator import operator_token_from_env
from ..tls import browser_server_context
from ..visitor import VISITOR_COOKIE, set_visitor_cookie, valid_visitor
from ..wire import Admission
from .dashboard import mount_dashboard
from .observe import metrics_handler, observe_middleware

if TYPE_CHECKING:
    from ..market import Market

log = logging.getLogger("ticketing.redirect")


def wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _page(title: str, body: str, status: int) -> web.Response:
    """A small page for browsers; styled by the front's sheet when the market is mounted."""
    doc = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<link rel=icon href='data:,'><link rel=stylesheet href=/app/style.css>"
        f"<title>{html.escape(title)}</title></head><body><main><section class=card>"
        f"<h1 data-testid=status>{html.escape(title)}</h1>{body}</section></main></body></html>"
    )
    return web.Response(text=doc, status=status, content_type="text/html")


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


class RedirectServer:
    """HTTPS redirector in front of the shards. ``async with RedirectServer(main)``."""

    def __init__(
        self,
        main: MainServer,
        *,
        # Timeouts
        token_ttl: float = 60.0,
        # TLS (default: main's own certificate)
        ssl_context: ssl.SSLContext | None = None,
        setup: Callable[[web.Application], None] | None = None,
        marketplace: bool = True,
    ) -> None:
        self.main = main
        self.token_ttl = token_ttl
        self.ssl_context = ssl_context
        self.metrics = FrontMetrics()
        self.operator_token = operator_token_from_env()  # guards /metrics
        add_secret(self.operator_token)
        self.app = web.Application(
            client_max_size=64 * 1024, middlewares=[observe_middleware(self.metrics)]
        )
        self.app.on_response_prepare.append(_add_security_headers)
        self.app.add_routes(
            [
                web.get("/", self.handle_root),
                web.get("/events/{event_id:\\d+}", self.handle_event),
                web.get("/health", self.handle_health),
                web.get("/metrics", metrics_handler(self._exposition, lambda: self.operator_token)),
            ]
        )
        mount_dashboard(self.app, main, lambda: self.operator_token)  # /admin/
        self.market: Market | None = None
        if marketplace:  # the REST API and front page (api.py); False to mount your own
            from ..market.api import mount_marketplace  # api imports this module

            self.market = mount_marketplace(self.app, main)
        if setup is not None:
            setup(self.app)
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    async def create_server(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve HTTPS on ``host:port``; returns the bound port."""
        await self.main.start()
        ctx = self.ssl_context
        if ctx is None:
            assert self.main.credentials
            ctx = browser_server_context(self.main.credentials)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=ctx, backlog=4096)
        await site.start()
        self.port = int(self.runner.addresses[-1][1])
        log.info("redirect server on https://%s:%d", host, self.port)
        return self.port

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def __aenter__(self) -> RedirectServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- handlers -------------------------------------------------------------------

    async def handle_root(self, request: web.Request) -> web.StreamResponse:
        events = await self.main.events()
        if not events:
            return self._answer(request, 404, "No event on sale", {"status": "no_event"})
        return await self._admit(request, events[-1].id)

    async def handle_event(self, request: web.Request) -> web.StreamResponse:
        return await self._admit(request, int(request.match_info["event_id"]))

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(await self.main.status())

    async def _exposition(self) -> bytes:
        """Main's series and the front's (one process today, two registries)."""
        return await self.main.metrics_exposition() + self.metrics.exposition()

    async def _admit(self, request: web.Request, event_id: int) -> web.StreamResponse:
        event = await self.main.event(event_id)
        if event is None:
            return self._answer(request, 404, "No such event", {"status": "no_event"})
        visitor = request.cookies.get(VISITOR_COOKIE, "")
        fresh = not valid_visitor(visitor)
        if fresh:
            visitor = secrets.token_urlsafe(16)
        shard = self.main.pick_shard(event_id)
        info = {"event": event.public()}
        if shard is None:
            if self.main.online_shards():
                resp = self._answer(
                    request,
                    200,
                    f"{event.name}: sold out",
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
                resp = self._answer(
                    request,
                    503,
                    "No shard is online, try again shortly",
                    {"status": "unavailable", **info},
                )
                resp.headers["Retry-After"] = "5"
        else:
            admission = Admission.new(
                visitor, shard.name or "", event_id, request.get("account_id")
            )
            assert self.main.signer
            token = admission.sign(self.main.signer, self.token_ttl)
            front = quote(str(request.url.origin()), safe="")
            location = f"{shard.https_url}/?event={event_id}&token={token}&front={front}"
            self.metrics.admissions.labels("redirect").inc()
            resp = web.json_response(
                {"status": "redirect", "location": location, **info},
                status=302,
                headers={"Location": location},
            )
        if fresh:
            set_visitor_cookie(resp, visitor)
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
