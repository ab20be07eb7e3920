"""A shard (the seed's *client server*): owns a slice of the pool, serves browsers.

It listens for exactly one main server on a mutual-TLS port (``create_client_server``)
and for browsers on an HTTPS+WSS port (``create_https_server``, see ``web.py``).
Browsers are served first come, first served by :class:`~ticketing.shard.dispenser.Dispenser`;
each batch of grants is journaled, reported to main, and only told to the browsers
once main's ledger has committed it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import Any

from ..changes import Changes
from ..edge import EdgeLimits
from ..errors import CommandError, ConfigError, LinkClosed, PeerRejected
from ..heartbeat import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT
from ..link import Commands, Handler, Link
from ..listener import LinkListener, accept_tls
from ..metrics import ShardMetrics
from ..protocol import DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_LINE, PROTOCOL_VERSION
from ..slices import RangeSet, parse_ranges
from ..tls import Credentials, PemSource, server_context
from ..tokens import KeyRing, NonceCache, TokenVerifier
from ..wire import ToMain, ToShard
from .dispenser import Dispenser, Pending, Waiter, retry_message, sold_out_message
from .journal import Journal

log = logging.getLogger("ticketing.shard")

# Seconds a report waits after the previous one began, gathering more grants. Main's
# cost is per commit, not per sale (a handful of database round trips and a disk
# flush whatever a batch carries), so at a steady rate this sets the batch size; a
# visitor after a quiet spell is reported at once, and a full batch goes at once.
# 0.2 s, not 0.1: under a flash crowd (the bench's --fronts 2 e2e, paired runs) it
# cut main's CPU per ticket by 30-45 % and the shards' by 10-20 % at the same
# time-to-ticket; its cost is up to 0.2 s more at a light steady load (README).
DEFAULT_REPORT_LINGER = 0.2


class ClientServer:
    """One shard. Use as ``async with ClientServer("shard-1") as shard: ...``."""

    def __init__(
        self,
        name: str = "shard-1",
        *,
        main_name: str = "main",
        data_dir: str | os.PathLike[str] = "data",
        journal_path: str | os.PathLike[str] | None = None,
        # Batching
        max_batch: int = 256,
        report_linger: float = DEFAULT_REPORT_LINGER,
        # Limits
        max_line: int = DEFAULT_MAX_LINE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_message: int = 4096,
        # Timeouts
        handshake_timeout: float = 10.0,
        grant_timeout: float = 60.0,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        # The browser port's connection limits and timeouts (default: edge.SHARD_LIMITS)
        web_limits: EdgeLimits | None = None,
    ) -> None:
        self.name = name
        self.main_name = main_name  # the certificate CN main must present
        self.journal_path = Path(journal_path or Path(data_dir) / f"journal-{name}.sqlite3")
        self.max_batch = max_batch
        self.report_linger = report_linger
        self.max_line, self.max_in_flight, self.max_message = max_line, max_in_flight, max_message
        self.handshake_timeout, self.grant_timeout = handshake_timeout, grant_timeout
        self.heartbeat_interval, self.heartbeat_timeout = heartbeat_interval, heartbeat_timeout
        self.web_limits = web_limits
        self.credentials: Credentials | None = None
        self.commands = Commands(tuple(ToShard))
        self.dispenser = Dispenser()
        self.epoch = 0
        self.term = 0  # the newest leadership term of main seen (older mains are refused)
        self.changes = Changes()  # link, epoch, queue, unconfirmed grants: for waiters
        self.link_term = 0  # the term of the main on self.link
        self.journal: Journal | None = None
        self.link: Link | None = None
        self.verifier: TokenVerifier | None = None  # main's key, from its hello
        # Admission tokens are checked against main's key and the front keys main
        # certified (ToShard.FRONT_KEYS); a new main link starts with main's key only.
        self.keyring = KeyRing()
        self.nonces = NonceCache()
        self.metrics = ShardMetrics()  # this shard's own registry (tests run several per process)
        self.tls_port: int | None = None
        self.https_port: int | None = None
        self._tls_server: LinkListener | None = None
        self._web: Any = None  # ShardWeb, created by create_https_server
        self._ready = asyncio.Event()  # linked to main and in sync: grants may flow
        self._wake = asyncio.Event()
        self._hello_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._last_report = float("-inf")  # loop time the latest report began
        self._started = False
        self._closed = False

    # -- configuration (the seed's API) ----------------------------------------

    def set_certificate_path(self, path: str | os.PathLike[str]) -> None:
        """Use ``<path>/ca.crt`` and ``<path>/<name>.crt|.key``."""
        self.credentials = Credentials.from_directory(path, self.name)

    def set_options(
        self,
        *,
        key: PemSource | None = None,
        cert: PemSource | None = None,
        ca: PemSource | None = None,
    ) -> None:
        """Set key/cert/CA individually (paths or PEM bytes), as the seed's set_options."""
        base = self.credentials
        if base is not None:
            key, cert, ca = key or base.key, cert or base.cert, ca or base.ca
        if key is None or cert is None or ca is None:
            raise ConfigError("set_options needs key, cert and ca (or a certificate path first)")
        self.credentials = Credentials(cert=cert, key=key, ca=ca)

    def register_command(self, name: str, handler: Handler) -> None:
        """Add a custom command main can call: ``async def handler(args) -> result``."""
        self.commands.register(name, handler)

    def _creds(self) -> Credentials:
        if self.credentials is None:
            self.set_certificate_path("keys")
        assert self.credentials is not None
        return self.credentials

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open the journal and restore state (called by the create_* methods)."""
        if self._started:
            return
        self._started = True
        self.journal = await Journal.open(self.journal_path)
        st = await self.journal.load()
        self.epoch = st.epoch
        self.dispenser.events = st.events
        self.dispenser.pools = st.pools
        for sale, epoch in st.unacked:
            self.dispenser.unacked[(sale.event, sale.serial)] = Pending(sale, epoch, None)
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name=f"{self.name}-dispatch")
        log.info(
            "%s started: epoch %d, %d tickets in pool, %d grants to re-report",
            self.name,
            self.epoch,
            sum(map(len, st.pools.values())),
            len(st.unacked),
        )

    async def create_client_server(self, tls_port: int = 0, host: str = "127.0.0.1") -> int:
        """Listen for main's mutual-TLS link; returns the bound port."""
        ctx = server_context(self._creds())
        await self.start()
        self._link_ctx = ctx
        self._tls_server = LinkListener(
            host, tls_port, lambda sock, peer: self._spawn(self._on_connection(sock, peer))
        )
        self.tls_port = self._tls_server.sockets[0].getsockname()[1]
        log.info("%s: link port %s:%d (mutual TLS)", self.name, host, self.tls_port)
        return self.tls_port

    async def create_https_server(self, https_port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve the page, /health and the WSS endpoint for browsers; returns the port."""
        from .web import ShardWeb  # the web side is optional for library users

        await self.start()
        self._web = ShardWeb(self, self._creds(), self.web_limits)
        self.https_port = await self._web.start(host, https_port)
        return self.https_port

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tls_server:
            self._tls_server.close()
        if self._web:
            await self._web.close()
        if self.link:
            await self.link.close("shard closing")
        for task in [*self._tasks, self._dispatcher]:
            if task:
                task.cancel()
        self.dispenser.send_back(retry_message("shard is shutting down"))
        if self.journal:
            await self.journal.close()
        log.info("%s closed", self.name)

    async def __aenter__(self) -> ClientServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the link to main -------------------------------------------------------------

    async def _on_connection(self, sock: socket.socket, peer: Any) -> None:
        try:
            # TLS is run here, not in a TLS server, so a refused handshake is logged.
            reader, writer, ident = await accept_tls(
                sock, self._link_ctx, "main", self.main_name, self.handshake_timeout
            )
        except (ssl.SSLError, PeerRejected, OSError, TimeoutError) as exc:
            self.metrics.handshake_failures.labels("link").inc()
            log.warning("%s: refused link from %s: %s", self.name, peer, exc)
            return
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
                "hello": lambda args: self._on_hello(link, args),
                ToShard.SYNC: self._on_sync,
                ToShard.SET_POOL: self._on_set_pool,
                ToShard.ASSIGN: self._on_assign,
                ToShard.RELEASE: self._on_release,
                ToShard.STATUS: self._on_status,
                ToShard.PING: self._on_ping,
                ToShard.FRONT_KEYS: self._on_front_keys,
            }
        )
        link.start()
        await link.answered_hello(self.handshake_timeout)

    async def _on_hello(self, link: Link, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("version") != PROTOCOL_VERSION:
            raise CommandError("hello", "version", f"protocol version {PROTOCOL_VERSION} required")
        if args.get("node") != link.peer.name or args.get("role") != "main":
            raise PeerRejected(
                f"hello from {args.get('node')!r} does not match certificate {link.peer.name!r}"
            )
        verifier = TokenVerifier(bytes.fromhex(args["token_key"]))
        term = args.get("term", 0)
        if type(term) is not int or term < 0:
            raise CommandError("hello", "bad_args", "term must be a whole number")
        async with self._hello_lock:  # two mains racing: exactly one wins
            if term < self.term:  # an old leader, paused and woken up: fenced by its term
                log.warning(
                    "%s: refused main of term %d (term %d leads)", self.name, term, self.term
                )
                raise CommandError("hello", "stale_term", f"term {self.term} leads, not {term}")
            old = self.link
            if old is not None and not old.closed.is_set() and term > self.link_term:
                await old.close(f"replaced by the main of term {term}")
            if old is not None and not old.closed.is_set():
                try:
                    await old.request(ToShard.PING, timeout=2.0)
                except CommandError:
                    pass  # any answer, even an error reply, shows it is alive
                except (LinkClosed, TimeoutError):
                    await old.close("unresponsive; replaced by a new main link")
                if not old.closed.is_set():
                    log.warning("%s: refused a second main link (%r is alive)", self.name, old)
                    raise CommandError(
                        "hello", "already_connected", f"{self.name} already has a main"
                    )
            self.link = link
            self.term = self.link_term = term
            self.verifier = verifier
            self.keyring = KeyRing(verifier)  # fronts' keys: as the new main certifies them
        self._spawn(self._watch_link(link))
        self.changes.notify()
        log.info("%s: linked to %s (%r)", self.name, link.peer.name, link)
        return {
            "version": PROTOCOL_VERSION,
            "node": self.name,
            "role": "shard",
            "epoch": self.epoch,
            "https_port": self.https_port,
        }

    async def _watch_link(self, link: Link) -> None:
        await link.closed.wait()
        if self.link is link:
            self.link = None
            self._ready.clear()
            # Main is gone (or cut off): nobody here can be granted until it is back,
            # so send every waiter back through the front, where it keeps its place.
            sent = self.dispenser.send_back(retry_message("the shard lost its main server"))
            self.changes.notify()
            level = logging.INFO if link.close_reason == "peer closed the link" else logging.WARNING
            log.log(
                level,
                "%s: link to main closed (%s); %d waiters sent back to the front",
                self.name,
                link.close_reason,
                sent,
            )

    async def _on_sync(self, args: dict[str, Any]) -> dict[str, Any]:
        """Start of a (re)connection: adopt main's epoch, hand over unacked grants."""
        epoch = int(args["epoch"])
        if epoch < self.epoch:
            raise CommandError(ToShard.SYNC, "epoch_regressed", f"shard is at epoch {self.epoch}")
        self._ready.clear()
        if epoch > self.epoch:
            if self.epoch:
                log.warning("%s: fenced from epoch %d to %d", self.name, self.epoch, epoch)
            self.epoch = epoch
            assert self.journal
            await self.journal.save({}, epoch=epoch)
        return {
            "unacked": [
                {**p.sale.to_wire(), "epoch": p.epoch} for p in self.dispenser.unacked.values()
            ]
        }

    async def _on_set_pool(self, args: dict[str, Any]) -> dict[str, Any]:
        """End of a (re)connection: main's authoritative pools and the settled grants."""
        self._check_epoch(args)
        d = self.dispenser
        d.events.update({int(k): v for k, v in args["events"].items()})
        _, settled = d.settle(args["accepted"], args["refused"])
        d.pools = {int(e): RangeSet(parse_ranges(r)) for e, r in args["pools"].items()}
        assert self.journal
        await self.journal.save(
            d.pools, settled=settled, events=d.events, epoch=self.epoch, replace_all=True
        )
        self._ready.set()
        self._wake.set()
        self.changes.notify()
        return self._remaining()

    async def _on_assign(self, args: dict[str, Any]) -> dict[str, Any]:
        self._check_epoch(args)
        event = int(args["event"])
        ranges = parse_ranges(args["ranges"])
        d = self.dispenser
        d.events[event] = args["info"]
        pool = d.pools.setdefault(event, RangeSet())
        pool.add(ranges)
        assert self.journal
        await self.journal.save({event: pool}, events={event: args["info"]})
        self._wake.set()
        return self._remaining()

    async def _on_release(self, args: dict[str, Any]) -> dict[str, Any]:
        """Give back up to ``count`` unsold tickets (the tail of the pool)."""
        self._check_epoch(args)
        event, n = int(args["event"]), int(args["count"])
        pool = self.dispenser.pools.get(event, RangeSet())
        ranges = pool.release_tail(n)
        if ranges:
            assert self.journal
            await self.journal.save({event: pool})
        return {"ranges": ranges}

    async def _on_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    async def _on_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _on_front_keys(self, args: dict[str, Any]) -> dict[str, Any]:
        """Main's certified front keys, all of them: any other front is revoked now."""
        keys = args["keys"]
        if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
            raise ValueError("keys must map key ids to hex public keys")
        self.keyring.replace(keys)
        log.info("%s: certified front keys: %s", self.name, self.keyring.kids() or "none")
        return {"kids": self.keyring.kids()}

    def _check_epoch(self, args: dict[str, Any]) -> None:
        if args.get("epoch") != self.epoch:
            raise CommandError("epoch", "stale_epoch", f"shard is at epoch {self.epoch}")

    def _remaining(self) -> dict[str, Any]:
        return {"remaining": {str(e): len(p) for e, p in self.dispenser.pools.items()}}

    def status(self) -> dict[str, Any]:
        d = self.dispenser
        return {
            "name": self.name,
            "epoch": self.epoch,
            "term": self.link_term,
            "linked": self._ready.is_set(),
            "pools": {str(e): len(p) for e, p in d.pools.items()},
            "queued": d.queued(),
            "unacked": len(d.unacked),
            "connections": self._web.connections if self._web else 0,
        }

    # -- granting -------------------------------------------------------------------

    def enqueue(
        self,
        visitor: str,
        event: int,
        account: int | None = None,
        arrived: float | None = None,
    ) -> Waiter:
        """Queue a browser's request; its ``future`` gets the ticket, sold-out or retry
        message. ``arrived``: first arrival at the front (admission token), for order."""
        w = (
            Waiter(visitor, event, account)
            if arrived is None
            else Waiter(visitor, event, account, arrived=arrived)
        )
        # Answered or given up (the browser left): the queue changed.
        w.future.add_done_callback(lambda _: self.changes.notify())
        if self.link is None:  # main is gone: send it back at once rather than hang it
            w.answer(retry_message("the shard has no main server"))
            return w
        self.dispenser.enqueue(w)
        self._wake.set()
        self.changes.notify()
        return w

    async def _dispatch_loop(self) -> None:
        d = self.dispenser
        while True:
            await self._wake.wait()
            self._wake.clear()
            while d.queued():
                await self._ready.wait()
                link = self.link
                if link is None:
                    continue
                await self._linger()
                try:
                    batch, starving = d.allocate(self.epoch, self.max_batch)
                    if batch:
                        await self._report(link, batch)
                    for event in starving:
                        await self._ask_stock(link, event)
                except Exception:  # a bug must not stop granting; the batch stays unacked
                    log.exception("%s: dispatch failed; re-syncing with main", self.name)
                    self._ready.clear()
                    await link.close("dispatch error")  # main reconnects and settles it

    async def _linger(self) -> None:
        """Hold the next report until ``report_linger`` after the previous one began,
        or until a full batch is queued: under load a batch gathers that long's
        arrivals; after a quiet spell the wait has already passed (no delay)."""
        loop = asyncio.get_running_loop()
        until = self._last_report + self.report_linger
        while (left := until - loop.time()) > 0 and self.dispenser.queued() < self.max_batch:
            self._wake.clear()  # enqueue() sets it: count again
            try:
                async with asyncio.timeout(left):
                    await self._wake.wait()
            except TimeoutError:
                return

    async def _report(self, link: Link, batch: list[Pending]) -> None:
        assert self.journal
        self._last_report = asyncio.get_running_loop().time()
        await self.journal.record_grants((p.sale, p.epoch) for p in batch)
        try:
            reply = await link.request(
                ToMain.REPORT_SALES,
                {"epoch": self.epoch, "sales": [p.sale.to_wire() for p in batch]},
            )
        except (LinkClosed, CommandError, TimeoutError) as exc:
            # Stays unacknowledged; main settles it when the link is re-synced.
            log.warning("%s: report of %d grants failed: %s", self.name, len(batch), exc)
            if isinstance(exc, TimeoutError):
                await link.close("report timed out")
            self._ready.clear()
            return
        changed, settled = self.dispenser.settle(reply["accepted"], reply["refused"])
        await self.journal.save(
            {e: self.dispenser.pools[e] for e in changed if e in self.dispenser.pools},
            settled=settled,
        )
        self.changes.notify()

    async def _ask_stock(self, link: Link, event: int) -> None:
        try:
            reply = await link.request(ToMain.NEED_STOCK, {"event": event, "epoch": self.epoch})
        except (LinkClosed, TimeoutError):
            self._ready.clear()
            return
        except CommandError as exc:
            if exc.code == "unknown_event":
                self.dispenser.fail_event(event, {"type": "error", "message": "no such event"})
            else:
                log.warning("%s: need_stock failed: %s", self.name, exc)
                await asyncio.sleep(0.5)
            return
        if reply.get("sold_out"):
            self.dispenser.fail_event(
                event, sold_out_message(self.dispenser.events.get(event), event)
            )
        elif reply.get("wait") and not self.dispenser.remaining(event):
            # The rest is stranded on an unreachable shard: wait at the front (which
            # answers "please wait" and keeps places) rather than here with no answer.
            self.dispenser.send_back(retry_message("tickets are out of reach"), event)
            await asyncio.sleep(float(reply["wait"]))
        elif not self.dispenser.remaining(event):
            await asyncio.sleep(0.2)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
