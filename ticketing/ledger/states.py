"""The states of ledger rows, as named constants used by every query.

``StrEnum`` members are plain strings: they bind as SQL parameters and compare
equal to the values stored in the database.
"""

from __future__ import annotations

from enum import StrEnum


class TicketState(StrEnum):
    """Where one ticket is: exactly one of these at any time."""

    UNASSIGNED = "unassigned"  # in main's pool
    POOL = "pool"  # in one shard's slice (shard, epoch)
    HELD = "held"  # granted: an order awaits payment (the checkout lock)
    SOLD = "sold"  # its order is complete


class OrderStatus(StrEnum):
    """A primary or resale order."""

    AWAITING_PAYMENT = "awaiting_payment"
    COMPLETE = "complete"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class ListingStatus(StrEnum):
    """A resale listing: active -> locked (a buyer's checkout) -> sold, or withdrawn."""

    ACTIVE = "active"
    LOCKED = "locked"
    SOLD = "sold"
    WITHDRAWN = "withdrawn"


class PaymentState(StrEnum):
    """One charge attempt; ``pending`` is the order's payment lock."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    FAILED = "failed"
    REFUNDED = "refunded"


class WaitlistStatus(StrEnum):
    WAITING = "waiting"
    OFFERED = "offered"  # got a held order
    LEFT = "left"
    SKIPPED = "skipped"  # already had a ticket when its turn came


# Orders that hold a ticket (at most one per ticket, per visitor, per account).
ACTIVE_ORDER = (OrderStatus.AWAITING_PAYMENT, OrderStatus.COMPLETE)
# Listings that block another listing of the same ticket.
OPEN_LISTING = (ListingStatus.ACTIVE, ListingStatus.LOCKED)
# Tickets still on sale somewhere (main's pool or a shard's).
ON_SALE = (TicketState.UNASSIGNED, TicketState.POOL)


def sql_list(values: tuple[StrEnum, ...]) -> str:
    """``('a', 'b')`` for an ``IN`` clause of DDL (where parameters cannot be bound)."""
    return "(" + ", ".join(f"'{v.value}'" for v in values) + ")"
