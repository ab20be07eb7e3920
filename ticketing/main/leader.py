"""Leadership: which main leads, with a term that fences every older leader.

Several mains may run against one PostgreSQL ledger; exactly one leads. The leader
holds a **lease row** (``leadership``: term, holder, expiry by the database's clock)
and renews it every ``lease / 3`` seconds; a standby takes the lease once it has
expired, bumping the **term**. Why a lease and not an advisory lock: a leader that
is paused (SIGSTOP, a long GC, a VM freeze) keeps its connection and so an advisory
lock, and the standby would wait for ever; a lease simply runs out.

The term fences the old leader everywhere it could still act:

- in the ledger: every write transaction first checks that the term is still the
  current one (:meth:`SqlLedger.transaction`), so a late commit of an old leader
  is refused (:class:`NotLeader`);
- on the links: main sends its term in every hello; a shard refuses a hello with a
  term older than the newest it has seen, and drops its link to an older main as
  soon as a newer one says hello.

On SQLite (one machine, one main) every start simply takes the next term.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..errors import NotLeader
from ..ledger.driver import Driver

# The database's own clock, in unix seconds: the mains' clocks may disagree.
NOW = {
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


class Lease:
    """The ``leadership`` row, as one main sees it."""

    def __init__(self, driver: Driver, node: str, *, lease: float = 3.0) -> None:
        self.driver = driver
        self.holder = f"{node}:{secrets.token_hex(4)}"  # this process, not just its name
        self.lease = lease
        self.term: int | None = None
        self._now = NOW[driver.dialect]

    async def try_acquire(self) -> int | None:
        """Take the lease if it is free or expired; the new term, or None."""
        now = self._now
        rows = await self._write(
            "INSERT INTO leadership(id, term, holder, expires_at)"
            f" VALUES (1, 1, ?, {now} + ?)"
            " ON CONFLICT (id) DO UPDATE SET term = leadership.term + 1,"
            " holder = excluded.holder, expires_at = excluded.expires_at"
            f" WHERE leadership.expires_at < {now} RETURNING term",
            (self.holder, self.lease),
        )
        if rows:
            self.term = int(rows[0]["term"])
        return self.term if rows else None

    async def take(self) -> int:
        """Take the next term whatever the lease says (one main on one machine)."""
        rows = await self._write(
            "INSERT INTO leadership(id, term, holder, expires_at)"
            f" VALUES (1, 1, ?, {self._now} + ?)"
            " ON CONFLICT (id) DO UPDATE SET term = leadership.term + 1,"
            " holder = excluded.holder, expires_at = excluded.expires_at RETURNING term",
            (self.holder, self.lease),
        )
        self.term = int(rows[0]["term"])
        return self.term

    async def renew(self) -> bool:
        """Extend the lease; False when another main has taken it.

        One autocommitted statement on a connection of its own (not behind the ledger's
        writer lock): a busy sale must not delay the renewal past the lease.
        """
        rows = await self.driver.fetch(
            f"UPDATE leadership SET expires_at = {self._now} + ?"
            " WHERE id = 1 AND term = ? AND holder = ? RETURNING term",
            (self.lease, self.term, self.holder),
        )
        return bool(rows)

    async def _write(self, sql: str, args: tuple[object, ...]) -> list[dict[str, Any]]:
        """A takeover: after the old leader's transactions in flight have committed
        (they hold the row's KEY SHARE lock, :data:`~ticketing.ledger.sql.FENCE`)."""
        async with self.driver.transaction() as q:
            if self.driver.dialect == "postgresql":
                await q.fetch("SELECT id FROM leadership WHERE id = 1 FOR UPDATE")
            return await q.fetch(sql, args)


__all__ = ["NOW", "Lease", "NotLeader"]
