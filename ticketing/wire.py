"""Cross-process contracts, defined once and imported by every side.

- link commands: :class:`ToMain` (a shard asks main), :class:`ToShard` (main asks a
  shard), :class:`ToFront` (main tells a front); a front dials main and its hello
  carries its signing key (:data:`FRONT_HELLO_KEY`); a main refuses it with a
  :class:`HelloRefused` code when it does not lead;
- :class:`Sale`, a grant as it travels from a shard to main in ``report_sales``;
- signed tokens: :class:`Admission` (the front signs, the shard verifies) and
  :class:`SessionClaims` (main signs, the front and the market verify), each with
  its claims encoded and decoded here and nowhere else.
- place tokens (:class:`Place`): a front signs a visitor's place in line for itself;
  admission and place tokens carry the first arrival (``ARRIVED``).
- queue tickets (:class:`QueueTicket`): a visitor's entry in the waiting room, and
  proof-of-work challenges (:class:`PowChallenge`), both signed by the front;
- the cluster-wide line: a front's :class:`LineReport` (``FromFront.LINE``) and
  main's :class:`LineOrders` in the reply (release up to a rank, straight passes).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from .errors import TokenError
from .tokens import KeyRing, TokenSigner, TokenVerifier

# Token types: an admission token is never accepted as a session token, or the reverse.
ADMISSION = "admission"
SESSION = "session"


class ToMain(StrEnum):
    """Commands a shard sends to main."""

    REPORT_SALES = "report_sales"  # {"epoch", "sales": [Sale]} -> {"accepted", "refused"}
    NEED_STOCK = "need_stock"  # {"event", "epoch"} -> {"added"} | {"wait"} | {"sold_out"}
    PING = "ping"


class ToShard(StrEnum):
    """Commands main sends to a shard (after the hello)."""

    SYNC = "sync"  # {"epoch"} -> {"unacked": [Sale + epoch]}
    SET_POOL = "set_pool"  # {"epoch", "events", "pools", "accepted", "refused"}
    ASSIGN = "assign"  # {"event", "epoch", "ranges", "info"} -> {"remaining"}
    RELEASE = "release"  # {"event", "count", "epoch"} -> {"ranges"}
    STATUS = "status"
    PING = "ping"
    # {"keys": {kid: public key hex}}: exactly the front keys certified now (a kid
    # not in it is revoked); sent when a front links or unlinks, and on every sync.
    FRONT_KEYS = "front_keys"


class ToFront(StrEnum):
    """Commands main sends to a front (after the front's hello)."""

    # {"events": {id: EventRoutes wire}, "gone": [id]}: the routing view, as deltas
    # per event (only events that changed), coalesced by main (``view_interval``).
    VIEW = "view"
    KEYS = "keys"  # {"keys": {kid: hex}}: certified keys (for place tokens of other fronts)
    REVOKED = "revoked"  # {"sessions": [[sid, exp]]}: signed-out sessions
    PING = "ping"


class FromFront(StrEnum):
    """Commands a front sends to main (after its hello)."""

    # {"events": {id: LineReport wire}} -> {"events": {id: LineOrders wire}}: every
    # waiting-room tick, the front's lines; main answers what each may release.
    LINE = "line"


FRONT_HELLO_KEY = "token_key"  # the front's Ed25519 public key (hex) in its hello


class HelloRefused(StrEnum):
    """Error codes of a refused hello between a main and a front: why, by leadership."""

    # The front has seen a newer term than this main's (a paused old leader woken up).
    STALE_TERM = "stale_term"
    NOT_LEADER = "not_leader"  # a standby (or a deposed main): it takes no front links


PLACE = "place"  # a visitor's place in line, signed by the front (front/admission.py)
QUEUE = "queue"  # an entry in the waiting room (front/waitroom.py)
POW = "pow"  # a proof-of-work challenge to enter the waiting room (front/pow.py)
ARRIVED = "t"  # claim of admission and place tokens: first arrival at the front, unix s


def ticket_id(event_id: int, serial: int) -> str:
    """The public id of a ticket: ``"<event>-<serial>"``."""
    return f"{event_id}-{serial}"


class Sale(NamedTuple):
    """A grant reported by a shard: ``visitor`` got ``serial`` of ``event``.

    A named tuple, not a frozen dataclass: one is built per sale on each side of the
    link, and a tuple is built in a third of the time."""

    event: int
    serial: int
    visitor: str
    account: int | None = None

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> Sale:
        event, serial, visitor = item["event"], item["serial"], item["visitor"]
        account = item.get("account")
        if type(event) is not int or type(serial) is not int or serial < 0:
            raise ValueError("event and serial must be integers")
        if not isinstance(visitor, str) or not 0 < len(visitor) <= 128:
            raise ValueError("visitor must be a short string")
        if account is not None and type(account) is not int:
            raise ValueError("account must be an integer")
        return cls(event, serial, visitor, account)

    def to_wire(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "serial": self.serial,
            "visitor": self.visitor,
            "account": self.account,
        }


# What a shard needs of an order to answer its buyer (``shard.dispenser.ticket_message``):
# main's replies carry only these, not the whole row (a sale's reply is most of its bytes).
GRANT_FIELDS = ("id", "event_id", "serial", "price_cents", "status", "expires_at")


def grant(order: dict[str, Any]) -> dict[str, Any]:
    """An order as main's reply to a shard carries it."""
    return {k: order[k] for k in GRANT_FIELDS}


@dataclass(frozen=True)
class Admission:
    """What an admission token says: this visitor may queue for ``event`` on ``shard``.

    ``visitor`` is the visitor's public id (never the cookie itself); ``nonce`` makes
    the token single-use; ``account`` is the signed-in account, if any.
    """

    visitor: str
    shard: str
    event: int
    nonce: str
    account: int | None = None
    arrived: float | None = None  # first arrival at the front (unix s): the shard's order
    front: str | None = None  # the front's public origin: the shard page's only link
    exp: float = 0.0  # set by the signature; unused when signing

    @classmethod
    def new(
        cls,
        visitor: str,
        shard: str,
        event: int,
        account: int | None = None,
        *,
        arrived: float | None = None,
        front: str | None = None,
    ) -> Admission:
        return cls(visitor, shard, event, secrets.token_urlsafe(12), account, arrived, front)

    def claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.visitor, "s": self.shard, "e": self.event, "n": self.nonce}
        if self.account is not None:
            out["a"] = self.account
        if self.arrived is not None:
            out[ARRIVED] = self.arrived
        if self.front is not None:
            out["f"] = self.front
        return out

    @classmethod
    def from_claims(cls, c: dict[str, Any]) -> Admission:
        visitor, shard, event, nonce, account = (
            c.get("v"),
            c.get("s"),
            c.get("e"),
            c.get("n"),
            c.get("a"),
        )
        arrived, front = c.get(ARRIVED), c.get("f")
        if not (isinstance(front, str) and front.startswith("https://")):
            front = None  # only an https origin may become a link on the shard's page
        if (
            not isinstance(visitor, str)
            or not isinstance(shard, str)
            or type(event) is not int
            or not isinstance(nonce, str)
            or (account is not None and type(account) is not int)
            or (arrived is not None and not _number(arrived))
        ):
            raise TokenError("malformed claims")
        return cls(
            visitor,
            shard,
            event,
            nonce,
            account,
            None if arrived is None else float(arrived),
            front,
            float(c["exp"]),
        )

    def sign(self, signer: TokenSigner, ttl: float) -> str:
        return signer.sign(ADMISSION, self.claims(), ttl)

    @classmethod
    def verify(cls, verifier: TokenVerifier | KeyRing, token: str) -> Admission:
        """The admission a token carries, or :class:`TokenError` saying why not."""
        return cls.from_claims(verifier.verify(token, ADMISSION))


