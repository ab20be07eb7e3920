"""The public edge of a server: TLS, connection limits and timeouts.

Shared by the front (aiohttp) and a shard's browser port (websockets): each listens
on plain TCP and hands every accepted connection to a :class:`ConnectionGate`, which

- refuses it at once, before any TLS work, when the server already holds
  ``max_connections`` or its address holds ``max_per_address`` (the socket is
  aborted: a refusal costs an accept and a close, not a 1.2 ms handshake);
- runs TLS with asyncio's ``SSLProtocol`` capped to a 16 KiB read buffer (a subclass
  used only here: asyncio's default gives every connection 256 KiB) and a
  ``handshake_timeout``;
- runs at most ``max_handshaking`` TLS handshakes at once and starts the others in
  the order their connections arrived (they wait, unread, in the kernel): a burst of
  3,000 handshakes on one event loop otherwise interleaves them all, so the first
  arrival finishes about as late as the last (issue 12's convoy). A handshake that
  has not finished ``handshake_stall`` seconds after it started stops counting, so
  silent clients cannot hold the queue up. Sockets whose ClientHello came at or
  after the time ``trickle`` gives (a front whose waiting room's line already covers
  every ticket left, counting those who came before) run one at a time, except
  those that have waited half their ``handshake_timeout``;
- gives a socket whose ClientHello came and waits for a slot ``slot_timeout`` (the
  line of handshakes is the server's, not the client's: ``handshake_timeout`` from
  the accept reset 6 % of a 1,500-visitor crowd on a slow machine);
- stamps each connection with the wall-clock time it came (when the kernel had it
  as it was accepted, ``kernel_arrival``, if its ClientHello follows within
  ``HELLO_GRACE``); the first
  request on it takes the stamp (:func:`claim_arrival`), so a front ranks a visitor
  in its waiting room by when it came, not by when its handshake's turn did, and
  :meth:`ConnectionGate.oldest_unclaimed` says how far back a stamp can still come
  and :meth:`ConnectionGate.unclaimed` which;
- closes a connection whose first request has not finished its headers
  ``header_timeout`` after the handshake (slow-header clients hold no slot for long;
  aiohttp's keep-alive timeout and websockets' ``open_timeout`` cover later requests);
- logs refusals and the event loop's ``accept()`` failures at most once per
  ``log_interval`` (:class:`~.ratelimit.LogThrottle`);
- once a surge of connections has drained, hands the freed heap back to the OS
  (glibc's ``malloc_trim``), so RSS returns near its baseline instead of staying
  at the peak.

The connection cap is also kept below the open-files limit, so ``accept()`` does not
run out of descriptors while the cap is what refuses.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ctypes
import ctypes.util
import fcntl
import logging
import resource
import socket
import ssl
import struct
import termios
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from .ratelimit import LogThrottle

log = logging.getLogger("ticketing.edge")

# One TLS record (16 KiB) per read is enough; asyncio's default is 256 KiB.
SSL_READ_BUFFER = 16 * 1024
FD_RESERVE = 64  # descriptors kept for listeners, links, databases and logs
HEADER_END = b"\r\n\r\n"
TRIM_AFTER = 256  # a drained surge of at least this many connections gives memory back


@dataclass(frozen=True)
class EdgeLimits:
    """Connection limits and timeouts of one public server (see the module docstring)."""

    # Limits
    max_connections: int = 4096
    max_per_address: int = 256
    # Timeouts
    max_handshaking: int | None = 64  # TLS handshakes in progress at once; None: no cap
    handshake_timeout: float = 10.0
    handshake_stall: float = 0.25  # a handshake this old no longer holds a slot
    slot_timeout: float = 60.0  # the longest a socket that said hello waits for a slot
    header_timeout: float = 10.0
    shutdown_timeout: float = 5.0
    # Logging
    log_interval: float = 10.0


TRICKLE_HANDSHAKES = 1  # handshakes at once while a gate trickles (ConnectionGate.trickle)

# The defaults: a front's connections are short (a redirect, API calls); a shard
# holds every waiting browser's WSS (5,000 idle within ~250 MiB is the target).
FRONT_LIMITS = EdgeLimits(max_connections=4096, max_per_address=256, max_handshaking=32)
SHARD_LIMITS = EdgeLimits(max_connections=10_000, max_per_address=256)


class _CappedSSLProtocol(asyncio.sslproto.SSLProtocol):
    """asyncio's TLS protocol with a 16 KiB read buffer: ~16 KiB of RSS per idle client."""

    max_size = SSL_READ_BUFFER

    def __init__(self, gate: ConnectionGate, address: str, app: asyncio.Protocol) -> None:
        super().__init__(
            asyncio.get_running_loop(),
            app,
            gate.ssl_context,
            None,  # type: ignore[arg-type]  # no waiter: we are the server
            server_side=True,
            ssl_handshake_timeout=gate.limits.handshake_timeout,  # type: ignore[arg-type]
            ssl_shutdown_timeout=gate.limits.shutdown_timeout,
        )
        self._gate = gate
        self._address = address
        self.arrival: _Arrival | None = None  # when it came (claim_arrival)

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._gate._claim(self.arrival)
            self._gate._handshake_over(self)
            self._gate._release(self, self._address)

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        self._gate._handshake_over(self)
        super()._on_handshake_complete(handshake_exc)  # type: ignore[misc]


