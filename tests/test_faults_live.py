"""Faults with real shard processes and sockets: silent partitions, kill -9, cut cables.

Main and the front run in the test's process (so its state can be read directly);
the shards are ``ticketing shard`` processes. Timeouts are short options
(heartbeats every 0.2 s, dead after 0.8 s) so the file runs in seconds. Afterwards
no ticket is granted twice and the audit is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.helpers import Relay, eventually
from ticketing import MainServer, RedirectServer
from ticketing.cluster import LOAD_TEST_FRONT_OPTIONS, ShardProcess
from ticketing.front.queue import QueueOptions
from ticketing.main.server import ShardLink
from ticketing.tls import DEFAULT_HOSTS, write_cluster_keys
from ticketing.web_client import Outcome, WebClient, back_to_front

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

HB_INTERVAL, HB_TIMEOUT = 0.2, 0.8
HB_FLAGS = [f"--heartbeat-interval={HB_INTERVAL}", f"--heartbeat-timeout={HB_TIMEOUT}"]


@dataclass
class Faulty:
    """Main + front here, shard processes there, optionally behind silent relays."""

    data: Path
    main: MainServer
    front: RedirectServer
    shards: list[ShardProcess]
    relays: dict[str, Relay] = field(default_factory=dict)
    ctx: ssl.SSLContext = field(default_factory=ssl.create_default_context)

    @property
    def front_url(self) -> str:
        return f"https://127.0.0.1:{self.front.port}/"

    def link(self, name: str) -> ShardLink:
        return self.main.shards[name]

    async def shard_up(self, shard: ShardProcess, host: str = "127.0.0.1") -> bool:
        """The shard's public health: up while it is linked to main (nothing more)."""
        url = f"https://{host}:{shard.https_port}/health"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ctx)) as s:
            async with s.get(url) as resp:
                return bool((await resp.json())["status"] == "up")

    async def shard_status(self, name: str) -> dict[str, Any]:
        """The shard's details, asked over main's link (operators' view)."""
        return dict(await self.main.call(name, "status"))

    async def admit(self, client: WebClient | None = None) -> str:
        """An admission location (unused) for ``client``, or for a fresh visitor."""
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(WebClient(self.ctx))
            status, location, body = await client.admission(self.front_url)
        assert status == 302 and location, body
        return location

    async def check_books(self, outcomes: list[Outcome], total: int) -> None:
        tickets = [o.ticket_id for o in outcomes if o.ticket_id]
        assert len(tickets) == len(set(tickets)), "a ticket was granted twice"
        audit = await self.main.audit()
        assert audit.exact and audit.total == total, audit
        assert audit.held >= len(tickets)


@contextlib.asynccontextmanager
async def faulty(
    tmp_path: Path,
    n: int = 2,
    *,
    relayed: tuple[str, ...] = (),
    tickets: int = 40,
    hosts: dict[str, str] | None = None,
    launch: Any = None,
    **main_opts: Any,
) -> AsyncIterator[Faulty]:
    """``n`` shard processes (``relayed`` ones reached through a :class:`Relay`)."""
    names = [f"shard-{i}" for i in range(1, n + 1)]
    hosts = hosts or {}
    keys = write_cluster_keys(
        tmp_path / "keys", names, (*DEFAULT_HOSTS, *sorted(set(hosts.values())))
    )
    data = tmp_path / "data"
    spawn = launch or ShardProcess.launch
    shards: list[ShardProcess] = []
    relays: dict[str, Relay] = {}
    main = MainServer(
        data_dir=data, heartbeat_interval=HB_INTERVAL, heartbeat_timeout=HB_TIMEOUT, **main_opts
    )
    main.set_certificate_path(keys)
    # The crowd is all 127.0.0.1. No waiting room: these tests probe routing with
    # admissions they never use, which its window would count as visitors on their way.
    front = RedirectServer(
        main, **{**LOAD_TEST_FRONT_OPTIONS, "queue": QueueOptions(enabled=False)}
    )
    try:
        for name in names:
            host = hosts.get(name, "127.0.0.1")
            shards.append(await spawn(name, keys, data, host=host, extra_args=HB_FLAGS))
            port = shards[-1].tls_port
            if name in relayed:
                relays[name] = relay = Relay(host, port)
                port = await relay.start()
            await main.connect_client_server(
                "127.0.0.1" if name in relayed else host, port, shards[-1].https_port
            )
        await front.create_server(0)
        await main.init_tickets("Show", "", "10", tickets)
        await main.distribute_tickets()
        ctx = ssl.create_default_context(cafile=str(keys / "ca.crt"))
        yield Faulty(data, main, front, shards, relays, ctx)
    finally:
        await front.close()
        await main.close()
        for relay in relays.values():
            await relay.close()
        for shard in shards:
            await shard.stop()


