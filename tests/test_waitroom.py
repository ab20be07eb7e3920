"""The waiting room: its rules without sockets, then the front over real TLS.

Over-capacity crowds released in FIFO order with falling positions, a place kept
over a reload and a front restart, a copied queue ticket refused, the pre-queue
shuffled at the start then FIFO, proof of work required when enabled.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import socket
import ssl
import time

import aiohttp
import pytest

from ticketing import RedirectServer
from ticketing.cluster import LOAD_TEST_FRONT_OPTIONS
from ticketing.errors import TokenError
from ticketing.front import queue as queue_module
from ticketing.front.pow import PowGate, leading_zero_bits, solve, solved
from ticketing.front.queue import QueueOptions
from ticketing.front.waitroom import (
    PREQUEUE_SPAN,
    ClockSequencer,
    LeasedSequencer,
    Line,
    ahead_in,
    eta_seconds,
    prequeue_rank,
)
from ticketing.ledger.records import Event
from ticketing.main.release import ReleaseCoordinator, ReleaseRate
from ticketing.tokens import TokenSigner, peek_claims
from ticketing.visitor import public_id
from ticketing.web_client import WebClient
from ticketing.wire import LineOrders, LineReport, LineSketch, QueueTicket

pytestmark = pytest.mark.timeout(60)

JSON = {"Accept": "application/json"}


# -- rules, no sockets ------------------------------------------------------------


def test_line_releases_in_rank_order_and_positions_only_fall() -> None:
    line = Line(stale_after=10.0)
    ranks = [5, 9, 12, 20, 31]
    for r in ranks:
        line.join(r, 0.0, "a", now=0.0)
    line.join(7, 0.0, "b", now=0.0)  # back after a front restart: its rank, not the end
    assert [line.position(r) for r in (5, 7, 9, 31)] == [1, 2, 3, 6]
    assert line.entries_from("a") == 5 and line.entries_from("b") == 1
    order, seen = [], []
    while len(line):
        seen.append(line.position(31))
        order += line.release(2, now=1.0)
    assert order == [5, 7, 9, 12, 20, 31] and seen == [6, 4, 2]
    assert line.released(5) and line.released(7) and not line.waiting(5)
    line.join(5, 0.0, "a", now=2.0)  # a released visitor reloading stays released
    assert line.released(5) and len(line) == 0 and line.entries_from("a") == 0


def test_silent_waiters_leave_and_release_is_forgotten_later() -> None:
    line = Line(stale_after=5.0, keep_released=60.0)
    line.join(1, 0.0, "a", now=0.0)
    line.join(2, 0.0, "a", now=0.0)
    line.seen(2, now=4.0)
    assert line.prune(now=6.0) == [1] and line.position(2) == 1
    assert line.release(1, now=6.0) == [2]
    line.prune(now=70.0)
    assert not line.released(2)


def test_prequeue_ranks_sit_ahead_of_every_sequence_number() -> None:
    rng = random.Random(7)
    seq = ClockSequencer(clock=lambda: 1.7e9)
    numbers = [seq.next(1) for _ in range(3)]
    assert numbers == [1_700_000_000_000_000, 1_700_000_000_000_001, 1_700_000_000_000_002]
    shuffled = [prequeue_rank("random", n, rng) for n in numbers]
    assert all(-PREQUEUE_SPAN <= r < 0 for r in shuffled) and len(set(shuffled)) == 3
    in_order = [prequeue_rank("arrival", n) for n in numbers]
    assert in_order == sorted(in_order) and max(in_order) < min(shuffled)


def test_clock_ranks_keep_the_arrival_but_never_go_below_a_reported_horizon() -> None:
    now = [1000.0]
    seq = ClockSequencer(clock=lambda: now[0], max_age=2.0)
    came = seq.next(1, at=999.5)  # its ClientHello came half a second ago
    assert came == 999_500_000 and seq.next(1, at=999.5) == came + 1  # unique
    # A hello from 999.8 is still unranked: the horizon waits for it, not for ever.
    assert seq.horizon(1, oldest=999.8) == 999_800_000
    assert seq.horizon(1, oldest=990.0) == 999_800_000  # older than max_age: no further back
    now[0] = 1010.0
    assert seq.horizon(1, oldest=990.0) == 1_008_000_000  # now - max_age
    assert seq.next(1, at=999.9) == 1_008_000_000  # a late stamp: at the horizon, not below


def test_leased_blocks_expire_so_fronts_agree_within_their_lifetime() -> None:
    counter = iter(range(0, 10_000, 4))
    leases: list[range] = []

    def lease(event: int, n: int) -> range:
        start = next(counter)
        leases.append(range(start, start + n))
        return leases[-1]

    now = [0.0]
    a = LeasedSequencer(lease, block=4, block_ttl=0.25, clock=lambda: now[0])
    b = LeasedSequencer(lease, block=4, block_ttl=0.25, clock=lambda: now[0])
    first = [a.next(1), b.next(1)]  # front a leased 0..3, front b 4..7
    now[0] = 0.5  # a's block is too old: a later arrival on a must not get 1
    later = a.next(1)
    assert first == [0, 4] and later == 8 and later > max(first)


def test_release_rate_follows_the_grants_and_respects_a_cap() -> None:
    rate = ReleaseRate(min_window=10, target_delay=1.0, flight_window=10.0)
    rate.observe(1000, 0.0)
    assert rate.allowance(0.0) == 10
    rate.released(10, 0.0)
    assert rate.allowance(0.1) == 0  # the window is full until the shards grant
    for t in range(1, 6):  # 100 grants a second
        rate.released(rate.allowance(float(t)), float(t))
        rate.observe(1000 - 100 * t, float(t))
    assert rate.grant_rate() == pytest.approx(100.0, rel=0.3)
    assert rate.allowance(5.0) >= 50  # the window grew with the measured grant rate
    assert eta_seconds(99, 50.0) == 2.0
    capped = ReleaseRate(cap=5.0, min_window=100)
    capped.observe(1000, 0.0)
    capped.observe(1000, 1.0)
    assert capped.allowance(1.0) == 5 and capped.expected_rate() == 5.0


def test_the_window_covers_the_transit_so_a_slow_path_does_not_starve_the_shards() -> None:
    """Every released visitor takes 2 s to reach a shard and get a ticket: a window of
    one second of grants would stay at min_window (5 grants/s for ever)."""
    rate = ReleaseRate(min_window=10, target_delay=1.0)
    remaining, released = 10_000, []  # (when, how many)
    for step in range(40):
        now = step * 0.5
        granted = sum(n for t, n in released if now - 2.0 - 0.25 < t <= now - 2.0 + 0.25)
        remaining -= granted
        rate.observe(remaining, now)
        n = rate.allowance(now)
        rate.released(n, now)
        released.append((now, n))
        rate.held_back(now)  # a long line waits behind the window all along
    assert rate.transit() == pytest.approx(2.0, abs=0.6)
    assert rate.grant_rate() > 20  # four times what a window of min_window gives


def test_never_more_on_their_way_than_tickets_left_but_no_shows_lapse() -> None:
    rate = ReleaseRate(min_window=64)
    rate.observe(5, 0.0)
    rate.released(5, 0.0)  # the last five tickets' visitors are on their way
    assert rate.allowance(1.0) == 0 and rate.in_flight() == 5
    rate.observe(5, 10.0)  # ten seconds on, none has come: taken for gone
    assert rate.allowance(10.0) == 5 and rate.in_flight() == 5  # (still in the window)


def line_report(ranks: list[int], *, horizon: int = 10**9, head: int = 512, **kw) -> LineReport:
    line = Line()
    for r in ranks:
        line.join(r, 0.0, "a", now=0.0)
    return LineReport(kw.pop("started", True), line.head(head), line.sketch(), horizon, **kw)


EVENT = Event(1, "Crowd", "", 1000, 100)


def test_one_watermark_releases_the_lowest_ranks_of_every_front() -> None:
    coord = ReleaseCoordinator(min_window=4)
    # Front b has reported first (nobody there yet): a's line alone may not run past
    # b's horizon, the rank its next arrival would get.
    coord.report("b", EVENT, line_report([], horizon=5), remaining=100, now=0.0)
    alone = coord.report("a", EVENT, line_report([1, 4, 6, 9]), remaining=100, now=0.0)
    assert alone.upto == 4  # 1 and 4: 6 and 9 wait, b may still show a 5
    b = coord.report("b", EVENT, line_report([5, 7, 8], horizon=20), remaining=100, now=0.1)
    assert b.upto == 6  # room for two more: 5 (b) and 6 (a), the lowest of both lines
    full = coord.report("b", EVENT, line_report([7, 8], horizon=20), remaining=100, now=0.2)
    assert full.upto == 6  # the window (4 in flight) is full until the shards grant
    a = coord.report("a", EVENT, line_report([9]), remaining=98, now=1.0)  # 2 granted
    assert a.upto == 8 and (a.direct, b.direct) == (0, 0)  # 7 and 8, both b's, before a's 9
    assert [o.waiting for o in a.others] == [2] and b.others[0].marks == (1, 4, 6, 9)
    assert coord.counts["released"] == 6


def test_nothing_goes_before_every_front_has_started_nor_past_a_cut_head() -> None:
    coord = ReleaseCoordinator(min_window=10)
    coord.report("a", EVENT, line_report([-9, -3], started=False), remaining=50, now=0.0)
    early = coord.report("b", EVENT, line_report([-5, 2]), remaining=50, now=0.0)
    assert early.upto is None  # a's clock says the sale has not started yet
    coord.report("a", EVENT, line_report([-9, -3]), remaining=50, now=0.1)
    assert coord.events[EVENT.id].upto == 2  # -9, -5, -3, 2: one shuffled order
    cut = line_report(list(range(10, 30)), head=3)  # 20 waiting, only 10, 11, 12 reported
    assert cut.cut
    coord.report("b", EVENT, line_report([]), remaining=50, now=5.0)
    assert coord.report("a", EVENT, cut, remaining=50, now=6.0).upto == 12


def test_straight_passes_only_while_nobody_waits_anywhere() -> None:
    coord = ReleaseCoordinator(min_window=8)
    quiet = coord.report("a", EVENT, line_report([], horizon=5), remaining=100, now=0.0)
    assert quiet.direct == 8  # the window, for one front
    other = coord.report("b", EVENT, line_report([]), remaining=100, now=0.0)
    assert other.direct == 4  # shared by two fronts
    # Someone waits at b, past a's horizon (a's clock is behind): not released yet ...
    assert coord.report("b", EVENT, line_report([7]), remaining=100, now=0.1).upto is None
    # ... so a sends nobody straight on.
    busy = coord.report("a", EVENT, line_report([], direct=3, horizon=5), remaining=100, now=0.2)
    assert busy.upto is None and busy.direct == 0
    assert coord.counts["direct"] == 3
    coord.forget("b")  # b's link closed: its line holds nobody up
    assert coord.report("a", EVENT, line_report([]), remaining=100, now=0.3).direct > 0


def test_sketches_place_a_rank_among_another_fronts_waiters() -> None:
    line = Line()
    for r in range(0, 3000, 3):  # 1,000 waiters
        line.join(r, 0.0, "a", now=0.0)
    sketch = line.sketch(marks=64)
    assert sketch.waiting == 1000 and sketch.step == 16
    for rank in (0, 1, 500, 1501, 2998, 5000):
        truth = line.position(rank) - 1
        assert abs(ahead_in(sketch, rank) - truth) <= sketch.step // 2
    small = Line()
    for r in (3, 8, 9):
        small.join(r, 0.0, "a", now=0.0)
    assert [ahead_in(small.sketch(), r) for r in (1, 4, 9, 10)] == [0, 1, 2, 3]  # exact
    assert small.release_upto(8, now=1.0) == [3, 8] and small.head() == (9,)


def test_line_reports_and_orders_round_trip_and_refuse_garbage() -> None:
    report = line_report([3, 5], horizon=9, direct=2, arriving=4)
    assert LineReport.from_wire(report.to_wire()) == report
    older = {k: v for k, v in report.to_wire().items() if k != "arriving"}
    assert LineReport.from_wire(older).arriving == 0  # a front that does not say
    orders = LineOrders(upto=5, direct=1, rate=12.5, others=(report.sketch,))
    assert LineOrders.from_wire(orders.to_wire()) == orders
    wire = report.to_wire()
    for bad in ({**wire, "head": [5, 3]}, {**wire, "direct": -1}, {**wire, "arriving": -1}):
        with pytest.raises(ValueError):
            LineReport.from_wire(bad)


def test_proof_of_work_is_checked_once_for_its_visitor() -> None:
    assert leading_zero_bits(b"\x00\x0f") == 12 and leading_zero_bits(b"\x80") == 0
    signer = TokenSigner()
    gate = PowGate(signer, signer.verifier())
    challenge = gate.challenge("visitor-a", 1, 8)
    answer = solve(challenge, 8)
    assert solved(challenge, answer, 8)
    wrong = next(str(i) for i in range(10_000) if not solved(challenge, str(i), 8))
    assert not gate.check(challenge, wrong, "visitor-a", 1, 8)
    assert not gate.check(challenge, answer, "visitor-b", 1, 8)  # someone else's
    assert not gate.check(challenge, answer, "visitor-a", 1, 12)  # too easy for the event now
    assert gate.check(challenge, answer, "visitor-a", 1, 8)
    assert not gate.check(challenge, answer, "visitor-a", 1, 8)  # single use


def test_queue_ticket_claims_round_trip_and_refuse_garbage() -> None:
    signer = TokenSigner()
    ticket = QueueTicket("pVisitor", 3, 17, -5, 1.5)
    assert QueueTicket.verify(signer.verifier(), ticket.sign(signer, 60)) == ticket
    with pytest.raises(TokenError):
        QueueTicket.from_claims({"v": "p", "e": 3, "q": "17", "r": 1, "i": 1.0})


# -- the front, over TLS ------------------------------------------------------------


async def front(cluster, min_window: int = 1, **queue: object) -> RedirectServer:
    """A front with the given waiting-room options (load-test limits: one address)
    and main's release window (``min_window``)."""
    cluster.main.lines.min_window = min_window
    opts = {"tick": 0.05, "entries_per_address": None, **queue}
    options = {**LOAD_TEST_FRONT_OPTIONS, "queue": QueueOptions(**opts)}
    cluster.redirect = RedirectServer(cluster.main, **options)
    await cluster.redirect.create_server(0)
    return cluster.redirect