# Seconds a connection's accept stamp may precede its ClientHello and still be its
# arrival: the kernel accepts in the order connections came, while a loaded client
# may take a while to send its hello (measured under a crowd: up to 0.25 s, where
# ranks by the hello misordered neighbours). A socket silent longer is stamped at
# its hello less this (at most this much early) and holds the line's horizon back
# no longer.
HELLO_GRACE = 1.0
# The most a socket may send before its TLS starts (a ClientHello is one record of
# at most 16 KiB, post-quantum ones included); more is not a TLS client.
MAX_EARLY = 16 * 1024 + 5
_HANDSHAKE_RECORD = b"\x16\x03"  # a TLS handshake record's first bytes
# Seconds an unclaimed arrival is remembered for the waiting room's questions (a
# front's horizon lets go of it after 2 s anyway): a shard, which never asks, and a
# long-lived connection at the head must not make the record grow without end.
ARRIVAL_MEMORY = 10.0


@dataclass(eq=False)
class _Arrival:
    """When a connection came (unix s): its accept, or at most ``HELLO_GRACE`` before
    its ClientHello; ``done`` once its first request took it (or it closed without one)."""

    at: float
    done: bool = False


_TCP_INFO_LEN = 104
_LAST_DATA_RECV = 52  # tcp_info.tcpi_last_data_recv: ms since the kernel last received
# Below this the kernel's count (whole jiffies: 4 ms at HZ=250) is coarser than the
# delay it would correct: two visitors one after the other on two fronts were
# ranked in the wrong order by it.
_KERNEL_LATE_MS = 10


def kernel_arrival(transport: asyncio.BaseTransport) -> tuple[float, bool]:
    """When the kernel last received on this just-accepted socket (unix s), and
    whether data is waiting: without data that is when its handshake completed (it
    came), with data when its ClientHello did (later). Unlike the time of the
    accept it does not move with the server's event loop: two fronts on one busy
    host accepted their shares of a burst hundreds of ms apart. Linux's ``TCP_INFO``
    (jiffy resolution, 1-10 ms), used once the accept is late by ``_KERNEL_LATE_MS``;
    else, elsewhere, or on any failure, now."""
    now = time.time()
    sock = transport.get_extra_info("socket")
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        (since_ms,) = struct.unpack_from("I", info, _LAST_DATA_RECV)
        (waiting,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))
    except (AttributeError, OSError, struct.error, ValueError):
        return now, False
    if since_ms < _KERNEL_LATE_MS:  # accepted at once: now is the finer clock
        return now, waiting > 0
    return now - min(since_ms, 60_000) / 1000, waiting > 0


