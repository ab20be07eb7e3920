"""The sans-I/O line protocol, two objects joined in memory: no sockets, no loop."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import HELLO_ARGS, HELLO_RESULT, ConnectionPair, lines
from ticketing.errors import LocalProtocolError
from ticketing.protocol import (
    BadInput,
    Ended,
    ErrorReply,
    LineProtocol,
    Opened,
    Reply,
    Request,
    State,
)

pytestmark = pytest.mark.timeout(60)

EVENT_TYPES = (Request, Reply, ErrorReply, BadInput, Opened, Ended)


def opened(**limits: object) -> ConnectionPair:
    pair = ConnectionPair(**limits)
    pair.open()
    assert pair.main.state is State.OPEN and pair.shard.state is State.OPEN
    return pair


def assert_still_works(pair: ConnectionPair) -> None:
    """A later valid request round-trips normally."""
    rid = pair.send("main", "ping", {"n": 1})
    assert pair.flush()["shard"] == [Request(rid, "ping", {"n": 1})]
    pair.reply("shard", rid, "pong")
    assert pair.flush()["main"] == [Reply(rid, "pong")]


# -- hello -----------------------------------------------------------------------


def test_hello_exchange_opens_both_sides() -> None:
    pair = ConnectionPair()
    assert pair.main.state is State.OPENING and pair.shard.state is State.OPENING
    rid = pair.main.send_hello(HELLO_ARGS)
    assert pair.flush() == {"main": [], "shard": [Request(rid, "hello", HELLO_ARGS)]}
    assert pair.shard.state is State.OPENING  # not open until it answers
    pair.reply("shard", rid, HELLO_RESULT)
    assert pair.shard.state is State.OPEN
    assert pair.flush() == {"main": [Opened(rid, HELLO_RESULT)], "shard": []}
    assert pair.main.state is State.OPEN
    assert pair.main.in_flight == 0
    with pytest.raises(LocalProtocolError):
        pair.main.send_hello(HELLO_ARGS)


def test_hello_refused_closes_both_sides() -> None:
    pair = ConnectionPair()
    rid = pair.main.send_hello(HELLO_ARGS)
    pair.flush()
    pair.error("shard", rid, "already_connected", "one main only")
    assert pair.shard.state is State.CLOSED
    assert pair.flush()["main"] == [ErrorReply(rid, "already_connected", "one main only")]
    assert pair.main.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        pair.send("main", "ping")


def test_hello_answer_must_be_an_object() -> None:
    pair = ConnectionPair()
    rid = pair.main.send_hello(HELLO_ARGS)
    pair.flush()
    pair.reply("shard", rid, [1, 2])
    events = pair.flush()["main"]
    assert [type(e) for e in events] == [BadInput] and events[0].code == "bad_hello"
    assert pair.main.state is State.CLOSED
    assert pair.main.data_to_send() == b""  # a reply is never answered with an error line


def test_requests_before_hello_are_refused() -> None:
    pair = ConnectionPair()
    with pytest.raises(LocalProtocolError) as info:
        pair.send("main", "ping")
    assert info.value.code == "state"
    assert pair.main.data_to_send() == b""

    events = pair.inject("shard", b'{"id":5,"cmd":"ping","args":{}}\n')
    assert [(type(e), e.code) for e in events] == [(BadInput, "hello_required")]  # type: ignore[union-attr]
    [answer] = lines(pair.shard.data_to_send())
    assert answer["id"] == 5 and answer["ok"] is False
    assert answer["error"]["code"] == "hello_required"
    assert pair.shard.state is State.OPENING

    # The refused request left nothing behind: the hello still opens the link.
    pair.open()
    assert pair.shard.state is State.OPEN
    assert_still_works(pair)


def test_only_one_hello() -> None:
    pair = ConnectionPair()
    pair.inject("shard", b'{"id":1,"cmd":"hello","args":{}}\n')
    events = pair.inject("shard", b'{"id":2,"cmd":"hello","args":{}}\n')
    assert [e.code for e in events] == ["hello_required"]  # type: ignore[union-attr]
    pair.shard.data_to_send()
    pair.shard.send_reply(1, {})
    assert pair.shard.state is State.OPEN
    events = pair.inject("shard", b'{"id":3,"cmd":"hello","args":{}}\n')
    assert [e.code for e in events] == ["bad_request"]  # type: ignore[union-attr]
    assert lines(pair.shard.data_to_send())[-1]["id"] == 3


# -- requests and replies ------------------------------------------------------------


def test_request_reply_and_error_round_trip_both_ways() -> None:
    pair = opened()
    a = pair.send("main", "assign", {"event": 1})
    b = pair.send("main", "status")
    assert b == a + 1
    assert pair.main.in_flight == 2
    assert pair.flush()["shard"] == [Request(a, "assign", {"event": 1}), Request(b, "status", {})]
    pair.reply("shard", b, {"pools": {}})  # out of order is fine
    pair.error("shard", a, "stale_epoch", "shard is at epoch 2")
    assert pair.flush()["main"] == [
        Reply(b, {"pools": {}}),
        ErrorReply(a, "stale_epoch", "shard is at epoch 2"),
    ]
    assert pair.main.in_flight == 0

    c = pair.send("shard", "report_sales", {"sales": []})
    assert pair.flush()["main"] == [Request(c, "report_sales", {"sales": []})]
    pair.reply("main", c, {"accepted": []})
    assert pair.flush()["shard"] == [Reply(c, {"accepted": []})]


def test_replying_twice_or_to_nothing_is_a_local_error() -> None:
    pair = opened()
    rid = pair.send("main", "ping")
    pair.flush()
    pair.reply("shard", rid, 1)
    with pytest.raises(LocalProtocolError) as info:
        pair.reply("shard", rid, 2)
    assert info.value.code == "unknown_request"
    with pytest.raises(LocalProtocolError):
        pair.error("shard", 999, "x")
    assert lines(pair.shard.data_to_send()) == [{"id": rid, "ok": True, "result": 1}]


@pytest.mark.parametrize(
    "line",
    [
        b'{"id":99,"ok":true,"result":1}\n',
        b'{"id":99,"ok":false,"error":{"code":"x","message":"y"}}\n',
        b'{"id":"1","ok":true}\n',
    ],
)
def test_unknown_reply_id_is_bad_input_without_a_reply_line(line: bytes) -> None:
    pair = opened()
    rid = pair.send("main", "ping")
    pair.main.data_to_send()
    events = pair.inject("main", line)
    assert [(type(e), e.code) for e in events] == [(BadInput, "unknown_reply")]  # type: ignore[union-attr]
    assert pair.main.data_to_send() == b""
    assert pair.main.in_flight == 1  # our real request is still pending
    assert pair.inject(
        "main", json.dumps({"id": rid, "ok": True, "result": 7}).encode() + b"\n"
    ) == [Reply(rid, 7)]


def test_reply_with_bad_ok_is_bad_input() -> None:
    pair = opened()
    rid = pair.send("main", "ping")
    pair.main.data_to_send()
    events = pair.inject("main", b'{"id":%d,"ok":"yes"}\n' % rid)
    assert [e.code for e in events] == ["bad_message"]  # type: ignore[union-attr]
    assert pair.main.data_to_send() == b""


BAD_LINES = [
    # (bytes, error code, id echoed in the error reply)
    (b"not json", "bad_json", None),
    (b'{"id":1,"cmd":', "bad_json", None),
    (b"\xff\xfe{}", "bad_encoding", None),
    (b'{"id":1,"cmd":"p\xc3"}', "bad_encoding", None),
    (b"[1,2]", "bad_message", None),
    (b'"a string"', "bad_message", None),
    (b"42", "bad_message", None),
    (b'{"id":7}', "bad_message", 7),
    (b'{"cmd":"ping"}', "bad_request", None),
    (b'{"id":"7","cmd":"ping"}', "bad_request", None),
    (b'{"id":true,"cmd":"ping"}', "bad_request", None),
    (b'{"id":1.5,"cmd":"ping"}', "bad_request", None),
    (b'{"id":null,"cmd":"ping"}', "bad_request", None),
    (b'{"id":7,"cmd":""}', "bad_request", 7),
    (b'{"id":7,"cmd":5}', "bad_request", 7),
    (b'{"id":7,"cmd":null}', "bad_request", 7),
    (b'{"id":7,"cmd":"ping","args":[1]}', "bad_request", 7),
    (b'{"id":7,"cmd":"ping","args":"x"}', "bad_request", 7),
    # Regressions: these used to raise out of receive_data (RecursionError,
    # AttributeError on a ValueError without .msg).
    (b"[" * 100_000, "bad_json", None),
    (b'{"id":' + b"1" * 5000 + b',"cmd":"ping"}', "bad_json", None),
]


@pytest.mark.parametrize(("line", "code", "rid"), BAD_LINES)
def test_bad_input_gets_an_error_reply_and_changes_nothing(
    line: bytes, code: str, rid: int | None
) -> None:
    pair = opened()
    pending = pair.send("main", "slow")
    pair.flush()
    before = (pair.shard.state, set(pair.shard._received), pair.shard.in_flight)

    events = pair.inject("shard", line + b"\n")
    assert [type(e) for e in events] == [BadInput]
    assert events[0].code == code  # type: ignore[union-attr]
    [answer] = lines(pair.shard.data_to_send())
    assert answer == {
        "id": rid,
        "ok": False,
        "error": {"code": code, "message": events[0].message},  # type: ignore[union-attr]
    }
    assert (pair.shard.state, set(pair.shard._received), pair.shard.in_flight) == before

    # The peer sees an error reply; with a null id it is not matched to a request.
    assert [type(e) for e in pair.inject("main", json.dumps(answer).encode() + b"\n")] == [
        BadInput if rid is not None else ErrorReply
    ]
    assert pair.main.in_flight == 1
    pair.reply("shard", pending, "done")
    assert pair.flush()["main"] == [Reply(pending, "done")]
    assert_still_works(pair)


def test_duplicate_pending_request_id_is_refused() -> None:
    pair = opened()
    pair.inject("shard", b'{"id":3,"cmd":"a"}\n')
    events = pair.inject("shard", b'{"id":3,"cmd":"b"}\n')
    assert [e.code for e in events] == ["bad_request"]  # type: ignore[union-attr]
    assert pair.shard._received == {3}


# -- limits ---------------------------------------------------------------------------


def padded_request(rid: int, size: int) -> bytes:
    """A valid request line of exactly ``size`` bytes (newline excluded)."""
    body = json.dumps({"id": rid, "cmd": "ping"}, separators=(",", ":")).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_line_length_limit(chunk: int | None) -> None:
    max_line = 64
    stream = (
        padded_request(1, max_line)  # exactly the limit: accepted
        + b"\n"
        + b'{"id":2,"cmd":"ping","args":{"pad":"'
        + b"x" * 300
        + b'"}}\n'  # overlong: refused, and its tail must not be parsed as a line
        + padded_request(3, max_line + 1)  # one byte over
        + b"\n"
        + b'{"id":4,"cmd":"ping"}\n'
    )
    proto = LineProtocol(max_line=max_line)
    proto.receive_data(b'{"id":100,"cmd":"hello"}\n')
    proto.send_reply(100, {})
    proto.data_to_send()
    proto.events_received()
    if chunk is None:
        proto.receive_data(stream)
    else:
        for i in range(0, len(stream), chunk):
            proto.receive_data(stream[i : i + chunk])
    events = proto.events_received()
    assert [
        (type(e).__name__, getattr(e, "id", None), getattr(e, "code", None)) for e in events
    ] == [
        ("Request", 1, None),
        ("BadInput", None, "line_too_long"),
        ("BadInput", None, "line_too_long"),
        ("Request", 4, None),
    ]
    assert [m["error"]["code"] for m in lines(proto.data_to_send())] == ["line_too_long"] * 2


def test_overlong_line_without_newline_is_dropped_as_it_arrives() -> None:
    proto = LineProtocol(max_line=32)
    proto.receive_data(b'{"id":1,"cmd":"hello"}\n')
    proto.send_reply(1, {})
    proto.events_received()
    for _ in range(1000):  # a peer streaming an endless line
        proto.receive_data(b"y" * 50)
    assert len(proto._buffer) <= 32  # memory stays bounded
    assert [e.code for e in proto.events_received()] == ["line_too_long"]  # type: ignore[union-attr]
    proto.receive_data(b'tail"}\n{"id":2,"cmd":"ping"}\n')
    assert proto.events_received() == [Request(2, "ping", {})]


def test_too_many_in_flight_on_send() -> None:
    pair = opened(max_in_flight=3)
    ids = [pair.send("main", "ping") for _ in range(3)]
    with pytest.raises(LocalProtocolError) as info:
        pair.send("main", "ping")
    assert info.value.code == "too_many_in_flight"
    assert pair.main.in_flight == 3
    assert [e.id for e in pair.flush()["shard"]] == ids  # type: ignore[union-attr]
    pair.reply("shard", ids[0], None)
    pair.flush()
    assert pair.main.in_flight == 2
    assert pair.send("main", "ping") == ids[-1] + 1


def test_too_many_in_flight_on_receive() -> None:
    pair = opened(max_in_flight=3)
    data = b"".join(b'{"id":%d,"cmd":"ping"}\n' % i for i in range(101, 105))
    events = pair.inject("shard", data)
    assert [type(e) for e in events] == [Request, Request, Request, BadInput]
    assert events[-1].code == "too_many_in_flight"  # type: ignore[union-attr]
    [answer] = lines(pair.shard.data_to_send())
    assert answer["id"] == 104 and answer["error"]["code"] == "too_many_in_flight"
    pair.reply("shard", 101, None)
    assert pair.inject("shard", b'{"id":105,"cmd":"ping"}\n') == [Request(105, "ping", {})]


# -- end of stream ---------------------------------------------------------------------


def test_eof_ends_the_link() -> None:
    pair = opened()
    pair.shard.receive_eof()
    assert pair.shard.events_received() == [Ended()]
    assert pair.shard.state is State.CLOSED
    pair.shard.receive_eof()
    assert pair.shard.events_received() == []  # only one Ended
    assert pair.inject("shard", b'{"id":9,"cmd":"ping"}\n') == []
    with pytest.raises(LocalProtocolError):
        pair.send("shard", "ping")


# -- serialisation errors ------------------------------------------------------------------


def test_unserialisable_reply_raises_type_error_and_keeps_state() -> None:
    pair = opened()
    rid = pair.send("main", "stats")
    pair.flush()
    with pytest.raises(TypeError):
        pair.reply("shard", rid, {"when": object()})
    assert pair.shard.data_to_send() == b""  # nothing half-written
    pair.reply("shard", rid, {"when": 1})  # the request is still answerable
    assert pair.flush()["main"] == [Reply(rid, {"when": 1})]


def test_unserialisable_request_raises_type_error_and_keeps_state() -> None:
    pair = opened()
    with pytest.raises(TypeError):
        pair.send("main", "stats", {"x": {1, 2}})
    assert pair.main.in_flight == 0
    assert pair.main.data_to_send() == b""
    assert pair.send("main", "stats") == 2  # ids continue after the hello (1)


# -- split invariance and fuzzing ------------------------------------------------------------


TRANSCRIPT = b"".join(
    [
        b'{"id":1,"ok":true,"result":{"node":"shard-1"}}\n',  # answers main's hello
        b'{"id":1,"cmd":"report_sales","args":{"sales":[]}}\n',
        b"garbage\n",
        b"\xff\n",
        b'{"id":2,"cmd":"need_stock","args":{"event":1,"s":"\\u00e9\xc3\xa9"}}\n',
        b"{" + b"z" * 80 + b"}\n",  # over max_line=64
        b"\n   \n",
        b'{"id":null,"ok":false,"error":{"code":"bad_json","message":"m"}}\n',
        b'{"id":42,"ok":true,"result":null}\n',
        b'{"id":3,"cmd":"x"',  # unfinished at the end
    ]
)


def run(chunks: list[bytes]) -> tuple[list[object], bytes, State]:
    proto = LineProtocol(max_line=64)
    proto.send_hello(HELLO_ARGS)
    proto.data_to_send()
    for c in chunks:
        proto.receive_data(c)
    return proto.events_received(), proto.data_to_send(), proto.state


def test_every_split_position_gives_the_same_events() -> None:
    whole = run([TRANSCRIPT])
    assert [type(e) for e in whole[0]] == [
        Opened,
        Request,
        BadInput,
        BadInput,
        Request,
        BadInput,
        ErrorReply,
        BadInput,
    ]
    assert whole[2] is State.OPEN
    for i in range(len(TRANSCRIPT) + 1):
        assert run([TRANSCRIPT[:i], TRANSCRIPT[i:]]) == whole, i
    assert run([TRANSCRIPT[i : i + 1] for i in range(len(TRANSCRIPT))]) == whole


VALID_LINES = [
    b'{"id":1,"cmd":"hello","args":{}}\n',
    b'{"id":2,"cmd":"ping"}\n',
    b'{"id":3,"cmd":"ping","args":{"a":[1,2]}}\n',
    b'{"id":1,"ok":true,"result":{}}\n',
    b'{"id":null,"ok":false,"error":{"code":"x","message":"y"}}\n',
    b"\n",
]
noise = st.lists(st.one_of(st.binary(max_size=80), st.sampled_from(VALID_LINES)), max_size=25)


@settings(max_examples=300, deadline=None)
@given(noise, st.booleans())
def test_random_bytes_never_raise(chunks: list[bytes], send_hello: bool) -> None:
    proto = LineProtocol(max_line=48, max_in_flight=4)
    if send_hello:
        proto.send_hello(HELLO_ARGS)
    for c in chunks:
        proto.receive_data(c)
    events = proto.events_received()
    assert all(isinstance(e, EVENT_TYPES) for e in events)
    for line in proto.data_to_send().splitlines():  # whatever it writes is one valid line
        msg = json.loads(line)
        assert isinstance(msg, dict) and "id" in msg
    proto.receive_eof()
    assert proto.events_received()[-1:] in ([Ended()], [])
    assert proto.state is State.CLOSED


@settings(max_examples=200, deadline=None)
@given(noise, st.lists(st.integers(min_value=0, max_value=4000), max_size=6))
def test_random_splits_give_the_same_events(chunks: list[bytes], cuts: list[int]) -> None:
    data = b"".join(chunks)
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert run(pieces) == run([data])