def session(ca_context) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ca_context), cookie_jar=aiohttp.CookieJar(unsafe=True)
    )


async def enter(s: aiohttp.ClientSession, url: str) -> dict:
    async with s.get(url, headers=JSON, allow_redirects=False) as resp:
        return await resp.json()


async def test_an_over_capacity_crowd_goes_through_in_fifo_order(make_cluster, ca_context) -> None:
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Crowd", "", "10", 12)
    await cluster.main.distribute_tickets()
    # Everyone arrives before the start, then goes in arrival order, slower than the crowd.
    await cluster.main.update_event(
        event_id, release_rate=20.0, sale_starts_at=4e9, prequeue_order="arrival"
    )
    redirect = await front(cluster, min_window=4)
    released: list[int] = []
    door = redirect.queue
    original = door.line(event_id).release

    def spy(n: int, now: float) -> list[int]:
        out = original(n, now)
        released.extend(out)
        return out

    door.line(event_id).release = spy  # type: ignore[method-assign]
    clients = [WebClient(ca_context, timeout=30) for _ in range(20)]
    url = f"{cluster.front}events/{event_id}"
    try:
        entries = []
        for c in clients:  # one after the other: the arrival order is known
            entries.append(await c.admission(url))
        assert all(body["status"] == "queued" for _, _, body in entries)
        await cluster.main.update_event(event_id, sale_starts_at=None)  # the sale opens
        outcomes = await asyncio.gather(
            *(
                c.get_ticket(f"{url}?queue={b['queue']}")
                for c, (_, _, b) in zip(clients, entries, strict=True)
            )
        )
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    kinds = [o.kind for o in outcomes]
    assert kinds == ["ticket"] * 12 + ["sold_out"] * 8  # the first twelve arrivals won
    assert released == sorted(released) and len(released) >= 12  # released by rank
    for o in outcomes:  # each visitor's shown position only ever fell
        positions = [p for _, p, _ in o.queue]
        assert positions and positions == sorted(positions, reverse=True)
    audit = await cluster.main.audit()
    assert audit.exact and audit.held == 12