def _trim(arrivals: deque[_Arrival], floor: float) -> deque[_Arrival]:
    """Drop the claimed arrivals and those before ``floor`` from the old end."""
    while arrivals and (arrivals[0].done or arrivals[0].at < floor):
        arrivals.popleft()
    return arrivals


class _Gatekeeper(asyncio.Protocol):
    """The protocol of a just-accepted socket: admit it (TLS from here on) or abort it.

    An admitted socket's TLS starts when its ClientHello has come and a handshake
    slot is free, first come first served (it waits unread meanwhile). A socket that
    sends nothing holds no slot; it is closed after ``handshake_timeout``.
    """

    def __init__(self, gate: ConnectionGate, make_app: Callable[[], asyncio.Protocol]) -> None:
        self.gate = gate
        self.make_app = make_app
        self.transport: asyncio.Transport | None = None  # until TLS starts
        self.address = "?"
        self.queued = False
        self.queued_at = 0.0  # when it began to wait for a slot (monotonic)
        self.accepted: _Arrival | None = None  # when it was accepted, until its hello
        self.arrival: _Arrival | None = None  # when it came, once its ClientHello did
        self._early: list[bytes] = []  # the ClientHello, until TLS starts
        self._early_size = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.gate._admit(address):
            transport.abort()  # RST: nothing to read, nothing to buffer
            return
        # No TLS state yet: a socket that never sends a ClientHello costs little.
        self.transport, self.address = transport, address
        self.accepted = self.gate._accepted(*kernel_arrival(transport))
        self.gate._hold(self, address)
        self._timer = asyncio.get_running_loop().call_later(
            self.gate.limits.handshake_timeout, transport.abort
        )

    def data_received(self, data: bytes) -> None:
        """The ClientHello (a few hundred bytes): start TLS now, or queue for a slot."""
        if self.transport is None:
            return
        if self.arrival is None:
            self.arrival = self.gate._hello(self.accepted)
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size > MAX_EARLY:  # no ClientHello is that long
            self.transport.abort()
            return
        if self.queued:
            return
        if self.gate._handshake_slot(self.arrival):
            self.start()
        else:
            self.queued, self.queued_at = True, time.monotonic()
            self.transport.pause_reading()
            self.gate._queue(self)
            if self._timer is not None and self._said_hello():
                # From now on it waits for the server, not the server for it.
                self._timer.cancel()
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self.gate.limits.slot_timeout, self.transport.abort)

    def _said_hello(self) -> bool:
        """Whether a whole TLS handshake record has come (the ClientHello), not just
        some bytes: only that buys the longer wait for a slot."""
        head = b"".join(self._early)
        if len(head) < 5 or not head.startswith(_HANDSHAKE_RECORD):
            return False
        return len(head) >= 5 + int.from_bytes(head[3:5], "big")

    def start(self) -> None:
        """Hand the socket to TLS (the gate gave it a handshake slot)."""
        assert self.transport is not None
        transport, self.transport, self.queued = self.transport, None, False
        app = _HeaderDeadline(self.gate.limits.header_timeout, self.make_app())
        tls = _CappedSSLProtocol(self.gate, self.address, app)
        tls.arrival = self.arrival
        self.gate._handover(self, tls)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport.set_protocol(tls)
        tls.connection_made(transport)
        for data in self._early:
            asyncio.protocols._feed_data_to_buffered_proto(tls, data)  # type: ignore[attr-defined]
        self._early = []
        transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone before TLS started (silent, or waiting for a slot)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.accepted is not None:
            self.accepted.done = True
        if self.transport is not None:
            self.transport = None
            self.gate._claim(self.arrival)
            if self.queued:
                self.gate._unqueue(self)
            self.gate._release(self, self.address)


