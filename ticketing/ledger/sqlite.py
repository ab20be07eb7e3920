"""The embedded backend: one SQLite file (WAL), one connection on a thread of its own.

Every statement runs on that thread (``sqlite3`` blocks; the event loop must not).
A hop to it and back costs the event loop about 20-80 µs, more than most of the
ledger's statements, so :meth:`SqliteDriver.atomic` runs a whole transaction's
body there in one hop: a group commit of sales is one hop instead of six or more.
aiosqlite (used by the shard journal) offers no public way to run a function on
its thread, hence this small driver on the standard library.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..db import pragmas

T = TypeVar("T")


class _Inline:
    """The driver's statements run at once on the database thread (inside
    :meth:`SqliteDriver.atomic`): its coroutines never suspend."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return _fetch(self.conn, sql, args)

    async def values(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return _values(self.conn, sql, args)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, tuple(args)).rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)


def _fetch(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
    cur = conn.execute(sql, tuple(args))
    rows = cur.fetchall()
    if not rows:
        return []
    # Plain tuples zipped with the column names: half the cost of dict(sqlite3.Row).
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in rows]


def _values(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
    return conn.execute(sql, tuple(args)).fetchall()  # type: ignore[no-any-return]


def _run_inline(awaitable: Awaitable[T]) -> T:
    """Drive a coroutine that never suspends to its end (on the database thread)."""
    coro = awaitable.__await__()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("an atomic ledger transaction awaited something besides its database")


class SqliteDriver:
    """The ledger's :class:`~.driver.Driver` on one SQLite connection.

    Transactions are serialised by a lock (coroutines sharing the connection would
    otherwise interleave their statements inside one SQLite transaction); reads
    outside them wait on the thread behind whatever runs there.
    """

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, thread: ThreadPoolExecutor, path: str) -> None:
        self._conn = conn
        self._thread = thread
        self.path = path
        self.url = f"sqlite:///{path}"
        self._lock = asyncio.Lock()
        self._inline = _Inline(conn)

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> SqliteDriver:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-sqlite")

        def connect() -> sqlite3.Connection:
            # isolation_level=None: we begin and commit ourselves (BEGIN IMMEDIATE
            # takes the write lock up front; Python's implicit BEGIN would not).
            conn = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
            for pragma in pragmas(synchronous):
                conn.execute(pragma)
            return conn

        try:
            conn = await asyncio.get_running_loop().run_in_executor(thread, connect)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(conn, thread, os.fspath(path))

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return await self._call(_fetch, self._conn, sql, args)

    async def values(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return await self._call(_values, self._conn, sql, args)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return await self._call(lambda: self._conn.execute(sql, tuple(args)).rowcount)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._call(self._conn.executemany, sql, rows)

    async def analyze(self, tables: Sequence[str]) -> None:
        """Nothing: SQLite's planner picks the ledger's indexes without statistics
        (and ``sqlite_stat1`` tables would change its plans from the tested ones)."""

    async def script(self, ddl: str) -> None:
        async with self._lock:
            await self._call(self._conn.executescript, ddl)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteDriver]:
        async with self._lock:
            try:
                # Inside the try: a caller cancelled while BEGIN runs must still roll
                # back (the thread runs it whatever happens to the await), else the
                # next transaction would find this one open.
                await self._call(self._conn.execute, "BEGIN IMMEDIATE")
                yield self
            except BaseException:
                await self._call(self._conn.rollback)  # a no-op outside a transaction
                raise
            await self._call(self._conn.commit)

    async def atomic(self, body: Callable[[_Inline], Awaitable[T]]) -> T:
        """``body`` in one transaction, run whole on the database thread: one hop.

        ``body`` may await only the queries it is given (it runs outside the event
        loop); anything else is an error, and the transaction is rolled back.
        """

        def run() -> T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = _run_inline(body(self._inline))
            except BaseException:
                self._conn.rollback()
                raise
            self._conn.commit()
            return result

        async with self._lock:
            return await self._call(run)

    async def close(self) -> None:
        async with self._lock:
            await self._call(self._conn.close)
        self._thread.shutdown(wait=True)
