"""A synthetic shard for ``ticketing bench --mode ledger`` (``python -m ticketing.bench.synthetic_shard``).

It speaks the real main<->shard protocol (``link.py`` over mutual TLS, its own
``shard-k`` certificate) but has no browsers: as soon as main assigns it a slice it
reports every ticket of it as sold, ``batch`` sales per ``report_sales`` request and
``in_flight`` requests at a time, as fast as main acknowledges them. That measures
main's ledger alone: decode, decide, one durable commit per batch, reply.

Prints ``READY {"tls_port": ...}`` once listening and ``DONE {...}`` each time its
pool is used up; runs until SIGTERM (the benchmark stops it by PID).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from ..errors import CommandError, LinkClosed, PeerRejected
from ..link import Commands, Link
from ..protocol import PROTOCOL_VERSION
from ..slices import RangeSet, parse_ranges
from ..tls import Credentials, check_peer, server_context
from ..wire import Sale, ToMain, ToShard
from .worker import stop_or_orphaned

log = logging.getLogger("ticketing.bench.shard")


class SyntheticShard:
    def __init__(self, name: str, creds: Credentials, *, batch: int, in_flight: int) -> None:
        self.name = name
        self.ctx = server_context(creds)
        self.batch = batch
        self.in_flight = in_flight
        self.epoch = 0
        self.link: Link | None = None
        self.pools: dict[int, RangeSet] = {}
        self.accepted = 0
        self.refused = 0
        self.reports = 0
        self.started: float | None = None
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    async def listen(self, host: str, port: int) -> int:
        # TLS from the first byte: upgrading an accepted plain stream can lose the
        # ClientHello (see shard.server.LinkListener); no need to log refusals here.
        server = await asyncio.start_server(
            self._on_connection, host, port, ssl=self.ctx, ssl_handshake_timeout=10.0
        )
        self._server = server
        return int(server.sockets[0].getsockname()[1])

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            ident = check_peer(writer.get_extra_info("ssl_object"), "main")
        except PeerRejected as exc:
            log.warning("refused link: %s", exc)
            writer.close()
            return
        link = Link(reader, writer, ident, Commands(), log)
        link.commands = Commands().extended(
            {
                "hello": self._on_hello,
                ToShard.SYNC: self._on_sync,
                ToShard.SET_POOL: self._on_set_pool,
                ToShard.ASSIGN: self._on_assign,
                ToShard.RELEASE: self._on_release,
                ToShard.PING: self._on_ping,
            }
        )
        self.link = link
        link.start()

    async def _on_hello(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"version": PROTOCOL_VERSION, "node": self.name, "role": "shard", "epoch": 0}

    async def _on_sync(self, args: dict[str, Any]) -> dict[str, Any]:
        self.epoch = int(args["epoch"])
        return {"unacked": []}

    async def _on_set_pool(self, args: dict[str, Any]) -> dict[str, Any]:
        self.pools = {int(e): RangeSet(parse_ranges(r)) for e, r in args["pools"].items()}
        self._kick()
        return {"remaining": {str(e): len(p) for e, p in self.pools.items()}}

    async def _on_assign(self, args: dict[str, Any]) -> dict[str, Any]:
        pool = self.pools.setdefault(int(args["event"]), RangeSet())
        pool.add(parse_ranges(args["ranges"]))
        self._kick()
        return {"remaining": {str(e): len(p) for e, p in self.pools.items()}}

    async def _on_release(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ranges": []}  # everything we hold is about to be reported

    async def _on_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _kick(self) -> None:
        if any(self.pools.values()):
            if self.started is None:
                self.started = time.monotonic()
            self._wake.set()
            if self._pump is None:
                self._pump = asyncio.ensure_future(self._run_pump())

    def _next_batch(self) -> list[dict[str, Any]]:
        sales: list[dict[str, Any]] = []
        for event, pool in self.pools.items():
            while len(sales) < self.batch and (serial := pool.take()) is not None:
                sales.append(Sale(event, serial, f"{self.name}-{serial}").to_wire())
            if len(sales) >= self.batch:
                break
        return sales

    async def _report(self, link: Link, sales: list[dict[str, Any]]) -> None:
        reply = await link.request(ToMain.REPORT_SALES, {"epoch": self.epoch, "sales": sales})
        self.accepted += len(reply["accepted"])
        self.refused += len(reply["refused"])
        self.reports += 1

    async def _run_pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            link = self.link
            if link is None:
                continue
            running: set[asyncio.Task[None]] = set()
            try:
                while True:
                    while len(running) < self.in_flight:
                        sales = self._next_batch()
                        if not sales:
                            break
                        running.add(asyncio.ensure_future(self._report(link, sales)))
                    if not running:
                        break
                    done, running = await asyncio.wait(running, return_when="FIRST_COMPLETED")
                    for task in done:
                        task.result()
            except (LinkClosed, CommandError, TimeoutError) as exc:
                log.error("%s: report failed: %s", self.name, exc)
            seconds = time.monotonic() - (self.started or time.monotonic())
            print(
                "DONE "
                + json.dumps(
                    {
                        "accepted": self.accepted,
                        "refused": self.refused,
                        "reports": self.reports,
                        "seconds": seconds,
                    }
                ),
                flush=True,
            )


async def run(args: argparse.Namespace) -> int:
    shard = SyntheticShard(
        args.name,
        Credentials.from_directory(args.keys, args.name),
        batch=args.batch,
        in_flight=args.in_flight,
    )
    port = await shard.listen(args.host, args.tls_port)
    print("READY " + json.dumps({"tls_port": port, "https_port": 0}), flush=True)
    await stop_or_orphaned()
    if shard.link:
        await shard.link.close("stopping")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ticketing.bench.synthetic_shard")
    parser.add_argument("--name", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--batch", type=int, default=256, help="sales per report_sales")
    parser.add_argument("--in-flight", type=int, default=4, help="reports awaiting a reply")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.uvloop:
        import uvloop

        return uvloop.run(run(args))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
