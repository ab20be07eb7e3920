"""Sans-I/O core of the main<->shard command protocol (JSON lines).

Feed it bytes with :meth:`LineProtocol.receive_data`, collect what happened with
:meth:`events_received`, and write :meth:`data_to_send` to the peer. No asyncio, no
ssl: ``link.py`` is the thin I/O loop around it.

Wire format, one UTF-8 JSON object per ``\\n``-terminated line:

- request ``{"id": 7, "cmd": "assign", "args": {...}}``
- reply   ``{"id": 7, "ok": true, "result": ...}``
- error   ``{"id": 7, "ok": false, "error": {"code": "...", "message": "..."}}``
  (``id`` is null when the bad line had no usable id)
- heartbeat ``{"heartbeat": 1}``: sent on an idle link (see ``heartbeat.py``); it
  carries nothing, needs no answer and produces no event, in any open state

Every link opens with a ``hello`` request (protocol version, node name, role, epoch);
until it is answered ``ok`` nothing else may be sent or is accepted. Bad input from
the peer (overlong line, bad UTF-8 or JSON, missing fields, a reply nobody asked
for, too many requests in flight) becomes a :class:`BadInput` event and, where the
peer can act on it, an error reply. It is never raised out of ``receive_data``.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import LocalProtocolError

PROTOCOL_VERSION = 1
HELLO = "hello"
HEARTBEAT = "heartbeat"

# Limits
DEFAULT_MAX_LINE = 1 << 20  # bytes, newline excluded
DEFAULT_MAX_IN_FLIGHT = 64  # requests awaiting a reply, per direction


# -- events ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    cmd: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    result: Any


@dataclass(frozen=True, slots=True)
class ErrorReply:
    id: int | None
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class BadInput:
    """The peer sent something invalid; an error reply was queued if useful."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Opened:
    """Our hello (request ``id``) was answered ok; ``hello`` is the peer's answer."""

    id: int
    hello: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ended:
    """The peer closed its side (EOF)."""


Event = Request | Reply | ErrorReply | BadInput | Opened | Ended


# -- states: transitions are data (see h11's _state.py) ----------------------


