"""Front processes (issue 11): real processes, real TLS, one crowd through several fronts."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import websockets

from tests.helpers import eventually
from ticketing.cluster import LocalCluster, shard_names
from ticketing.main.fronts import urgent
from ticketing.main.stock import EventRoutes, Route
from ticketing.tokens import KeyRing, TokenSigner
from ticketing.web_client import WebClient
from ticketing.wire import Admission

pytestmark = pytest.mark.timeout(120)


def ca(cluster: LocalCluster) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cluster.keys / "ca.crt"))


async def crowd(urls: list[str], ctx: ssl.SSLContext, n: int, timeout: float = 60) -> list:
    """``n`` visitors, spread over ``urls`` in turn, at most 16 at a time."""
    gate = asyncio.Semaphore(16)

    async def one(i: int):
        async with gate, WebClient(ctx, timeout=timeout) as client:
            return await client.get_ticket(urls[i % len(urls)])

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def granted(outcomes: list) -> list[str]:
    return [o.ticket_id for o in outcomes if o.kind == "ticket"]


async def admission_url(front: str, ctx: ssl.SSLContext) -> str:
    async with WebClient(ctx) as client:
        status, location, _ = await client.admission(front)
    assert status == 302, status
    return location


async def upgrade_status(location: str, ctx: ssl.SSLContext) -> int:
    """The shard's answer to a WSS upgrade with the token in ``location`` (101: admitted)."""
    url = urlsplit(location)
    token = parse_qs(url.query)["token"][0]
    try:
        async with websockets.connect(f"wss://{url.netloc}/ws?token={token}", ssl=ctx):
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


def test_routes_decide_the_same_from_either_source() -> None:
    """The pushed view round-trips to the very structure main routes on."""
    routes = EventRoutes(
        1, {"name": "x"}, 3, (Route("shard-1", "https://a:1", True, 5), Route("s2", "u", False, 2))
    )
    back = EventRoutes.from_wire(routes.to_wire())
    assert back == routes and back.view() == routes.view()
    assert routes.view().stranded == 2 and routes.pick().name == "shard-1"
    cut = routes.out_of_reach().view()  # a front without main: nothing routable, nothing sold out
    assert cut.remaining == routes.view().remaining and not cut.routable


def test_a_view_change_is_urgent_when_it_can_change_an_answer() -> None:
    """Main pushes those at the next tick; a stock count that only drifts may wait."""

    def wire(unassigned: int = 0, *shards: tuple[bool, int], name: str = "x") -> dict:
        routes = tuple(Route(f"shard-{i}", "u", up, n) for i, (up, n) in enumerate(shards))
        return EventRoutes(1, {"name": name}, unassigned, routes).to_wire()

    sent = wire(0, (True, 800), (True, 16))
    assert urgent(None, sent)  # a new event
    assert not urgent(sent, wire(0, (True, 760), (True, 15)))  # drift: within an eighth
    assert urgent(sent, wire(0, (True, 699), (True, 16)))  # off by more than an eighth
    assert urgent(sent, wire(0, (True, 800), (True, 13)))  # the same near the end of it
    assert urgent(sent, wire(0, (True, 800), (True, 0)))  # a shard ran dry
    assert urgent(sent, wire(0, (True, 800), (False, 16)))  # a shard went down
    assert urgent(sent, wire(5, (True, 800), (True, 16)))  # main has stock again
    assert urgent(sent, wire(0, (True, 800), (True, 16), name="y"))  # the event changed
    assert urgent(sent, wire(0, (True, 800)))  # a shard gone
    assert urgent(wire(0, (True, 0)), wire(0, (True, 1)))  # stock back on a dry shard


def test_keyring_refuses_an_uncertified_or_revoked_key() -> None:
    main, front = TokenSigner(), TokenSigner(kid="front-1")
    ring = KeyRing(main.verifier())
    token = Admission.new("v" * 20, "shard-1", 1).sign(front, 60)
    with pytest.raises(Exception, match="uncertified"):
        Admission.verify(ring, token)
    ring.replace({"front-1": front.public_key_bytes.hex()})
    assert Admission.verify(ring, token).shard == "shard-1"
    impostor = TokenSigner(kid="front-1")  # same name, another key
    with pytest.raises(Exception, match="signature"):
        Admission.verify(ring, Admission.new("v" * 20, "shard-1", 1).sign(impostor, 60))
    ring.replace({})
    with pytest.raises(Exception, match="uncertified"):
        Admission.verify(ring, token)


