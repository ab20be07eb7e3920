"""Main's side of the front links: fronts dial in, main certifies their keys and pushes a view.

**Who dials.** Fronts dial main (one well-known port, ``serve_fronts``), so fronts
can be added and removed while a sale runs without telling main anything first,
and a front reconnects by itself when main restarts. Main dials the shards (they
hold the stock; main decides which exist); fronts are disposable edge processes.

**Several mains.** A front is given every main's front link address and dials them
all whenever it has no link; only the leader takes it. A standby listens from the
start but refuses every hello (``not_leader``) until it leads and has linked the
shards (:meth:`FrontHub.accept`), so a front gets a clear answer instead of a
connection refused and never routes on a view without shards. The hello answer
carries main's **term**; the front's hello carries the newest term it has seen, and
a main whose term is older refuses it (``stale_term``): a paused old leader that
wakes up cannot take a front back. A main that is deposed closes its front links.

**Keys.** A front's hello carries its Ed25519 public key. Main certifies it at
every online shard (``ToShard.FRONT_KEYS``, awaited) *before* answering the
hello, so the front's first token is already valid. When the link closes (the
front stopped, crashed, or was silent for ``heartbeat_timeout``) its key is
revoked at every shard at once: its tokens are refused from then on.

**The view.** Every ``view_interval`` (50 ms) main builds each event's
:class:`~ticketing.main.stock.EventRoutes` and sends the fronts the events that
changed since the last push (a delta per event; nothing when nothing changed), so
routing never costs main a round trip per visitor. A change that can alter a
front's answer (a shard up or down, stock running out or back, an event's fields,
a stock count off by more than an eighth) goes at the next tick; a count that only
drifts goes with the next such change or after ``view_max_age`` (250 ms): during a
sale nearly every tick changes some count, and a push per front per tick was a
good part of main's CPU per ticket. The pusher looks when main wakes it (a sale,
a stock move, a link up or down, an event changed) and every 0.5 s regardless.
Signed-out sessions go the same way.

**The waiting rooms.** Each front reports its lines every waiting-room tick
(``FromFront.LINE``); the reply is main's release order for them
(``release.py``: one watermark for every front), so the fronts' lines move as one.
A front that unlinks no longer holds anyone up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import CommandError, LinkClosed, PeerRejected
from ..ledger.records import Event
from ..link import Commands, Link
from ..listener import LinkListener, accept_tls
from ..protocol import PROTOCOL_VERSION
from ..tls import Credentials, server_context
from ..tokens import TokenSigner
from ..wire import FRONT_HELLO_KEY, FromFront, HelloRefused, LineReport, ToFront
from .release import ReleaseCoordinator, line_orders
from .stock import EventRoutes, StockView

log = logging.getLogger("ticketing.main.fronts")

VIEW_INTERVAL = 0.05  # seconds between view pushes (the coalescing window)
VIEW_MAX_AGE = 0.25  # seconds a drifting stock count may wait (see urgent())
VIEW_IDLE_POLL = 0.5  # seconds between looks when nothing woke the pusher (a safety net)
DRIFT = 8  # a count off by more than 1/DRIFT of what a front has is urgent
REVOCATIONS_EVERY = 1.0  # seconds between checks for new sign-outs


class _Main(Protocol):
    """What the hub needs of :class:`~ticketing.main.server.MainServer`."""

    name: str
    term: int
    deposed: asyncio.Event
    market_url: str | None
    credentials: Credentials | None
    signer: TokenSigner | None
    max_line: int
    max_in_flight: int
    heartbeat_interval: float
    heartbeat_timeout: float
    sale_listeners: list[Callable[[list[dict[str, Any]]], Any]]
    lines: ReleaseCoordinator

    async def event(self, event_id: int) -> Event | None: ...
    def stock_view(self, event_id: int) -> StockView: ...
    async def event_infos(self) -> dict[int, dict[str, Any]]: ...
    def routes(self, event_id: int, info: dict[str, Any] | None = None) -> EventRoutes: ...
    async def certify_fronts(self, keys: dict[str, str]) -> None: ...
    async def revoked_sessions(self) -> list[tuple[str, float]]: ...


@dataclass(eq=False)
class FrontLink:
    """One linked front: its link and the public key main certified for it."""

    name: str
    link: Link
    key: str  # Ed25519 public key, hex
    sent: dict[int, dict[str, Any]] = field(default_factory=dict)  # the view it has now
    sent_at: float = 0.0  # monotonic time of its latest view push
    ready: bool = False  # its hello is answered: requests may go to it


def _check_key(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError("token_key must be 32 bytes of hex")
    bytes.fromhex(value)
    return value


class FrontHub:
    """Accepts front links, certifies their keys, pushes them the routing view."""

    def __init__(
        self,
        main: _Main,
        *,
        view_interval: float = VIEW_INTERVAL,
        view_max_age: float = VIEW_MAX_AGE,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.main = main
        self.view_interval = view_interval
        self.view_max_age = view_max_age
        self.handshake_timeout = handshake_timeout
        self.fronts: dict[str, FrontLink] = {}
        self.commands = Commands(tuple(ToFront))
        self.pushes = 0  # view deltas sent (a figure for tests and the bench)
        self._revoked: set[str] = set()
        self._listener: LinkListener | None = None
        self._ctx: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pusher: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()  # wake(): the view may have changed
        self.port: int | None = None
        main.sale_listeners.append(lambda fresh: self.wake())  # every sale moves stock
        self.accepting = False  # fronts' hellos are refused (not_leader) until accept()

    def accept(self) -> None:
        """Take front links from now on: this main leads and its shards are linked."""
        self.accepting = True

    async def unlink_all(self, reason: str) -> None:
        """Close every front link (this main was deposed: the fronts find the new leader)."""
        self.accepting = False
        for fl in list(self.fronts.values()):
            await fl.link.close(reason)

    async def listen(self, port: int = 0, host: str = "127.0.0.1") -> int:
        assert self.main.credentials
        self._ctx = server_context(self.main.credentials)
        self._listener = LinkListener(
            host, port, lambda sock, peer: self._spawn(self._on_connection(sock, peer))
        )
        self.port = int(self._listener.sockets[0].getsockname()[1])
        self._pusher = asyncio.create_task(self._push_loop(), name="front-view-pusher")
        log.info("front link port %s:%d (mutual TLS)", host, self.port)
        return self.port

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for task in [*self._tasks, self._pusher]:
            if task is not None:
                task.cancel()
        for fl in list(self.fronts.values()):
            await fl.link.close("main closing")
        self.fronts.clear()

    # -- links --------------------------------------------------------------------------

    async def _on_connection(self, sock: socket.socket, peer: Any) -> None:
        assert self._ctx is not None
        try:
            reader, writer, ident = await accept_tls(
                sock, self._ctx, "front", None, self.handshake_timeout
            )
        except (ssl.SSLError, PeerRejected, OSError, TimeoutError) as exc:
            log.warning("refused front link from %s: %s", peer, exc)
            return
        m = self.main
        link = Link(
            reader,
            writer,
            ident,
            self.commands,
            log,
            max_line=m.max_line,
            max_in_flight=m.max_in_flight,
            heartbeat_interval=m.heartbeat_interval,
            heartbeat_timeout=m.heartbeat_timeout,
        )
        link.commands = self.commands.extended(
            {
                "hello": lambda args: self._on_hello(link, args),
                ToFront.PING: _pong,
                FromFront.LINE: lambda args: self._on_line(link, args),
            }
        )
        link.start()
        await link.answered_hello(self.handshake_timeout)

    async def _on_hello(self, link: Link, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("version") != PROTOCOL_VERSION:
            raise CommandError("hello", "version", f"protocol version {PROTOCOL_VERSION} required")
        name = link.peer.name
        if args.get("node") != name or args.get("role") != "front":
            raise PeerRejected(f"hello from {args.get('node')!r} does not match {name!r}")
        key = _check_key(args.get(FRONT_HELLO_KEY))
        m = self.main
        seen = args.get("term", 0)
        if type(seen) is not int or seen < 0:
            raise CommandError("hello", "bad_args", "term must be a whole number")
        if m.term and seen > m.term:  # a front heard from a newer leader: this main is fenced
            log.warning(
                "refused front %s: it has seen term %d, this main's is %d", name, seen, m.term
            )
            raise CommandError("hello", HelloRefused.STALE_TERM, f"term {seen} leads, not {m.term}")
        if not self.accepting or m.deposed.is_set():
            raise CommandError(
                "hello",
                HelloRefused.NOT_LEADER,
                f"{m.name} does not lead (a standby, or its term is over)",
            )
        old = self.fronts.get(name)
        if old is not None:  # the same front reconnecting (restart, blip): the new link wins
            await old.link.close("replaced by a new link from the same front")
        fl = self.fronts[name] = FrontLink(name, link, key)
        await self.main.certify_fronts(self._keys())  # valid at the shards before it routes
        self._spawn(self._watch(fl))
        fl.sent = await self._snapshot()  # the base its deltas will follow
        self._spawn(self._opened(fl))
        assert m.signer
        log.info("front %s linked (%r); key certified", name, link)
        return {
            "version": PROTOCOL_VERSION,
            "node": m.name,
            "role": "main",
            "term": m.term,
            "market": m.market_url,
            "session_key": m.signer.public_key_bytes.hex(),
            "keys": self._keys(),
            "view": list(fl.sent.values()),
            "revoked": await self.main.revoked_sessions(),
        }

    async def _on_line(self, link: Link, args: dict[str, Any]) -> dict[str, Any]:
        """A front's lines: main's release orders for them, in the reply."""
        fl = self.fronts.get(link.peer.name)
        if fl is None or fl.link is not link:
            raise CommandError(FromFront.LINE, "unlinked", "hello first")
        try:
            reports = {int(eid): LineReport.from_wire(r) for eid, r in args["events"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CommandError(FromFront.LINE, "malformed", str(exc)) from exc
        orders = await line_orders(self.main, fl.name, reports)
        return {"events": {str(eid): o.to_wire() for eid, o in orders.items()}}

    async def _opened(self, fl: FrontLink) -> None:
        """Once its hello is answered it gets pushes, and the others learn its key."""
        await fl.link.opened.wait()
        fl.ready = True
        await self._send_keys()

    async def _watch(self, fl: FrontLink) -> None:
        await fl.link.closed.wait()
        if self.fronts.get(fl.name) is not fl:
            return  # replaced by a newer link: that one's key stays
        del self.fronts[fl.name]
        self.main.lines.forget(fl.name)
        log.warning("front %s unlinked (%s); its key is revoked", fl.name, fl.link.close_reason)
        await self.main.certify_fronts(self._keys())
        await self._send_keys()

    def _keys(self) -> dict[str, str]:
        return {name: fl.key for name, fl in self.fronts.items()}

    async def _send_keys(self) -> None:
        await self._broadcast(ToFront.KEYS, {"keys": self._keys()})

    async def _broadcast(self, cmd: str, args: dict[str, Any]) -> None:
        fronts = [fl for fl in list(self.fronts.values()) if fl.ready]
        await asyncio.gather(*(self._send(fl, cmd, args) for fl in fronts))

    async def _send(self, fl: FrontLink, cmd: str, args: dict[str, Any]) -> None:
        try:
            await fl.link.request(cmd, args, timeout=max(1.0, self.main.heartbeat_timeout))
        except (LinkClosed, CommandError, TimeoutError) as exc:
            # A front that misses a delta is closed: it re-syncs from a whole view.
            log.warning("%s to front %s failed: %s", cmd, fl.name, exc)
            await fl.link.close(f"{cmd} failed")

    # -- the view -----------------------------------------------------------------------

    def wake(self) -> None:
        """The routes may have changed (main calls it): look at the next tick."""
        self._dirty.set()

    async def _push_loop(self) -> None:
        """A look every ``view_interval`` while something changes, else every
        ``VIEW_IDLE_POLL`` (idle ticks were most of an idle main's CPU)."""
        next_revocations = 0.0
        while True:
            await asyncio.sleep(self.view_interval)  # the coalescing window
            if not self._dirty.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(VIEW_IDLE_POLL):
                        await self._dirty.wait()
            self._dirty.clear()
            if not self.fronts:
                continue
            try:
                if await self._push_changes():
                    self._dirty.set()  # a drifting count held back: look again
                if time.monotonic() >= next_revocations:
                    next_revocations = time.monotonic() + REVOCATIONS_EVERY
                    await self._push_revocations()
            except Exception:  # a bug must not stop the view: fronts would route on old data
                log.exception("pushing the view to the fronts failed")

    async def _snapshot(self) -> dict[int, dict[str, Any]]:
        infos = await self.main.event_infos()
        return {eid: self.main.routes(eid, info).to_wire() for eid, info in infos.items()}

    async def _push_changes(self) -> bool:
        """Send each front the events whose routes changed since what it was last sent:
        at once if a change is :func:`urgent`, else once its view is ``view_max_age`` old.
        Returns whether a change was held back (or a front is not ready yet)."""
        now = await self._snapshot()
        sends = []
        held = False
        mono = time.monotonic()
        for fl in list(self.fronts.values()):
            if not fl.ready:
                held = True
                continue
            changed = {str(eid): w for eid, w in now.items() if fl.sent.get(eid) != w}
            gone = [eid for eid in fl.sent if eid not in now]
            if not (changed or gone):
                continue
            due = mono - fl.sent_at >= self.view_max_age
            if not (due or gone or any(urgent(fl.sent.get(int(e)), w) for e, w in changed.items())):
                held = True
            else:
                fl.sent, fl.sent_at = now, mono
                sends.append(self._send(fl, ToFront.VIEW, {"events": changed, "gone": gone}))
        if sends:
            self.pushes += 1
            await asyncio.gather(*sends)
        return held

    async def in_sync(self, timeout: float = 5.0) -> None:
        """Until every linked front has been sent the current view (tests, benchmarks)."""
        async with asyncio.timeout(timeout):
            while True:
                now = await self._snapshot()
                if all(fl.ready and fl.sent == now for fl in self.fronts.values()):
                    await asyncio.sleep(self.view_interval)  # sent; now also applied
                    return
                await asyncio.sleep(self.view_interval / 2)

    async def _push_revocations(self) -> None:
        revoked = await self.main.revoked_sessions()
        fresh = [[sid, exp] for sid, exp in revoked if sid not in self._revoked]
        self._revoked = {sid for sid, _ in revoked}
        if fresh:
            await self._broadcast(ToFront.REVOKED, {"sessions": fresh})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def urgent(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a front holding ``old`` (an event's wire routes) must get ``new`` now.

    Urgent is anything that can change the front's answer or send visitors the wrong
    way: a new event, changed fields, a shard added, gone, up or down, stock running
    out or coming back (a shard's or main's unassigned), or a count off by more than
    1/DRIFT (near the end of a sale every sale is that). A count that only drifts
    changes the weights among stocked shards, a little: it may wait.
    """
    if old is None or old["info"] != new["info"] or _drifted(old["unassigned"], new["unassigned"]):
        return True
    if len(old["shards"]) != len(new["shards"]):
        return True
    for (name, url, online, stock), (name2, url2, online2, stock2) in zip(
        old["shards"], new["shards"], strict=True
    ):
        if (name, url, online) != (name2, url2, online2) or _drifted(stock, stock2):
            return True
    return False


def _drifted(old: int, new: int) -> bool:
    return (old == 0) != (new == 0) or abs(new - old) * DRIFT > old


async def _pong(args: dict[str, Any]) -> dict[str, Any]:
    return {}
