"""Main's ledger, the single source of truth (main's process only).

- :mod:`.interface`: the storage interface (:class:`Ledger`, :class:`LedgerTx`);
- :mod:`.sqlite`: the embedded backend (aiosqlite, WAL), the only SQL;
- :mod:`.states`: row states as named constants; :mod:`.records`: what it returns;
- :mod:`.decide`: the decision on a batch of reported sales (no I/O).
"""

from __future__ import annotations

import os

from .decide import SalesDecision, decide_sales
from .interface import Ledger, LedgerTx
from .records import Audit, Event, OrderKind, Principal, ShardRecord, owner_of
from .sqlite import SqliteLedger
from .states import (
    ACTIVE_ORDER,
    OPEN_LISTING,
    ListingStatus,
    OrderStatus,
    PaymentState,
    TicketState,
    WaitlistStatus,
)


async def open_ledger(path: str | os.PathLike[str], *, synchronous: str = "FULL") -> Ledger:
    """Open (creating) the ledger at ``path``."""
    return await SqliteLedger.open(path, synchronous=synchronous)


__all__ = [
    "ACTIVE_ORDER",
    "OPEN_LISTING",
    "Audit",
    "Event",
    "Ledger",
    "LedgerTx",
    "ListingStatus",
    "OrderKind",
    "OrderStatus",
    "PaymentState",
    "Principal",
    "SalesDecision",
    "ShardRecord",
    "SqliteLedger",
    "TicketState",
    "WaitlistStatus",
    "decide_sales",
    "open_ledger",
    "owner_of",
]
