"""A shard's browser port: the page, ``/health`` and the WSS endpoint, on one HTTPS port.

Built on ``websockets``: plain HTTP requests are answered from ``process_request``;
``/ws`` is upgraded only with a valid admission token (signed by main, for this
shard, unexpired, unused) and only if the visitor has no other live connection —
everything else is refused with 403/409 *before* the upgrade. A visitor's claim on
its one connection lasts exactly as long as that TCP connection: a handshake that
fails after the token check (a plain GET gets 426) leaves nothing behind.

Connections pass a :class:`~ticketing.edge.ConnectionGate` (caps per server and per
address, TLS with a 16 KiB read buffer, handshake and header timeouts); refusals
are logged at most once per interval.

After the upgrade the browser sends ``{"type": "request"}`` and gets one answer:
``{"type": "ticket", ...}``, ``{"type": "sold_out", ...}``, ``{"type": "error", ...}`` or
``{"type": "retry", "reason"}``: go back through the front for a fresh admission
(the shard lost main, or its stock is out of reach), keeping the place in line.
Each answer carries ``front``: the front origin main signed into the token (the
page's only link target; the page never takes one from its URL). Until the answer,
every ``PENDING_EVERY`` seconds it gets ``{"type": "pending", "waited_s"}``: still
in line, or its ticket waiting for main's confirmation (a main failing over takes
a few seconds), so nobody waits without a word as long as that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import time
from http import HTTPStatus
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..edge import SHARD_LIMITS, ConnectionGate, EdgeLimits
from ..errors import TokenError
from ..headers import SECURITY_HEADERS
from ..logs import add_secret
from ..metrics import CONTENT_TYPE, ShardMetrics, refusal_reason
from ..operator import authorized, operator_token_from_env
from ..ratelimit import LogThrottle
from ..tls import Credentials, browser_server_context
from ..tokens import KeyRing, NonceCache, TokenVerifier
from ..wire import Admission
from .dispenser import Dispenser, Waiter

log = logging.getLogger("ticketing.shard.web")

WEB_FILES = ("index.html", "app.js", "style.css")
PENDING_EVERY = 1.0  # seconds between "pending" messages to a visitor still waiting


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
            *SECURITY_HEADERS.items(),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, payload: Any) -> Response:
    return _response(status, json.dumps(payload).encode(), "application/json")


def web_file(name: str) -> bytes:
    return resources.files("ticketing.shard.page").joinpath(name).read_bytes()


class Shard(Protocol):
    """What the browser port needs of its shard (:class:`~.server.ClientServer` is one)."""

    name: str
    max_message: int
    grant_timeout: float
    dispenser: Dispenser
    verifier: TokenVerifier | None  # None until main's hello brought its key
    keyring: KeyRing  # main's key and the front keys main certified
    nonces: NonceCache
    metrics: ShardMetrics

    def status(self) -> dict[str, Any]: ...

    def enqueue(
        self,
        visitor: str,
        event: int,
        account: int | None = None,
        arrived: float | None = None,
    ) -> Waiter: ...


class ShardWeb:
    """The browser side of one shard: page, ``/health``, ``/event`` and ``/ws``."""

    def __init__(self, shard: Shard, creds: Credentials, limits: EdgeLimits | None = None) -> None:
        self.shard = shard
        self.ssl = browser_server_context(creds)
        self.gate = ConnectionGate(shard.name, self.ssl, limits or SHARD_LIMITS)
        self.server: Server | None = None
        self.live: dict[str, ServerConnection] = {}  # visitor -> its one live connection
        self.refused = 0
        self._files = {f"/{name}": web_file(name) for name in WEB_FILES}
        self._log = LogThrottle(log, self.gate.limits.log_interval)
        self.operator_token = operator_token_from_env()  # guards /metrics
        add_secret(self.operator_token)

    @property
    def connections(self) -> int:
        return len(self.live)

    async def start(self, host: str, port: int) -> int:
        gate = self.gate

        def connection(*args: Any, **kwargs: Any) -> Any:
            # Built only once the gate admits the socket; TLS runs in the gate.
            return gate.gatekeeper(lambda: ServerConnection(*args, **kwargs))

        self.server = await serve(
            self._handler,
            host,
            port,
            process_request=self._process_request,
            max_size=self.shard.max_message,  # oversized frames close the socket (1009)
            server_header=None,
            ping_interval=20,
            ping_timeout=20,
            open_timeout=gate.limits.header_timeout,  # the upgrade request, after TLS
            create_connection=connection,  # type: ignore[arg-type]
            backlog=4096,
        )
        bound = self.server.sockets[0].getsockname()[1] if self.server.sockets else port
        log.info("%s: browsers on https://%s:%d", self.shard.name, host, bound)
        return int(bound)

    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        self.gate.close()

    # -- before the upgrade -----------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/ws":
            return self._admit(conn, parse_qs(url.query).get("token", [""])[0])
        if url.path == "/health":  # up or down only: details go to main over the link
            up = bool(self.shard.status()["linked"])  # linked to main: it can grant
            status = HTTPStatus.OK if up else HTTPStatus.SERVICE_UNAVAILABLE
            return json_response(status, {"status": "up" if up else "down"})
        if url.path == "/metrics":
            return self._metrics(request.headers.get("Authorization"))
        if url.path == "/event":
            ids = parse_qs(url.query).get("id", [""])
            ok = ids[0].isascii() and ids[0].isdigit() and len(ids[0]) <= 12  # not "²"
            info = self.shard.dispenser.events.get(int(ids[0])) if ok else None
            if info is None:
                return json_response(
                    HTTPStatus.NOT_FOUND, {"errors": [{"message": "no such event"}]}
                )
            return json_response(HTTPStatus.OK, info)
        path = "/index.html" if url.path == "/" else url.path
        body = self._files.get(path)
        if body is None:
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return _response(HTTPStatus.OK, body, f"{ctype}; charset=utf-8")

    def _admit(self, conn: ServerConnection, token: str) -> Response | None:
        """Check the admission token; stash its claims on the connection."""
        shard = self.shard
        try:
            if shard.verifier is None:
                return self._refuse(
                    HTTPStatus.SERVICE_UNAVAILABLE, "shard is not linked to main yet"
                )
            admission = Admission.verify(shard.keyring, token)
            if admission.shard != shard.name:
                raise TokenError("token is for another shard")
        except TokenError as exc:
            return self._refuse(HTTPStatus.FORBIDDEN, str(exc))
        other = self.live.get(admission.visitor)
        if other is not None and other.state.name != "CLOSED":
            return self._refuse(HTTPStatus.CONFLICT, "this visitor already has a live connection")
        if not shard.nonces.use(admission.nonce, admission.exp):
            return self._refuse(HTTPStatus.FORBIDDEN, "token refused: already used")
        # Claimed now, so a racing second upgrade is refused; released when this TCP
        # connection ends, whether or not the upgrade then succeeds.
        visitor = admission.visitor
        self.live[visitor] = conn
        conn.connection_lost_waiter.add_done_callback(lambda _: self._release(visitor, conn))
        shard.metrics.upgrades.labels("admitted").inc()
        conn.admission = admission  # type: ignore[attr-defined]
        return None

    def _release(self, visitor: str, conn: ServerConnection) -> None:
        if self.live.get(visitor) is conn:
            del self.live[visitor]

    def _refuse(self, status: HTTPStatus, reason: str) -> Response:
        self.refused += 1
        outcome = {503: "not_linked", 409: "conflict"}.get(status.value) or refusal_reason(reason)
        self.shard.metrics.upgrades.labels(outcome).inc()
        self._log.log(logging.INFO, reason, "%s: refused upgrade: %s", self.shard.name, reason)
        return json_response(status, {"errors": [{"message": reason}]})

    def _metrics(self, authorization: str | None) -> Response:
        """``GET /metrics`` behind the operator bearer token, as on the front."""
        if self.operator_token is None:
            return json_response(
                HTTPStatus.FORBIDDEN,
                {"errors": [{"message": "metrics are disabled: no operator token configured"}]},
            )
        if not authorized(authorization, self.operator_token):
            resp = json_response(
                HTTPStatus.UNAUTHORIZED, {"errors": [{"message": "operator credential required"}]}
            )
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        shard = self.shard
        queues = {e: shard.dispenser.queued(e) for e in shard.dispenser.queues}
        shard.metrics.refresh(shard.status(), queues)
        return _response(HTTPStatus.OK, shard.metrics.exposition(), CONTENT_TYPE)

    # -- after the upgrade ---------------------------------------------------------

    async def _handler(self, conn: ServerConnection) -> None:
        admission: Admission = conn.admission  # type: ignore[attr-defined]
        visitor, event, account = admission.visitor, admission.event, admission.account
        front = admission.front
        try:
            async for raw in conn:
                try:
                    msg = json.loads(raw)
                    kind = msg.get("type") if isinstance(msg, dict) else None
                except ValueError:
                    kind = None
                if kind != "request":
                    await conn.send(
                        json.dumps({"type": "error", "message": 'send {"type": "request"}'})
                    )
                    continue
                answer = await self._serve(conn, visitor, event, account, front)
                if answer is None:
                    return
                await conn.send(json.dumps(dict(answer, front=front)))
        except ConnectionClosed:
            pass
        finally:
            self._release(visitor, conn)

    async def _serve(
        self,
        conn: ServerConnection,
        visitor: str,
        event: int,
        account: int | None,
        front: str | None,
    ) -> dict[str, Any] | None:
        """Wait for the grant (saying "pending" now and then), or give up the place in
        line if the browser leaves."""
        admission: Admission = conn.admission  # type: ignore[attr-defined]
        requested = time.monotonic()
        waiter = self.shard.enqueue(visitor, event, account, admission.arrived)
        gone: asyncio.Future[Any] = asyncio.ensure_future(conn.wait_closed())
        either: list[asyncio.Future[Any]] = [waiter.future, gone]
        deadline = requested + self.shard.grant_timeout
        closed = False
        try:
            while True:
                left = deadline - time.monotonic()
                done, _ = await asyncio.wait(
                    either,
                    timeout=max(0.0, min(PENDING_EVERY, left)),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if done or left <= PENDING_EVERY:
                    break
                waited = round(time.monotonic() - requested, 1)
                try:
                    await conn.send(
                        json.dumps({"type": "pending", "waited_s": waited, "front": front})
                    )
                except ConnectionClosed:  # the browser left: as below, its place goes
                    closed = True
                    break
        finally:
            gone.cancel()
        if waiter.future.done():
            answer: dict[str, Any] = waiter.future.result()
            self.shard.metrics.answered(answer.get("type", ""), time.monotonic() - requested)
            return answer
        waiter.future.cancel()  # not granted yet: the ticket stays in the pool
        if not done and not closed:
            return {"type": "error", "message": "the shard is busy, try again"}
        return None