async def timed(predicate: Any, seconds: float) -> float:
    """Seconds until ``predicate()`` holds (fails after ``seconds``)."""
    t0 = time.monotonic()
    await eventually(predicate, seconds)
    return time.monotonic() - t0


async def test_a_silent_partition_is_detected_and_the_front_stops_routing_there(
    tmp_path: Path,
) -> None:
    async with faulty(tmp_path, relayed=("shard-1",), reclaim_after=None, connect_timeout=3.0) as f:
        one, two = f.shards
        assert await f.shard_up(one)
        f.relays["shard-1"].partition()  # nothing is closed: only heartbeats can tell
        took = await timed(lambda: not f.link("shard-1").online, HB_TIMEOUT + 1)
        assert took <= HB_TIMEOUT + 1
        # The shard, on its side of the cut, treats main as gone too.
        t0 = time.monotonic()
        while await f.shard_up(one):
            assert time.monotonic() - t0 <= HB_TIMEOUT + 1, "the shard still believes in main"
            await asyncio.sleep(0.05)
        ports = {urlsplit(await f.admit()).port for _ in range(12)}
        assert ports == {two.https_port}
        # Its stock is stranded, not lost; once the partition heals it is back.
        audit = await f.main.audit()
        assert audit.exact and audit.pools == {"shard-1": 20, "shard-2": 20}
        f.relays["shard-1"].heal()
        await eventually(lambda: f.link("shard-1").online, 20)
        ports = {urlsplit(await f.admit()).port for _ in range(30)}
        assert one.https_port in ports
        await f.check_books([], 40)


async def test_a_visitor_on_a_cut_off_shard_is_sent_back_and_keeps_going(
    tmp_path: Path,
) -> None:
    async with faulty(tmp_path, relayed=("shard-1",), reclaim_after=None, connect_timeout=3.0) as f:
        one, _ = f.shards
        async with WebClient(f.ctx, timeout=30) as client:
            for _ in range(200):  # an admission that happens to point at shard-1
                location = await f.admit(client)
                if urlsplit(location).port == one.https_port:
                    break
            else:
                pytest.fail("the front never picked shard-1")
            f.relays["shard-1"].partition()
            t0 = time.monotonic()
            first = await client.claim(location)  # granted, reported into the silence
            waited = time.monotonic() - t0
            assert first.kind == "retry", first
            assert waited <= HB_TIMEOUT + 2
            again = back_to_front(location, first.message["front"])
            assert again and "place=" in again
            # Back through the front, which now routes elsewhere: a ticket.
            final = await client.get_ticket(again)
        assert final.kind == "ticket", final
        f.relays["shard-1"].heal()
        await eventually(lambda: f.link("shard-1").online, 20)
        # The grant shard-1 made in the dark was re-reported in the re-sync and refused
        # (one per visitor): the visitor holds one ticket, the serial is back in a pool.
        assert (await f.shard_status("shard-1"))["unacked"] == 0
        await f.check_books([first, final], 40)
        audit = await f.main.audit()
        assert audit.held == 1


