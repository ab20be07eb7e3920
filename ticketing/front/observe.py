"""What the front's app adds for operators: request ids, an access line, latency, /metrics.

Every request gets an id (``X-Request-Id`` on the answer, ``request_id`` on every
log line written while it is served) and one ``ticketing.access`` line at INFO:
method, path (never the query string: it may carry a token), status, duration.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..logs import REQUEST_ID
from ..metrics import CONTENT_TYPE, FrontMetrics
from ..operator import authorized

log = logging.getLogger("ticketing.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route(request: web.Request) -> str:
    """The router's pattern (a bounded label), not the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observe_middleware(metrics: FrontMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = secrets.token_hex(8)
        reset = REQUEST_ID.set(rid)
        t0 = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            if not resp.prepared:
                resp.headers["X-Request-Id"] = rid
            return resp
        except web.HTTPException as exc:
            status = exc.status
            exc.headers["X-Request-Id"] = rid
            raise
        finally:
            took = time.perf_counter() - t0
            metrics.requests.labels(_route(request), request.method, str(status)).observe(took)
            log.info(
                "%s %s %d %.1fms",
                request.method,
                request.path,
                status,
                took * 1000,
                extra={"fields": {"status": status, "route": _route(request)}},
            )
            REQUEST_ID.reset(reset)

    return observe


def metrics_handler(
    exposition: Callable[[], Awaitable[bytes]], token: Callable[[], str | None]
) -> Handler:
    """``GET /metrics`` behind the operator bearer token (403 when none is configured)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        configured = token()
        if configured is None:
            return web.json_response(
                {"errors": [{"message": "metrics are disabled: no operator token configured"}]},
                status=403,
            )
        if not authorized(request.headers.get("Authorization"), configured):
            return web.json_response(
                {"errors": [{"message": "operator credential required"}]},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        body = await exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    return handle