@dataclass(frozen=True)
class Place:
    """A visitor's place in line for an event, signed by the front for itself.

    A visitor sent back (a shard lost main, stock is stranded) presents it and keeps
    its first arrival time; anything else is a new arrival.
    """

    visitor: str
    event: int
    nonce: str
    arrived: float

    def claims(self) -> dict[str, Any]:
        return {"v": self.visitor, "e": self.event, "n": self.nonce, ARRIVED: self.arrived}

    @classmethod
    def from_claims(cls, c: dict[str, Any]) -> Place:
        visitor, event, nonce, arrived = c.get("v"), c.get("e"), c.get("n"), c.get(ARRIVED)
        if (
            not isinstance(visitor, str)
            or type(event) is not int
            or not isinstance(nonce, str)
            or not _number(arrived)
        ):
            raise TokenError("malformed claims")
        return cls(visitor, event, nonce, float(arrived))  # type: ignore[arg-type]

    def sign(self, signer: TokenSigner, ttl: float) -> str:
        return signer.sign(PLACE, self.claims(), ttl)

    @classmethod
    def verify(cls, verifier: TokenVerifier | KeyRing, token: str) -> Place:
        return cls.from_claims(verifier.verify(token, PLACE))


@dataclass(frozen=True)
class QueueTicket:
    """A visitor's entry in an event's waiting room, signed by the front.

    ``seq``: the cluster-wide arrival sequence number; ``rank``: the order of release
    (``seq`` itself, or a random draw for a pre-queue put in random order: every
    pre-queue rank is below every later ``seq``); ``visitor``: the public id, so a
    ticket copied to another browser is refused; ``issued``: unix s.
    """

    visitor: str
    event: int
    seq: int
    rank: int
    issued: float

    def claims(self) -> dict[str, Any]:
        return {"v": self.visitor, "e": self.event, "q": self.seq, "r": self.rank, "i": self.issued}

    @classmethod
    def from_claims(cls, c: dict[str, Any]) -> QueueTicket:
        visitor, event, seq, rank, issued = (
            c.get("v"),
            c.get("e"),
            c.get("q"),
            c.get("r"),
            c.get("i"),
        )
        if (
            not isinstance(visitor, str)
            or type(event) is not int
            or type(seq) is not int
            or type(rank) is not int
            or not _number(issued)
        ):
            raise TokenError("malformed claims")
        return cls(visitor, event, seq, rank, float(issued))  # type: ignore[arg-type]

    def sign(self, signer: TokenSigner, ttl: float) -> str:
        return signer.sign(QUEUE, self.claims(), ttl)

    @classmethod
    def verify(cls, verifier: TokenVerifier | KeyRing, token: str) -> QueueTicket:
        """The entry a ticket carries (any certified front's, with a :class:`KeyRing`)."""
        return cls.from_claims(verifier.verify(token, QUEUE))