async def test_a_killed_shard_gives_no_false_sold_out_and_its_stock_sells_elsewhere(
    tmp_path: Path,
) -> None:
    reclaim = 2.0
    async with faulty(tmp_path, reclaim_after=reclaim, tickets=40) as f:
        ledger = f.main.ledger
        assert ledger
        stranded = {s for a, b in (await ledger.shard_pools("shard-1", 1))[1] for s in range(a, b)}
        assert len(stranded) == 20
        f.shards[0].kill()  # SIGKILL: its 20 tickets are stranded until it is fenced
        await f.shards[0].proc.wait()
        killed = time.monotonic()
        fenced: list[float] = []

        async def watch_fence() -> None:
            await eventually(lambda: f.link("shard-1").epoch > 1, reclaim + 5)
            fenced.append(time.monotonic())

        fence = asyncio.ensure_future(watch_fence())
        ends: list[tuple[float, Outcome]] = []
        sem = asyncio.Semaphore(8)

        async def visit() -> None:
            async with sem, WebClient(f.ctx, timeout=30) as client:
                out = await client.get_ticket(f.front_url)
            ends.append((time.monotonic(), out))

        await asyncio.gather(*(visit() for _ in range(50)))
        await fence
        kinds = [o.kind for _, o in ends]
        assert kinds.count("ticket") == 40 and kinds.count("sold_out") == 10, kinds
        # No "sold out" while the stock was stranded: all of them after the fencing.
        assert all(t >= fenced[0] for t, o in ends if o.kind == "sold_out")
        assert any(o.waits for _, o in ends), "nobody was told to wait"
        # Shard-1's stranded tickets went to buyers elsewhere, soon after the fence.
        sold_there = sorted(
            t for t, o in ends if o.ticket_id and int(o.ticket_id.split("-")[1]) in stranded
        )
        assert len(sold_there) == 20
        assert sold_there[0] - killed <= reclaim + 2
        await f.check_books([o for _, o in ends], 40)
        assert (await f.main.audit()).held == 40


# -- real separate hosts: network namespaces -------------------------------------------


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    probe = f"tkt-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Veth:
    """A namespace holding one end of a veth pair: 198.18.X.2 there, 198.18.X.1 here."""

    ns: str
    outer: str
    inner: str
    here: str
    there: str

    @classmethod
    def create(cls) -> Veth:
        tag = os.getpid() % 100_000
        octet = 100 + os.getpid() % 150  # one /30 of 198.18.0.0/15 per test process
        v = cls(f"tkt-{tag}", f"tk{tag}o", f"tk{tag}i", f"198.18.{octet}.1", f"198.18.{octet}.2")
        steps = [
            ["ip", "netns", "add", v.ns],
            ["ip", "link", "add", v.outer, "type", "veth", "peer", "name", v.inner],
            ["ip", "link", "set", v.inner, "netns", v.ns],
            ["ip", "addr", "add", f"{v.here}/30", "dev", v.outer],
            ["ip", "link", "set", v.outer, "up"],
            ["ip", "-n", v.ns, "addr", "add", f"{v.there}/30", "dev", v.inner],
            ["ip", "-n", v.ns, "link", "set", v.inner, "up"],
            ["ip", "-n", v.ns, "link", "set", "lo", "up"],
        ]
        try:
            for step in steps:
                subprocess.run(step, check=True, capture_output=True)
        except subprocess.CalledProcessError:
            v.remove()
            raise
        return v

    def set_up(self, up: bool) -> None:
        state = "up" if up else "down"
        subprocess.run(["ip", "link", "set", self.outer, state], check=True)

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


async def test_a_cable_cut_between_hosts_is_detected(tmp_path: Path) -> None:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    veth = Veth.create()
    try:

        async def launch_in_ns(name: str, keys: Path, data: Path, **kw: Any) -> ShardProcess:
            if name != "shard-1":
                return await ShardProcess.launch(name, keys, data, **kw)
            # ``ip netns exec`` runs the same ``python -m ticketing shard`` over there.
            return await ShardProcess.launch(
                name, keys, data, prefix=["ip", "netns", "exec", veth.ns], **kw
            )

        async with faulty(
            tmp_path, hosts={"shard-1": veth.there}, launch=launch_in_ns, reclaim_after=None
        ) as f:
            one, two = f.shards
            assert f.link("shard-1").host == veth.there
            veth.set_up(False)  # the cable is cut: no FIN, no RST, just silence
            took = await timed(lambda: not f.link("shard-1").online, HB_TIMEOUT + 1)
            assert took <= HB_TIMEOUT + 1
            ports = {urlsplit(await f.admit()).port for _ in range(12)}
            assert ports == {two.https_port}
            veth.set_up(True)
            await eventually(lambda: f.link("shard-1").online, 30)
            assert await f.shard_up(one, veth.there)
            assert (await f.shard_status("shard-1"))["epoch"] == 1
            await f.check_books([], 40)
    finally:
        veth.remove()