async def test_an_arrival_below_a_watermark_already_given_goes_on_and_is_counted(
    make_cluster, ca_context
) -> None:
    """Main gave a watermark before this front's first report (another front's horizon
    bounded it): a new arrival ranked below it has had its turn, and main hears of it."""
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Late door", "", "10", 5)
    await cluster.main.distribute_tickets()
    await cluster.main.update_event(event_id, release_rate=0.001)  # nobody goes on by itself
    redirect = await front(cluster)
    door = redirect.queue
    async with session(ca_context) as s:
        assert (await enter(s, f"{cluster.front}events/{event_id}"))["status"] == "queued"
        door.upto[event_id] = int((time.time() + 3600) * 1_000_000)  # as if given
        async with s.get(
            f"{cluster.front}events/{event_id}", headers=JSON, allow_redirects=False
        ) as resp:
            assert resp.status == 302  # a new entry, ranked below it
    assert door.counts["direct"] == 1
    await door.changes.wait_for(lambda: cluster.main.lines.counts["direct"] == 1, 5.0)


async def test_reload_and_restart_keep_the_place_and_a_copy_is_refused(
    make_cluster, ca_context
) -> None:
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Kept", "", "10", 5)
    await cluster.main.distribute_tickets()
    await cluster.main.update_event(event_id, release_rate=0.001)  # nobody is released
    redirect = await front(cluster)
    url = f"{cluster.front}events/{event_id}"
    async with session(ca_context) as a, session(ca_context) as b, session(ca_context) as thief:
        first, second = await enter(a, url), await enter(b, url)
        assert (first["position"], second["position"]) == (1, 2)
        again = await enter(a, url + "?queue=" + first["queue"])  # a reload
        assert again["status"] == "queued" and again["queue"] == first["queue"]
        async with thief.get(cluster.front + "app/") as resp:  # a cookie of its own
            assert resp.status == 200
        for path in (f"{url}?queue={first['queue']}", f"{url}/queue?queue={first['queue']}"):
            async with thief.get(path, headers=JSON) as resp:
                body = await resp.json()
                assert resp.status == 403 and body["status"] == "refused"
        # The front restarts: a new process knows nobody, the tickets carry the places.
        await redirect.close()
        redirect = await front(cluster)
        url = f"{cluster.front}events/{event_id}"
        later = await enter(b, f"{url}?queue={second['queue']}")  # b comes back first
        back = await enter(a, f"{url}?queue={first['queue']}")
        behind = await enter(b, f"{url}?queue={second['queue']}")
        assert (later["position"], back["position"], behind["position"]) == (1, 1, 2)