def claim_arrival(transport: object) -> float | None:
    """When the connection under ``transport`` (a request's) came (its stamp, unix
    s), for its first request only (None after, and for a connection that did not
    come through a gate): a reload minutes later on a kept-alive connection is not
    an early arrival."""
    tls = getattr(transport, "_ssl_protocol", None)  # asyncio's TLS app transport
    if not isinstance(tls, _CappedSSLProtocol) or tls.arrival is None or tls.arrival.done:
        return None
    tls._gate._claim(tls.arrival)
    return tls.arrival.at


class _HeaderDeadline(asyncio.Protocol):
    """Between TLS and the server's protocol: the first request's headers have a deadline."""

    def __init__(self, timeout: float, inner: asyncio.Protocol) -> None:
        self.timeout = timeout
        self.inner = inner
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the end of what came so far: the header end may straddle reads
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if HEADER_END in seen:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _AcceptErrorFilter(logging.Filter):
    """asyncio logs every failed ``accept()`` (EMFILE...) with a traceback: once per interval."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self.last = float("-inf")
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.MESSAGE):
            return True
        now = time.monotonic()
        if now - self.last < self.interval:
            self.dropped += 1
            return False
        self.last = now
        if self.dropped:
            record.msg = f"{record.msg} ({self.dropped} more since the last one)"
            self.dropped = 0
        return True


_accept_filter: _AcceptErrorFilter | None = None


def install_accept_log_filter(interval: float) -> None:
    """Once per process: only asyncio's accept-failure lines are affected."""
    global _accept_filter
    if _accept_filter is None:
        _accept_filter = _AcceptErrorFilter(interval)
        logging.getLogger("asyncio").addFilter(_accept_filter)


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return trim


_malloc_trim = _load_malloc_trim()


