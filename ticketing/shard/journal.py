"""A shard's journal on aiosqlite: its epoch, its slices, its unacknowledged grants.

What the shard holds = ``pool`` rows minus ``grants`` rows. A grant is written
(one commit per batch) before it is reported to main; once main acknowledges, the
grant rows are deleted in the same commit that rewrites the pool, so a restart
re-sends exactly the grants main may not have seen. Main's ledger is the truth:
after a crash the shard re-syncs its pool from main, so the journal can use
``synchronous=NORMAL`` (WAL: no corruption, at worst the last batch is re-sent).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from ..db import open_db, transaction
from ..slices import Range, RangeSet
from ..wire import Sale

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pool (
    event_id INTEGER NOT NULL, start INTEGER NOT NULL, stop INTEGER NOT NULL,
    PRIMARY KEY (event_id, start)
);
CREATE TABLE IF NOT EXISTS grants (
    event_id INTEGER NOT NULL, serial INTEGER NOT NULL, visitor TEXT NOT NULL,
    account_id INTEGER, epoch INTEGER NOT NULL,
    PRIMARY KEY (event_id, serial)
);
"""


@dataclass
class JournalState:
    epoch: int = 0
    events: dict[int, dict[str, Any]] = field(default_factory=dict)
    pools: dict[int, RangeSet] = field(default_factory=dict)
    unacked: list[tuple[Sale, int]] = field(default_factory=list)  # (sale, epoch)


class Journal:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self._lock = asyncio.Lock()  # one write (statements + commit) at a time

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> Journal:
        return cls(await open_db(path, SCHEMA, synchronous="NORMAL"))

    async def close(self) -> None:
        async with self._lock:
            await self.db.close()

    def _write(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        return transaction(self.db, self._lock)

    async def load(self) -> JournalState:
        st = JournalState()
        rows = list(await self.db.execute_fetchall("SELECT value FROM meta WHERE key = 'epoch'"))
        st.epoch = int(rows[0][0]) if rows else 0
        for event_id, info in await self.db.execute_fetchall("SELECT id, info FROM events"):
            st.events[event_id] = json.loads(info)
        ranges: dict[int, list[Range]] = {}
        for event_id, a, b in await self.db.execute_fetchall(
            "SELECT event_id, start, stop FROM pool ORDER BY event_id, start"
        ):
            ranges.setdefault(event_id, []).append((a, b))
        st.pools = {e: RangeSet(r) for e, r in ranges.items()}
        for event_id, serial, visitor, account, epoch in await self.db.execute_fetchall(
            "SELECT event_id, serial, visitor, account_id, epoch FROM grants"
        ):
            st.unacked.append((Sale(event_id, serial, visitor, account), epoch))
            pool = st.pools.get(event_id)
            if pool is not None and serial in pool:
                pool.discard([serial])
        return st

    async def record_grants(self, grants: Iterable[tuple[Sale, int]]) -> None:
        """Journal a batch of grants before they are reported (one commit)."""
        rows = [(s.event, s.serial, s.visitor, s.account, epoch) for s, epoch in grants]
        async with self._write() as db:
            await db.executemany(
                "INSERT OR REPLACE INTO grants(event_id, serial, visitor, account_id, epoch)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    async def save(
        self,
        pools: Mapping[int, RangeSet],
        *,
        settled: Iterable[Sale] = (),
        epoch: int | None = None,
        events: Mapping[int, dict[str, Any]] | None = None,
        replace_all: bool = False,
    ) -> None:
        """Rewrite the given pools and drop settled grants, in one commit."""
        # One save at a time: interleaved on the shared connection, two saves of the
        # same pool inserted its ranges twice (UNIQUE failed) or committed half of each.
        async with self._write() as db:
            if epoch is not None:
                await db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('epoch', ?)", (str(epoch),)
                )
            for event_id, info in (events or {}).items():
                await db.execute(
                    "INSERT OR REPLACE INTO events(id, info) VALUES (?, ?)",
                    (event_id, json.dumps(info)),
                )
            if replace_all:
                await db.execute("DELETE FROM pool")
            for event_id, pool in pools.items():
                await db.execute("DELETE FROM pool WHERE event_id = ?", (event_id,))
                await db.executemany(
                    "INSERT INTO pool(event_id, start, stop) VALUES (?, ?, ?)",
                    [(event_id, a, b) for a, b in pool.ranges()],
                )
            await db.executemany(
                "DELETE FROM grants WHERE event_id = ? AND serial = ?",
                [(s.event, s.serial) for s in settled],
            )
