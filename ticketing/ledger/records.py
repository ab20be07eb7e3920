"""What the ledger hands out: events, shards, owners, the audit (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Event:
    id: int
    name: str
    description: str
    price_cents: int
    count: int

    def public(self) -> dict[str, Any]:
        return asdict(self)


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
