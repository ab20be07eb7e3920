"""Failure detection and fair answers as plain logic: no sockets, a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import ConnectionPair, lines
from ticketing.front.admission import Answer, WaitingRoom, choose_answer
from ticketing.heartbeat import Beat, Heartbeat
from ticketing.main.stock import StockView
from ticketing.shard.dispenser import Dispenser, Waiter, retry_message
from ticketing.slices import RangeSet

pytestmark = pytest.mark.timeout(10)


# -- heartbeats -----------------------------------------------------------------


def test_an_idle_link_sends_heartbeats_and_a_silent_peer_is_dead() -> None:
    hb = Heartbeat(interval=1.0, timeout=3.0)
    hb.start(100.0)
    assert hb.poll(100.5) is Beat.NOTHING and hb.next_check(100.5) == pytest.approx(0.5)
    assert hb.poll(101.0) is Beat.SEND
    hb.sent(101.0)
    assert hb.poll(101.5) is Beat.NOTHING
    hb.received(102.0)  # the peer's heartbeat: it is alive
    assert hb.poll(104.9) is Beat.SEND  # quiet ourselves, but the peer is not late yet
    hb.sent(104.9)
    assert hb.poll(104.99) is Beat.NOTHING
    assert hb.next_check(104.99) == pytest.approx(0.01)  # the peer's deadline is next
    assert hb.poll(105.0) is Beat.DEAD and hb.silence(105.0) == pytest.approx(3.0)


def test_traffic_counts_as_a_heartbeat() -> None:
    hb = Heartbeat(interval=1.0, timeout=3.0)
    hb.start(0.0)
    for t in range(1, 50):  # a busy link: both sides keep talking, no heartbeat needed
        hb.sent(t * 0.5)
        hb.received(t * 0.5)
        assert hb.poll(t * 0.5 + 0.4) is Beat.NOTHING


@pytest.mark.parametrize(("interval", "timeout"), [(0, 3), (3, 3), (4, 3), (-1, 1)])
def test_heartbeat_timing_must_leave_room_for_a_beat(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        Heartbeat(interval, timeout)


def test_heartbeat_lines_need_no_answer_and_make_no_event() -> None:
    pair = ConnectionPair()
    pair.main.send_heartbeat()  # allowed before the hello too
    events = pair.flush()
    assert events == {"main": [], "shard": []}
    assert lines(pair.wire["main"]) == [{"heartbeat": 1}] and pair.wire["shard"] == b""
    pair.open()
    pair.shard.send_heartbeat()
    assert pair.flush() == {"main": [], "shard": []} and pair.wire["main"] == b""


# -- which answer the front gives -------------------------------------------------


@pytest.mark.parametrize(
    ("view", "ahead", "answer"),
    [
        (StockView(2, in_live_pools=5), 0, Answer.REDIRECT),
        (StockView(2, unassigned=5), 0, Answer.REDIRECT),  # a shard asks main for it
        (StockView(2, in_live_pools=5), 4, Answer.REDIRECT),  # enough for those ahead too
        (StockView(2, in_live_pools=5, unassigned=1), 5, Answer.REDIRECT),
        (StockView(2, in_live_pools=5), 5, Answer.WAIT),  # the earlier 5 need all 5
        (StockView(1, stranded=300), 0, Answer.WAIT),  # out of reach, not sold out
        (StockView(0, stranded=3), 0, Answer.UNAVAILABLE),
        (StockView(0, unassigned=3), 0, Answer.UNAVAILABLE),
        (StockView(2), 0, Answer.SOLD_OUT),
        (StockView(2), 9, Answer.SOLD_OUT),
        (StockView(0), 0, Answer.SOLD_OUT),
    ],
)
def test_sold_out_only_when_nothing_is_left_anywhere(
    view: StockView, ahead: int, answer: Answer
) -> None:
    assert choose_answer(view, waiting_ahead=ahead) is answer


def test_the_waiting_room_lets_waiters_through_in_arrival_order() -> None:
    room = WaitingRoom(stale_after=5.0)
    room.wait("b", arrived=20.0, now=0.0)
    room.wait("a", arrived=10.0, now=0.5)
    assert room.ahead("b", 20.0, now=1.0) == 1  # a arrived first
    assert room.ahead("a", 10.0, now=1.0) == 0
    assert room.ahead("new", 30.0, now=1.0) == 2  # a newcomer is behind both
    room.leave("a")
    assert room.ahead("b", 20.0, now=1.5) == 0
    assert room.ahead("new", 30.0, now=1.5) == 1
    # b stops coming back (tab closed): after stale_after it no longer holds anyone up.
    assert room.ahead("new", 30.0, now=6.1) == 0 and len(room) == 0


def test_a_waiter_coming_back_refreshes_its_entry() -> None:
    room = WaitingRoom(stale_after=2.0)
    room.wait("a", 1.0, now=0.0)
    room.wait("a", 999.0, now=1.5)  # its arrival never changes, only when it was seen
    assert room.ahead("x", 2.0, now=3.0) == 1
    assert room.ahead("x", 2.0, now=3.6) == 0


# -- the shard's queue -------------------------------------------------------------


async def test_a_readmitted_visitor_goes_ahead_of_later_arrivals() -> None:
    d = Dispenser()
    d.pools[1] = RangeSet([(0, 2)])
    late1 = Waiter("late1", 1, arrived=50.0)
    late2 = Waiter("late2", 1, arrived=60.0)
    assert d.enqueue(late1) == 1 and d.enqueue(late2) == 2
    back = Waiter("back", 1, arrived=40.0)  # sent back by a shard that lost main
    assert d.enqueue(back) == 1
    batch, starving = d.allocate(epoch=1, limit=10)
    assert [p.sale.visitor for p in batch] == ["back", "late1"] and starving == {1}


async def test_send_back_answers_every_waiter_queued_or_in_flight() -> None:
    d = Dispenser()
    d.pools[1] = RangeSet([(0, 1)])
    first, second = Waiter("a", 1), Waiter("b", 1)
    d.enqueue(first)
    d.enqueue(second)
    batch, _ = d.allocate(epoch=1, limit=1)  # a's grant is in flight to main
    assert len(batch) == 1
    assert d.send_back(retry_message("main is gone")) == 2
    for w in (first, second):
        assert (await asyncio.wait_for(w.future, 1))["type"] == "retry"
    assert d.queued() == 0 and len(d.unacked) == 1  # main settles the grant on the next sync
