"""The live operator dashboard at ``/admin/`` on the front.

A plain HTML + JS page (``admin_page/``, no third-party code: the charts are drawn on
a canvas) that signs in with the operator token (kept in the tab's sessionStorage,
sent as a bearer header) and polls ``GET /admin/data`` once a second: per event the
tickets unassigned / in pools / held / sold and the grants so far, per shard its
link, epoch, stock, queue and connections, and the recent fencings. The page keeps
the history and draws it over time (sold/held/available, sales per second).
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import TicketingError
from ..operator import authorized
from ..wire import ToShard

if TYPE_CHECKING:
    from ..main.server import MainServer

FILES = {"index.html": "text/html", "dashboard.js": "text/javascript", "style.css": "text/css"}


def _file(name: str) -> bytes:
    return resources.files("ticketing.front.admin_page").joinpath(name).read_bytes()


async def dashboard_data(main: MainServer) -> dict[str, Any]:
    """One snapshot for the page: events, shards (with their own queues), fencings."""
    registry = main.metrics.registry
    events = []
    for event in await main.events():
        a = await main.audit(event.id)
        events.append(
            {
                "id": event.id,
                "name": event.name,
                "total": a.total,
                "unassigned": a.unassigned,
                "pool": a.in_pools,
                "held": a.held,
                "sold": a.sold,
                "granted": registry.get_sample_value(
                    "ticketing_tickets_granted_total", {"event": str(event.id)}
                )
                or 0,
            }
        )

    async def shard(sl: Any) -> dict[str, Any]:
        out = dict(sl.public())
        if sl.online and sl.name:
            try:
                st = await asyncio.wait_for(main.call(sl.name, ToShard.STATUS), 1.0)
                out.update(queued=st["queued"], connections=st["connections"])
                out.update(unacked=st["unacked"])
            except (TicketingError, TimeoutError, KeyError):
                pass  # the link health column shows why
        return out

    shards = await asyncio.gather(*(shard(sl) for sl in main.shards.values()))
    return {
        "time": time.time(),
        "events": events,
        "shards": list(shards),
        "fencings": list(main.metrics.recent_fencings),
    }


def mount_dashboard(app: web.Application, main: MainServer, token: Any) -> None:
    """Routes: ``/admin/`` (the page and its files) and ``/admin/data`` (operator token)."""

    async def page(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        if name not in FILES:
            raise web.HTTPNotFound(text="not found\n")
        return web.Response(
            body=_file(name),
            content_type=FILES[name],
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def data(request: web.Request) -> web.StreamResponse:
        configured = token()
        if configured is None:
            return web.json_response({"errors": [{"message": "operators disabled"}]}, status=403)
        if not authorized(request.headers.get("Authorization"), configured):
            return web.json_response(
                {"errors": [{"message": "operator credential required"}]},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return web.json_response(await dashboard_data(main), headers={"Cache-Control": "no-store"})

    async def to_slash(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/admin/")

    app.add_routes(
        [
            web.get("/admin", to_slash),
            web.get("/admin/", page),
            web.get("/admin/data", data),
            web.get("/admin/{name}", page),
        ]
    )