def give_memory_back() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise: RSS stays at the peak)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def fd_headroom() -> int:
    """How many connections the open-files limit leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, int(soft) - FD_RESERVE)


class ConnectionGate:
    """Admits, counts and limits the connections of one public TLS server."""

    def __init__(
        self, name: str, ssl_context: ssl.SSLContext, limits: EdgeLimits | None = None
    ) -> None:
        self.name = name
        self.ssl_context = ssl_context
        self.limits = limits or EdgeLimits()
        self.max_connections = min(self.limits.max_connections, fd_headroom())
        self.refused = 0
        self._live: set[_CappedSSLProtocol | _Gatekeeper] = set()  # TLS started, or not yet
        self._per_address: Counter[str] = Counter()
        self._log = LogThrottle(log, self.limits.log_interval)
        self._high_water = 0  # connections at the peak since memory was last given back
        self._trim: asyncio.TimerHandle | None = None
        # Handshakes in progress (since when) and sockets waiting for a slot, in order.
        self._handshaking: dict[_CappedSSLProtocol, float] = {}
        self._waiting: deque[_Gatekeeper] = deque()
        self._hellos: deque[_Arrival] = deque()  # arrivals with a hello, not claimed: by time
        self._accepts: deque[_Arrival] = deque()  # accepted, no ClientHello yet, in order
        self._last_accept = 0.0  # the floor of accept stamps (unix s), see _accepted
        self._open_hellos = 0  # hellos' arrivals not claimed yet (in _hellos or aged out)
        self._recheck: asyncio.TimerHandle | None = None
        # The wall-clock time from which ClientHellos are handshaked one at a time (a
        # front whose waiting room's line covers every ticket left: the CPU goes to the
        # visitors who came before); None: none are.
        self.trickle: Callable[[], float | None] | None = None
        install_accept_log_filter(self.limits.log_interval)

    @property
    def connections(self) -> int:
        return len(self._live)

    def addresses(self) -> int:
        return len(self._per_address)

    def oldest_unclaimed(self) -> float | None:
        """The earliest arrival (unix s) whose connection has had no request yet: no
        :func:`claim_arrival` to come here can return an earlier time (O(1) mostly)."""
        hellos, accepts = self._trimmed_hellos(), self._trimmed_accepts()
        return min((q[0].at for q in (hellos, accepts) if q), default=None)

    def unclaimed_before(self, stamp: float, limit: int) -> int:
        """How many such arrivals came before ``stamp``, counted up to ``limit`` (then
        ``limit``). The records are in time order and kept at most half claimed."""
        count = 0
        for queue in (self._trimmed_hellos(), self._trimmed_accepts()):
            for arrival in queue:
                if arrival.at >= stamp or count >= limit:
                    break
                count += not arrival.done
        return min(count, limit)

    def unclaimed(self) -> list[float]:
        """Every such arrival (unix s, ascending): O(connections handshaking)."""
        queues = (self._trimmed_hellos(), self._trimmed_accepts())
        waiting = (a.at for q in queues for a in q if not a.done)
        return sorted(waiting)

    def _accepted(self, at: float | None = None, hello_in: bool = False) -> _Arrival:
        """An accepted socket (``at``: when the kernel last received on it, default now).

        The kernel accepts in the order connections were established, so a stamp is
        never below the previous socket's. Only a socket with nothing received yet
        moves that floor: its ``at`` is its establishment; with its hello in
        (``hello_in``) ``at`` is the hello's, later by the client's own delay, which
        must not push the sockets after it back."""
        at = time.time() if at is None else at
        arrival = _Arrival(max(self._last_accept, at))
        if not hello_in:
            self._last_accept = arrival.at
        accepts = self._trimmed_accepts()
        i = len(accepts)
        while i and accepts[i - 1].at > arrival.at:  # in time order
            i -= 1
        accepts.insert(i, arrival)
        return arrival

    def _trimmed_accepts(self) -> deque[_Arrival]:
        """Accepted sockets still waiting for their hello, silent ones (past the grace) off."""
        return _trim(self._accepts, time.time() - HELLO_GRACE)

    def _trimmed_hellos(self) -> deque[_Arrival]:
        """The hellos not claimed yet, with claimed ones at most half of the record
        (one that lingers at the head must not leave thousands behind it)."""
        hellos = _trim(self._hellos, time.time() - ARRIVAL_MEMORY)
        if len(hellos) > 2 * self._open_hellos + 32:
            hellos = self._hellos = deque(a for a in hellos if not a.done)
        return hellos

    def _claim(self, arrival: _Arrival | None) -> None:
        """A hello's arrival is done: its first request took it, or it closed."""
        if arrival is not None and not arrival.done:
            arrival.done = True
            self._open_hellos -= 1

    def _hello(self, accepted: _Arrival | None = None) -> _Arrival:
        """A ClientHello came: the connection's arrival is its accept stamp, within the
        grace (kept in time order: hellos of a loaded crowd come a little out of it)."""
        now = time.time()
        at = now if accepted is None else min(now, max(accepted.at, now - HELLO_GRACE))
        if accepted is not None:
            accepted.done = True
        arrival, hellos = _Arrival(at), self._trimmed_hellos()
        self._open_hellos += 1
        i = len(hellos)
        while i and hellos[i - 1].at > at:  # a few from the end, if any
            i -= 1
        hellos.insert(i, arrival)
        return arrival

    def protocol_factory(
        self, make_app: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """For ``loop.create_server`` (plain TCP): ``make_app`` runs only once admitted."""
        return lambda: _Gatekeeper(self, make_app)

    def gatekeeper(self, make_app: Callable[[], Any]) -> asyncio.Protocol:
        """One accepted connection's protocol (for servers that build it themselves)."""
        return _Gatekeeper(self, make_app)

    def close(self) -> None:
        """Abort every connection still held (the server has stopped listening)."""
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        for held in list(self._live):
            transport = cast(
                asyncio.Transport | None,
                held.transport if isinstance(held, _Gatekeeper) else held._transport,
            )
            if transport is not None:
                transport.abort()

    # -- bookkeeping ----------------------------------------------------------------

    def _admit(self, address: str) -> bool:
        if len(self._live) >= self.max_connections:
            why = f"{self.max_connections} connections held"
        elif self._per_address[address] >= self.limits.max_per_address:
            why = f"{self.limits.max_per_address} connections from one address"
        else:
            return True
        self.refused += 1
        self._log.log(logging.WARNING, "refused", "%s: refusing connections: %s", self.name, why)
        return False

    def _trickles(self, arrival: _Arrival | None) -> bool:
        """This socket came when ``trickle`` says the line was already full."""
        since = None if self.trickle is None else self.trickle()
        return since is not None and (arrival is None or arrival.at >= since)

    def _cap(self, arrival: _Arrival | None) -> int | None:
        """Handshakes at once for this socket: ``max_handshaking``, or one if it trickles."""
        cap = self.limits.max_handshaking
        if self._trickles(arrival):
            return TRICKLE_HANDSHAKES if cap is None else min(cap, TRICKLE_HANDSHAKES)
        return cap

    def _handshake_slot(self, arrival: _Arrival | None) -> bool:
        """Whether a new handshake may start now (stalled ones no longer count)."""
        cap = self._cap(arrival)
        if cap is None:
            return True
        if len(self._handshaking) >= cap:
            self._drop_stalled()
        return len(self._handshaking) < cap and not self._waiting

    def _drop_stalled(self) -> None:
        now = time.monotonic()
        limit = self.limits.handshake_stall
        for tls in [t for t, since in self._handshaking.items() if now - since > limit]:
            del self._handshaking[tls]

    def _queue(self, keeper: _Gatekeeper) -> None:
        self._waiting.append(keeper)
        self._schedule_recheck()

    def _unqueue(self, keeper: _Gatekeeper) -> None:
        try:
            self._waiting.remove(keeper)
        except ValueError:
            pass

    def _handshake_over(self, tls: _CappedSSLProtocol) -> None:
        """A handshake finished, failed or its connection went: start the next ones."""
        if self._handshaking.pop(tls, None) is not None or self._waiting:
            self._start_waiting()

    def _start_waiting(self) -> None:
        overdue = time.monotonic() - self.limits.handshake_timeout / 2
        while self._waiting:  # in arrival order: the first that must wait stops the rest
            head = self._waiting[0]
            cap = self._cap(head.arrival)
            # A trickled socket waiting half its handshake_timeout goes anyway: a
            # trickle delays new visitors, it must not time them out.
            late = head.queued_at < overdue and self._trickles(head.arrival)
            if cap is not None and len(self._handshaking) >= cap and not late:
                break
            self._waiting.popleft().start()
        if self._waiting:
            self._schedule_recheck()

    def _schedule_recheck(self) -> None:
        """Stalled handshakes free their slot without any event: look again then."""
        if self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_later(
                self.limits.handshake_stall, self._rechecked
            )

    def _rechecked(self) -> None:
        self._recheck = None
        self._drop_stalled()
        self._start_waiting()

    def _handover(self, keeper: _Gatekeeper, tls: _CappedSSLProtocol) -> None:
        """A socket's TLS starts: the same connection, now held by its TLS protocol."""
        self._live.discard(keeper)
        self._live.add(tls)
        self._handshaking[tls] = time.monotonic()

    def _hold(self, tls: _CappedSSLProtocol | _Gatekeeper, address: str) -> None:
        self._live.add(tls)
        self._per_address[address] += 1
        self._high_water = max(self._high_water, len(self._live))

    def _release(self, tls: _CappedSSLProtocol | _Gatekeeper, address: str) -> None:
        if tls in self._live:
            self._live.discard(tls)
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]
            # After a surge (a flood, or a sale's end) has drained to a quarter, give
            # the memory back, once, a moment later: not per connection.
            if self._high_water >= TRIM_AFTER and len(self._live) <= self._high_water // 4:
                self._high_water = len(self._live)
                if self._trim is None:
                    self._trim = asyncio.get_running_loop().call_later(1.0, self._give_back)

    def _give_back(self) -> None:
        self._trim = None
        give_memory_back()
