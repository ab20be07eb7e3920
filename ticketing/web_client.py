"""A Python web client that does what the page does.

``GET`` the redirect server (keeping the visitor cookie), follow the ``Location`` to
the shard with its admission token, open the WSS connection, send one request and
return the answer: a ticket, sold out, or an error. Benchmarks and tests use it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException


@dataclass
class Outcome:
    """What one visit ended with. ``kind``: ticket, sold_out, unavailable, refused, error."""

    kind: str
    message: dict[str, Any] = field(default_factory=dict)
    status: int | None = None  # HTTP status of a refusal
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ticket_id(self) -> str | None:
        return self.message.get("ticket_id") if self.kind == "ticket" else None


def ws_url(location: str) -> str:
    """The shard page URL -> its WSS endpoint with the same token."""
    url = urlsplit(location)
    token = parse_qs(url.query).get("token", [""])[0]
    return f"wss://{url.netloc}/ws?token={token}"


class WebClient:
    """One visitor: a cookie jar and a TLS context trusting the cluster CA."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        timeout: float = 60.0,
        source: str | None = None,  # the local address to connect from (e.g. 127.0.0.2)
    ) -> None:
        self.ssl = ssl_context
        self.timeout = timeout
        self.local_addr = (source, 0) if source else None
        # unsafe=True: keep cookies for IP-address hosts such as 127.0.0.1.
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(
                ssl=ssl_context, force_close=True, local_addr=self.local_addr
            ),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> WebClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def admission(self, front_url: str) -> tuple[int, str | None, dict[str, Any]]:
        """GET the redirect; returns (status, Location or None, JSON body)."""
        async with self.session.get(
            front_url, allow_redirects=False, headers={"Accept": "application/json"}
        ) as resp:
            body = await resp.json(content_type=None)
            return resp.status, resp.headers.get("Location"), body

    async def get_ticket(self, front_url: str) -> Outcome:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            status, location, body = await self.admission(front_url)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return Outcome("error", {"message": f"redirect failed: {exc!r}"}, timings=timings)
        timings["redirect"] = time.perf_counter() - t0
        if location is None:
            kind = body.get("status", "error") if status < 500 else "unavailable"
            return Outcome(kind, body, status, timings)
        return await self.claim(location, t0, timings)

    async def claim(
        self, location: str, t0: float | None = None, timings: dict[str, float] | None = None
    ) -> Outcome:
        """Open the WSS connection for an admission ``location`` and ask once."""
        t0 = time.perf_counter() if t0 is None else t0
        timings = {} if timings is None else timings
        try:
            async with asyncio.timeout(self.timeout):
                async with connect(
                    ws_url(location),
                    ssl=self.ssl,
                    open_timeout=self.timeout,
                    max_size=1 << 16,
                    compression=None,
                    local_addr=self.local_addr,
                ) as ws:
                    timings["connect"] = time.perf_counter() - t0
                    await ws.send(json.dumps({"type": "request"}))
                    msg = json.loads(await ws.recv())
        except InvalidStatus as exc:
            return Outcome(
                "refused",
                {"message": exc.response.body.decode(errors="replace")},
                exc.response.status_code,
                timings,
            )
        except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
            return Outcome("error", {"message": f"wss failed: {exc!r}"}, timings=timings)
        timings["total"] = time.perf_counter() - t0
        return Outcome(msg.get("type", "error"), msg, timings=timings)


async def get_ticket(front_url: str, ssl_context: ssl.SSLContext, timeout: float = 60.0) -> Outcome:
    """One visit by a new visitor."""
    async with WebClient(ssl_context, timeout=timeout) as client:
        return await client.get_ticket(front_url)
