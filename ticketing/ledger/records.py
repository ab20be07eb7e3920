"""What the ledger hands out: events, shards, owners, the audit (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

PREQUEUE_ORDERS = ("random", "arrival")  # how a pre-queue is lined up at the sale start
MAX_POW_BITS = 28  # ~2**28 hashes: minutes in a browser, far beyond any sane setting


@dataclass(frozen=True)
class Event:
    """An event on sale, with its waiting-room settings (``front/waitroom.py``).

    ``sale_starts_at``: unix seconds, or None (on sale now); visitors before it wait in
    a pre-queue put in ``prequeue_order`` at the start. ``pow_bits``: the proof of
    work a visitor solves to enter the queue (0: none). ``release_rate``: a cap on
    visitors let through per second (None: the rate the shards are measured to take).
    """

    id: int
    name: str
    description: str
    price_cents: int
    count: int
    sale_starts_at: float | None = None
    prequeue_order: str = "random"
    pow_bits: int = 0
    release_rate: float | None = None

    def public(self) -> dict[str, Any]:
        # Every field is a plain value: a shallow copy (asdict deep-copies, and main's
        # view pusher asks for every event's fields 20 times a second).
        return {name: getattr(self, name) for name in _EVENT_FIELDS}


_EVENT_FIELDS = tuple(f.name for f in fields(Event))

# The Event fields an operator may change after creation (admin API, ``ticketing event``).
WAITROOM_SETTINGS = ("sale_starts_at", "prequeue_order", "pow_bits", "release_rate")


@dataclass(frozen=True)
class ShardRecord:
    name: str
    epoch: int
    host: str
    tls_port: int
    https_port: int
    weight: float


class OrderKind(StrEnum):
    """Primary orders and resale orders share the hold/pay/cancel/expire rules."""

    PRIMARY = "order"
    RESALE = "resale"


@dataclass(frozen=True)
class Principal:
    """Who owns or asks: a visitor id (cookie) and the signed-in account, if any.

    A row with an ``account_id`` (order, resale order, owned ticket, listing,
    waiting-list entry) belongs to that account; a row without one belongs to the
    visitor, whoever holds that cookie. Signing in claims the visitor's rows.
    """

    visitor: str
    account_id: int | None = None

    def owns(self, row: dict[str, Any]) -> bool:
        """The ownership rule: the row's account if it has one, else its visitor."""
        if row["account_id"] is not None:
            return bool(row["account_id"] == self.account_id)
        return bool(row["visitor"] == self.visitor)


def owner_of(row: dict[str, Any]) -> Principal:
    return Principal(row["visitor"], row["account_id"])


@dataclass
class Audit:
    """Where every ticket is. ``exact`` means each ticket is in exactly one place."""

    total: int = 0
    unassigned: int = 0
    pools: dict[str, int] = field(default_factory=dict)
    held: int = 0
    sold: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def in_pools(self) -> int:
        return sum(self.pools.values())

    @property
    def exact(self) -> bool:
        placed = self.unassigned + self.in_pools + self.held + self.sold
        return placed == self.total and not self.problems

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self), in_pools=self.in_pools, exact=self.exact)