async def test_while_main_is_away_the_line_is_paused_and_says_so(
    make_cluster, ca_context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_module, "PAUSED_POLL", 0.1)
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Paused", "", "10", 5)
    await cluster.main.distribute_tickets()
    # One visitor every 4 s: the second is near its turn (it long-polls), and waits.
    await cluster.main.update_event(event_id, release_rate=0.25)
    door = (await front(cluster, poll_timeout=4.0)).queue
    uplink, away = door.uplink, asyncio.Event()

    async def main_away_or_not(reports):  # as a front process's link while main is gone
        return None if away.is_set() else await uplink(reports)

    door.uplink = main_away_or_not
    url = f"{cluster.front}events/{event_id}"
    async with session(ca_context) as a, session(ca_context) as b:
        await enter(a, url)
        entry = await enter(b, url)
        assert entry["status"] == "queued" and entry["paused"] is False
        poll = cluster.front + entry["poll"].lstrip("/")
        away.set()
        await door.changes.wait_for(lambda: door.paused, 5)
        for _ in range(3):  # held for PAUSED_POLL, not poll_timeout (4 s), saying so
            started = time.monotonic()
            async with b.get(poll, headers=JSON) as resp:
                body = await resp.json()
            assert body["status"] == "queued" and body["paused"] is True
            assert body["position"] == entry["position"] and body["next_poll_s"] == 0
            assert time.monotonic() - started < 3
        away.clear()  # main is back: the line moves again, and says so
        await door.changes.wait_for(lambda: not door.paused, 5)
        async with b.get(poll, headers=JSON) as resp:
            body = await resp.json()
        assert body["status"] == "released" or body["paused"] is False


async def test_a_released_waiter_is_sent_straight_to_a_shard(make_cluster, ca_context) -> None:
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Straight on", "", "10", 3)
    await cluster.main.distribute_tickets()
    await cluster.main.update_event(event_id, release_rate=0.001)  # nobody is released yet
    await front(cluster)
    url = f"{cluster.front}events/{event_id}"
    async with WebClient(ca_context, timeout=20) as client:
        _, _, entered = await client.admission(url)
        assert entered["status"] == "queued" and "redirect" not in entered
        await cluster.main.update_event(event_id, release_rate=None)
        poll = cluster.front.rstrip("/") + entered["poll"]
        async with client.session.get(poll, headers=JSON) as resp:  # held until released
            released = await resp.json()
        assert released["status"] == "released"
        shard = f"https://127.0.0.1:{cluster.shards[0].https_port}"  # not the front again
        assert released["redirect"].startswith(f"{shard}/?event={event_id}&token=")
        outcome = await client.claim(released["redirect"])
    assert outcome.kind == "ticket"


async def test_a_visitor_is_ranked_by_its_hello_not_by_its_request(
    make_cluster, ca_context
) -> None:
    """The first request on a connection takes the ClientHello's time; later ones not."""
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Hello first", "", "10", 5)
    await cluster.main.distribute_tickets()
    await cluster.main.update_event(event_id, release_rate=0.001)  # everyone queues
    redirect = await front(cluster)
    request = (
        f"GET /events/{event_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
    ).encode()

    async def enter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        body = json.loads(await reader.readexactly(length))
        return int(peek_claims(body["queue"])["r"])

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", redirect.port, ssl=ca_context, server_hostname="localhost"
    )
    try:
        before_first = int(time.time() * 1_000_000)  # the handshake is over by now
        first = await enter(reader, writer)
        before_second = int(time.time() * 1_000_000)
        second = await enter(reader, writer)  # the same connection, a visitor of its own
    finally:
        writer.close()
    assert first < before_first  # ranked when its hello came
    assert second >= before_second  # a later request on it is not an early arrival