@dataclass(frozen=True)
class PowChallenge:
    """A proof-of-work challenge: find a suffix whose hash has ``bits`` leading zeros.

    Bound to the visitor (public id) and the event; ``nonce`` makes a solution
    single-use.
    """

    visitor: str
    event: int
    bits: int
    nonce: str

    @classmethod
    def new(cls, visitor: str, event: int, bits: int) -> PowChallenge:
        return cls(visitor, event, bits, secrets.token_urlsafe(9))

    def claims(self) -> dict[str, Any]:
        return {"v": self.visitor, "e": self.event, "b": self.bits, "n": self.nonce}

    @classmethod
    def from_claims(cls, c: dict[str, Any]) -> PowChallenge:
        visitor, event, bits, nonce = c.get("v"), c.get("e"), c.get("b"), c.get("n")
        if (
            not isinstance(visitor, str)
            or type(event) is not int
            or type(bits) is not int
            or not 0 <= bits <= 40
            or not isinstance(nonce, str)
        ):
            raise TokenError("malformed claims")
        return cls(visitor, event, bits, nonce)

    def sign(self, signer: TokenSigner, ttl: float) -> str:
        return signer.sign(POW, self.claims(), ttl)

    @classmethod
    def verify(cls, verifier: TokenVerifier, token: str) -> tuple[PowChallenge, float]:
        """The challenge and its expiry (for the replay guard)."""
        c = verifier.verify(token, POW)
        return cls.from_claims(c), float(c["exp"])


@dataclass(frozen=True)
class LineSketch:
    """The shape of one front's line, for other fronts' positions: ``waiting``
    visitors, and the ranks at positions 0, ``step``, 2 ``step``... (``marks``)."""

    waiting: int
    step: int
    marks: tuple[int, ...]

    def to_wire(self) -> list[Any]:
        return [self.waiting, self.step, list(self.marks)]

    @classmethod
    def from_wire(cls, item: Any) -> LineSketch:
        waiting, step, marks = item
        if type(waiting) is not int or type(step) is not int or step < 1 or waiting < 0:
            raise ValueError("a sketch needs waiting >= 0 and step >= 1")
        return cls(waiting, step, _ints(marks))


