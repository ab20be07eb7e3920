"""The embedded backend: one SQLite file (aiosqlite, WAL), one shared connection."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from ..db import open_db


class SqliteDriver:
    """The ledger's :class:`~.driver.Driver` on one SQLite connection.

    Coroutines sharing the connection would interleave their statements inside one
    SQLite transaction, hence the lock around every transaction.
    """

    dialect = "sqlite"

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self.db = db
        self.path = path
        self.url = f"sqlite:///{path}"
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> SqliteDriver:
        return cls(await open_db(path, "", synchronous=synchronous), os.fspath(path))

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.db.execute_fetchall(sql, tuple(args))]

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        cur = await self.db.execute(sql, tuple(args))
        return cur.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.db.executemany(sql, rows)

    async def analyze(self, tables: Sequence[str]) -> None:
        """Nothing: SQLite's planner picks the ledger's indexes without statistics
        (and ``sqlite_stat1`` tables would change its plans from the tested ones)."""

    async def script(self, ddl: str) -> None:
        async with self._lock:
            await self.db.executescript(ddl)
            await self.db.commit()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteDriver]:
        async with self._lock:
            try:
                yield self
            except BaseException:
                await self.db.rollback()
                raise
            await self.db.commit()

    async def close(self) -> None:
        async with self._lock:
            await self.db.close()