async def test_two_fronts_route_one_crowd(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, shard_names(2), fronts=2, load_test=True) as cluster:
        assert cluster.main
        await cluster.main.init_tickets("Two doors", "", "10", 60)
        await cluster.main.distribute_tickets()
        await cluster.fronts_in_sync()
        outcomes = await crowd(cluster.front_urls, ca(cluster), 80)
        ids = granted(outcomes)
        assert Counter(o.kind for o in outcomes) == {"ticket": 60, "sold_out": 20}
        assert len(ids) == len(set(ids)) == 60  # no ticket twice
        audit = await cluster.main.audit()
        assert audit.exact and audit.held == 60
        # Tokens came from the fronts' own keys, which main certified at the shards.
        assert set(cluster.main.front_keys) == {"front-1", "front-2"}


async def test_front_added_and_removed_mid_sale(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, shard_names(2), fronts=1, load_test=True) as cluster:
        assert cluster.main
        await cluster.main.init_tickets("Churn", "", "10", 60)
        await cluster.main.distribute_tickets()
        await cluster.fronts_in_sync()
        ctx = ca(cluster)
        first = await crowd(cluster.front_urls, ctx, 20)
        added = await cluster.add_front("front-2")
        await cluster.fronts_in_sync()
        second = await crowd(cluster.front_urls, ctx, 20)  # through both
        old = cluster.front_processes[0]
        unused = await admission_url(cluster.front_urls[0], ctx)  # signed by front-1
        await old.stop()
        cluster.front_processes.remove(old)
        # Revoked at every shard within a heartbeat: its unused token is refused now.
        await eventually(lambda: "front-1" not in cluster.main.front_keys, 3.0)
        assert await upgrade_status(unused, ctx) == 403
        third = await crowd([f"https://127.0.0.1:{added.port}/"], ctx, 30)
        ids = granted(first + second + third)
        assert len(ids) == len(set(ids)) == 60
        assert {o.kind for o in third} <= {"ticket", "sold_out"}
        assert (await cluster.main.audit()).exact


async def test_a_token_signed_by_an_uncertified_key_is_refused(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, shard_names(1), fronts=1, load_test=True) as cluster:
        assert cluster.main
        await cluster.main.init_tickets("Forged", "", "10", 5)
        await cluster.main.distribute_tickets()
        await cluster.fronts_in_sync()
        ctx = ca(cluster)
        real = await admission_url(cluster.front_url, ctx)
        shard = urlsplit(real).netloc
        for kid in ("front-1", "front-9"):  # a certified name with a wrong key; an unknown name
            rogue = TokenSigner(kid=kid)
            token = Admission.new("v" * 20, "shard-1", 1).sign(rogue, 60)
            assert await upgrade_status(f"https://{shard}/?token={token}", ctx) == 403
        assert await upgrade_status(real, ctx) == 101
        assert (await cluster.main.audit()).exact


async def test_main_restarts_mid_sale_with_fronts_up(tmp_path: Path) -> None:
    """Fronts answer "please wait" while main is away, then route again on their own."""
    async with LocalCluster(
        tmp_path, shard_names(2), fronts=1, load_test=True, main_options={"reclaim_after": None}
    ) as cluster:
        assert cluster.main and cluster.redirect and cluster.front_link_port
        await cluster.main.init_tickets("Restart", "", "10", 40)
        await cluster.main.distribute_tickets()
        await cluster.fronts_in_sync()
        ctx = ca(cluster)
        before = await crowd(cluster.front_urls, ctx, 15)
        link_port, market_port = cluster.front_link_port, cluster.redirect.port
        await cluster.redirect.close()
        await cluster.main.close()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
            for _ in range(2):  # main is away: a wait answer, never an error or sold out
                async with http.get(
                    cluster.front_url, headers={"Accept": "application/json"}, allow_redirects=False
                ) as resp:
                    body = await resp.json()
                # "wait" while the waiting room still has main's last straight passes,
                # "queued" (a place in line) once its report to main has failed: which
                # one depends on when its tick ran, and both keep the visitor's place.
                assert resp.status == 200 and body["status"] in ("wait", "queued"), body
        # The same main, on the same files and ports.
        from ticketing.front.server import RedirectServer
        from ticketing.main.server import MainServer

        main = cluster.main = MainServer(data_dir=tmp_path, reclaim_after=None)
        main.set_certificate_path(cluster.keys)
        for p in cluster.processes:
            await main.connect_client_server("127.0.0.1", p.tls_port, p.https_port)
        cluster.redirect = RedirectServer(main)
        await cluster.redirect.create_server(market_port)
        await main.serve_fronts(link_port)
        await eventually(lambda: "front-1" in main.front_keys, 10.0)
        await cluster.fronts_in_sync()
        after = await crowd(cluster.front_urls, ctx, 35)  # waiting visitors resume too
        ids = granted(before + after)
        assert len(ids) == len(set(ids)) == 40
        audit = await main.audit()
        assert audit.exact and audit.held == 40


