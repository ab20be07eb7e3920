"""Moving a ledger between backends (``ticketing ledger copy --from URL --to URL``).

Both ledgers are opened through the same code (so both are migrated to this
code's schema first); every table is copied with its ids, in one transaction of
the target, which must hold no event yet. The audit is compared before and after.
"""

from __future__ import annotations

from .records import Audit
from .sql import SqlLedger

# In an order that satisfies the foreign keys.
TABLES = (
    "events",
    "shards",
    "tickets",
    "slices",
    "orders",
    "owners",
    "listings",
    "resale_orders",
    "payments",
    "waitlist",
    "revoked_sessions",
    "accounts",
)
# Tables whose ``id`` the database allocates: PostgreSQL's identity must move past
# the copied ids.
WITH_IDS = (
    "events",
    "slices",
    "orders",
    "listings",
    "resale_orders",
    "payments",
    "waitlist",
    "accounts",
)
CHUNK = 2000


class CopyError(Exception):
    """The copy was refused or did not reproduce the source's audit."""


async def copy_ledger(source: SqlLedger, target: SqlLedger) -> tuple[Audit, Audit]:
    """Copy every row of ``source`` into the empty ``target``; returns both audits."""
    if await target.events():
        raise CopyError(f"the target ledger {target.url} is not empty")
    before = await source.audit()
    async with target.driver.transaction() as q:
        for table in TABLES:
            rows = await source.driver.fetch(f"SELECT * FROM {table}")
            if not rows:
                continue
            columns = list(rows[0])
            sql = (
                f"INSERT INTO {table} ({', '.join(columns)})"
                f" VALUES ({', '.join('?' * len(columns))})"
            )
            for i in range(0, len(rows), CHUNK):
                await q.executemany(
                    sql, [tuple(r[c] for c in columns) for r in rows[i : i + CHUNK]]
                )
        if target.driver.dialect == "postgresql":
            for table in WITH_IDS:
                await q.fetch(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                )
    copied = await reopen(target)
    after = await copied.audit()
    if after.as_dict() != before.as_dict():
        raise CopyError(f"audit differs after the copy: {before.as_dict()} != {after.as_dict()}")
    return before, after


async def reopen(ledger: SqlLedger) -> SqlLedger:
    """The same database with its caches (events, stock counts) read afresh."""
    await ledger.reload()
    return ledger
