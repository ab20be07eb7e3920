"""The little a ledger backend must do: run SQL, in transactions, one writer at a time.

The ledger's SQL (:mod:`.sql`) is written once, with ``?`` placeholders, in the
subset that SQLite (3.39+) and PostgreSQL share: ``RETURNING``, ``ON CONFLICT``,
``IS [NOT] DISTINCT FROM``, partial indexes. A driver runs it on its database;
the PostgreSQL driver numbers the placeholders (``$1, $2, ...``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Queries(Protocol):
    """Running SQL: on the database (reads), or inside one transaction."""

    dialect: str  # "sqlite" | "postgresql": picks the DDL (:mod:`.schema`) and list binding

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Every row, as dicts keyed by column name."""
        ...

    async def values(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """Every row, as its values in the statement's column order (no dict per row:
        the sales path's form)."""
        ...

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; returns how many rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


class Driver(Queries, Protocol):
    """One database, as the ledger uses it."""

    url: str

    async def script(self, ddl: str) -> None:
        """Run several statements (schema DDL), outside any transaction of ours."""
        ...

    async def analyze(self, tables: Sequence[str]) -> None:
        """Refresh the planner's statistics of ``tables`` (after they changed a lot)."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Queries]:
        """A driver bound to one transaction: commit on success, roll back on error.

        Transactions are serialised (one writer at a time), so the rules that read,
        decide and write inside one never interleave; reads outside use :meth:`fetch`.
        """
        ...

    async def atomic(self, body: Callable[[Queries], Awaitable[T]]) -> T:
        """``await body(q)`` inside one transaction, as :meth:`transaction`, but the
        body may await nothing but ``q``'s queries: the driver may then run it where
        the database is (SQLite: whole on its thread, one hop instead of one per
        statement)."""
        ...

    async def close(self) -> None: ...


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