class _Handshaking:
    """Arrivals for the door: visitors whose ClientHellos came a second ago, not ranked."""

    def __init__(self, n: int) -> None:
        self.stamps = [time.time() - 1.0 + i * 1e-3 for i in range(n)]

    def oldest_unclaimed(self) -> float | None:
        return self.stamps[0] if self.stamps else None

    def unclaimed_before(self, stamp: float, limit: int) -> int:
        return min(limit, sum(1 for s in self.stamps if s < stamp))

    def unclaimed(self) -> list[float]:
        return list(self.stamps)


async def test_a_later_arrival_goes_on_only_with_room_left_for_those_still_handshaking(
    make_cluster, ca_context
) -> None:
    """Two visitors who came first are still in their TLS handshakes: a later one may
    go straight on with four passes left (two stay for them), not with two."""
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Room for all", "", "10", 20)
    await cluster.main.distribute_tickets()
    redirect = await front(cluster)
    door = redirect.queue
    passes = [4]

    async def uplink(reports: dict[int, LineReport]) -> dict[int, LineOrders]:
        return {e: LineOrders(direct=passes[0]) for e in reports}

    door.uplink = uplink
    door.pending = _Handshaking(2)
    url = f"{cluster.front}events/{event_id}"
    async with session(ca_context) as first, session(ca_context) as second:
        async with first.get(url, headers=JSON, allow_redirects=False) as resp:
            assert resp.status == 302  # on (main's first word): two passes stay for those two
        passes[0] = 2  # main's next orders (three were left here): two passes
        await door.changes.wait_for(lambda: door._budget.get(event_id) == 2, 5.0)
        assert (await enter(second, url))["status"] == "queued"  # it would take theirs
    assert door.counts["direct"] == 1


async def test_an_empty_line_reports_seldom_until_half_its_passes_are_spent(
    make_cluster, ca_context
) -> None:
    """Main's CPU goes with the reports: with nobody in line a door reports every
    ``quiet_tick`` (here 30 s), unless half the passes main gave are gone."""
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Quiet door", "", "10", 40)
    await cluster.main.distribute_tickets()
    redirect = await front(cluster, quiet_tick=30.0)
    door = redirect.queue
    reports: list[dict[int, LineReport]] = []
    passes = [queue_module.KICK_PASSES]

    async def uplink(sent: dict[int, LineReport]) -> dict[int, LineOrders]:
        reports.append(sent)
        return {e: LineOrders(direct=passes[0]) for e in sent}

    door.uplink = uplink
    url = f"{cluster.front}events/{event_id}"
    half = queue_module.KICK_PASSES // 2
    sessions = [session(ca_context) for _ in range(half + 2)]
    try:
        for s in sessions[:half]:
            async with s.get(url, headers=JSON, allow_redirects=False) as resp:
                assert resp.status == 302
        # Main's first word (and a startup tick, if the visitor beat it): half the
        # passes left, no report for them, and the next one not for 30 s ...
        seen = len(reports)
        assert seen <= 2 and door._next_tick() == 30.0
        passes[0] = 0  # main, from now on: no room
        async with sessions[half].get(url, headers=JSON, allow_redirects=False) as resp:
            assert resp.status == 302
        # ... but fewer than half left: kicked.
        await door.changes.wait_for(lambda: len(reports) == seen + 1, 5.0)
        assert door._budget[event_id] == 0
        assert (await enter(sessions[half + 1], url))["status"] == "queued"
        assert door._next_tick() == door.options.tick  # a line holds someone
    finally:
        await asyncio.gather(*(s.close() for s in sessions))


