"""The asyncio side of a main<->shard link: a thin loop around :class:`LineProtocol`.

It reads bytes from the TLS stream into the protocol, runs handlers for the peer's
requests (each in its own task, so a handler that itself waits on the peer cannot
deadlock the reader), and matches replies to :meth:`Link.request` callers. A
semaphore bounds our requests in flight: unbounded pipelining starves the peer.
A heartbeat task drives :class:`~ticketing.heartbeat.Heartbeat`: it sends a
heartbeat line when we have been quiet and closes the link when the peer has been
silent for the timeout (a silent partition closes nothing by itself).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .errors import (
    CommandError,
    LinkClosed,
    LocalProtocolError,
    PeerRejected,
    ProtocolError,
    TicketingError,
)
from .heartbeat import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT, Beat, Heartbeat
from .protocol import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_LINE,
    HELLO,
    BadInput,
    Ended,
    ErrorReply,
    LineProtocol,
    Opened,
    Reply,
    Request,
    State,
)
from .tls import PeerIdentity

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
"""A command handler gets the request's ``args`` and returns a JSON-able result.

Raise :class:`CommandError` for a deliberate error reply; ``KeyError``,
``ValueError`` and ``TypeError`` become ``bad_args`` (a missing or malformed field).
"""

_ids = itertools.count(1)


class Commands:
    """Command handlers of one side: built-ins (per link) plus shared custom ones.

    A server keeps one ``Commands`` for the custom commands users register and
    gives each link a view with its built-ins bound to that link (``extended``).
    Built-in names cannot be taken by a custom command.
    """

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._reserved = {HELLO, *reserved}
        self._builtins: dict[str, Handler] = {}
        self._custom: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        if not name or name in self._reserved:
            raise ValueError(f"command name {name!r} is reserved")
        self._custom[name] = handler

    def extended(self, builtins: dict[str, Handler]) -> Commands:
        """A view with built-ins added; custom commands stay shared."""
        view = Commands(self._reserved | set(builtins))
        view._builtins = builtins
        view._custom = self._custom
        return view

    def get(self, name: str) -> Handler | None:
        return self._builtins.get(name) or self._custom.get(name)


class Link:
    """One established TLS stream to a peer whose certificate was already checked."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerIdentity,
        commands: Commands,
        logger: logging.Logger,
        *,
        # Limits
        max_line: int = DEFAULT_MAX_LINE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        # Timeouts
        request_timeout: float = 30.0,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.peer = peer
        self.commands = commands
        self.id = next(_ids)
        self.log = logger
        self.debug = logger.isEnabledFor(logging.DEBUG)
        self.request_timeout = request_timeout
        self.proto = LineProtocol(max_line=max_line, max_in_flight=max_in_flight)
        self.heartbeat = Heartbeat(heartbeat_interval, heartbeat_timeout)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.peer_hello: dict[str, Any] = {}
        self.close_reason = ""
        self.bad_inputs = 0

    def __repr__(self) -> str:
        return f"<Link #{self.id} to {self.peer.role} {self.peer.name}>"

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self.heartbeat.start(asyncio.get_running_loop().time())
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"link-{self.id}-reader")
        self._beat_task = asyncio.create_task(self._beat_loop(), name=f"link-{self.id}-heartbeat")

    async def answered_hello(self, timeout: float) -> None:
        """The accepting side: return once the peer's hello is answered or the link has
        closed (a refused hello closes it); close it if neither happens in time."""
        waits = {asyncio.ensure_future(e.wait()) for e in (self.opened, self.closed)}
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if not done:
            await self.close("no hello in time")

    async def hello(self, hello: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Client side: send our hello and return the peer's answer."""
        rid = self.proto.send_hello(hello)
        fut = self._pending[rid] = asyncio.get_running_loop().create_future()
        self._flush()
        try:
            result = await asyncio.wait_for(fut, timeout)
        except CommandError as exc:
            raise PeerRejected(f"hello refused by {self.peer.name}: {exc.message}") from exc
        finally:
            self._pending.pop(rid, None)
        self.peer_hello = result
        self.opened.set()
        return result

    async def close(self, reason: str = "closed", *, abort: bool = False) -> None:
        """Close the link (idempotent). ``abort``: drop the connection without the TLS
        goodbye, for a peer that no longer reads (a partition would stall it)."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.close_reason = reason
        self.proto.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(LinkClosed(f"{self!r}: {reason}"))
        self._pending.clear()
        current = asyncio.current_task()
        for task in [*self._tasks, self._reader_task, self._beat_task]:
            if task is not None and task is not current:
                task.cancel()
        if abort:
            self.writer.transport.abort()
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
        except (OSError, TimeoutError, asyncio.CancelledError):
            pass  # the peer vanished; the socket is closed on our side either way
        self.log.info("%r closed: %s", self, reason)

    # -- requests ----------------------------------------------------------------

    async def request(
        self, cmd: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Send a request and wait for its result; raise CommandError on an error reply."""
        async with self._slots:
            if self.closed.is_set():
                raise LinkClosed(f"{self!r} is closed")
            rid = self.proto.send_request(cmd, args)
            fut = self._pending[rid] = asyncio.get_running_loop().create_future()
            self._flush()
            await self.writer.drain()
            try:
                return await asyncio.wait_for(fut, timeout or self.request_timeout)
            except CommandError as exc:
                raise CommandError(cmd, exc.code, exc.message) from None
            except TimeoutError:
                self.proto.abandon(rid)
                raise
            finally:
                self._pending.pop(rid, None)

    # -- the loop ------------------------------------------------------------------

    def _flush(self) -> None:
        data = self.proto.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)
            self.heartbeat.sent(asyncio.get_running_loop().time())

    async def _beat_loop(self) -> None:
        """Heartbeat when idle; close when the peer has been silent too long."""
        loop = asyncio.get_running_loop()
        hb = self.heartbeat
        try:
            while not self.closed.is_set():
                await asyncio.sleep(hb.next_check(loop.time()))
                now = loop.time()
                beat = hb.poll(now)
                if beat is Beat.DEAD:
                    silence = hb.silence(now)
                    self.log.warning("%r: peer silent for %.1f s: gone", self, silence)
                    await self.close(f"heartbeat timeout ({silence:.1f} s silent)", abort=True)
                    return
                if beat is Beat.SEND:
                    try:
                        self.proto.send_heartbeat()
                    except LocalProtocolError:
                        return  # the protocol closed under us; the reader closes the link
                    self._flush()
                    hb.sent(now)  # even when the writer is closing: no busy loop
        except asyncio.CancelledError:
            return

    async def _read_loop(self) -> None:
        reason = "peer closed the link"
        try:
            while not self.closed.is_set():
                data = await self.reader.read(65536)
                if data:
                    self.heartbeat.received(asyncio.get_running_loop().time())
                    self.proto.receive_data(data)
                else:
                    self.proto.receive_eof()
                self._dispatch(self.proto.events_received())
                self._flush()
                if self.proto.state is State.CLOSED:
                    break
        except (OSError, ConnectionError) as exc:
            reason = f"connection lost: {exc}"
        except asyncio.CancelledError:
            return
        except Exception:  # a bug here must close the link loudly, not hang it
            self.log.exception("%r: reader failed", self)
            reason = "internal error"
        await self.close(reason)

    def _dispatch(self, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, Request):
                self._spawn(self._serve(ev))
            elif isinstance(ev, Opened | Reply):
                fut = self._pending.get(ev.id)
                value = ev.hello if isinstance(ev, Opened) else ev.result
                if fut is not None and not fut.done():
                    fut.set_result(value)
            elif isinstance(ev, ErrorReply):
                fut = self._pending.get(ev.id) if ev.id is not None else None
                if fut is not None and not fut.done():
                    fut.set_exception(CommandError("?", ev.code, ev.message))
                else:
                    self.log.warning("%r: peer reports %s: %s", self, ev.code, ev.message)
            elif isinstance(ev, BadInput):
                self.bad_inputs += 1
                self.log.warning("%r: bad input from peer: %s: %s", self, ev.code, ev.message)
            elif isinstance(ev, Ended) and self.debug:
                self.log.debug("%r: EOF", self)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, req: Request) -> None:
        handler = self.commands.get(req.cmd)
        try:
            if handler is None:
                raise CommandError(req.cmd, "unknown_command", f"no command {req.cmd!r}")
            result = await handler(req.args)
        except CommandError as exc:
            self._reply_error(req, exc.code, exc.message)
        except PeerRejected as exc:
            self._reply_error(req, "refused", str(exc))
        except (KeyError, ValueError, TypeError) as exc:
            self._reply_error(req, "bad_args", f"{type(exc).__name__}: {exc}")
        except (ProtocolError, TicketingError) as exc:
            self._reply_error(req, "failed", str(exc))
        except asyncio.CancelledError:
            return
        except Exception:  # a bug in a handler must not kill the link
            self.log.exception("%r: handler for %r failed", self, req.cmd)
            self._reply_error(req, "internal", f"{req.cmd} failed on {self.peer.name}'s peer")
        else:
            if self.closed.is_set():
                return
            try:
                self.proto.send_reply(req.id, result)
            except (TypeError, ValueError):
                self.log.exception("%r: result of %r is not JSON", self, req.cmd)
                self._reply_error(req, "internal", "result is not JSON-serialisable")
            if req.cmd == HELLO:
                self.opened.set()
        self._flush()
        if req.cmd == HELLO and self.proto.state is State.CLOSED:
            await self.close("hello refused")

    def _reply_error(self, req: Request, code: str, message: str) -> None:
        if not self.closed.is_set():
            self.proto.send_error(req.id, code, message)
