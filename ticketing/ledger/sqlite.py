"""Main's ledger: the single source of truth, on aiosqlite.

Every ticket is one row in ``tickets`` with exactly one ``state``:

- ``unassigned`` in main's pool,
- ``pool``       in one shard's slice (``shard``, ``epoch``),
- ``held``       granted to a buyer with an ``awaiting_payment`` order (a checkout lock),
- ``sold``       its order is ``complete``.

So "every ticket is in exactly one place" holds by construction and the audit is a
``GROUP BY``; the audit then cross-checks the orders and the epochs. Slices travel as
ranges (``slices.py``) and are logged in ``slices``. All writes of one operation are
one transaction; sales arrive in batches (one commit per batch, never per ticket).

This class is the storage interface the servers use; a replicated store can replace
it by offering the same coroutines.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import aiosqlite

from ..db import open_db, transaction
from ..slices import Range, compress, count
from ..wire import Sale

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    count INTEGER NOT NULL CHECK (count >= 0),
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shards (
    name TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL DEFAULT 1,
    host TEXT NOT NULL,
    tls_port INTEGER NOT NULL,
    https_port INTEGER NOT NULL,
    weight REAL NOT NULL DEFAULT 1.0
);
CREATE TABLE IF NOT EXISTS tickets (
    event_id INTEGER NOT NULL REFERENCES events(id),
    serial INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('unassigned', 'pool', 'held', 'sold')),
    shard TEXT,
    epoch INTEGER,
    PRIMARY KEY (event_id, serial)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tickets_by_state ON tickets(event_id, state, shard);
CREATE TABLE IF NOT EXISTS slices (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL,
    shard TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    action TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    visitor TEXT NOT NULL,
    account_id INTEGER,
    shard TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    price_cents INTEGER NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('awaiting_payment', 'complete', 'expired', 'cancelled')),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS orders_one_per_ticket
    ON orders(event_id, serial) WHERE status IN ('awaiting_payment', 'complete');
CREATE UNIQUE INDEX IF NOT EXISTS orders_one_per_visitor
    ON orders(event_id, visitor) WHERE status IN ('awaiting_payment', 'complete');
CREATE UNIQUE INDEX IF NOT EXISTS orders_one_per_account
    ON orders(event_id, account_id)
    WHERE account_id IS NOT NULL AND status IN ('awaiting_payment', 'complete');
CREATE INDEX IF NOT EXISTS orders_by_expiry ON orders(status, expires_at);
"""

ACTIVE = ("awaiting_payment", "complete")
_CHUNK = 400  # bound for "IN (...)" parameter lists


@dataclass(frozen=True)
class Event:
    id: int
    name: str
    description: str
    price_cents: int
    count: int

    def public(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ShardRecord:
    name: str
    epoch: int
    host: str
    tls_port: int
    https_port: int
    weight: float


@dataclass
class Audit:
    """Where every ticket is. ``exact`` means each ticket is in exactly one place."""

    total: int = 0
    unassigned: int = 0
    pools: dict[str, int] = field(default_factory=dict)
    held: int = 0
    sold: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def in_pools(self) -> int:
        return sum(self.pools.values())

    @property
    def exact(self) -> bool:
        placed = self.unassigned + self.in_pools + self.held + self.sold
        return placed == self.total and not self.problems

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self), in_pools=self.in_pools, exact=self.exact)


def decide_sales(
    shard: str,
    epoch: int,
    current_epoch: int,
    sales: Sequence[Sale],
    tickets: dict[tuple[int, int], tuple[str, str | None, int | None]],
    orders: Iterable[dict[str, Any]],
) -> tuple[
    list[Sale], list[tuple[Sale, dict[str, Any]]], list[tuple[Sale, str, dict[str, Any] | None]]
]:
    """Plain decision for a batch of reported sales (no I/O).

    Returns (new sales to record, duplicates with their existing order, refusals
    with a reason and the visitor's existing order if that is the reason).
    """
    by_ticket = {(o["event_id"], o["serial"]): o for o in orders}
    by_visitor = {(o["event_id"], o["visitor"]): o for o in by_ticket.values()}
    by_account = {
        (o["event_id"], o["account_id"]): o
        for o in by_ticket.values()
        if o.get("account_id") is not None
    }
    new: list[Sale] = []
    dupes: list[tuple[Sale, dict[str, Any]]] = []
    refused: list[tuple[Sale, str, dict[str, Any] | None]] = []
    taken: set[tuple[int, str, object]] = set()
    for sale in sales:
        key = (sale.event, sale.serial)
        existing = by_ticket.get(key)
        if existing and existing["visitor"] == sale.visitor and existing["shard"] == shard:
            dupes.append((sale, existing))  # a re-sent report: answer as before
            continue
        if epoch != current_epoch:
            refused.append((sale, "stale_epoch", None))
            continue
        # One ticket per visitor and per signed-in account (two browsers, one person).
        mine = by_visitor.get((sale.event, sale.visitor))
        if mine is None and sale.account is not None:
            mine = by_account.get((sale.event, sale.account))
        if mine is not None:
            refused.append((sale, "visitor_has_ticket", mine))
            continue
        who: set[tuple[int, str, object]] = {(sale.event, "visitor", sale.visitor)}
        if sale.account is not None:
            who.add((sale.event, "account", sale.account))
        if who & taken:
            refused.append((sale, "visitor_has_ticket", None))
            continue
        state = tickets.get(key)
        if state != ("pool", shard, epoch):
            refused.append((sale, "not_in_pool", None))
            continue
        taken |= who
        new.append(sale)
    return new, dupes, refused


