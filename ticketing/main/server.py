"""The main server: owns the ledger, links to every shard over mutual TLS.

It creates events, splits their tickets among the shards as slices of serials,
records every grant the shards report (in batches), moves stock from rich shards
to ones that run dry, and fences a dead shard by bumping its epoch.

Failure detection: every link carries heartbeats (``heartbeat_interval``) and a
link silent for ``heartbeat_timeout`` is closed, which marks its shard offline at
once (the front stops routing there). A shard offline for ``reclaim_after`` is
fenced and its unsold stock goes to the live shards straight away.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..changes import Changes
from ..errors import CommandError, ConfigError, LinkClosed, PeerRejected, TicketingError
from ..heartbeat import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT
from ..ledger import Audit, Event, SqlLedger, open_ledger
from ..ledger.driver import redact
from ..link import Commands, Handler, Link
from ..metrics import MainMetrics
from ..protocol import DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_LINE, PROTOCOL_VERSION
from ..slices import Range, count, cut, parse_ranges, shares
from ..tls import Credentials, PemSource, check_peer, client_context
from ..tokens import KeyRing, TokenSigner
from ..wire import Sale, ToMain, ToShard, grant
from .fronts import FrontHub
from .leader import Lease
from .release import ReleaseCoordinator
from .stock import EventRoutes, Route, StockView

log = logging.getLogger("ticketing.main")

MAX_REPORT = 10_000  # sales per report_sales request


@dataclass(eq=False)
class ShardLink:
    """Main's view of one shard: where it is, its link, its epoch, its stock."""

    host: str
    tls_port: int
    https_port: int
    weight: float = 1.0
    name: str | None = None
    epoch: int = 0
    link: Link | None = None
    online: bool = False
    offline_since: float | None = None
    stock: dict[int, int] = field(default_factory=dict)  # event -> tickets in its pool
    task: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None  # fences it after reclaim_after offline

    @property
    def https_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.https_port}"

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "online": self.online,
            "offline_for": (
                None
                if self.offline_since is None
                else round(time.monotonic() - self.offline_since, 3)
            ),
            "epoch": self.epoch,
            "url": self.https_url,
            "stock": {str(k): v for k, v in self.stock.items()},
        }


def price_to_cents(price: Any) -> int:
    try:
        cents = Decimal(str(price)) * 100
    except InvalidOperation as exc:
        raise ValueError(f"bad price {price!r}") from exc
    if not cents.is_finite():  # NaN, Infinity: comparing them would raise
        raise ValueError(f"bad price {price!r}")
    if cents < 0 or cents != cents.to_integral_value():
        raise ValueError("price must be >= 0 with at most two decimals")
    return int(cents)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The token key survives restarts so sessions and admissions stay valid."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return key