@dataclass(frozen=True)
class LineReport:
    """One front's line for one event, as main's release decision needs it.

    ``head``: the lowest waiting ranks, ascending (at most ``LINE_HEAD``; fewer than
    ``sketch.waiting`` means cut short); ``horizon``: no later entry on this front
    gets a lower rank (its sequencer's next number); ``started``: the sale has
    started on the front's clock; ``direct``: visitors it sent straight on since its
    last report; ``arriving``: visitors who came (accepted, or their ClientHello
    in) and are not placed yet (they will stand ahead of anyone who comes later).
    """

    started: bool
    head: tuple[int, ...]
    sketch: LineSketch
    horizon: int
    direct: int = 0
    arriving: int = 0

    @property
    def cut(self) -> bool:
        """The head is not the whole line: nothing past its last rank is known."""
        return len(self.head) < self.sketch.waiting

    def to_wire(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "head": list(self.head),
            "sketch": self.sketch.to_wire(),
            "horizon": self.horizon,
            "direct": self.direct,
            "arriving": self.arriving,
        }

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> LineReport:
        started, direct, horizon = item["started"], item["direct"], item["horizon"]
        arriving = item.get("arriving", 0)  # a front of an older version does not say
        if type(started) is not bool or type(direct) is not int or direct < 0:
            raise ValueError("started must be a bool and direct an integer >= 0")
        if type(arriving) is not int or arriving < 0:
            raise ValueError("arriving must be an integer >= 0")
        if type(horizon) is not int:
            raise ValueError("horizon must be an integer")
        head = _ints(item["head"])
        if list(head) != sorted(head) or len(head) > LINE_HEAD:
            raise ValueError(f"head must be ascending, at most {LINE_HEAD} ranks")
        sketch = LineSketch.from_wire(item["sketch"])
        return cls(started, head, sketch, horizon, direct, arriving)


LINE_HEAD = 512  # ranks of a line's head in a report: more than main releases per tick


@dataclass(frozen=True)
class LineOrders:
    """Main's word to one front about one event's line.

    ``upto``: release every waiting rank up to this one (None: none yet), the same
    watermark for every front, so all lines move in one cluster-wide order;
    ``direct``: visitors this front may send straight on until its next report
    (0 while anyone waits anywhere); ``rate``: the cluster's release rate (for
    ETAs); ``others``: the other fronts' lines (for positions).
    """

    upto: int | None = None
    direct: int = 0
    rate: float = 0.0
    others: tuple[LineSketch, ...] = ()
    full: bool = False  # the visitors in line and in flight cover every ticket left

    def to_wire(self) -> dict[str, Any]:
        return {
            "upto": self.upto,
            "direct": self.direct,
            "rate": self.rate,
            "others": [o.to_wire() for o in self.others],
            "full": self.full,
        }

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> LineOrders:
        upto, direct, rate = item["upto"], item["direct"], item["rate"]
        if (upto is not None and type(upto) is not int) or type(direct) is not int:
            raise ValueError("upto and direct must be integers")
        if not _number(rate):
            raise ValueError("rate must be a number")
        others = tuple(LineSketch.from_wire(o) for o in item["others"])
        return cls(upto, max(0, direct), float(rate), others, item.get("full") is True)


def _ints(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or any(type(v) is not int for v in value):
        raise ValueError("expected a list of integers")
    return tuple(value)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class SessionClaims:
    """What a valid session token says: the account, its email, a session id (``sid``)."""

    account_id: int
    email: str
    sid: str
    exp: float

    @classmethod
    def new(cls, account_id: int, email: str) -> SessionClaims:
        return cls(account_id, email, secrets.token_urlsafe(16), 0.0)

    def claims(self) -> dict[str, Any]:
        return {"sub": self.account_id, "sid": self.sid, "email": self.email}

    @classmethod
    def from_claims(cls, c: dict[str, Any]) -> SessionClaims:
        sub, email, sid = c.get("sub"), c.get("email"), c.get("sid")
        # bool is an int subclass; a token saying sub=true is not ours
        if type(sub) is not int or not isinstance(email, str) or not isinstance(sid, str):
            raise TokenError("malformed")
        return cls(account_id=sub, email=email, sid=sid, exp=float(c["exp"]))

    def sign(self, signer: TokenSigner, ttl: float) -> str:
        return signer.sign(SESSION, self.claims(), ttl)

    @classmethod
    def verify(cls, verifier: TokenVerifier, token: str) -> SessionClaims:
        return cls.from_claims(verifier.verify(token, SESSION))