class Ledger:
    """Main's durable state. One instance per ledger file; all writes serialised."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self.db = db
        self.path = path
        self._lock = asyncio.Lock()  # one transaction at a time on the shared connection
        # Events never change once created: cached, so the redirect's per-visitor
        # lookups cost no database round trip.
        self._events: dict[int, Event] | None = None

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> Ledger:
        db = await open_db(path, SCHEMA, synchronous=synchronous)
        return cls(db, os.fspath(path))

    async def close(self) -> None:
        async with self._lock:
            await self.db.close()

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        return list(await self.db.execute_fetchall(sql, args))

    def transaction(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        """Hold the write lock; commit on success, roll back on any error."""
        return transaction(self.db, self._lock)

    # -- events ----------------------------------------------------------------

    async def create_event(self, name: str, description: str, price_cents: int, n: int) -> Event:
        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT INTO events(name, description, price_cents, count, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, description, price_cents, n, time.time()),
            )
            event_id = cur.lastrowid
            assert event_id is not None
            await db.executemany(
                "INSERT INTO tickets(event_id, serial, state) VALUES (?, ?, 'unassigned')",
                ((event_id, s) for s in range(n)),
            )
        event = Event(event_id, name, description, price_cents, n)
        if self._events is not None:
            self._events[event_id] = event
        return event

    async def events(self) -> list[Event]:
        if self._events is None:
            rows = await self._fetch(
                "SELECT id, name, description, price_cents, count FROM events ORDER BY id"
            )
            self._events = {row[0]: Event(*row) for row in rows}
        return list(self._events.values())

    async def event(self, event_id: int) -> Event | None:
        if self._events is None:
            await self.events()
        assert self._events is not None
        return self._events.get(event_id)

    # -- shards ------------------------------------------------------------------

    async def register_shard(
        self, name: str, host: str, tls_port: int, https_port: int, weight: float
    ) -> ShardRecord:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO shards(name, host, tls_port, https_port, weight) VALUES (?,?,?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET host=excluded.host,"
                " tls_port=excluded.tls_port, https_port=excluded.https_port,"
                " weight=excluded.weight",
                (name, host, tls_port, https_port, weight),
            )
        rec = await self.shard(name)
        assert rec is not None
        return rec

    async def shard(self, name: str) -> ShardRecord | None:
        rows = await self._fetch(
            "SELECT name, epoch, host, tls_port, https_port, weight FROM shards WHERE name = ?",
            (name,),
        )
        return ShardRecord(*rows[0]) if rows else None

    async def shards(self) -> list[ShardRecord]:
        rows = await self._fetch(
            "SELECT name, epoch, host, tls_port, https_port, weight FROM shards ORDER BY name"
        )
        return [ShardRecord(*r) for r in rows]

    # -- pools -------------------------------------------------------------------

    async def _serials(self, event_id: int, where: str, args: tuple[Any, ...]) -> list[Range]:
        rows = await self._fetch(
            f"SELECT serial FROM tickets WHERE event_id = ? AND {where} ORDER BY serial",
            (event_id, *args),
        )
        return compress(r[0] for r in rows)

    async def unassigned(self, event_id: int) -> list[Range]:
        return await self._serials(event_id, "state = 'unassigned'", ())

    async def shard_pools(self, shard: str, epoch: int) -> dict[int, list[Range]]:
        """What the ledger says ``shard`` holds in its current epoch, per event."""
        pools: dict[int, list[Range]] = {}
        for event in await self.events():
            ranges = await self._serials(
                event.id, "state = 'pool' AND shard = ? AND epoch = ?", (shard, epoch)
            )
            if ranges:
                pools[event.id] = ranges
        return pools

    async def pool_counts(self) -> dict[tuple[str, int], int]:
        """Tickets per (shard, event) still in shard pools."""
        rows = await self._fetch(
            "SELECT shard, event_id, count(*) FROM tickets WHERE state = 'pool'"
            " GROUP BY shard, event_id"
        )
        return {(r[0], r[1]): r[2] for r in rows}

    async def _move(
        self,
        db: aiosqlite.Connection,
        event_id: int,
        ranges: Sequence[Range],
        src: tuple[str, str | None, int | None],
        dst: tuple[str, str | None, int | None],
    ) -> None:
        """Move serials between states; every one must be in ``src`` or nothing moves."""
        src_sql = "state = ? AND shard IS ? AND epoch IS ?"
        moved = 0
        for a, b in ranges:
            cur = await db.execute(
                "UPDATE tickets SET state = ?, shard = ?, epoch = ?"
                f" WHERE event_id = ? AND serial >= ? AND serial < ? AND {src_sql}",
                (*dst, event_id, a, b, *src),
            )
            moved += cur.rowcount
        if moved != count(ranges):
            raise ValueError(f"{count(ranges) - moved} serials of event {event_id} are not {src}")

    async def _log(
        self,
        db: aiosqlite.Connection,
        event_id: int,
        shard: str,
        epoch: int,
        ranges: Sequence[Range],
        action: str,
    ) -> None:
        now = time.time()
        await db.executemany(
            "INSERT INTO slices(event_id, shard, epoch, start, stop, action, at)"
            " VALUES (?,?,?,?,?,?,?)",
            [(event_id, shard, epoch, a, b, action, now) for a, b in ranges],
        )

    async def assign(self, event_id: int, pieces: dict[str, tuple[int, list[Range]]]) -> None:
        """Give unassigned serials to shards: ``{shard: (epoch, ranges)}``, one commit."""
        async with self.transaction() as db:
            for shard, (epoch, ranges) in pieces.items():
                await self._move(
                    db, event_id, ranges, ("unassigned", None, None), ("pool", shard, epoch)
                )
                await self._log(db, event_id, shard, epoch, ranges, "assign")

    async def transfer(
        self, event_id: int, ranges: list[Range], src: tuple[str, int], dst: tuple[str, int]
    ) -> None:
        """Move serials released by shard ``src`` into shard ``dst``'s pool."""
        async with self.transaction() as db:
            await self._move(db, event_id, ranges, ("pool", *src), ("pool", *dst))
            await self._log(db, event_id, src[0], src[1], ranges, "release")
            await self._log(db, event_id, dst[0], dst[1], ranges, "assign")

    async def reclaim(self, shard: str) -> int:
        """Fence ``shard``: bump its epoch and take its unsold pool back. Returns the epoch."""
        async with self.transaction() as db:
            await db.execute("UPDATE shards SET epoch = epoch + 1 WHERE name = ?", (shard,))
            await db.execute(
                "UPDATE tickets SET state = 'unassigned', shard = NULL, epoch = NULL"
                " WHERE state = 'pool' AND shard = ?",
                (shard,),
            )
            rows = await self._fetch("SELECT epoch FROM shards WHERE name = ?", (shard,))
        if not rows:
            raise ValueError(f"unknown shard {shard!r}")
        return int(rows[0][0])

    # -- sales ---------------------------------------------------------------------

    async def record_sales(
        self, shard: str, epoch: int, sales: Sequence[Sale], hold_seconds: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Record a shard's batch of grants as held orders, in one commit.

        Returns (accepted orders, refusals, the newly created orders among the
        accepted). A re-sent sale is accepted again with
        its original order; a stale epoch, a ticket not in that shard's pool, or a
        visitor who already holds a ticket of the event is refused.
        """
        now = time.time()
        async with self.transaction() as db:
            rows = await self._fetch("SELECT epoch FROM shards WHERE name = ?", (shard,))
            current = int(rows[0][0]) if rows else -1
            tickets: dict[tuple[int, int], tuple[str, str | None, int | None]] = {}
            orders: list[dict[str, Any]] = []
            by_event: dict[int, list[Sale]] = {}
            for s in sales:
                by_event.setdefault(s.event, []).append(s)
            for event_id, group in by_event.items():
                for i in range(0, len(group), _CHUNK):
                    chunk = group[i : i + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    serials = [s.serial for s in chunk]
                    for r in await self._fetch(
                        f"SELECT serial, state, shard, epoch FROM tickets"
                        f" WHERE event_id = ? AND serial IN ({marks})",
                        (event_id, *serials),
                    ):
                        tickets[(event_id, r[0])] = (r[1], r[2], r[3])
                    orders += [
                        dict(r)
                        # One lookup per partial unique index: with "serial IN OR
                        # visitor IN" SQLite scanned every active order of the event.
                        for r in await self._fetch(
                            f"SELECT * FROM orders WHERE event_id = ?"
                            f" AND status IN ('awaiting_payment', 'complete')"
                            f" AND serial IN ({marks}) UNION"
                            f" SELECT * FROM orders WHERE event_id = ?"
                            f" AND status IN ('awaiting_payment', 'complete')"
                            f" AND visitor IN ({marks}) UNION"
                            f" SELECT * FROM orders WHERE event_id = ?"
                            f" AND status IN ('awaiting_payment', 'complete')"
                            f" AND account_id IN ({marks})",
                            (
                                event_id,
                                *serials,
                                event_id,
                                *(s.visitor for s in chunk),
                                event_id,
                                *(s.account for s in chunk),
                            ),
                        )
                    ]
            new, dupes, refused = decide_sales(shard, epoch, current, sales, tickets, orders)
            accepted = [o for _, o in dupes]
            fresh: list[dict[str, Any]] = []
            if new:
                prices = {
                    r[0]: r[1] for r in await self._fetch("SELECT id, price_cents FROM events")
                }
                rows = await self._fetch("SELECT COALESCE(MAX(id), 0) FROM orders")
                next_id = int(rows[0][0]) + 1
                fresh = [
                    {
                        "id": next_id + i,
                        "event_id": s.event,
                        "serial": s.serial,
                        "visitor": s.visitor,
                        "account_id": s.account,
                        "shard": shard,
                        "epoch": epoch,
                        "price_cents": prices[s.event],
                        "status": "awaiting_payment",
                        "created_at": now,
                        "expires_at": now + hold_seconds,
                        "version": 1,
                    }
                    for i, s in enumerate(new)
                ]
                await db.executemany(
                    "UPDATE tickets SET state = 'held' WHERE event_id = ? AND serial = ?",
                    [(s.event, s.serial) for s in new],
                )
                await db.executemany(
                    "INSERT INTO orders(id, event_id, serial, visitor, account_id, shard, epoch,"
                    " price_cents, status, created_at, expires_at, version) VALUES"
                    " (:id, :event_id, :serial, :visitor, :account_id, :shard, :epoch,"
                    " :price_cents, :status, :created_at, :expires_at, :version)",
                    fresh,
                )
                accepted += fresh
        refusals = [
            {"event": s.event, "serial": s.serial, "reason": why, "existing": existing}
            for s, why, existing in refused
        ]
        return accepted, refusals, fresh

    # -- audit -------------------------------------------------------------------------

    async def audit(self, event_id: int | None = None) -> Audit:
        where, args = ("WHERE event_id = ?", (event_id,)) if event_id is not None else ("", ())
        a = Audit()
        rows = await self._fetch(
            f"SELECT COALESCE(SUM(count), 0) FROM events {where.replace('event_id', 'id')}", args
        )
        a.total = int(rows[0][0])
        epochs = {s.name: s.epoch for s in await self.shards()}
        for state, shard, epoch, n in await self._fetch(
            f"SELECT state, shard, epoch, count(*) FROM tickets {where}"
            " GROUP BY state, shard, epoch",
            args,
        ):
            if state == "unassigned":
                a.unassigned += n
            elif state == "pool":
                a.pools[shard] = a.pools.get(shard, 0) + n
                if epochs.get(shard) != epoch:
                    a.problems.append(f"{n} tickets in {shard}'s pool carry stale epoch {epoch}")
            elif state == "held":
                a.held += n
            else:
                a.sold += n
        status_counts = {
            r[0]: r[1]
            for r in await self._fetch(
                f"SELECT status, count(*) FROM orders {where} GROUP BY status", args
            )
        }
        if status_counts.get("awaiting_payment", 0) != a.held:
            a.problems.append(
                f"{a.held} tickets held but {status_counts.get('awaiting_payment', 0)} orders await payment"
            )
        if status_counts.get("complete", 0) != a.sold:
            a.problems.append(
                f"{a.sold} tickets sold but {status_counts.get('complete', 0)} orders complete"
            )
        rows = await self._fetch(f"SELECT count(*) FROM tickets {where}", args)
        if int(rows[0][0]) != a.total:
            a.problems.append(f"{rows[0][0]} ticket rows for a total of {a.total}")
        return a
