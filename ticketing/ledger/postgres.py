"""The PostgreSQL backend (asyncpg): for operators who outgrow one machine.

One dedicated connection carries the ledger's transactions, one at a time (as on
SQLite: the rules read, decide and write without interleaving); a small pool
serves reads outside them. What it relies on from PostgreSQL: transactions at the
default READ COMMITTED level, partial unique indexes, ``RETURNING``, ``ON
CONFLICT``, ``IS [NOT] DISTINCT FROM``, identity columns, and session advisory
locks for leadership (:mod:`ticketing.main.leader`).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from ..errors import ConfigError
from .driver import redact

T = TypeVar("T")
READ_POOL = 4  # connections for reads outside transactions


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` placeholders -> ``$1, $2, ...`` (the ledger's SQL has no literal ``?``)."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _count(status: str) -> int:
    """Rows changed, from a command tag such as ``UPDATE 3`` or ``INSERT 0 1``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class _Connection:
    """A driver over one connection (a transaction's, or a pooled one for a read)."""

    dialect = "postgresql"

    def __init__(self, conn: asyncpg.Connection, url: str) -> None:
        self.conn = conn
        self.url = url

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.conn.fetch(numbered(sql), *args)]

    async def values(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return await self.conn.fetch(numbered(sql), *args)  # Records index by position

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return _count(await self.conn.execute(numbered(sql), *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.conn.executemany(numbered(sql), list(rows))


class PostgresDriver:
    """The ledger's :class:`~.driver.Driver` on a PostgreSQL server."""

    dialect = "postgresql"

    def __init__(self, url: str, writer: asyncpg.Connection, pool: asyncpg.Pool) -> None:
        self.url = url
        self._writer = _Connection(writer, url)
        self._pool = pool
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, *, synchronous: str = "FULL") -> PostgresDriver:
        """Connect; ``synchronous="OFF"`` turns ``synchronous_commit`` off (tests only)."""
        # Custom plans: the best plan for "serial = ANY($1)" depends on the array's
        # length and the tables' sizes, which grow fast during a sale (a generic plan
        # made on an empty orders table scanned every order of the event). And index
        # lookups priced as on SSD or in memory (the default 4 is a spinning disk's):
        # with it, 1,024 serial lookups among 100,000 tickets became a full scan.
        settings = {"plan_cache_mode": "force_custom_plan", "random_page_cost": "1.1"}
        if synchronous.upper() == "OFF":
            settings["synchronous_commit"] = "off"
        try:
            writer = await asyncpg.connect(url, server_settings=settings)
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=READ_POOL, server_settings=settings
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise ConfigError(f"cannot connect to the ledger at {redact(url)}: {exc}") from exc
        assert pool is not None
        return cls(url, writer, pool)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        async with self._pool.acquire() as conn:
            return [dict(r) for r in await conn.fetch(numbered(sql), *args)]

    async def values(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        async with self._pool.acquire() as conn:
            return await conn.fetch(numbered(sql), *args)  # Records index by position

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def analyze(self, tables: Sequence[str]) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute("ANALYZE " + ", ".join(tables))

    async def script(self, ddl: str) -> None:
        async with self._lock:
            await self._writer.conn.execute(ddl)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Connection]:
        async with self._lock, self._writer.conn.transaction():
            yield self._writer

    async def atomic(self, body: Callable[[_Connection], Awaitable[T]]) -> T:
        """As :meth:`transaction`: asyncpg's round trips are the server's anyway."""
        async with self.transaction() as q:
            return await body(q)

    async def close(self) -> None:
        async with self._lock:
            await self._writer.conn.close()
        await self._pool.close()
