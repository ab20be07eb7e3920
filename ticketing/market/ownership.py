"""Who is asking, and which rows are theirs.

A row with an ``account_id`` (order, resale order, owned ticket, listing, waiting
list entry) belongs to that account. A row without one belongs to the *visitor*
(the ``ticketing_visitor`` cookie), whoever holds that cookie, signed in or not.
Signing up or in claims the visitor's rows for the account (:meth:`Market.claim`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Principal:
    """The requester: a visitor id (cookie) and the signed-in account, if any."""

    visitor: str
    account_id: int | None = None

    def owns(self, row: dict[str, Any]) -> bool:
        """The ownership rule: the row's account if it has one, else its visitor."""
        if row["account_id"] is not None:
            return bool(row["account_id"] == self.account_id)
        return bool(row["visitor"] == self.visitor)

    def match(self, prefix: str = "") -> tuple[str, tuple[Any, ...]]:
        """SQL condition (and its parameters) for rows :meth:`owns` accepts."""
        v, a = f"{prefix}visitor", f"{prefix}account_id"
        if self.account_id is None:
            return f"({a} IS NULL AND {v} = ?)", (self.visitor,)
        return f"({a} = ? OR ({a} IS NULL AND {v} = ?))", (self.account_id, self.visitor)


def owner_of(row: dict[str, Any]) -> Principal:
    return Principal(row["visitor"], row["account_id"])