async def _raw_admission(port: int, ca_context, event_id: int):
    """A TLS connection to the front that has said hello but asked nothing yet, and
    the coroutine that asks (returns the HTTP status and the JSON body)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ca_context, server_hostname="localhost"
    )

    async def ask() -> tuple[int, dict]:
        writer.write(
            f"GET /events/{event_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n".encode()
        )
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
        writer.close()
        return int(head.split()[1]), json.loads(body)

    return ask


async def test_a_pass_kept_for_an_earlier_arrival_survives_main_giving_none(
    make_cluster, ca_context
) -> None:
    """Y came first and is still on its way in when X goes straight on (a pass is left
    for Y). Main's next orders give no passes at all: Y still goes on, not into line
    behind its own place; near the end of a sale X would have waited instead."""
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Kept pass", "", "10", 20)
    await cluster.main.distribute_tickets()
    redirect = await front(cluster)
    door = redirect.queue
    passes = [2]

    async def uplink(reports: dict[int, LineReport]) -> dict[int, LineOrders]:
        return {e: LineOrders(direct=passes[0]) for e in reports}

    door.uplink = uplink
    url = f"{cluster.front}events/{event_id}"
    early = await _raw_admission(redirect.port, ca_context, event_id)  # Y: hello only
    await asyncio.sleep(0.02)  # later by more than the kernel's stamps tell apart
    async with session(ca_context) as later:
        async with later.get(url, headers=JSON, allow_redirects=False) as resp:
            assert resp.status == 302  # X: one pass left for Y
    passes[0] = 0  # another front's line fills: main gives none
    await door.changes.wait_for(lambda: door._budget.get(event_id) == 0, 5.0)
    assert (await early())[0] == 302  # Y keeps the pass kept for it
    assert door.counts["direct"] == 2


async def test_near_the_end_nobody_goes_before_an_earlier_arrival_on_its_way_in(
    make_cluster, ca_context
) -> None:
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Last seats", "", "10", 4)
    await cluster.main.distribute_tickets()
    redirect = await front(cluster)
    door = redirect.queue

    async def uplink(reports: dict[int, LineReport]) -> dict[int, LineOrders]:
        return {e: LineOrders(direct=2) for e in reports}  # half the tickets left

    door.uplink = uplink
    early = await _raw_admission(redirect.port, ca_context, event_id)
    await asyncio.sleep(0.02)  # later by more than the kernel's stamps tell apart
    async with session(ca_context) as later:
        entered = await enter(later, f"{cluster.front}events/{event_id}")
    assert entered["status"] == "queued"  # it could take the earlier one's ticket
    status, body = await early()
    assert (status, body["status"], body["position"]) == (200, "queued", 1)  # ahead of it


async def test_a_sold_out_events_old_sketches_do_not_keep_a_door_ticking(make_cluster) -> None:
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Gone", "", "10", 1)
    await cluster.main.distribute_tickets()
    door = (await front(cluster, quiet_tick=30.0)).queue
    door.lines[event_id] = Line()
    busy = LineSketch(5, 1, (1, 2, 3, 4, 5))  # another front's waiters, as last heard
    door.orders[event_id] = LineOrders(others=(busy,))
    assert door._next_tick() == door.options.tick  # tickets left: their release waits on us
    door._remaining = lambda e: 0  # type: ignore[method-assign]
    assert door._next_tick() == 30.0  # sold out: nobody is released any more


def test_the_edge_counts_unranked_hellos_before_a_stamp_up_to_a_limit(keys, monkeypatch) -> None:
    from ticketing import edge
    from ticketing.tls import Credentials, browser_server_context

    now = [1000.0]
    monkeypatch.setattr(edge.time, "time", lambda: now[0])
    gate = edge.ConnectionGate(
        "test", browser_server_context(Credentials.from_directory(keys, "main"))
    )
    hellos = []
    for _ in range(6):
        now[0] += 0.01
        hellos.append(gate._hello())
    gate._claim(hellos[1])
    gate._claim(hellos[3])  # their first requests came
    later = now[0] + 1.0
    assert gate.unclaimed_before(later, 10) == 4
    assert gate.unclaimed_before(later, 2) == 2  # enough to know: the scan stops
    assert gate.unclaimed_before(hellos[3].at, 10) == 2  # only those before it
    assert gate.unclaimed_before(hellos[0].at, 10) == 0
    # One slow handshake at the head, hundreds claimed behind it: still counted exactly.
    for _ in range(200):
        now[0] += 0.001
        gate._claim(gate._hello())
    assert gate.unclaimed_before(now[0] + 1.0, 32) == 4
    assert len(gate._hellos) <= 2 * 4 + 32 + 1
    gate.close()


def test_a_connection_arrives_when_accepted_if_its_hello_follows_within_the_grace(
    keys, monkeypatch
) -> None:
    """The kernel accepts in the order connections came; a loaded client's hello may
    lag. Within HELLO_GRACE the accept time is the arrival (and holds the horizon)."""
    from ticketing import edge
    from ticketing.tls import Credentials, browser_server_context

    now = [1000.0]
    monkeypatch.setattr(edge.time, "time", lambda: now[0])
    gate = edge.ConnectionGate(
        "test", browser_server_context(Credentials.from_directory(keys, "main"))
    )
    slow = gate._accepted()
    now[0] = 1000.1
    quick = gate._accepted()
    silent = gate._accepted()
    assert gate.oldest_unclaimed() == 1000.0  # accepted, no hello yet: still to come
    quick_hello = gate._hello(quick)  # the later connection's hello comes first ...
    now[0] = 1000.3
    slow_hello = gate._hello(slow)  # ... but the earlier one keeps its place
    assert (slow_hello.at, quick_hello.at) == (1000.0, 1000.1)
    assert gate.unclaimed() == [1000.0, 1000.1, 1000.1]  # in time order, silent included
    assert gate.unclaimed_before(1000.05, 10) == 1
    gate._claim(slow_hello)
    gate._claim(quick_hello)
    assert gate.oldest_unclaimed() == 1000.1  # the silent socket, within the grace
    now[0] = 1000.1 + edge.HELLO_GRACE + 0.5
    assert gate.oldest_unclaimed() is None  # past the grace it holds nothing back
    assert gate._hello(silent).at == now[0] - edge.HELLO_GRACE  # nor gets an early place
    # A shard never asks: its record still forgets, even behind a connection that lives on.
    for _ in range(100):
        now[0] += 1.0
        gate._hello(gate._accepted())
    assert len(gate._hellos) <= edge.ARRIVAL_MEMORY + 1 and len(gate._accepts) <= 2
    gate.close()


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="TCP_INFO is Linux's")
async def test_a_connection_is_stamped_when_the_kernel_had_it_not_when_accepted() -> None:
    """Two fronts on one busy host accept late by different amounts: the stamp is the
    kernel's (TCP_INFO), so a late accept does not make a visitor come later; and it
    says whether that time is the hello's (data waiting) rather than the handshake's."""
    from ticketing.edge import kernel_arrival

    listener = socket.create_server(("127.0.0.1", 0))
    quiet = socket.create_connection(listener.getsockname())
    connected = time.time()
    await asyncio.sleep(0.2)
    talker = socket.create_connection(listener.getsockname())
    talker.sendall(b"\x16\x03\x01\x00\x05hello")
    said = time.time()
    stamps: list[tuple[float, bool]] = []

    class Stamp(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            stamps.append(kernel_arrival(transport))
            transport.close()

    try:
        await asyncio.sleep(0.3)  # the server's loop is busy elsewhere
        for _ in range(2):
            accepted, _ = listener.accept()
            accepted.setblocking(False)
            await asyncio.get_running_loop().connect_accepted_socket(Stamp, accepted)
        (first, first_data), (second, second_data) = stamps
        assert connected - 0.05 <= first <= connected + 0.05 and not first_data
        assert said - 0.05 <= second <= said + 0.05 and second_data
        assert time.time() - first >= 0.45
    finally:
        quiet.close()
        talker.close()
        listener.close()


async def test_the_prequeue_is_shuffled_at_the_start_then_fifo(make_cluster, ca_context) -> None:
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Opening", "", "10", 40)
    await cluster.main.distribute_tickets()
    start = 4e9
    await cluster.main.update_event(event_id, sale_starts_at=start, release_rate=0.001)
    redirect = await front(cluster)
    now = [start - 60.0]
    redirect.queue.clock = lambda: now[0]  # the front's wall clock, injected
    url = f"{cluster.front}events/{event_id}"
    sessions = [session(ca_context) for _ in range(16)]
    try:
        early = [await enter(s, url) for s in sessions[:12]]
        assert all(e["prequeue"] and e["position"] is None for e in early)
        assert early[0]["starts_in_s"] == 60.0 and early[-1]["waiting"] == 12
        now[0] = start + 1.0  # the sale opens
        late = [await enter(s, url) for s in sessions[12:]]
        polled = [
            await enter(s, f"{url}?queue={e['queue']}")
            for s, e in zip(sessions, early + late, strict=True)
        ]
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    positions = [p["position"] for p in polled]
    assert sorted(positions[:12]) == list(range(1, 13))  # every early bird is ahead
    assert positions[:12] != list(range(1, 13))  # in a shuffled order (1 in 12! to fail)
    assert positions[12:] == [13, 14, 15, 16]  # later arrivals behind, in arrival order


async def test_proof_of_work_is_required_when_enabled(make_cluster, ca_context) -> None:
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Guarded", "", "10", 2)
    await cluster.main.distribute_tickets()
    await cluster.main.update_event(event_id, pow_bits=10, sale_starts_at=4e9)
    await front(cluster, min_window=4)
    url = f"{cluster.front}events/{event_id}"
    async with session(ca_context) as s:
        asked = await enter(s, url)
        assert asked["status"] == "challenge" and asked["bits"] == 10
        challenge = asked["challenge"]
        wrong = next(str(i) for i in range(10_000) if not solved(challenge, str(i), 10))
        async with s.get(url + f"?pow={challenge}&solution={wrong}", headers=JSON) as resp:
            refused = await resp.json()
            assert resp.status == 403 and refused["status"] == "challenge" and refused["errors"]
        solved_url = cluster.front.rstrip("/") + asked["location"] + solve(challenge, 10)
        entered = await enter(s, solved_url)
        assert entered["status"] == "queued"
        reused = await enter(s, solved_url)
        assert reused["status"] == "challenge"  # a solution works once
    await cluster.main.update_event(event_id, sale_starts_at=None)
    async with WebClient(ca_context, timeout=20) as client:  # solves it like the page
        outcome = await client.get_ticket(url)
    assert outcome.kind == "ticket"


async def test_queue_ticket_is_bound_to_the_visitor_cookie(make_cluster, ca_context) -> None:
    cluster = await make_cluster(1)
    event_id = await cluster.main.init_tickets("Bound", "", "10", 2)
    await cluster.main.update_event(event_id, sale_starts_at=4e9)
    await front(cluster)
    assert cluster.main.signer
    forged = QueueTicket(public_id(secrets.token_urlsafe(16)), event_id, 1, 1, 0.0)
    token = forged.sign(cluster.main.signer, 60)  # signed by us, for some other visitor
    async with session(ca_context) as s:
        async with s.get(f"{cluster.front}events/{event_id}?queue={token}", headers=JSON) as resp:
            assert resp.status == 403


# -- the edge: TLS handshakes first come, first served --------------------------------


async def test_a_trickling_gate_takes_later_hellos_one_at_a_time_and_times_nobody_out() -> None:
    """The decision alone (no sockets): slots while trickling, those who came before
    the line was full, and the overdue rule."""
    from ticketing.edge import ConnectionGate, EdgeLimits, _Arrival

    class Waiting:
        def __init__(self, queued_at: float, hello: float) -> None:
            self.queued_at, self.arrival, self.started = queued_at, _Arrival(hello), False

        def start(self) -> None:
            self.started = True

    limits = EdgeLimits(max_handshaking=8, handshake_timeout=10.0)
    gate = ConnectionGate("test", ssl.create_default_context(), limits)
    since: list[float | None] = [None]
    gate.trickle = lambda: since[0]
    gate._handshaking = {object(): time.monotonic()}  # type: ignore[dict-item]
    assert gate._handshake_slot(_Arrival(100.0))  # 1 of 8 slots taken
    since[0] = 50.0  # full since 50: a hello at 100 comes one at a time
    assert not gate._handshake_slot(_Arrival(100.0))
    assert gate._handshake_slot(_Arrival(40.0))  # came before: counted in the line
    mono = time.monotonic()
    early, old, new = Waiting(mono, 49.0), Waiting(mono - 6.0, 51.0), Waiting(mono, 52.0)
    gate._waiting.extend([early, old, new])  # type: ignore[list-item]
    gate._start_waiting()
    assert early.started  # all the slots it wants
    assert old.started and not new.started  # waited half its timeout: goes anyway
    since[0] = None
    gate._start_waiting()
    assert new.started
    gate.close()


def test_the_line_is_full_when_it_covers_every_ticket_left() -> None:
    coord = ReleaseCoordinator(min_window=1)
    assert not coord.report("a", EVENT, line_report([1, 2, 3]), remaining=5, now=0.0).full
    # One released and in flight, three more waiting: four of four tickets spoken for.
    assert coord.report("a", EVENT, line_report([2, 3, 4]), remaining=4, now=0.1).full
    # Another front: two in line, two still handshaking; with the four above: eight of nine.
    assert not coord.report("b", EVENT, line_report([7, 8]), remaining=9, now=0.2).full
    assert coord.report("b", EVENT, line_report([7, 8], arriving=2), remaining=9, now=0.3).full


async def test_handshakes_wait_their_turn_but_silent_sockets_hold_no_slot(keys, ca_context) -> None:
    from ticketing.edge import ConnectionGate, EdgeLimits
    from ticketing.tls import Credentials, browser_server_context

    limits = EdgeLimits(max_handshaking=1, handshake_stall=0.5, handshake_timeout=5.0)
    ctx = browser_server_context(Credentials.from_directory(keys, "main"))
    gate = ConnectionGate("test", ctx, limits)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    server = await asyncio.get_running_loop().create_server(
        gate.protocol_factory(Echo), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]

    async def tls_echo() -> float:
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ca_context, server_hostname="localhost"
        )
        writer.write(b"ping\r\n\r\n")
        assert await reader.readexactly(8) == b"ping\r\n\r\n"
        writer.close()
        return time.perf_counter() - t0

    try:
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        assert await tls_echo() < 0.4  # five silent sockets: no slot taken
        _, staller = await asyncio.open_connection("127.0.0.1", port)
        staller.write(b"\x16\x03\x01\x00\xff")  # the start of a ClientHello, then nothing
        await asyncio.sleep(0.05)
        waited = await tls_echo()  # behind the staller until its slot counts as stalled
        assert 0.4 <= waited < 2.0
        assert gate.connections >= 6
        for _, w in silent:
            w.close()
        staller.close()
    finally:
        server.close()
        gate.close()
        await server.wait_closed()


async def test_a_socket_that_said_hello_waits_for_its_slot_past_the_handshake_timeout(
    keys, ca_context
) -> None:
    """Three stallers hold the one slot in turn for 1.5 s; the client queued behind them
    (hello sent at once) is served, not reset at its 0.5 s handshake timeout."""
    from ticketing.edge import ConnectionGate, EdgeLimits
    from ticketing.tls import Credentials, browser_server_context

    limits = EdgeLimits(max_handshaking=1, handshake_stall=5.0, handshake_timeout=0.5)
    ctx = browser_server_context(Credentials.from_directory(keys, "main"))
    gate = ConnectionGate("test", ctx, limits)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    server = await asyncio.get_running_loop().create_server(
        gate.protocol_factory(Echo), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    stallers = []
    try:
        for _ in range(3):  # each holds the slot until its handshake times out (0.5 s)
            _, staller = await asyncio.open_connection("127.0.0.1", port)
            # A whole first record: a ClientHello's header promising 512 bytes, then nothing.
            staller.write(b"\x16\x03\x01\x00\x04" + b"\x01\x00\x02\x00")
            stallers.append(staller)
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ca_context, server_hostname="localhost"
        )
        writer.write(b"ping\r\n\r\n")
        assert await reader.readexactly(8) == b"ping\r\n\r\n"
        assert time.perf_counter() - t0 >= 1.0  # it did wait behind them
        writer.close()
    finally:
        for w in stallers:
            w.close()
        server.close()
        gate.close()
        await server.wait_closed()


async def test_bytes_that_are_no_client_hello_do_not_buy_a_long_wait(keys) -> None:
    """A socket that sends a byte or two (not a whole TLS record) keeps the
    handshake_timeout from its accept while it waits for a slot; one that sends more
    than a ClientHello can be is closed at once."""
    from ticketing.edge import MAX_EARLY, ConnectionGate, EdgeLimits
    from ticketing.tls import Credentials, browser_server_context

    limits = EdgeLimits(max_handshaking=1, handshake_stall=5.0, handshake_timeout=0.5)
    ctx = browser_server_context(Credentials.from_directory(keys, "main"))
    gate = ConnectionGate("test", ctx, limits)
    server = await asyncio.get_running_loop().create_server(
        gate.protocol_factory(asyncio.Protocol), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        _, holder = await asyncio.open_connection("127.0.0.1", port)
        holder.write(b"\x16\x03\x01\x00\x04" + b"\x01\x00\x02\x00")  # takes the slot
        nibbler_r, nibbler = await asyncio.open_connection("127.0.0.1", port)
        nibbler.write(b"\x16")  # one byte: queued, but no hello
        flood_r, flood = await asyncio.open_connection("127.0.0.1", port)
        flood.write(b"\x16\x03\x01" + b"\x00" * MAX_EARLY)
        async with asyncio.timeout(5):
            assert await flood_r.read() == b""  # closed: no ClientHello is that long
            t0 = time.perf_counter()
            assert await nibbler_r.read() == b""  # closed at its 0.5 s from the accept
        assert time.perf_counter() - t0 < 2.0  # not the 60 s of a socket that said hello
        holder.close()
        nibbler.close()
        flood.close()
    finally:
        server.close()
        gate.close()
        await server.wait_closed()
