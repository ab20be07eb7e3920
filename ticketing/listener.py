"""A mutual-TLS link port that runs TLS itself, so a refused handshake is logged.

Used by a shard (main dials it) and by main (fronts dial it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from .tls import PeerIdentity, check_peer

log = logging.getLogger("ticketing.link")


class LinkListener:
    """The shard's link port: accepts TCP connections, each run as TLS from its first byte.

    Not ``start_server(ssl=...)``: a refused handshake would never reach us, and we
    log it. Not a plain accept + ``start_tls`` either: a ClientHello read before the
    upgrade stays in the plain stream's buffer and the handshake hangs (uvloop reads
    as soon as it accepts; uvloop#707, cpython#142352).
    """

    def __init__(self, host: str, port: int, on_socket: Callable[[socket.socket, Any], Any]):
        family, _, _, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.sock = socket.create_server(addr, family=family, backlog=128)
        self.sock.setblocking(False)
        self.sockets = [self.sock]
        self._on_socket = on_socket
        self._task = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self.sock)
            except OSError as exc:  # e.g. out of file descriptors: retry, as asyncio does
                log.warning("link port: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            self._on_socket(conn, peer)

    def close(self) -> None:
        """Stop accepting; the socket closes once the accept loop has let go of it."""
        if self._task.done():
            self.sock.close()
        else:
            self._task.cancel()
            self._task.add_done_callback(lambda _: self.sock.close())


async def accept_tls(
    sock: socket.socket,
    ctx: Any,
    role: str,
    name: str | None,
    handshake_timeout: float,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, PeerIdentity]:
    """Run the TLS handshake on an accepted socket and check the peer's role and name.

    Raises ``ssl.SSLError``, :class:`PeerRejected`, ``OSError`` or ``TimeoutError``;
    the socket is closed then.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    writer: asyncio.StreamWriter | None = None
    try:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=ctx, ssl_handshake_timeout=handshake_timeout
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        ident = check_peer(writer.get_extra_info("ssl_object"), role, name)
    except BaseException:
        if writer is not None:
            writer.close()
        else:
            sock.close()  # a failed handshake's transport has closed it already
        raise
    return reader, writer, ident
