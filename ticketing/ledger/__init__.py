"""Main's ledger, the single source of truth (main's process only).

- :mod:`.interface`: the storage interface (:class:`Ledger`, :class:`LedgerTx`);
- :mod:`.sql`: the ledger's SQL, written once for both backends (the only SQL);
- :mod:`.driver`, :mod:`.sqlite`, :mod:`.postgres`: the backends (SQLite is the default);
- :mod:`.schema`: the tables and their ordered migrations;
- :mod:`.states`: row states as named constants; :mod:`.records`: what it returns;
- :mod:`.decide`: the decision on a batch of reported sales (no I/O).
"""

from __future__ import annotations

import os
from pathlib import Path

from .decide import SalesDecision, decide_sales
from .driver import Driver
from .interface import Ledger, LedgerTx
from .records import Audit, Event, OrderKind, Principal, ShardRecord, owner_of
from .sql import SqlLedger, SqlTx
from .sqlite import SqliteDriver
from .states import (
    ACTIVE_ORDER,
    OPEN_LISTING,
    ListingStatus,
    OrderStatus,
    PaymentState,
    TicketState,
    WaitlistStatus,
)


def is_postgres(url: str | os.PathLike[str]) -> bool:
    return str(url).startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str | os.PathLike[str]) -> Path:
    """``sqlite:///abs/path``, ``sqlite:rel/path`` or a plain path -> the file's path."""
    text = str(url)
    for prefix in ("sqlite:///", "sqlite://", "sqlite:"):
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            return Path("/" + rest if prefix == "sqlite:///" else rest)
    return Path(text)


async def open_driver(url: str | os.PathLike[str], *, synchronous: str = "FULL") -> Driver:
    if is_postgres(url):
        from .postgres import PostgresDriver  # asyncpg is needed only for PostgreSQL

        return await PostgresDriver.open(str(url), synchronous=synchronous)
    return await SqliteDriver.open(sqlite_path(url), synchronous=synchronous)


async def open_ledger(url: str | os.PathLike[str], *, synchronous: str = "FULL") -> SqlLedger:
    """Open (creating, migrating) the ledger at ``url``: ``sqlite:///path``, a plain
    path, or ``postgresql://user@host/db``."""
    return await SqlLedger.open(await open_driver(url, synchronous=synchronous))


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
    "SqlLedger",
    "SqlTx",
    "TicketState",
    "WaitlistStatus",
    "decide_sales",
    "is_postgres",
    "open_driver",
    "open_ledger",
    "sqlite_path",
    "owner_of",
]