class MainServer:
    """The main server. ``async with MainServer(data_dir=...) as main: ...``."""

    def __init__(
        self,
        name: str = "main",
        *,
        data_dir: str | os.PathLike[str] = "data",
        ledger_path: str | os.PathLike[str] | None = None,
        ledger_url: str | None = None,  # postgresql://... or sqlite:///...; default: ledger_path
        # Marketplace
        hold_seconds: float = 15 * 60,
        # Limits
        max_line: int = DEFAULT_MAX_LINE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        # Timeouts
        connect_timeout: float = 10.0,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        reclaim_after: float | None = 10.0,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        # Durability
        synchronous: str = "FULL",
        # Failover (a PostgreSQL ledger shared by several mains: main/leader.py)
        standby: bool = False,
        lease_seconds: float = 3.0,
    ) -> None:
        self.name = name
        self.data_dir = Path(data_dir)
        self.ledger_path = Path(ledger_path or self.data_dir / "ledger.sqlite3")
        self.ledger_url = ledger_url or f"sqlite:///{self.ledger_path.resolve()}"
        self.hold_seconds = hold_seconds
        self.max_line, self.max_in_flight = max_line, max_in_flight
        self.connect_timeout = connect_timeout
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.reclaim_after = reclaim_after
        self.heartbeat_interval, self.heartbeat_timeout = heartbeat_interval, heartbeat_timeout
        self.synchronous = synchronous
        self.standby, self.lease_seconds = standby, lease_seconds
        self.term = 0  # this main's leadership term (sent in every hello)
        self.deposed = asyncio.Event()  # set when another main took the lease
        self.changes = Changes()  # shards online or not: for waiters
        self._lease: Lease | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.credentials: Credentials | None = None
        self.commands = Commands(tuple(ToMain))
        self.ledger: SqlLedger | None = None
        self.signer: TokenSigner | None = None
        self.shards: dict[str, ShardLink] = {}
        self.sale_listeners: list[Callable[[list[dict[str, Any]]], Any]] = []
        self._stock_lock = asyncio.Lock()  # one stock move at a time
        self._links: list[ShardLink] = []  # every shard we keep linked, named or not yet
        self._closed = False
        self.front_keys: dict[str, str] = {}  # certified front keys (name -> public hex)
        self.front_ring = KeyRing()  # the same keys, to check what fronts sign for main
        self.fronts: FrontHub | None = None  # serve_fronts() starts it
        self.market_url: str | None = None  # main's own front, announced to front processes
        self.lines = ReleaseCoordinator()  # every front's waiting room, one release order
        self.metrics = MainMetrics()  # this server's own registry (in-process tests run many)

    # -- configuration -----------------------------------------------------------

    def set_certificate_path(self, path: str | os.PathLike[str]) -> None:
        """Use ``<path>/ca.crt`` and ``<path>/<name>.crt|.key`` (the seed's API)."""
        self.credentials = Credentials.from_directory(path, self.name)

    def set_options(self, *, key: PemSource, cert: PemSource, ca: PemSource) -> None:
        self.credentials = Credentials(cert=cert, key=key, ca=ca)

    def register_command(self, name: str, handler: Handler) -> None:
        """Add a custom command shards can call: ``async def handler(args) -> result``."""
        self.commands.register(name, handler)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the ledger and the signing key (idempotent; other calls do it too)."""
        if self.ledger is not None:
            return
        if self.credentials is None:
            self.set_certificate_path("keys")
        self.signer = TokenSigner(load_signing_key(self.data_dir / "signing.key"))
        ledger = await open_ledger(self.ledger_url, synchronous=self.synchronous)
        await self._lead(ledger)
        ledger.fence_term = self.term
        self.ledger = ledger
        await self._refresh_stock()
        log.info("main started on %s (term %d)", redact(self.ledger_url), self.term)

    async def _lead(self, ledger: SqlLedger) -> None:
        """Take the leadership: the next term at once, or (standby) once the lease is free."""
        lease = self._lease = Lease(ledger.driver, self.name, lease=self.lease_seconds)
        if not self.standby:
            self.term = await lease.take()
        else:
            log.info("standby: waiting for the leader's lease to run out")
            # Polling is the point: the lease lives in another process's database row.
            while (term := await lease.try_acquire()) is None:  # noqa: ASYNC110
                await asyncio.sleep(self.lease_seconds / 6)
            self.term = term
            await ledger.reload()  # what the old leader sold meanwhile
        if ledger.driver.dialect != "sqlite":  # one main per SQLite file: nobody to yield to
            self._renewer = asyncio.create_task(self._renew(lease), name="main-lease")

    async def _renew(self, lease: Lease) -> None:
        """Keep the lease; once it is lost (another main took it, or no renewal got
        through for a whole lease: the database is gone), stop leading and close every
        link, so the new leader's links win. A slow renewal alone is retried."""
        kept_at = time.monotonic()
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                kept: bool | None = await asyncio.wait_for(lease.renew(), self.lease_seconds)
            except Exception as exc:  # noqa: BLE001 - retried until the lease has run out
                log.warning("lease renewal failed: %r", exc)
                kept = None
            if kept:
                kept_at = time.monotonic()
            elif kept is None and time.monotonic() - kept_at < self.lease_seconds:
                continue
            else:
                log.error("term %d is over: another main leads; stepping down", self.term)
                self.deposed.set()
                if self.fronts is not None:
                    await self.fronts.unlink_all("deposed: a newer term leads")
                for sl in self._links:
                    if sl.task:
                        sl.task.cancel()
                    if sl.link:
                        await sl.link.close("deposed: a newer term leads")
                return

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
        if self.fronts is not None:
            await self.fronts.close()
        for sl in self._links:
            for task in (sl.task, sl.watchdog):
                if task:
                    task.cancel()
            if sl.link:
                await sl.link.close("main closing")
        if self.ledger:
            await self.ledger.close()
        log.info("main closed")

    async def __aenter__(self) -> MainServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ledger(self) -> SqlLedger:
        if self.ledger is None:
            raise TicketingError("main server not started: await main.start() first")
        return self.ledger

    # -- linking shards ---------------------------------------------------------------

    async def connect_client_server(
        self,
        host: str,
        tls_port: int,
        https_port: int,
        callback: Callable[[], Any] | None = None,
        *,
        weight: float = 1.0,
    ) -> str:
        """Link to a shard; returns its name once the link is up and in sync.

        The link is then kept up: if it drops, the shard is marked offline and main
        reconnects with backoff. ``callback`` (sync or async) runs once linked.
        """
        await self.start()
        sl = ShardLink(host, tls_port, https_port, weight)
        first: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        sl.task = asyncio.create_task(self._keep_linked(sl, first), name=f"link-{host}:{tls_port}")
        self._links.append(sl)  # close() stops it even before its first link is up
        name = await first
        if callback is not None:
            result = callback()
            if inspect.isawaitable(result):
                await result
        return name

    async def adopt_shards(self) -> dict[str, bool]:
        """Link every shard the ledger knows (a standby taking over), all at once and
        without depending on any: one that does not answer is offline from the start,
        its pool stranded (fronts say "please wait", not "sold out"), retried with
        backoff and fenced after ``reclaim_after`` like a shard that went away, so a
        host lost with the old leader does not stop the new one. Returns, per shard,
        whether its first attempt linked."""
        ledger = self._ledger()
        counts = await ledger.pool_counts()
        firsts: dict[str, asyncio.Future[str]] = {}
        for rec in await ledger.shards():
            if rec.name in self.shards:
                continue
            sl = ShardLink(rec.host, rec.tls_port, rec.https_port, rec.weight, rec.name, rec.epoch)
            sl.stock = {e: n for (s, e), n in counts.items() if s == rec.name}
            sl.offline_since = time.monotonic()
            self.shards[rec.name] = sl
            first = firsts[rec.name] = asyncio.get_running_loop().create_future()
            sl.task = asyncio.create_task(
                self._keep_linked(sl, first, give_up=False), name=f"link-{rec.name}"
            )
            self._links.append(sl)
            if self.reclaim_after is not None:
                sl.watchdog = asyncio.create_task(
                    self._reclaim_later(sl, sl.offline_since, self.reclaim_after),
                    name=f"reclaim-{rec.name}",
                )
        self.changes.notify()
        self._view_changed()
        done = await asyncio.gather(*firsts.values(), return_exceptions=True)
        return {
            name: not isinstance(r, BaseException) for name, r in zip(firsts, done, strict=True)
        }

    async def _keep_linked(
        self, sl: ShardLink, first: asyncio.Future[str], *, give_up: bool = True
    ) -> None:
        """Keep ``sl`` linked. ``first`` settles on the first attempt: its name, or the
        error (then, with ``give_up``, no retry: the caller asked for this link)."""
        delay = self.reconnect_min
        while not self._closed:
            try:
                link = await self._connect(sl)
            except (
                OSError,
                ssl.SSLError,
                TimeoutError,
                PeerRejected,
                LinkClosed,
                CommandError,
            ) as exc:
                if isinstance(exc, ssl.SSLError | PeerRejected):
                    self.metrics.handshake_failures.labels("link").inc()
                if not first.done():
                    first.set_exception(exc)
                    if give_up:
                        return
                log.warning("reconnect to %s failed: %s (retry in %.1fs)", sl.name, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.reconnect_max)
                continue
            delay = self.reconnect_min
            if not first.done():
                first.set_result(sl.name or "")
            else:
                self.metrics.reconnects.labels(sl.name or "").inc()
            await link.closed.wait()
            sl.online, sl.link, sl.offline_since = False, None, time.monotonic()
            self.changes.notify()
            self._view_changed()
            self.metrics.link_losses.labels(sl.name or "").inc()
            log.warning("shard %s offline; reconnecting (%s)", sl.name, link.close_reason)
            if self.reclaim_after is not None and sl.watchdog is None:
                # Its own timer: a reconnect attempt into a silent partition can hang
                # for connect_timeout, and fencing must not wait for it.
                sl.watchdog = asyncio.create_task(
                    self._reclaim_later(sl, sl.offline_since, self.reclaim_after),
                    name=f"reclaim-{sl.name}",
                )

    async def _reclaim_later(self, sl: ShardLink, since: float, after: float) -> None:
        """Fence ``sl`` if it is still offline (since ``since``) ``after`` seconds on."""
        try:
            await asyncio.sleep(after)
            if not self._closed and not sl.online and sl.offline_since == since and sl.name:
                if any(sl.stock.values()):
                    await self.reclaim_shard(sl.name)
                    # Visitors are waiting for these tickets: to the live shards now.
                    ledger = self._ledger()
                    if self.online_shards() and any(
                        ledger.unassigned_count(e.id) for e in await ledger.events()
                    ):
                        given = await self.distribute_tickets()
                        log.warning("stock of fenced %s moved to live shards: %s", sl.name, given)
        finally:
            if sl.watchdog is asyncio.current_task():
                sl.watchdog = None

    async def _connect(self, sl: ShardLink) -> Link:
        assert self.credentials and self.signer
        ctx = client_context(self.credentials)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(sl.host, sl.tls_port, ssl=ctx, server_hostname=sl.host),
            self.connect_timeout,
        )
        try:
            ident = check_peer(writer.get_extra_info("ssl_object"), "shard", sl.name)
            if sl.name is None and ident.name in self.shards:
                raise PeerRejected(f"shard {ident.name!r} is already linked")
        except PeerRejected as exc:
            log.warning("refused shard at %s:%d: %s", sl.host, sl.tls_port, exc)
            writer.close()
            raise
        link = Link(
            reader,
            writer,
            ident,
            self.commands,
            log,
            max_line=self.max_line,
            max_in_flight=self.max_in_flight,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
        )
        link.commands = self.commands.extended(
            {
                ToMain.REPORT_SALES: partial(self._on_report_sales, sl),
                ToMain.NEED_STOCK: partial(self._on_need_stock, sl),
                ToMain.PING: self._on_ping,
            }
        )
        link.start()
        try:
            hello = await link.hello(
                {
                    "version": PROTOCOL_VERSION,
                    "node": self.name,
                    "role": "main",
                    "term": self.term,
                    "token_key": self.signer.public_key_bytes.hex(),
                },
                timeout=self.connect_timeout,
            )
            if hello.get("node") != ident.name or hello.get("role") != "shard":
                raise PeerRejected(
                    f"hello from {hello.get('node')!r} does not match its certificate"
                )
            await self._sync(sl, link, ident.name)
        except BaseException:
            await link.close("link setup failed")
            raise
        return link

    async def _sync(self, sl: ShardLink, link: Link, name: str) -> None:
        """Reconcile: record the shard's unacked grants, then send its true pools."""
        ledger = self._ledger()
        rec = await ledger.register_shard(name, sl.host, sl.tls_port, sl.https_port, sl.weight)
        reply = await link.request(ToShard.SYNC, {"epoch": rec.epoch})
        groups: dict[int, list[Sale]] = {}
        for item in reply["unacked"]:
            groups.setdefault(int(item["epoch"]), []).append(Sale.from_wire(item))
        accepted: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        for epoch, sales in groups.items():
            a, r = await self._record(name, epoch, sales)
            accepted += a
            refused += r
        if self.front_keys:  # a new link starts with main's key only: nothing to revoke
            await link.request(ToShard.FRONT_KEYS, {"keys": self.front_keys})
        pools = await ledger.shard_pools(name, rec.epoch)
        events = {str(e.id): e.public() for e in await ledger.events()}
        await link.request(
            ToShard.SET_POOL,
            {
                "epoch": rec.epoch,
                "events": events,
                "accepted": accepted,
                "refused": refused,
                "pools": {str(e): r for e, r in pools.items()},
            },
        )
        sl.name, sl.epoch, sl.link, sl.online, sl.offline_since = name, rec.epoch, link, True, None
        self.changes.notify()
        self._view_changed()
        if sl.watchdog is not None:
            sl.watchdog.cancel()  # back in time: nothing to fence
            sl.watchdog = None
        sl.stock = {e: count(r) for e, r in pools.items()}
        self.shards[name] = sl
        log.info(
            "shard %s linked and in sync (epoch %d, %d re-reported)",
            name,
            rec.epoch,
            len(accepted) + len(refused),
        )

    # -- events and distribution --------------------------------------------------------

    async def init_tickets(self, name: str, description: str, price: Any, count: int) -> int:
        """Create an event with ``count`` tickets at ``price`` (currency units); returns its id."""
        await self.start()
        if not isinstance(count, int) or count < 0:
            raise ValueError("count must be an integer >= 0")
        if not name:
            raise ValueError("an event needs a name")
        event = await self._ledger().create_event(name, description, price_to_cents(price), count)
        self._view_changed()
        log.info("event %d %r created with %d tickets", event.id, name, count)
        return event.id

    def online_shards(self) -> list[ShardLink]:
        return [s for s in self.shards.values() if s.online and s.link]

    def routes(self, event_id: int, info: dict[str, Any] | None = None) -> EventRoutes:
        """What a front needs to route this event's visitors (``info``: its public fields)."""
        return EventRoutes(
            event_id,
            info or {},
            self._ledger().unassigned_count(event_id),
            tuple(
                Route(
                    s.name, s.https_url, s.online and s.link is not None, s.stock.get(event_id, 0)
                )
                for s in self.shards.values()
                if s.name
            ),
        )

    def stock_view(self, event_id: int) -> StockView:
        """Where the event's unsold tickets are, as the front's answer needs it."""
        return self.routes(event_id).view()

    async def distribute_tickets(
        self,
        event_id: int | None = None,
        *,
        shards: list[str] | None = None,
        weights: dict[str, float] | None = None,
    ) -> dict[str, int]:
        """Split unassigned tickets among online shards (all events when id is None).

        Sizes differ by at most one for equal weights (remainder spread one by one);
        ``weights`` overrides the shards' own. Returns tickets given per shard.
        """
        ledger = self._ledger()
        targets = [s for s in self.online_shards() if shards is None or s.name in shards]
        if not targets:
            raise TicketingError("no shard is linked: connect_client_server first")
        ids = [event_id] if event_id is not None else [e.id for e in await ledger.events()]
        given: dict[str, int] = {s.name or "": 0 for s in targets}
        async with self._stock_lock:
            for eid in ids:
                event = await ledger.event(eid)
                if event is None:
                    raise ValueError(f"no event {eid}")
                free = await ledger.unassigned(eid)
                w = [(weights or {}).get(s.name or "", s.weight) for s in targets]
                pieces = cut(free, shares(count(free), w))
                plan = {s: p for s, p in zip(targets, pieces, strict=True) if p}
                await ledger.assign(eid, {s.name or "": (s.epoch, p) for s, p in plan.items()})
                # Counted at once: between this commit and the shards' replies the
                # tickets are neither unassigned nor (yet) in anyone's counted stock,
                # and a front routing on the counts would say "sold out".
                for s, p in plan.items():
                    s.stock[eid] = s.stock.get(eid, 0) + count(p)
                await asyncio.gather(*(self._send_assign(s, event, p) for s, p in plan.items()))
                for s, p in plan.items():
                    given[s.name or ""] += count(p)
        await self._refresh_stock()
        log.info("distributed: %s", given)
        return given

    async def _send_assign(self, sl: ShardLink, event: Event, ranges: list[Range]) -> None:
        """Tell a shard about its new slice (the ledger already has it)."""
        if sl.link is None:
            return  # offline: the next sync sends it the whole pool
        try:
            await sl.link.request(
                ToShard.ASSIGN,
                {
                    "event": event.id,
                    "epoch": sl.epoch,
                    "ranges": ranges,
                    "info": event.public(),
                },
            )
        except (LinkClosed, CommandError, TimeoutError) as exc:
            log.warning("assign to %s not confirmed (%s); the next sync repairs it", sl.name, exc)

    async def _refresh_stock(self) -> None:
        """Re-read each shard's stock from the ledger after main moved slices."""
        counts = await self._ledger().pool_counts()
        for sl in self.shards.values():
            sl.stock = {e: n for (s, e), n in counts.items() if s == sl.name}
        self._view_changed()

    def _view_changed(self) -> None:
        """What fronts route on may have changed: the view pusher looks at its next tick
        (sales wake it too, as a sale listener; it also looks now and then regardless)."""
        if self.fronts is not None:
            self.fronts.wake()

    # -- commands from shards --------------------------------------------------------------

    async def _record(
        self, shard: str, epoch: int, sales: list[Sale]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self.metrics.timed_batch(len(sales)):
            accepted, refused, fresh = await self._ledger().record_sales(
                shard, epoch, sales, self.hold_seconds
            )
        sl = self.shards.get(shard)
        for event_id, n in Counter(o["event_id"] for o in fresh).items():
            self.metrics.granted.labels(str(event_id)).inc(n)
            if sl:
                sl.stock[event_id] = max(0, sl.stock.get(event_id, 0) - n)
        if fresh:
            for listener in self.sale_listeners:
                listener(fresh)
        for r in refused:
            if r["existing"] is not None:
                r["existing"] = grant(r["existing"])
        return [grant(o) for o in accepted], refused

    async def _on_report_sales(self, sl: ShardLink, args: dict[str, Any]) -> dict[str, Any]:
        sales = [Sale.from_wire(item) for item in args["sales"]]
        if len(sales) > MAX_REPORT:
            raise CommandError(ToMain.REPORT_SALES, "too_large", f"at most {MAX_REPORT} sales")
        accepted, refused = await self._record(sl.name or "", int(args["epoch"]), sales)
        return {"accepted": accepted, "refused": refused}

    async def _on_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _on_need_stock(self, sl: ShardLink, args: dict[str, Any]) -> dict[str, Any]:
        """A shard ran dry: give it unassigned tickets, else half of the richest shard's."""
        ledger = self._ledger()
        event = await ledger.event(int(args["event"]))
        if event is None:
            raise CommandError(ToMain.NEED_STOCK, "unknown_event", f"no event {args['event']}")
        async with self._stock_lock:
            if int(args["epoch"]) != sl.epoch:  # fenced: stock given now could never be sold
                raise CommandError(
                    ToMain.NEED_STOCK, "stale_epoch", f"{sl.name} is at epoch {sl.epoch}"
                )
            free = await ledger.unassigned(event.id)
            if free:
                n = -(-count(free) // max(1, len(self.online_shards())))
                piece = cut(free, [n])[0]
                await ledger.assign(event.id, {sl.name or "": (sl.epoch, piece)})
                sl.stock[event.id] = sl.stock.get(event.id, 0) + count(piece)  # as above
                await self._send_assign(sl, event, piece)
                await self._refresh_stock()
                return {"added": n}
            donors = sorted(
                (s for s in self.online_shards() if s is not sl and s.stock.get(event.id, 0) > 0),
                key=lambda s: -s.stock.get(event.id, 0),
            )
            for donor in donors:
                moved = await self._move_stock(donor, sl, event)
                if moved:
                    return {"added": moved}
            if any(s.stock.get(event.id, 0) for s in self.shards.values() if not s.online):
                return {
                    "wait": 1.0
                }  # tickets sit on an offline shard until it returns or is reclaimed
            # A main just started (a standby taking over) links the shards one by one:
            # those not linked yet are in the ledger only, with their pools.
            online = {s.name for s in self.online_shards()}
            pools = await ledger.pool_counts()
            if any(n for (shard, e), n in pools.items() if e == event.id and shard not in online):
                return {"wait": 1.0}
            return {"sold_out": True}

    async def _move_stock(self, donor: ShardLink, to: ShardLink, event: Event) -> int:
        want = (donor.stock.get(event.id, 0) + 1) // 2
        assert donor.link
        try:
            reply = await donor.link.request(
                ToShard.RELEASE, {"event": event.id, "count": want, "epoch": donor.epoch}
            )
            ranges = parse_ranges(reply["ranges"])
        except (LinkClosed, CommandError, TimeoutError, KeyError, ValueError) as exc:
            log.warning("release from %s failed: %s", donor.name, exc)
            return 0
        if not ranges:
            donor.stock[event.id] = 0  # what it had left is already being granted
            self._view_changed()
            return 0
        await self._ledger().transfer(
            event.id, ranges, (donor.name or "", donor.epoch), (to.name or "", to.epoch)
        )
        n = count(ranges)  # counted at once (see distribute_tickets)
        donor.stock[event.id] = max(0, donor.stock.get(event.id, 0) - n)
        to.stock[event.id] = to.stock.get(event.id, 0) + n
        await self._send_assign(to, event, ranges)
        await self._refresh_stock()
        log.info(
            "moved %d tickets of event %d from %s to %s",
            count(ranges),
            event.id,
            donor.name,
            to.name,
        )
        return count(ranges)

    # -- operations ---------------------------------------------------------------------------

    async def reclaim_shard(self, name: str) -> int:
        """Fence a dead shard: bump its epoch and take back its unsold tickets."""
        async with self._stock_lock:
            epoch = await self._ledger().reclaim(name)
            self.metrics.fenced(name, epoch)
            sl = self.shards.get(name)
            if sl:
                sl.epoch = epoch
                if sl.link:  # still linked: make it re-sync into the new epoch now
                    await sl.link.close("fenced by a new epoch")
            await self._refresh_stock()
        log.warning(
            "shard %s fenced at epoch %d; its unsold tickets are back with main", name, epoch
        )
        return epoch

    async def call(self, shard: str, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Send a (custom) command to a linked shard and return its result."""
        sl = self.shards.get(shard)
        if sl is None or sl.link is None:
            raise TicketingError(f"shard {shard!r} is not linked")
        return await sl.link.request(cmd, args)

    async def events(self) -> list[Event]:
        return await self._ledger().events()

    async def event_infos(self) -> dict[int, dict[str, Any]]:
        """Every event's public fields, by id (what fronts show and route on)."""
        return {e.id: e.public() for e in await self._ledger().events()}

    async def revoked_sessions(self) -> list[tuple[str, float]]:
        """Signed-out sessions not expired yet (fronts refuse their cookies)."""
        return await self._ledger().reader().revoked_sessions(time.time())

    async def event(self, event_id: int) -> Event | None:
        return await self._ledger().event(event_id)

    async def update_event(self, event_id: int, **settings: Any) -> Event:
        """Change an event's waiting-room settings (``ledger.records.WAITROOM_SETTINGS``)."""
        event = await self._ledger().update_event(event_id, **settings)
        self._view_changed()
        return event

    async def audit(self, event_id: int | None = None) -> Audit:
        return await self._ledger().audit(event_id)

    async def status(self) -> dict[str, Any]:
        events = await self._ledger().events()
        return {
            "events": [
                dict(e.public(), unassigned=self._ledger().unassigned_count(e.id)) for e in events
            ],
            "shards": [s.public() for s in self.shards.values()],
        }

    async def metrics_exposition(self) -> bytes:
        """The text exposition of this server's metrics, with the ledger's gauges fresh."""
        m = self.metrics
        waiting = await self._ledger().reader().waiting_by_event()
        for event in await self.events():
            m.set_tickets(event.id, (await self.audit(event.id)).as_dict())
            m.waitlist.labels(str(event.id)).set(waiting.get(event.id, 0))
        m.set_shards([s.public() for s in self.shards.values()])
        return m.exposition()

    def pick_shard(self, event_id: int) -> ShardLink | None:
        """Choose an online shard for a new visitor (:meth:`EventRoutes.pick`)."""
        route = self.routes(event_id).pick()
        return None if route is None else self.shards.get(route.name)

    # -- fronts ---------------------------------------------------------------------------

    async def serve_fronts(
        self, port: int = 0, host: str = "127.0.0.1", *, accept: bool = True
    ) -> int:
        """Listen for front processes (mutual TLS, role ``front``); returns the port.

        ``accept=False`` listens without starting main (a standby waiting for the
        lease): fronts' hellos are refused as ``not_leader`` until
        ``main.fronts.accept()``, once this main leads and has linked its shards.
        """
        if accept:
            await self.start()
        elif self.credentials is None:
            self.set_certificate_path("keys")
        if self.fronts is None:
            self.fronts = FrontHub(self)
        if accept:
            self.fronts.accept()
        if self.fronts.port is not None:
            return self.fronts.port  # already listening
        return await self.fronts.listen(port, host)

    async def certify_fronts(self, keys: dict[str, str]) -> None:
        """Make exactly ``keys`` (front name -> Ed25519 public key hex) valid at every shard.

        Called when a front links (before it may route anyone) or unlinks (its
        tokens are refused from then on). A shard offline now gets them at its sync.
        """
        self.front_keys = dict(keys)
        self.front_ring.replace(keys)
        await asyncio.gather(*(self._send_front_keys(s) for s in self.online_shards()))

    async def _send_front_keys(self, sl: ShardLink, link: Link | None = None) -> None:
        link = link or sl.link
        if link is None:
            return
        try:
            await link.request(ToShard.FRONT_KEYS, {"keys": self.front_keys})
        except (LinkClosed, CommandError, TimeoutError) as exc:
            log.warning(
                "front keys to %s not confirmed (%s); its next sync sends them", sl.name, exc
            )
