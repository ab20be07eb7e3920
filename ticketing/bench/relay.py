"""A TCP relay that can go silent: a partition that closes nothing.

``Relay(target_host, target_port)`` listens on 127.0.0.1 and forwards every
connection to the target, byte for byte (TLS passes through untouched).
:meth:`Relay.partition` stops forwarding in both directions *without closing
anything*: the relay stops reading, so bytes pile up in the kernel's buffers as
they would behind a dead router, no FIN or RST reaches either side, and new
connections are accepted but not forwarded. :meth:`Relay.heal` resumes it all.
Used by the tests and by ``ticketing bench --fault partition-shard``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("ticketing.relay")


class Relay:
    """A silent-partition TCP relay in this process's event loop."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port: int | None = None
        self.forwarding = asyncio.Event()
        self.forwarding.set()
        self.partitioned_at: float | None = None  # time.monotonic() of the last partition
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, self.host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def partition(self) -> None:
        """Stop forwarding, close nothing."""
        self.forwarding.clear()
        self.partitioned_at = time.monotonic()
        log.warning("relay :%s -> %s:%d partitioned", self.port, *self.target)

    def heal(self) -> None:
        self.forwarding.set()
        log.warning("relay :%s -> %s:%d healed", self.port, *self.target)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for w in list(self._writers):
            w.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            await self.forwarding.wait()  # a partition swallows new connections too
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            pumps = [
                self._spawn(self._pump(reader, up_writer)),
                self._spawn(self._pump(up_reader, writer)),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for p in pumps:
                p.cancel()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.forwarding.wait()  # partitioned: leave the bytes unread
                data = await src.read(65536)
                if not data:
                    await self.forwarding.wait()  # a FIN crosses only a healed link
                    return
                await self.forwarding.wait()  # read just before the cut: hold it
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            return
