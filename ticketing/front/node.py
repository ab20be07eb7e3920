"""A front process: the public door, any number of them, beside main and the shards.

``async with FrontServer("front-1", mains=[(host, port), ...]) as front``:
``create_server(port)`` serves browsers; the front dials main's front link port
(mutual TLS, role ``front``, heartbeats) and keeps that link up, reconnecting with
backoff. Its hello carries its own Ed25519 key, which main certifies at every shard
before answering; from then on it routes each visitor from the view main pushes
(:class:`~ticketing.front.view.PushedView`) and signs admission tokens itself.
While main is away the view says "out of reach", so visitors are told to wait
(they keep their place) and nobody gets an error page.

**Several mains (failover).** ``mains`` lists every main's front link address (a
leader and its standbys). Whenever the front has no link it dials all of them at
once; a standby refuses (``not_leader``), the leader answers with its **term**. The
front remembers the newest term it has seen and refuses a main with an older one
(a paused old leader woken up), and its own hello carries that term so such a
main refuses it too; a newer main answering while the front is still on an older
one's link replaces it. The decision is :func:`choose_main`, a plain function.

The waiting room (``queue.py``) runs here as in main's embedded front: its queue
tickets and proof-of-work challenges are signed with this front's key, and its
lines go to main every tick over the link (``FromFront.LINE``), whose reply
releases them in the cluster's one order. ``key_path``: keep the key in that file
across restarts, so a restarted front's queue tickets (and places) stay good.

The marketplace (``/app/``, ``/api/v1`` including its WebSocket, ``/admin/``) is
proxied over HTTPS to main's own front (``market_url``, else the address the
leading main announces in its hello, so it follows a failover), so browsers see
one origin per front. Main's marketplace rate-limits by client address: the front
passes the visitor's address in a header signed with its certified key
(``X-Ticketing-Client``), which main believes only with a valid signature.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..errors import CommandError, LinkClosed, PeerRejected
from ..heartbeat import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT
from ..link import Commands, Handler, Link
from ..main.server import load_signing_key
from ..market.sessions import COOKIE_NAME
from ..protocol import PROTOCOL_VERSION
from ..tls import Credentials, PemSource, browser_server_context, check_peer, client_context
from ..tokens import TokenSigner
from ..wire import FRONT_HELLO_KEY, FromFront, HelloRefused, LineOrders, LineReport, ToFront
from .forwarding import CLIENT_HEADER, HOP_HEADERS, sign_client
from .server import FrontDoor
from .view import PushedView

log = logging.getLogger("ticketing.front")

PROXIED = ("/app", "/api/v1", "/admin")  # served by main's marketplace behind this front
UNLINKED_WARNING_EVERY = 5.0  # seconds between warnings while no main takes the link

# What becomes of a main that answered a front's hello (choose_main).
ADOPT = "adopt"  # it becomes the front's link
STALE_TERM = HelloRefused.STALE_TERM.value  # older than the newest term the front has seen
ALREADY_LINKED = "already_linked"  # the front is linked to a main of the same or newer term


def choose_main(term: int, newest: int, linked: int | None) -> str:
    """Whether a main answering with ``term`` becomes the link (:data:`ADOPT`) or not.

    ``newest``: the newest term this front has seen; ``linked``: the term of the
    main it is linked to now (None: no link). Older terms are fenced; a newer main
    replaces the current link (its leader was deposed).
    """
    if term < newest:
        return STALE_TERM
    if linked is not None and term <= linked:
        return ALREADY_LINKED
    return ADOPT


class FrontServer(FrontDoor):
    """One front process's server: admission from the pushed view, the marketplace proxied."""

    def __init__(
        self,
        name: str = "front-1",
        *,
        mains: Sequence[tuple[str, int]] = (("127.0.0.1", 9000),),  # every main's link port
        market_url: str | None = None,  # main's own front (https://host:port); None: announced
        key_path: str | os.PathLike[str] | None = None,  # the token key's file; None: fresh
        # Timeouts
        connect_timeout: float = 10.0,  # per main dialled; the others are dialled meanwhile
        reconnect_min: float = 0.1,
        reconnect_max: float = 0.5,  # between rounds of dials while no main leads
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        **options: Any,
    ) -> None:
        # Main certifies the key for as long as this link lives; kept in key_path, the
        # same key comes back after a restart (its queue tickets count again).
        key = load_signing_key(Path(key_path)) if key_path is not None else None
        self.view = PushedView(TokenSigner(key, kid=name))
        super().__init__(self.view, **options)
        self.name = name
        self.mains = [(host, int(port)) for host, port in mains]
        if not self.mains:
            raise ValueError("a front needs the address of at least one main")
        self.market_url = market_url.rstrip("/") if market_url else None
        self.announced_market: str | None = None  # the leading main's own front, from its hello
        self.connect_timeout = connect_timeout
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.heartbeat_interval, self.heartbeat_timeout = heartbeat_interval, heartbeat_timeout
        self.credentials: Credentials | None = None
        self.link: Link | None = None
        self.linked = asyncio.Event()  # set while the link to main is up and in sync
        self.term = 0  # the newest leadership term seen: an older main is refused
        self.link_term = 0  # the term of the main on self.link
        self._dials: dict[tuple[str, int], asyncio.Task[None]] = {}  # one per main at most
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.app.middlewares.append(self._identity)
        for prefix in PROXIED:
            self.app.router.add_route("*", prefix + "{tail:(/.*)?}", self._proxy)

    # -- configuration -------------------------------------------------------------------

    def set_certificate_path(self, path: str | os.PathLike[str]) -> None:
        """Use ``<path>/ca.crt`` and ``<path>/<name>.crt|.key``."""
        self.credentials = Credentials.from_directory(path, self.name)

    def set_options(self, *, key: PemSource, cert: PemSource, ca: PemSource) -> None:
        self.credentials = Credentials(cert=cert, key=key, ca=ca)

    def _creds(self) -> Credentials:
        if self.credentials is None:
            self.set_certificate_path("keys")
        assert self.credentials is not None
        return self.credentials

    # -- lifecycle -----------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        return browser_server_context(self._creds())

    async def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._keep_linked(), name=f"{self.name}-link")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        for dial in list(self._dials.values()):
            dial.cancel()
        if self.link is not None:
            await self.link.close("front closing")
        await super().close()
        if self._session is not None:
            await self._session.close()

    async def wait_linked(self, timeout: float = 10.0) -> None:
        """Until the link to main is up (the key certified, the first view in)."""
        await asyncio.wait_for(self.linked.wait(), timeout)

    # -- the link to main ------------------------------------------------------------------

    async def _keep_linked(self) -> None:
        """Dial every main until one leads; stay on its link; when it closes, dial again."""
        delay = self.reconnect_min
        since = told = time.monotonic()  # unlinked since; last said so
        while not self._closed:
            link = self.link
            if link is not None:
                await link.closed.wait()
                self._unlinked(link)
                since = told = time.monotonic()
                continue
            self._dial_all()
            try:
                await asyncio.wait_for(self.linked.wait(), delay * random.uniform(0.8, 1.2))
            except TimeoutError:
                delay = min(delay * 2, self.reconnect_max)
                if time.monotonic() - told >= UNLINKED_WARNING_EVERY:
                    told = time.monotonic()
                    log.warning(
                        "%s: no main has taken the link for %.0f s (dialling %s); visitors wait",
                        self.name,
                        told - since,
                        ", ".join(f"{h}:{p}" for h, p in self.mains),
                    )
                continue
            delay = self.reconnect_min

    def _unlinked(self, link: Link) -> None:
        if self.link is not link:
            return  # replaced by a newer main's link: that one is ours
        self.link = None
        self.linked.clear()
        self.metrics.main_term.set(0)
        self.view.lost()  # visitors wait (keeping their place) until a main leads again
        log.warning("%s: link to main closed (%s)", self.name, link.close_reason)

    def _dial_all(self) -> None:
        """Dial each main that is not being dialled already (a paused one can hang)."""
        for addr in self.mains:
            if addr not in self._dials:
                task = asyncio.create_task(self._dial(*addr), name=f"{self.name}-dial-{addr}")
                self._dials[addr] = task
                task.add_done_callback(partial(self._dialled, addr))

    def _dialled(self, addr: tuple[str, int], task: asyncio.Task[None]) -> None:
        if self._dials.get(addr) is task:
            del self._dials[addr]

    async def _dial(self, host: str, port: int) -> None:
        """One attempt at one main: link to it if it leads with a term not older than ours."""
        try:
            link, hello, based = await self._connect(host, port)
        except PeerRejected as exc:
            cause = exc.__cause__
            code = cause.code if isinstance(cause, CommandError) else None
            reason = code if code in tuple(HelloRefused) else "rejected"
            self.metrics.mains_refused.labels(reason).inc()
            # A standby saying so is normal; a refusal by term is the fencing at work.
            level = logging.INFO if reason == HelloRefused.NOT_LEADER else logging.WARNING
            log.log(level, "%s: main at %s:%d refused the link: %s", self.name, host, port, exc)
            return
        except (OSError, ssl.SSLError, TimeoutError, LinkClosed) as exc:
            self.metrics.mains_refused.labels("unreachable").inc()  # down, or not started
            log.info("%s: main at %s:%d unreachable: %r", self.name, host, port, exc)
            return
        term = hello.get("term", 0)
        if type(term) is not int or term < 0:
            self.metrics.mains_refused.labels("rejected").inc()
            await link.close("bad term in hello")
            return
        verdict = choose_main(term, self.term, self.link_term if self.link else None)
        if verdict != ADOPT:
            if verdict == STALE_TERM:  # an old leader, paused and woken up: fenced by term
                self.metrics.mains_refused.labels(STALE_TERM).inc()
                log.warning(
                    "%s: refused main of term %d (term %d leads)", self.name, term, self.term
                )
            await link.close(f"{verdict}: term {self.term} leads, not {term}")
            return
        old = self.link
        try:
            self.view.reset(hello)
        except (KeyError, ValueError, TypeError) as exc:
            self.metrics.mains_refused.labels("rejected").inc()
            log.warning("%s: bad hello from main at %s:%d: %r", self.name, host, port, exc)
            await link.close("bad hello")
            if old is not None:  # the view is half reset: re-sync from a whole one
                await old.close("the view was reset by a bad hello")
            return
        market = hello.get("market")
        self.announced_market = market.rstrip("/") if isinstance(market, str) else None
        self.link, self.term, self.link_term = link, term, term
        self.metrics.mains_linked.inc()
        self.metrics.main_term.set(term)
        based.set()
        self.linked.set()
        log.info("%s: linked to main (%r), term %d", self.name, link, term)
        if old is not None:
            await old.close(f"replaced by the main of term {term}")

    async def _connect(self, host: str, port: int) -> tuple[Link, dict[str, Any], asyncio.Event]:
        """TLS, the hello and its answer; the caller decides whether the link is kept."""
        ctx = client_context(self._creds())
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host),
            self.connect_timeout,
        )
        try:
            ident = check_peer(writer.get_extra_info("ssl_object"), "main")
        except PeerRejected:
            writer.close()
            raise
        link = Link(
            reader,
            writer,
            ident,
            Commands(),
            log,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
        )
        # Main's first pushes can be read in the same chunk as its hello answer and
        # run before we have applied that answer: each waits for it, keeping order.
        # Pushes on a link that is not (or no longer) ours are ignored.
        based = asyncio.Event()

        def after_hello(handler: Handler) -> Handler:
            async def run(args: dict[str, Any]) -> Any:
                await based.wait()
                return await handler(args) if self.link is link else {}

            return run

        handlers: dict[str, Handler] = {
            ToFront.VIEW: after_hello(self._on_view),
            ToFront.KEYS: after_hello(self._on_keys),
            ToFront.REVOKED: after_hello(self._on_revoked),
            ToFront.PING: _pong,
        }
        link.commands = Commands().extended(handlers)
        link.start()
        try:
            hello = await link.hello(
                {
                    "version": PROTOCOL_VERSION,
                    "node": self.name,
                    "role": "front",
                    "term": self.term,  # a main of an older term refuses us: it is fenced
                    FRONT_HELLO_KEY: self.view.signer.public_key_bytes.hex(),
                },
                timeout=self.connect_timeout,
            )
            if hello.get("role") != "main" or hello.get("node") != ident.name:
                raise PeerRejected(f"hello from {hello.get('node')!r} does not match")
        except BaseException:
            await link.close("link setup failed")
            raise
        return link, hello, based

    async def _exchange_lines(self, reports: dict[int, LineReport]) -> dict[int, LineOrders] | None:
        """The waiting room's lines to main over the link; None while it is down."""
        link = self.link
        if link is None or not self.linked.is_set():
            return None
        wire = {str(eid): r.to_wire() for eid, r in reports.items()}
        try:
            got = await link.request(
                FromFront.LINE, {"events": wire}, timeout=self.heartbeat_timeout
            )
            return {int(eid): LineOrders.from_wire(o) for eid, o in got["events"].items()}
        except (LinkClosed, CommandError, TimeoutError, KeyError, TypeError, ValueError) as exc:
            log.warning("%s: waiting-room report failed: %s", self.name, exc)
            return None

    async def _on_view(self, args: dict[str, Any]) -> dict[str, Any]:
        self.view.apply(args)
        return {}

    async def _on_keys(self, args: dict[str, Any]) -> dict[str, Any]:
        self.view.set_keys(args["keys"])
        return {}

    async def _on_revoked(self, args: dict[str, Any]) -> dict[str, Any]:
        self.view.revoke(args["sessions"])
        return {}

    # -- browsers ------------------------------------------------------------------------

    @web.middleware
    async def _identity(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The signed-in account, from the session cookie checked with main's key."""
        if not request.path.startswith(PROXIED):
            claims = self.view.session(request.cookies.get(COOKIE_NAME))
            if claims is not None:
                with warnings.catch_warnings():  # the plain key the admission path reads
                    warnings.simplefilter("ignore", web.NotAppKeyWarning)
                    request["account_id"] = claims.account_id
        return await handler(request)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=client_context(self._creds()), limit=256)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    def _forward_headers(self, request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        # The browser's Host stays (main checks Origin against it); the address is signed.
        headers[CLIENT_HEADER] = sign_client(self.view.signer, request.remote or "?")
        return headers

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        """Forward a marketplace request to main's front and stream its answer back."""
        base = self.market_url or self.announced_market
        if base is None:  # no --market, and no main has announced one (none leads yet)
            return _market_unavailable()
        url = base + request.rel_url.path_qs
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._proxy_ws(request, url)
        try:
            async with self._client().request(
                request.method,
                url,
                headers=self._forward_headers(request),
                data=await request.read() if request.can_read_body else None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as upstream:
                body = await upstream.read()
                resp = web.Response(body=body, status=upstream.status)
                for k, v in upstream.headers.items():
                    if k.lower() not in HOP_HEADERS and k.lower() != "content-length":
                        resp.headers.add(k, v)
                return resp
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s: marketplace unreachable: %s", self.name, exc)
            return _market_unavailable()

    async def _proxy_ws(self, request: web.Request, url: str) -> web.StreamResponse:
        """The marketplace's live socket: one upstream socket per browser socket."""
        headers = {
            k: v
            for k, v in self._forward_headers(request).items()
            if not k.lower().startswith("sec-websocket")
        }
        try:
            upstream = await self._client().ws_connect(url, headers=headers, max_msg_size=4096)
        except (aiohttp.ClientError, TimeoutError):
            return web.json_response({"errors": [{"message": "unavailable"}]}, status=503)
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
        await ws.prepare(request)

        async def pump(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                else:
                    break

        tasks = [asyncio.create_task(pump(ws, upstream)), asyncio.create_task(pump(upstream, ws))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        await upstream.close()
        await ws.close()
        return ws


async def _pong(args: dict[str, Any]) -> dict[str, Any]:
    return {}


def _market_unavailable() -> web.Response:
    return web.json_response(
        {"errors": [{"message": "the marketplace is unavailable, try again shortly"}]},
        status=503,
        headers={"Retry-After": "5"},
    )