class State(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    CLOSED = "closed"


TRANSITIONS: dict[State, dict[str, State]] = {
    State.OPENING: {"hello_ok": State.OPEN, "hello_refused": State.CLOSED, "close": State.CLOSED},
    State.OPEN: {"close": State.CLOSED},
    State.CLOSED: {},
}


@dataclass
class LineProtocol:
    """One side of a link. ``max_line`` and ``max_in_flight`` bound the peer."""

    # Limits
    max_line: int = DEFAULT_MAX_LINE
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT

    state: State = State.OPENING
    _buffer: bytearray = field(default_factory=bytearray)
    _discarding: bool = False  # inside an overlong line: drop bytes until "\n"
    _out: list[bytes] = field(default_factory=list)
    _events: list[Event] = field(default_factory=list)
    _next_id: int = 1
    _sent: dict[int, str] = field(default_factory=dict)  # our request id -> cmd
    _received: set[int] = field(default_factory=set)  # peer request ids not yet answered
    _hello_sent: int | None = None
    _hello_received: int | None = None

    # -- input -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self._buffer += data
        while True:
            nl = self._buffer.find(b"\n")
            if self._discarding:
                if nl < 0:
                    self._buffer.clear()
                    return
                del self._buffer[: nl + 1]
                self._discarding = False
                continue
            if nl < 0:
                if len(self._buffer) > self.max_line:
                    self._buffer.clear()
                    self._discarding = True
                    self._bad(None, "line_too_long", f"line exceeds {self.max_line} bytes")
                return
            line = bytes(self._buffer[:nl])
            del self._buffer[: nl + 1]
            if len(line) > self.max_line:
                self._bad(None, "line_too_long", f"line exceeds {self.max_line} bytes")
            elif line.strip():
                self._handle_line(line)
            if self.state is State.CLOSED:
                return

    def receive_eof(self) -> None:
        if self.state is not State.CLOSED:
            self._events.append(Ended())
            self._move("close")

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    # -- output ------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._sent)

    def abandon(self, request_id: int) -> None:
        """Stop waiting for a reply (timed out): frees its in-flight slot; a late
        reply then counts as ``unknown_reply``."""
        self._sent.pop(request_id, None)

    def send_hello(self, hello: dict[str, Any]) -> int:
        if self.state is not State.OPENING or self._hello_sent is not None:
            raise LocalProtocolError("state", "hello already sent")
        self._hello_sent = self._request(HELLO, hello)
        return self._hello_sent

    def send_request(self, cmd: str, args: dict[str, Any] | None = None) -> int:
        if self.state is not State.OPEN:
            raise LocalProtocolError("state", f"cannot send {cmd!r} while {self.state.value}")
        if len(self._sent) >= self.max_in_flight:
            raise LocalProtocolError("too_many_in_flight", "wait for a reply first")
        return self._request(cmd, args or {})

    def send_reply(self, request_id: int, result: Any = None) -> None:
        line = _encode({"id": request_id, "ok": True, "result": result})  # may raise TypeError
        self._answer(request_id)
        self._write_line(line)
        if request_id == self._hello_received and self.state is State.OPENING:
            self._move("hello_ok")

    def send_error(self, request_id: int | None, code: str, message: str) -> None:
        if request_id is not None:
            self._answer(request_id)
        self._write({"id": request_id, "ok": False, "error": {"code": code, "message": message}})
        if request_id is not None and request_id == self._hello_received:
            self._move("hello_refused")

    def send_heartbeat(self) -> None:
        """Queue a heartbeat line (only a sign of life: the peer ignores its content)."""
        self._write({HEARTBEAT: 1})

    def close(self) -> None:
        self._move("close")

    # -- internals -----------------------------------------------------------

    def _request(self, cmd: str, args: dict[str, Any]) -> int:
        rid = self._next_id
        line = _encode({"id": rid, "cmd": cmd, "args": args})  # may raise TypeError
        if self.state is State.CLOSED:
            raise LocalProtocolError("state", "link is closed")
        self._next_id += 1
        self._sent[rid] = cmd
        self._write_line(line)
        return rid

    def _answer(self, request_id: int) -> None:
        if request_id not in self._received:
            raise LocalProtocolError("unknown_request", f"no pending request {request_id}")
        self._received.discard(request_id)

    def _write(self, message: dict[str, Any]) -> None:
        self._write_line(_encode(message))

    def _write_line(self, line: bytes) -> None:
        if self.state is State.CLOSED:
            raise LocalProtocolError("state", "link is closed")
        self._out.append(line)

    def _move(self, trigger: str) -> None:
        nxt = TRANSITIONS[self.state].get(trigger)
        if nxt is not None:
            self.state = nxt

    def _bad(self, request_id: int | None, code: str, message: str, reply: bool = True) -> None:
        self._events.append(BadInput(code, message))
        if reply and self.state is not State.CLOSED:
            self._write(
                {"id": request_id, "ok": False, "error": {"code": code, "message": message}}
            )

    def _handle_line(self, line: bytes) -> None:
        try:
            # orjson is strict where the standard library is lenient: NaN, a lone
            # surrogate escape, more than 1,024 levels are invalid JSON here.
            msg = orjson.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            return self._bad(None, "bad_encoding", "line is not valid UTF-8")
        except orjson.JSONDecodeError as exc:
            return self._bad(None, "bad_json", f"invalid JSON: {exc}")
        if not isinstance(msg, dict):
            return self._bad(None, "bad_message", "a line must hold a JSON object")
        rid = msg.get("id")
        if HEARTBEAT in msg and "cmd" not in msg and "ok" not in msg:
            return  # a sign of life: the link's clock already noted the bytes
        if "cmd" in msg:
            self._handle_request(msg, rid)
        elif "ok" in msg:
            self._handle_reply(msg, rid)
        else:
            self._bad(rid if _is_id(rid) else None, "bad_message", "neither a request nor a reply")

    def _handle_request(self, msg: dict[str, Any], rid: Any) -> None:
        if not _is_id(rid):
            return self._bad(None, "bad_request", "request needs an integer id")
        cmd, args = msg["cmd"], msg.get("args", {})
        if not isinstance(cmd, str) or not cmd:
            return self._bad(rid, "bad_request", "cmd must be a non-empty string")
        if not isinstance(args, dict):
            return self._bad(rid, "bad_request", "args must be an object")
        if rid in self._received:
            return self._bad(rid, "bad_request", f"request id {rid} is already pending")
        if len(self._received) >= self.max_in_flight:
            return self._bad(rid, "too_many_in_flight", f"more than {self.max_in_flight} pending")
        if self.state is State.OPENING:
            if cmd != HELLO or self._hello_received is not None:
                return self._bad(rid, "hello_required", "the link opens with one hello")
            self._hello_received = rid
        elif cmd == HELLO:
            return self._bad(rid, "bad_request", "hello was already exchanged")
        self._received.add(rid)
        self._events.append(Request(rid, cmd, args))

    def _handle_reply(self, msg: dict[str, Any], rid: Any) -> None:
        # Never answer a reply with an error line: two buggy peers would ping-pong.
        ok = msg["ok"]
        if rid is None and ok is False:
            err = msg.get("error")
            code, message = _error_fields(err)
            self._events.append(ErrorReply(None, code, message))
            return
        if not _is_id(rid) or rid not in self._sent:
            return self._bad(None, "unknown_reply", f"reply to unknown request {rid!r}", False)
        if ok is True:
            self._sent.pop(rid)
            result = msg.get("result")
            if rid == self._hello_sent:
                if not isinstance(result, dict):
                    self._move("hello_refused")
                    return self._bad(None, "bad_hello", "hello reply must be an object", False)
                self._move("hello_ok")
                self._events.append(Opened(rid, result))
            else:
                self._events.append(Reply(rid, result))
        elif ok is False:
            self._sent.pop(rid)
            code, message = _error_fields(msg.get("error"))
            if rid == self._hello_sent:
                self._move("hello_refused")
            self._events.append(ErrorReply(rid, code, message))
        else:
            self._bad(None, "bad_message", "ok must be true or false", False)


# A dataclass or datetime must not slip onto the wire by accident: orjson would encode
# them, the standard library refuses them; so does _encode.
_ORJSON = (
    orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
)


def _encode(message: dict[str, Any]) -> bytes:
    """One line: orjson (JSON is most of a busy link's CPU), which escapes every control
    character, so a line holds no raw newline."""
    try:
        return orjson.dumps(message, option=_ORJSON)
    except TypeError:  # a lone surrogate, an int over 64 bits: the standard library's way
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _is_id(value: Any) -> bool:
    return type(value) is int


def _error_fields(err: Any) -> tuple[str, str]:
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        return err["code"], str(err.get("message", ""))
    return "unknown", repr(err)
