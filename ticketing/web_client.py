"""A Python web client that does what the page does.

``GET`` the redirect server (keeping the visitor cookie), follow the ``Location`` to
the shard with its admission token, open the WSS connection, send one request and
return the answer: a ticket, sold out, or an error. Like the page it follows "please
wait" answers and a shard's "retry" back through the front, waits in the waiting room
(long-polling its place until released, solving a proof of work when asked), and
keeps one keep-alive connection to the front meanwhile, as a browser does.
Benchmarks and tests use it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import aiohttp
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from .front.pow import solve


@dataclass
class Outcome:
    """What one visit ended with. ``kind``: ticket, sold_out, unavailable, refused, error
    (and, from :meth:`WebClient.claim` alone, retry: the shard sent it back)."""

    kind: str
    message: dict[str, Any] = field(default_factory=dict)
    status: int | None = None  # HTTP status of a refusal
    timings: dict[str, float] = field(default_factory=dict)
    waits: int = 0  # "please wait" answers followed
    hops: int = 0  # times a shard sent the visitor back through the front
    longest_silence: float = 0.0  # seconds: the longest time without any answer
    # The waiting room: (seconds since the first request, position, eta_s) per answer
    queue: list[tuple[float, int | None, float]] = field(default_factory=list)
    queue_ticket: str | None = None  # the signed entry (``queue`` of the answers)

    @property
    def ticket_id(self) -> str | None:
        return self.message.get("ticket_id") if self.kind == "ticket" else None


def ws_url(location: str) -> str:
    """The shard page URL -> its WSS endpoint with the same token."""
    url = urlsplit(location)
    token = parse_qs(url.query).get("token", [""])[0]
    return f"wss://{url.netloc}/ws?token={token}"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def back_to_front(location: str, front: str) -> str | None:
    """Where the page goes when its shard sends it back: ``front`` (the origin in the
    shard's answer, signed into the token), with its place in line."""
    q = parse_qs(urlsplit(location).query)
    event = q.get("event", [""])[0]
    if not front.startswith("https://") or not (event.isascii() and event.isdigit()):
        return None
    place = q.get("place", [""])[0]
    return f"{front}/events/{event}" + (f"?place={quote(place, safe='')}" if place else "")


class VisitClock:
    """The longest stretch without an answer, across the hops of one visit."""

    def __init__(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.longest = 0.0

    def answered(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.last)
        self.last = now

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


class WebClient:
    """One visitor: a cookie jar and a TLS context trusting the cluster CA.

    ``get_ticket`` follows what the page follows: "please wait" answers (after their
    ``retry_after``) and a shard's "retry" (back through the front, with the place
    token), at most ``max_hops`` times and within ``timeout`` in all. ``persistent``:
    also retry when the front does not answer at all (it is restarting), as a
    person pressing reload would.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        timeout: float = 60.0,
        max_hops: int = 1000,
        persistent: bool = False,
        source: str | None = None,  # the local address to connect from (e.g. 127.0.0.2)
    ) -> None:
        self.ssl = ssl_context
        self.timeout = timeout
        self.max_hops = max_hops
        self.persistent = persistent
        self.local_addr = (source, 0) if source else None
        # When this client first began to connect (time.monotonic): its arrival on the
        # wire, after whatever delayed it in its own process (a load generator's loop).
        self.dialed_at: float | None = None
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_start.append(self._dialing)
        # unsafe=True: keep cookies for IP-address hosts such as 127.0.0.1.
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(ssl=ssl_context, local_addr=self.local_addr),
            timeout=aiohttp.ClientTimeout(total=timeout),
            trace_configs=[trace],
        )

    async def _dialing(self, *_: object) -> None:
        if self.dialed_at is None:
            self.dialed_at = time.monotonic()

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
        clock = VisitClock()
        timings: dict[str, float] = {}
        url, waits, hops = front_url, 0, 0

        queue: list[tuple[float, int | None, float]] = []
        ticket: str | None = None

        def outcome(kind: str, message: dict[str, Any], status: int | None = None) -> Outcome:
            return Outcome(
                kind, message, status, timings, waits, hops, clock.longest, queue, ticket
            )

        for _ in range(self.max_hops + 1):
            left = self.timeout - clock.elapsed()
            if left <= 0:
                break
            try:
                status, location, body = await self.admission(url)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if (self.persistent or hops) and left > 0.5:
                    await asyncio.sleep(0.5)  # the front is restarting: it comes back
                    continue
                return outcome("error", {"message": f"redirect failed: {exc!r}"})
            clock.answered()
            timings.setdefault("redirect", clock.elapsed())
            # "released": the turn came as the visitor entered (the page goes on too).
            if location is None and body.get("status") in ("queued", "challenge", "released"):
                if body["status"] == "challenge":  # the page's script does this
                    url = urljoin(url, body["location"] + solve(body["challenge"], body["bits"]))
                    continue
                ticket = body.get("queue")
                released = await self.wait_in_line(urljoin(url, body["poll"]), body, clock, queue)
                if released is None:
                    return outcome("error", {"message": f"no turn within {self.timeout:g} s"})
                if released.get("status") != "released":
                    return outcome(released.get("status", "error"), released)
                url = urljoin(url, released["location"])
                if not isinstance(released.get("redirect"), str):
                    continue  # through the front's door
                location = released["redirect"]  # straight to the shard, as the page does
            if location is None:
                kind = body.get("status", "error") if status < 500 else "unavailable"
                if kind in ("wait", "unavailable") and isinstance(body.get("location"), str):
                    waits += 1
                    url = urljoin(url, body["location"])
                    pause = float(body.get("retry_after", 1.0))
                    await asyncio.sleep(min(max(0.05, pause), max(0.0, left)))
                    continue
                return outcome(kind, body, status)
            out = await self.claim(location, clock.t0, timings, clock.answered)
            if "total" in out.timings or out.status is not None:
                clock.answered()  # a message on the WSS, or an HTTP refusal
            front = out.message.get("front")
            again = back_to_front(location, front if isinstance(front, str) else origin(front_url))
            lost = self.persistent and out.kind == "error" and out.message.get("unreachable")
            if again and (
                out.kind == "retry" or lost or (out.kind == "refused" and out.status == 503)
            ):
                hops += 1
                url = again
                continue
            out.waits, out.hops, out.longest_silence = waits, hops, clock.longest
            out.queue, out.queue_ticket = queue, ticket
            return out
        return outcome("error", {"message": f"no answer within {self.timeout:g} s"})

    async def wait_in_line(
        self,
        poll: str,
        body: dict[str, Any],
        clock: VisitClock,
        seen: list[tuple[float, int | None, float]],
    ) -> dict[str, Any] | None:
        """Long-poll the waiting room until released (or sold out); None: out of time.

        Each answer's position and ETA go into ``seen``.
        """
        while body.get("status") == "queued":
            seen.append((clock.elapsed(), body.get("position"), float(body.get("eta_s", 0.0))))
            pause = float(body.get("next_poll_s", 0.0))  # far back: call back later
            left = self.timeout - clock.elapsed()
            if left <= 0:
                return None
            pause = min(pause, max(0.0, left - 1.0))  # a last look before giving up
            await asyncio.sleep(pause)
            try:
                async with self.session.get(poll, headers={"Accept": "application/json"}) as resp:
                    body = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.5)  # the front restarts; the ticket keeps the place
            clock.answered()
        if body.get("status") == "released":
            seen.append((clock.elapsed(), 0, 0.0))  # position 0: our turn came
        return body

    async def claim(
        self,
        location: str,
        t0: float | None = None,
        timings: dict[str, float] | None = None,
        on_pending: Callable[[], None] | None = None,
    ) -> Outcome:
        """Open the WSS connection for an admission ``location`` and ask once.

        "pending" messages (still waiting) call ``on_pending`` and the wait goes on. A
        connection lost after it opened and before the answer (the shard died) is a
        ``retry``, as the page treats it: go back through the front.
        """
        t0 = time.perf_counter() if t0 is None else t0
        timings = {} if timings is None else timings
        opened = False
        try:
            async with asyncio.timeout(self.timeout):
                async with connect(
                    ws_url(location),
                    ssl=self.ssl,
                    open_timeout=self.timeout,
                    max_size=1 << 16,
                    compression=None,
                    proxy=None,  # as the aiohttp half: no proxy from the environment
                    local_addr=self.local_addr,
                ) as ws:
                    opened = True
                    timings["connect"] = time.perf_counter() - t0
                    await ws.send(json.dumps({"type": "request"}))
                    while (msg := json.loads(await ws.recv())).get("type") == "pending":
                        if on_pending is not None:
                            on_pending()
                    # The answer is in hand now; closing the socket comes after.
                    timings["total"] = time.perf_counter() - t0
        except InvalidStatus as exc:
            return Outcome(
                "refused",
                {"message": exc.response.body.decode(errors="replace")},
                exc.response.status_code,
                timings,
            )
        except ConnectionClosed as exc:
            if opened:
                return Outcome("retry", {"reason": f"connection lost: {exc!r}"}, timings=timings)
            return Outcome("error", {"message": f"wss failed: {exc!r}"}, timings=timings)
        except (TimeoutError, WebSocketException, ValueError) as exc:
            return Outcome("error", {"message": f"wss failed: {exc!r}"}, timings=timings)
        except OSError as exc:  # refused, reset: the shard is gone (persistent: go back)
            message = {"message": f"wss failed: {exc!r}", "unreachable": True}
            return Outcome("error", message, timings=timings)
        return Outcome(msg.get("type", "error"), msg, timings=timings)


async def get_ticket(front_url: str, ssl_context: ssl.SSLContext, timeout: float = 60.0) -> Outcome:
    """One visit by a new visitor."""
    async with WebClient(ssl_context, timeout=timeout) as client:
        return await client.get_ticket(front_url)
