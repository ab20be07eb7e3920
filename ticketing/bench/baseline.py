"""The bare-stack baseline of ``ticketing bench`` (``python -m ticketing.bench.baseline``).

The same network work as a ticketing visit with no ticketing logic, so the benchmark
can say how much of the cost is ours:

- ``redirect``: an aiohttp HTTPS server answering ``GET /`` with a 302 to one of the
  WSS servers (round robin), a random token of the same length as an admission
  token and the visitor cookie — the shape of ``RedirectServer``'s answer.
- ``wss``: a ``websockets`` WSS server that answers each message with one small JSON
  reply, served with the same options as a shard's browser port.

Both use the cluster's certificates (``main`` for the redirect, ``shard-k`` for the
WSS servers), print ``READY {"port": ...}`` once bound, and run until SIGTERM or
SIGINT (the benchmark stops them by PID).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import secrets
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ..tls import Credentials, browser_server_context
from ..visitor import VISITOR_COOKIE
from .worker import stop_or_orphaned

TOKEN_CHARS = 230  # about the length of a real admission token


async def run_redirect(args: argparse.Namespace) -> int:
    ctx = browser_server_context(Credentials.from_directory(args.keys, args.name))
    targets = itertools.cycle(args.target)
    counter = itertools.count(1)

    async def root(request: web.Request) -> web.Response:
        location = f"{next(targets)}/?event=1&token={secrets.token_urlsafe(TOKEN_CHARS * 3 // 4)}"
        resp = web.json_response(
            {"status": "redirect", "location": location, "n": next(counter)},
            status=302,
            headers={"Location": location},
        )
        if VISITOR_COOKIE not in request.cookies:
            resp.set_cookie(
                VISITOR_COOKIE,
                secrets.token_urlsafe(16),
                max_age=86400,
                httponly=True,
                secure=True,
                samesite="Lax",
                path="/",
            )
        return resp

    app = web.Application(client_max_size=64 * 1024)
    app.add_routes([web.get("/", root)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=ctx, backlog=4096)
    await site.start()
    print("READY " + json.dumps({"port": runner.addresses[-1][1]}), flush=True)
    try:
        await stop_or_orphaned()
    finally:
        await runner.cleanup()
    return 0


async def run_wss(args: argparse.Namespace) -> int:
    ctx = browser_server_context(Credentials.from_directory(args.keys, args.name))
    counter = itertools.count(1)

    async def handler(conn: ServerConnection) -> None:
        try:
            async for _ in conn:
                await conn.send(json.dumps({"type": "ticket", "ticket_id": f"b-{next(counter)}"}))
        except ConnectionClosed:
            pass

    # The same serve() options as ShardWeb.start, minus the token check.
    async with serve(
        handler,
        args.host,
        args.port,
        ssl=ctx,
        max_size=4096,
        server_header=None,
        ping_interval=20,
        ping_timeout=20,
    ) as server:
        port = server.sockets[0].getsockname()[1] if server.sockets else args.port
        print("READY " + json.dumps({"port": port}), flush=True)
        await stop_or_orphaned()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ticketing.bench.baseline")
    parser.add_argument("role", choices=("redirect", "wss"))
    parser.add_argument("--keys", required=True)
    parser.add_argument("--name", required=True, help="whose certificate: main, shard-1, ...")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--target", action="append", default=[], help="WSS server base URL")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = (
        run_redirect if args.role == "redirect" else run_wss
    )
    if args.uvloop:
        import uvloop

        return uvloop.run(run(args))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