# -- several hosts for real: one network namespace per process -----------------------------


class Segment:
    """A bridge here (198.18.N.1, main's host) and one namespace per other host on it."""

    def __init__(self, hosts: list[str]) -> None:
        tag = os.getpid() % 10_000
        octet = 50 + os.getpid() % 40  # a /24 of 198.18.0.0/15 per test process
        self.bridge = f"tkb{tag}"
        self.main = f"198.18.{octet}.1"
        self.hosts = {h: (f"tkf{tag}-{i}", f"198.18.{octet}.{i + 2}") for i, h in enumerate(hosts)}
        self._links: list[str] = []

    def create(self) -> Segment:
        run = _ip
        try:
            run("link", "add", self.bridge, "type", "bridge")
            run("addr", "add", f"{self.main}/24", "dev", self.bridge)
            run("link", "set", self.bridge, "up")
            for i, (ns, addr) in enumerate(self.hosts.values()):
                outer, inner = f"{self.bridge}o{i}", f"{self.bridge}i{i}"
                run("netns", "add", ns)
                run("link", "add", outer, "type", "veth", "peer", "name", inner)
                self._links.append(outer)
                run("link", "set", inner, "netns", ns)
                run("link", "set", outer, "master", self.bridge, "up")
                run("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
                run("-n", ns, "link", "set", inner, "up")
                run("-n", ns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError:
            self.remove()
            raise
        return self

    def prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host][0]]

    def addr(self, host: str) -> str:
        return self.hosts[host][1]

    def remove(self) -> None:
        for outer in self._links:
            subprocess.run(["ip", "link", "del", outer], capture_output=True)
        for ns, _ in self.hosts.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


async def test_main_two_fronts_and_two_shards_on_five_hosts(tmp_path: Path) -> None:
    from tests.test_faults_live import _netns_unavailable
    from ticketing.cluster import (
        LOAD_TEST_MAIN_ARGS,
        LOAD_TEST_SHARD_ARGS,
        FrontProcess,
        ShardProcess,
    )
    from ticketing.front.server import RedirectServer
    from ticketing.main.server import MainServer
    from ticketing.tls import write_cluster_keys

    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    seg = Segment(["shard-1", "shard-2", "front-1", "front-2"]).create()
    procs: list = []
    try:
        addrs = tuple(seg.addr(h) for h in seg.hosts) + (seg.main,)
        keys = write_cluster_keys(
            tmp_path / "keys", shard_names(2), addrs, fronts=["front-1", "front-2"]
        )
        for name in shard_names(2):
            args = [
                *("-m", "ticketing", "shard", "--name", name, "--keys", str(keys)),
                *("--data", str(tmp_path), "--host", seg.addr(name)),
                *("--tls-port=0", "--https-port=0", *LOAD_TEST_SHARD_ARGS),
            ]
            procs.append(await ShardProcess.spawn(name, args, prefix=seg.prefix(name)))
        main = MainServer(data_dir=tmp_path)
        main.set_certificate_path(keys)
        async with main:
            for p in procs:
                await main.connect_client_server(seg.addr(p.name), p.tls_port, p.https_port)
            async with RedirectServer(main) as market:
                market_port = await market.create_server(0, seg.main)
                link_port = await main.serve_fronts(0, seg.main)
                fronts = []
                for name in ("front-1", "front-2"):
                    front = await FrontProcess.launch(
                        name,
                        keys,
                        f"{seg.main}:{link_port}",
                        market=f"https://{seg.main}:{market_port}",
                        host=seg.addr(name),
                        extra_args=LOAD_TEST_MAIN_ARGS,
                        prefix=seg.prefix(name),
                    )
                    procs.append(front)
                    fronts.append(f"https://{seg.addr(name)}:{front.port}/")
                await eventually(lambda: len(main.front_keys) == 2, 10.0)
                await main.init_tickets("Five hosts", "", "10", 30)
                await main.distribute_tickets()
                assert main.fronts
                await main.fronts.in_sync()
                outcomes = await crowd(
                    fronts, ssl.create_default_context(cafile=str(keys / "ca.crt")), 40
                )
                ids = granted(outcomes)
                assert Counter(o.kind for o in outcomes) == {"ticket": 30, "sold_out": 10}
                assert len(ids) == len(set(ids)) == 30
                audit = await main.audit()
                assert audit.exact and audit.held == 30
    finally:
        for p in reversed(procs):
            await p.stop()
        seg.remove()
