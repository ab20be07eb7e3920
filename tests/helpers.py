"""Two :class:`LineProtocol` objects joined in memory (like h11's tests/helpers.py).

No sockets, no event loop: ``pair.send(side, ...)`` queues a request on one side,
``pair.flush()`` moves each side's ``data_to_send`` into the other's
``receive_data`` and returns the events each side saw. ``pair.wire`` keeps the bytes
moved by the last flush, so a test can also check what went over the wire.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from ticketing.bench.relay import Relay  # the silent-partition relay (bench uses it too)
from ticketing.protocol import Event, LineProtocol

__all__ = ["ConnectionPair", "Relay", "eventually", "lines", "other"]

SIDES = ("main", "shard")
HELLO_ARGS = {"version": 1, "node": "main", "role": "main"}
HELLO_RESULT = {"version": 1, "node": "shard-1", "role": "shard", "epoch": 1}


def other(side: str) -> str:
    return "shard" if side == "main" else "main"


def lines(data: bytes) -> list[dict[str, Any]]:
    """Decode the JSON lines a protocol object wrote."""
    return [json.loads(line) for line in data.splitlines()]


class ConnectionPair:
    """``main`` opens the link with a hello; ``shard`` answers it."""

    def __init__(self, **limits: Any) -> None:
        self.conn = {side: LineProtocol(**limits) for side in SIDES}
        self.wire: dict[str, bytes] = {side: b"" for side in SIDES}

    @property
    def main(self) -> LineProtocol:
        return self.conn["main"]

    @property
    def shard(self) -> LineProtocol:
        return self.conn["shard"]

    def send(self, side: str, cmd: str, args: dict[str, Any] | None = None) -> int:
        """Queue a request from ``side``; returns its id."""
        return self.conn[side].send_request(cmd, args)

    def reply(self, side: str, request_id: int, result: Any = None) -> None:
        self.conn[side].send_reply(request_id, result)

    def error(self, side: str, request_id: int | None, code: str, message: str = "") -> None:
        self.conn[side].send_error(request_id, code, message)

    def flush(self) -> dict[str, list[Event]]:
        """Deliver what each side wrote to the other; return the events per side."""
        self.wire = {side: self.conn[side].data_to_send() for side in SIDES}
        for side in SIDES:
            if self.wire[other(side)]:
                self.conn[side].receive_data(self.wire[other(side)])
        return {side: self.conn[side].events_received() for side in SIDES}

    def inject(self, side: str, data: bytes) -> list[Event]:
        """Feed raw bytes to ``side`` as if its peer wrote them; return its events."""
        self.conn[side].receive_data(data)
        return self.conn[side].events_received()

    def open(
        self, hello: dict[str, Any] | None = None, result: dict[str, Any] | None = None
    ) -> int:
        """Run the hello exchange; returns the hello's request id."""
        rid = self.main.send_hello(hello or HELLO_ARGS)
        self.flush()
        self.reply("shard", rid, result or HELLO_RESULT)
        self.flush()
        return rid


async def eventually(predicate: Callable[[], Any], seconds: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail after ``seconds`` (for cross-process state)."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - state lives in other processes or files
            await asyncio.sleep(0.01)
