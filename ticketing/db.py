"""Opening the embedded SQLite databases (WAL): the shard journal's on aiosqlite;
the ledger's driver (``ledger/sqlite.py``) takes the same settings."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite


def pragmas(synchronous: str) -> list[str]:
    """The settings of every embedded database connection."""
    return [
        "PRAGMA journal_mode=WAL",
        f"PRAGMA synchronous={synchronous}",
        "PRAGMA foreign_keys=ON",
        "PRAGMA busy_timeout=5000",
    ]


async def open_db(
    path: str | os.PathLike[str], schema: str, *, synchronous: str = "FULL"
) -> aiosqlite.Connection:
    """Open (creating) a database in WAL mode and apply ``schema`` (idempotent DDL).

    ``synchronous=FULL`` makes every commit durable against power loss; the shard
    journal may use NORMAL because main's ledger is the truth (see journal.py).
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(os.fspath(path))
    db.row_factory = aiosqlite.Row
    for pragma in pragmas(synchronous):
        await db.execute(pragma)
    await db.executescript(schema)
    await db.commit()
    return db


@asynccontextmanager
async def transaction(
    db: aiosqlite.Connection, lock: asyncio.Lock
) -> AsyncIterator[aiosqlite.Connection]:
    """One writer at a time on a shared connection: commit on success, else roll back.

    Coroutines sharing one aiosqlite connection would otherwise interleave their
    statements inside one SQLite transaction.
    """
    async with lock:
        try:
            yield db
        except BaseException:
            await db.rollback()
            raise
        await db.commit()
