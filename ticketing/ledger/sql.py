"""The ledger's SQL, written once for both backends: the only code that touches its tables.

Every ticket is one row in ``tickets`` with exactly one state (:mod:`.states`), so
"every ticket is in exactly one place" holds by construction and the audit is a
``GROUP BY``. Slices travel as ranges (:mod:`ticketing.slices`). Every operation is
one transaction; sales arrive in batches (one commit per batch, never per ticket).

Two faces:

- :class:`SqlLedger`: main's operations (events, shards, pools, sales, audit),
  each one transaction, and the stock counts main routes on, kept in memory and
  updated on every commit that moves tickets in or out of main's pool;
- :class:`SqlTx`: one unit of work of the marketplace (``async with
  ledger.transaction() as tx``), or reads outside any (``ledger.reader()``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..errors import NotLeader
from ..slices import Range, compress, count
from ..wire import Sale, ticket_id
from .decide import ActiveOrders, SalesDecision, decide_sales
from .driver import Driver, Queries
from .group import GroupCommit
from .records import WAITROOM_SETTINGS, Audit, Event, OrderKind, Principal, ShardRecord
from .schema import migrate
from .states import (
    ACTIVE_ORDER,
    ON_SALE,
    OPEN_LISTING,
    ListingStatus,
    OrderStatus,
    PaymentState,
    TicketState,
    WaitlistStatus,
    sql_list,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
_SHARD = "name, epoch, host, tls_port, https_port, weight"
EVENT_COLUMNS = "id, name, description, price_cents, count, " + ", ".join(WAITROOM_SETTINGS)
_CHUNK = 400  # rows per multi-row statement: well under SQLite's parameter limit
TABLES = {OrderKind.PRIMARY: "orders", OrderKind.RESALE: "resale_orders"}
WAITLIST_SHARD = "main"  # orders offered from the waiting list were never on a shard

_AWAITING = OrderStatus.AWAITING_PAYMENT
# Literal, not bound: SQLite uses a partial index only when it can see that the
# query's condition implies the index's (a bound parameter hides it).
_ACTIVE = sql_list(ACTIVE_ORDER)
_OPEN = sql_list(OPEN_LISTING)
# An order's columns and their PostgreSQL types (for arrays bound as one parameter).
_ORDER_TYPES = {
    "event_id": "int",
    "serial": "int",
    "visitor": "text",
    "account_id": "int",
    "shard": "text",
    "epoch": "int",
    "price_cents": "int",
    "status": "text",
    "created_at": "float8",
    "expires_at": "float8",
    "version": "int",
}
_ORDER_COLUMNS = ", ".join(_ORDER_TYPES)


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _owned_by(p: Principal, prefix: str = "") -> tuple[str, tuple[Any, ...]]:
    """SQL condition (and parameters) for the rows :meth:`Principal.owns` accepts."""
    v, a = f"{prefix}visitor", f"{prefix}account_id"
    if p.account_id is None:
        return f"({a} IS NULL AND {v} = ?)", (p.visitor,)
    return f"({a} = ? OR ({a} IS NULL AND {v} = ?))", (p.account_id, p.visitor)


def _locked(kind: OrderKind, alias: str = "o") -> str:
    """A pending payment locks an order against expiry."""
    return (
        f"EXISTS (SELECT 1 FROM payments p WHERE p.state = '{PaymentState.PENDING.value}'"
        f" AND p.kind = '{kind.value}' AND p.order_id = {alias}.id)"
    )


@dataclass(frozen=True)
class SalesBatch:
    """One ``report_sales`` from a shard, waiting for its group's commit."""

    shard: str
    epoch: int
    sales: tuple[Sale, ...]
    hold_seconds: float


# (accepted orders, refusals, the newly created orders among the accepted)
SalesResult = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]
GROUP_SALES = 4096  # sales per group commit at most: one commit stays short
ANALYZE_AFTER = 2_000  # orders written before the first refresh of the statistics


class SqlTx:
    """The marketplace's reads and writes (inside one transaction when it comes from
    :meth:`SqlLedger.transaction`)."""

    def __init__(self, q: Queries, events: dict[int, Event]) -> None:
        self.q = q
        # PostgreSQL binds a list as one array parameter (one plan, one statement
        # whatever its length); SQLite, which has no arrays, gets "IN (?, ?, ...)"
        # and multi-row VALUES in chunks under its parameter limit.
        self._arrays = q.dialect == "postgresql"
        self._events = events
        # Tickets that entered (+) or left (-) main's pool, per event: applied to the
        # ledger's stock counts once the transaction commits.
        self.unassigned_delta: Counter[int] = Counter()

    async def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        return await self.q.fetch(sql, tuple(args))

    async def _values(self, sql: str, args: Iterable[Any] = ()) -> list[Sequence[Any]]:
        return await self.q.values(sql, tuple(args))

    def chunks(self, items: Sequence[T]) -> Iterator[Sequence[T]]:
        """``items`` in pieces one statement can carry."""
        step = (len(items) or 1) if self._arrays else _CHUNK
        for i in range(0, len(items), step):
            yield items[i : i + step]

    def member(self, column: str, values: Sequence[Any], sqltype: str) -> tuple[str, list[Any]]:
        """The condition "``column`` is one of ``values``", and its parameters."""
        if self._arrays:
            return f"{column} = ANY(?::{sqltype}[])", [list(values)]
        return f"{column} IN ({_marks(len(values))})", list(values)

    def rows_of(
        self, types: dict[str, str], records: Sequence[dict[str, Any]]
    ) -> tuple[str, list[Any]]:
        """The row source of ``INSERT INTO t(columns) ...`` for ``records`` (dicts with
        the columns ``types`` names, in that order), and its parameters."""
        if self._arrays:  # one array per column, unnested back into rows
            unnest = ", ".join(f"?::{t}[]" for t in types.values())
            return f"SELECT * FROM unnest({unnest})", [[r[c] for r in records] for c in types]
        marks = f"({_marks(len(types))})"
        return "VALUES " + ",".join(marks for _ in records), [r[c] for r in records for c in types]

    async def _one(self, sql: str, args: Iterable[Any] = ()) -> dict[str, Any] | None:
        rows = await self._rows(sql, args)
        return rows[0] if rows else None

    async def _scalar(self, sql: str, args: Iterable[Any] = ()) -> Any:
        rows = await self.q.fetch(sql, tuple(args))
        return next(iter(rows[0].values())) if rows else None

    async def _change(self, sql: str, args: Iterable[Any] = ()) -> int:
        return await self.q.execute(sql, tuple(args))

    async def _insert(self, sql: str, args: Iterable[Any]) -> int:
        """An ``INSERT``; returns the id the database gave the new row."""
        return int(await self._scalar(sql + " RETURNING id", args))

    # -- tickets ---------------------------------------------------------------------

    def price(self, event_id: int) -> int:
        return self._events[event_id].price_cents

    async def set_ticket_state(
        self, event_id: int, serial: int, src: TicketState, dst: TicketState
    ) -> None:
        """Move one ticket between states; it must be in ``src``."""
        detach = ", shard = NULL, epoch = NULL" if dst is TicketState.UNASSIGNED else ""
        n = await self._change(
            f"UPDATE tickets SET state = ?{detach} WHERE event_id = ? AND serial = ? AND state = ?",
            (dst, event_id, serial, src),
        )
        if n != 1:
            raise ValueError(f"ticket {ticket_id(event_id, serial)} is not {src}")
        self.unassigned_delta[event_id] += (dst is TicketState.UNASSIGNED) - (
            src is TicketState.UNASSIGNED
        )

    async def ticket_state(self, event_id: int, serial: int) -> str | None:
        return await self._scalar(
            "SELECT state FROM tickets WHERE event_id = ? AND serial = ?", (event_id, serial)
        )

    async def available(self, event_id: int) -> int:
        """Tickets of the event still on sale (main's pool or a shard's)."""
        return int(
            await self._scalar(
                f"SELECT count(*) FROM tickets WHERE event_id = ? AND state IN {_in(ON_SALE)}",
                (event_id, *ON_SALE),
            )
        )

    async def available_by_event(self) -> dict[int, int]:
        rows = await self._rows(
            f"SELECT event_id, count(*) AS n FROM tickets WHERE state IN {_in(ON_SALE)}"
            " GROUP BY event_id",
            ON_SALE,
        )
        return {r["event_id"]: r["n"] for r in rows}

    async def has_ticket(self, event_id: int, p: Principal) -> bool:
        """An active order or an owned ticket of the event, by visitor or by account."""
        return bool(
            await self._rows(
                f"SELECT 1 FROM orders WHERE event_id = ? AND status IN {_ACTIVE}"
                " AND (visitor = ? OR account_id = ?)"
                " UNION ALL SELECT 1 FROM owners WHERE event_id = ? AND (visitor = ? OR account_id = ?)",
                (
                    event_id,
                    p.visitor,
                    p.account_id,
                    event_id,
                    p.visitor,
                    p.account_id,
                ),
            )
        )

    # -- orders (both kinds) -------------------------------------------------------------

    async def order(self, kind: OrderKind, order_id: int) -> dict[str, Any] | None:
        return await self._one(f"SELECT * FROM {TABLES[kind]} WHERE id = ?", (order_id,))

    async def orders_of(self, kind: OrderKind, p: Principal) -> list[dict[str, Any]]:
        where, args = _owned_by(p)
        return await self._rows(f"SELECT * FROM {TABLES[kind]} WHERE {where}", args)

    async def set_order_status(
        self, kind: OrderKind, order_id: int, src: OrderStatus, dst: OrderStatus
    ) -> bool:
        """Change an order's status if it is still ``src`` (its version moves on)."""
        n = await self._change(
            f"UPDATE {TABLES[kind]} SET status = ?, version = version + 1"
            " WHERE id = ? AND status = ?",
            (dst, order_id, src),
        )
        return n == 1

    async def bump_order_version(self, kind: OrderKind, order_id: int) -> int:
        version = await self._scalar(
            f"UPDATE {TABLES[kind]} SET version = version + 1 WHERE id = ? RETURNING version",
            (order_id,),
        )
        return int(version)

    async def insert_offer(
        self, event_id: int, serial: int, owner: Principal, now: float, hold_seconds: float
    ) -> dict[str, Any]:
        """A held order for a waiting-list entry (never on a shard)."""
        order = {
            "event_id": event_id,
            "serial": serial,
            "visitor": owner.visitor,
            "account_id": owner.account_id,
            "shard": WAITLIST_SHARD,
            "epoch": 0,
            "price_cents": self.price(event_id),
            "status": _AWAITING,
            "created_at": now,
            "expires_at": now + hold_seconds,
            "version": 1,
        }
        order["id"] = await self._insert(
            f"INSERT INTO orders({_ORDER_COLUMNS}) VALUES ({_marks(11)})", order.values()
        )
        return order

    async def insert_resale_order(
        self, listing: dict[str, Any], buyer: Principal, now: float, hold_seconds: float
    ) -> int:
        return await self._insert(
            "INSERT INTO resale_orders(listing_id, event_id, serial, visitor, account_id,"
            " price_cents, status, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                listing["id"],
                listing["event_id"],
                listing["serial"],
                buyer.visitor,
                buyer.account_id,
                listing["price_cents"],
                _AWAITING,
                now,
                now + hold_seconds,
            ),
        )

    async def overdue_orders(self, kind: OrderKind, now: float) -> list[dict[str, Any]]:
        """Held orders past their expiry and not locked by a payment in progress."""
        return await self._rows(
            f"SELECT * FROM {TABLES[kind]} o WHERE status = ? AND expires_at <= ?"
            f" AND NOT {_locked(kind)}",
            (_AWAITING, now),
        )

    async def next_deadline(self, pay_timeout: float) -> float | None:
        """The earliest hold expiry or payment-lock timeout still ahead, if any."""
        dues: list[float] = []
        for kind, table in TABLES.items():
            due = await self._scalar(
                f"SELECT MIN(expires_at) FROM {table} o WHERE status = ? AND NOT {_locked(kind)}",
                (_AWAITING,),
            )
            if due is not None:
                dues.append(float(due))
        started = await self._scalar(
            "SELECT MIN(started_at) FROM payments WHERE state = ?", (PaymentState.PENDING,)
        )
        if started is not None:
            dues.append(float(started) + pay_timeout)
        return min(dues) if dues else None

    # -- payments --------------------------------------------------------------------------

    async def payment_pending(self, kind: OrderKind, order_id: int) -> bool:
        return bool(
            await self._rows(
                "SELECT 1 FROM payments WHERE kind = ? AND order_id = ? AND state = ?",
                (kind, order_id, PaymentState.PENDING),
            )
        )

    async def start_payment(
        self, kind: OrderKind, order_id: int, key: str, amount_cents: int, now: float
    ) -> int:
        return await self._insert(
            "INSERT INTO payments(kind, order_id, idempotency_key, amount_cents, state,"
            " started_at) VALUES (?, ?, ?, ?, ?, ?)",
            (kind, order_id, key, amount_cents, PaymentState.PENDING, now),
        )

    async def finish_payment(
        self,
        payment_id: int,
        state: PaymentState,
        now: float,
        *,
        message: str | None = None,
        charge_id: str | None = None,
        refund_id: str | None = None,
    ) -> None:
        await self._change(
            "UPDATE payments SET state = ?, finished_at = ?, message = COALESCE(?, message),"
            " charge_id = COALESCE(?, charge_id), refund_id = COALESCE(?, refund_id)"
            " WHERE id = ?",
            (state, now, message, charge_id, refund_id, payment_id),
        )

    async def succeeded_payment(self, kind: OrderKind, order_id: int) -> dict[str, Any] | None:
        return await self._one(
            "SELECT id, charge_id FROM payments WHERE kind = ? AND order_id = ? AND state = ?",
            (kind, order_id, PaymentState.SUCCEEDED),
        )

    async def payment_states(self, kind: OrderKind, order_id: int) -> list[str]:
        rows = await self._rows(
            "SELECT state FROM payments WHERE kind = ? AND order_id = ? ORDER BY id",
            (kind, order_id),
        )
        return [r["state"] for r in rows]

    async def abandon_stale_payments(self, started_before: float, now: float) -> int:
        """Payment locks older than the pay timeout (a crash mid-charge) are given up."""
        return await self._change(
            "UPDATE payments SET state = ?, finished_at = ?,"
            " message = 'abandoned: no answer from the payment provider in time'"
            " WHERE state = ? AND started_at <= ?",
            (PaymentState.FAILED, now, PaymentState.PENDING, started_before),
        )

    # -- owners ----------------------------------------------------------------------------

    async def owner(self, event_id: int, serial: int) -> dict[str, Any] | None:
        return await self._one(
            "SELECT * FROM owners WHERE event_id = ? AND serial = ?", (event_id, serial)
        )

    async def add_owner(self, order: dict[str, Any], now: float) -> None:
        await self._change(
            "INSERT INTO owners(event_id, serial, visitor, account_id, order_id, since)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                order["event_id"],
                order["serial"],
                order["visitor"],
                order["account_id"],
                order["id"],
                now,
            ),
        )

    async def transfer_owner(self, resale_order: dict[str, Any], now: float) -> None:
        """The resale buyer now holds the ticket."""
        o = resale_order
        n = await self._change(
            "UPDATE owners SET visitor = ?, account_id = ?, resale_order_id = ?, since = ?"
            " WHERE event_id = ? AND serial = ?",
            (o["visitor"], o["account_id"], o["id"], now, o["event_id"], o["serial"]),
        )
        if n != 1:
            raise ValueError(f"ticket {ticket_id(o['event_id'], o['serial'])} has no owner")

    async def remove_owner(self, event_id: int, serial: int) -> None:
        await self._change(
            "DELETE FROM owners WHERE event_id = ? AND serial = ?", (event_id, serial)
        )

    async def tickets_of(self, p: Principal) -> list[dict[str, Any]]:
        """Sold tickets ``p`` holds, each with the id of its open listing (or None)."""
        where, args = _owned_by(p, "o.")
        return await self._rows(
            "SELECT o.*, l.id AS listing_id FROM owners o LEFT JOIN listings l"
            " ON l.event_id = o.event_id AND l.serial = o.serial"
            f" AND l.status IN {_OPEN} WHERE {where}"
            " ORDER BY o.event_id, o.serial",
            args,
        )

    # -- listings ----------------------------------------------------------------------------

    _LISTING = (
        "SELECT l.*, r.expires_at AS locked_until FROM listings l LEFT JOIN resale_orders r"
        " ON r.listing_id = l.id AND r.status = ?"
    )

    async def listing(self, listing_id: int) -> dict[str, Any] | None:
        """A listing with ``locked_until`` (its buyer's hold expiry while locked)."""
        return await self._one(f"{self._LISTING} WHERE l.id = ?", (_AWAITING, listing_id))

    async def listings_by_id(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        if not ids:
            return []
        return await self._rows(
            f"{self._LISTING} WHERE l.id IN ({_marks(len(ids))})", (_AWAITING, *ids)
        )

    async def find_listings(
        self,
        *,
        event_id: int | None = None,
        min_price: int | None = None,
        max_price: int | None = None,
        seller: Principal | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        """Open listings (cheapest first), or every listing of ``seller``."""
        where: list[str] = []
        args: list[Any] = [_AWAITING]
        if seller is not None:
            cond, cargs = _owned_by(seller, "l.")
            where.append(cond)
            args += cargs
        else:
            where.append(f"l.status IN {_OPEN}")
        for cond, value in (
            ("l.event_id = ?", event_id),
            ("l.price_cents >= ?", min_price),
            ("l.price_cents <= ?", max_price),
        ):
            if value is not None:
                where.append(cond)
                args.append(value)
        return await self._rows(
            f"{self._LISTING} WHERE {' AND '.join(where)} ORDER BY l.price_cents, l.id LIMIT ?",
            (*args, limit),
        )

    async def open_listing_id(self, event_id: int, serial: int) -> int | None:
        return await self._scalar(
            f"SELECT id FROM listings WHERE event_id = ? AND serial = ? AND status IN {_OPEN}",
            (event_id, serial),
        )

    async def insert_listing(self, owner: dict[str, Any], price_cents: int, now: float) -> int:
        return await self._insert(
            "INSERT INTO listings(event_id, serial, visitor, account_id, price_cents, status,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                owner["event_id"],
                owner["serial"],
                owner["visitor"],
                owner["account_id"],
                price_cents,
                ListingStatus.ACTIVE,
                now,
                now,
            ),
        )

    async def set_listing_status(
        self,
        listing_id: int,
        src: ListingStatus,
        dst: ListingStatus,
        now: float,
        version: int | None = None,
    ) -> bool:
        """Change a listing's status if it is still ``src`` (and at ``version`` if given)."""
        check, args = ("", ()) if version is None else (" AND version = ?", (version,))
        n = await self._change(
            "UPDATE listings SET status = ?, version = version + 1, updated_at = ?"
            f" WHERE id = ? AND status = ?{check}",
            (dst, now, listing_id, src, *args),
        )
        return n == 1

    async def set_listing_price(
        self, listing_id: int, price_cents: int, version: int, now: float
    ) -> bool:
        """Only an unlocked (``active``) listing at ``version`` takes a new price."""
        n = await self._change(
            "UPDATE listings SET price_cents = ?, version = version + 1, updated_at = ?"
            " WHERE id = ? AND status = ? AND version = ?",
            (price_cents, now, listing_id, ListingStatus.ACTIVE, version),
        )
        return n == 1

    # -- waiting list -----------------------------------------------------------------------

    async def waitlist_head(self, event_id: int) -> dict[str, Any] | None:
        return await self._one(
            "SELECT * FROM waitlist WHERE event_id = ? AND status = ? ORDER BY id LIMIT 1",
            (event_id, WaitlistStatus.WAITING),
        )

    async def waitlist_entry(self, event_id: int, p: Principal) -> dict[str, Any] | None:
        """``p``'s latest waiting or offered entry for the event, with its position."""
        where, args = _owned_by(p)
        entry = await self._one(
            f"SELECT * FROM waitlist WHERE event_id = ? AND {where} AND status IN (?, ?)"
            " ORDER BY id DESC LIMIT 1",
            (event_id, *args, WaitlistStatus.WAITING, WaitlistStatus.OFFERED),
        )
        if entry is not None and entry["status"] == WaitlistStatus.WAITING:
            entry["position"] = await self._scalar(
                "SELECT count(*) FROM waitlist WHERE event_id = ? AND status = ? AND id <= ?",
                (event_id, WaitlistStatus.WAITING, entry["id"]),
            )
        return entry

    async def waiting_by_event(self) -> dict[int, int]:
        rows = await self._rows(
            "SELECT event_id, count(*) AS n FROM waitlist WHERE status = ? GROUP BY event_id",
            (WaitlistStatus.WAITING,),
        )
        return {r["event_id"]: r["n"] for r in rows}

    async def join_waitlist(self, event_id: int, p: Principal, now: float) -> int:
        return await self._insert(
            "INSERT INTO waitlist(event_id, visitor, account_id, status, joined_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (event_id, p.visitor, p.account_id, WaitlistStatus.WAITING, now),
        )

    async def leave_waitlist(self, event_id: int, p: Principal) -> bool:
        where, args = _owned_by(p)
        n = await self._change(
            f"UPDATE waitlist SET status = ? WHERE event_id = ? AND status = ? AND {where}",
            (WaitlistStatus.LEFT, event_id, WaitlistStatus.WAITING, *args),
        )
        return n > 0

    async def skip_waitlist_entry(self, entry_id: int) -> None:
        await self._change(
            "UPDATE waitlist SET status = ? WHERE id = ?", (WaitlistStatus.SKIPPED, entry_id)
        )

    async def mark_offered(self, entry_id: int, order_id: int, now: float) -> None:
        await self._change(
            "UPDATE waitlist SET status = ?, order_id = ?, offered_at = ? WHERE id = ?",
            (WaitlistStatus.OFFERED, order_id, now, entry_id),
        )

    # -- accounts' rows and sessions -----------------------------------------------------------

    async def claim_conflicts(self, p: Principal) -> list[dict[str, Any]]:
        """The visitor's account-less held orders for events where the account already
        has a ticket (an active order or an owned one): claiming them would give the
        account a second ticket."""
        return await self._rows(
            "SELECT * FROM orders o WHERE o.visitor = ? AND o.account_id IS NULL"
            " AND o.status = ? AND (EXISTS (SELECT 1 FROM orders a WHERE a.event_id = o.event_id"
            f" AND a.account_id = ? AND a.status IN {_ACTIVE}) OR EXISTS (SELECT 1 FROM owners w"
            " WHERE w.event_id = o.event_id AND w.account_id = ?))",
            (p.visitor, _AWAITING, p.account_id, p.account_id),
        )

    async def claim(self, p: Principal) -> int:
        """Give the visitor's account-less rows to ``p.account_id``; returns how many.

        A row that would give the account a second ticket (or a second place on a
        waiting list) of an event stays the visitor's: the unique indexes say so.
        """
        account, visitor = p.account_id, p.visitor
        mine = "visitor = ? AND account_id IS NULL"
        n = await self._change(
            f"UPDATE orders SET account_id = ? WHERE {mine} AND NOT (status IN {_ACTIVE}"
            " AND EXISTS (SELECT 1 FROM orders a WHERE a.event_id = orders.event_id"
            f" AND a.account_id = ? AND a.status IN {_ACTIVE}))",
            (account, visitor, account),
        )
        n += await self._change(
            f"UPDATE owners SET account_id = ? WHERE {mine} AND NOT EXISTS (SELECT 1 FROM"
            " owners a WHERE a.event_id = owners.event_id AND a.account_id = ?)",
            (account, visitor, account),
        )
        n += await self._change(
            f"UPDATE waitlist SET account_id = ? WHERE {mine} AND NOT (status = ? AND EXISTS"
            " (SELECT 1 FROM waitlist a WHERE a.event_id = waitlist.event_id"
            " AND a.account_id = ? AND a.status = ?))",
            (account, visitor, WaitlistStatus.WAITING, account, WaitlistStatus.WAITING),
        )
        for table in ("resale_orders", "listings"):  # no per-account limit of their own
            n += await self._change(
                f"UPDATE {table} SET account_id = ? WHERE {mine}", (account, visitor)
            )
        return n

    async def revoke_session(self, sid: str, exp: float, now: float) -> None:
        await self._change(
            "INSERT INTO revoked_sessions(sid, exp) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (sid, exp),
        )
        await self._change("DELETE FROM revoked_sessions WHERE exp <= ?", (now,))

    async def revoked_sessions(self, now: float) -> list[tuple[str, float]]:
        rows = await self._rows("SELECT sid, exp FROM revoked_sessions WHERE exp > ?", (now,))
        return [(r["sid"], r["exp"]) for r in rows]

    # -- the marketplace's cross-checks -------------------------------------------------------

    async def market_problems(self, sold: int, event_id: int | None = None) -> list[str]:
        """What the marketplace's rows say that does not add up (``sold`` from the audit)."""
        scope, sargs = ("", ()) if event_id is None else (" AND x.event_id = ?", (event_id,))

        async def n(sql: str, *args: Any) -> int:
            return int(await self._scalar(sql + scope, (*args, *sargs)))

        problems: list[str] = []
        owners = await n("SELECT count(*) FROM owners x WHERE 1 = 1")
        if owners != sold:
            problems.append(f"{sold} tickets sold but {owners} have an owner")
        orphans = await n(
            "SELECT count(*) FROM owners x WHERE NOT EXISTS (SELECT 1 FROM tickets t"
            " WHERE t.event_id = x.event_id AND t.serial = x.serial AND t.state = ?)",
            TicketState.SOLD,
        )
        if orphans:
            problems.append(f"{orphans} owners hold a ticket that is not sold")
        locked = await n("SELECT count(*) FROM listings x WHERE status = ?", ListingStatus.LOCKED)
        checkouts = await n("SELECT count(*) FROM resale_orders x WHERE status = ?", _AWAITING)
        if locked != checkouts:
            problems.append(f"{locked} listings locked but {checkouts} resale checkouts open")
        foreign = await n(
            "SELECT count(*) FROM listings x JOIN owners o"
            " ON o.event_id = x.event_id AND o.serial = x.serial"
            f" WHERE x.status IN {_OPEN}"
            " AND (o.visitor != x.visitor OR o.account_id IS DISTINCT FROM x.account_id)",
        )
        if foreign:
            problems.append(f"{foreign} open listings are not their ticket holder's")
        for kind, table in TABLES.items():
            paid = (
                "SELECT count(*) FROM payments p WHERE p.kind = ? AND p.order_id = x.id"
                " AND p.state = ?"
            )
            twice = await n(
                f"SELECT count(*) FROM {table} x WHERE ({paid}) > 1", kind, PaymentState.SUCCEEDED
            )
            if twice:
                problems.append(f"{twice} {table} charged more than once")
            unpaid = await n(
                f"SELECT count(*) FROM {table} x WHERE status = ? AND price_cents > 0"
                f" AND ({paid}) = 0",
                OrderStatus.COMPLETE,
                kind,
                PaymentState.SUCCEEDED,
            )
            if unpaid:
                problems.append(f"{unpaid} complete {table} without a payment")
        return problems


def _by_event(items: Iterable[Any]) -> dict[int, list[Any]]:
    """Sales (``.event``) or orders (``["event_id"]``) grouped by their event."""
    out: dict[int, list[Any]] = {}
    for item in items:
        event = item["event_id"] if isinstance(item, dict) else item.event
        out.setdefault(event, []).append(item)
    return out


def _in(values: Sequence[object]) -> str:
    """An ``IN (?, ?, ...)`` placeholder list for ``values``."""
    return f"({_marks(len(values))})"


# Every write transaction of a leading main locks the leadership row of its term
# until it commits, so a standby's takeover (which locks the row FOR UPDATE first:
# main.leader) waits for it, and any later transaction sees the new term. On
# PostgreSQL a KEY SHARE lock: it does not block the lease's renewal (an update of
# another column), which a long transaction (creating an event of 100,000 tickets)
# would otherwise hold up past the lease. SQLite has one writer at a time anyway.
FENCE = {
    "postgresql": "SELECT term FROM leadership WHERE id = 1 AND term = ? FOR KEY SHARE",
    "sqlite": "UPDATE leadership SET term = term WHERE id = 1 AND term = ? RETURNING term",
}


class SqlLedger:
    """Main's durable state on one database (a :class:`~.driver.Driver`).

    Transactions are serialised by the driver; reads outside them see the last commit.
    """

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.url = driver.url
        # Events never change once created: cached, so the front's per-visitor
        # lookups cost no database round trip.
        self._events: dict[int, Event] = {}
        self._unassigned: Counter[int] = Counter()  # event -> tickets in main's pool
        self.fence_term: int | None = None  # set by a leading main: older terms may not write
        self._sales: GroupCommit[SalesBatch, SalesResult] = GroupCommit(
            self._record_group, lambda b: len(b.sales), GROUP_SALES
        )
        # The planner's statistics follow the sale (orders grows from nothing):
        # refreshed whenever the orders written since the last refresh reach half of
        # those there were then, so a sale of N tickets costs about log2(N) of them.
        self._since_analyze = 0
        self._at_analyze = 0
        self._analyzing: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, driver: Driver) -> SqlLedger:
        """Migrate the schema to this code's version, then load the caches. The ledger owns
        ``driver``: it is closed here if opening fails (an aiosqlite connection left open
        keeps a non-daemon thread, and the process would hang at exit)."""
        try:
            return await cls._load(driver)
        except BaseException:
            await driver.close()
            raise

    @classmethod
    async def _load(cls, driver: Driver) -> SqlLedger:
        await migrate(driver)
        ledger = cls(driver)
        await ledger.reload()
        return ledger

    async def reload(self) -> None:
        """Read the caches (events, main's stock counts) afresh: at open, and when a
        standby starts to lead on a ledger another main has been writing."""
        rows = await self.driver.fetch(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY id")
        self._events.clear()
        self._events.update({r["id"]: Event(**r) for r in rows})
        rows = await self.driver.fetch(
            "SELECT event_id, count(*) AS n FROM tickets WHERE state = ? GROUP BY event_id",
            (TicketState.UNASSIGNED,),
        )
        self._unassigned = Counter({r["event_id"]: r["n"] for r in rows})

    async def close(self) -> None:
        await self._sales.wait_idle()
        if self._analyzing is not None:
            await asyncio.wait({self._analyzing})
        await self.driver.close()

    @property
    def sales_commits(self) -> int:
        """Transactions that recorded sales (several reports share one under load)."""
        return self._sales.groups

    def _wrote_orders(self, n: int) -> None:
        self._since_analyze += n
        busy = self._analyzing is not None and not self._analyzing.done()
        if busy or self._since_analyze < max(ANALYZE_AFTER, self._at_analyze // 2):
            return
        self._at_analyze += self._since_analyze
        self._since_analyze = 0
        self._analyzing = asyncio.create_task(self._analyze(("tickets", "orders")))

    async def _analyze(self, tables: Sequence[str]) -> None:
        try:
            await self.driver.analyze(tables)
        except Exception as exc:  # statistics only steer plans: the sale goes on
            log.warning("refreshing the planner's statistics failed: %s", exc)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlTx]:
        """One unit of work: commit on success, roll back on any error."""
        async with self.driver.transaction() as q:
            tx = await self._begin(q)
            yield tx
        self._unassigned.update(tx.unassigned_delta)  # committed: main's counts follow

    async def atomic(self, body: Callable[[SqlTx], Awaitable[T]]) -> T:
        """``body`` as one unit of work, as :meth:`transaction`; it may await only the
        transaction's queries, so the driver can run it in one hop (the sales path)."""

        async def run(q: Queries) -> tuple[SqlTx, T]:
            tx = await self._begin(q)
            return tx, await body(tx)

        tx, result = await self.driver.atomic(run)
        self._unassigned.update(tx.unassigned_delta)  # committed: main's counts follow
        return result

    async def _begin(self, q: Queries) -> SqlTx:
        if self.fence_term is not None:
            # A paused old leader that wakes up must not commit: the term decides.
            rows = await q.fetch(FENCE[q.dialect], (self.fence_term,))
            if not rows:
                raise NotLeader(f"term {self.fence_term} is over: another main leads")
        return SqlTx(q, self._events)

    def reader(self) -> SqlTx:
        """Reads outside any transaction (each statement sees the last commit)."""
        return SqlTx(self.driver, self._events)

    # -- events ----------------------------------------------------------------------

    async def create_event(self, name: str, description: str, price_cents: int, n: int) -> Event:
        async with self.transaction() as tx:
            event_id = await tx._insert(
                "INSERT INTO events(name, description, price_cents, count, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, description, price_cents, n, time.time()),
            )
            await tx.q.executemany(
                "INSERT INTO tickets(event_id, serial, state) VALUES (?, ?, ?)",
                ((event_id, s, TicketState.UNASSIGNED) for s in range(n)),
            )
            tx.unassigned_delta[event_id] += n
        event = Event(event_id, name, description, price_cents, n)
        self._events[event_id] = event
        await self.driver.analyze(("tickets",))  # the sale's first lookups plan on them
        return event

    async def events(self) -> list[Event]:
        return list(self._events.values())

    async def update_event(self, event_id: int, **settings: Any) -> Event:
        """Change an event's waiting-room settings (``WAITROOM_SETTINGS`` names)."""
        unknown = set(settings) - set(WAITROOM_SETTINGS)
        if unknown or event_id not in self._events:
            raise ValueError(f"no event {event_id}" if not unknown else f"unknown {unknown}")
        if settings:
            names = sorted(settings)
            async with self.transaction() as tx:
                await tx._change(
                    f"UPDATE events SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?",
                    (*(settings[n] for n in names), event_id),
                )
            self._events[event_id] = replace(self._events[event_id], **settings)
        return self._events[event_id]

    async def event(self, event_id: int) -> Event | None:
        return self._events.get(event_id)

    def unassigned_count(self, event_id: int) -> int:
        """Tickets of the event in main's pool, as of the last commit (no I/O)."""
        return self._unassigned.get(event_id, 0)

    # -- shards ------------------------------------------------------------------------

    async def register_shard(
        self, name: str, host: str, tls_port: int, https_port: int, weight: float
    ) -> ShardRecord:
        async with self.transaction() as tx:
            await tx._change(
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
        rows = await self.driver.fetch(f"SELECT {_SHARD} FROM shards WHERE name = ?", (name,))
        return ShardRecord(**rows[0]) if rows else None

    async def shards(self) -> list[ShardRecord]:
        rows = await self.driver.fetch(f"SELECT {_SHARD} FROM shards ORDER BY name")
        return [ShardRecord(**r) for r in rows]

    # -- pools -------------------------------------------------------------------------

    async def _serials(self, event_id: int, where: str, args: tuple[Any, ...]) -> list[Range]:
        rows = await self.driver.fetch(
            f"SELECT serial FROM tickets WHERE event_id = ? AND {where} ORDER BY serial",
            (event_id, *args),
        )
        return compress(r["serial"] for r in rows)

    async def unassigned(self, event_id: int) -> list[Range]:
        return await self._serials(event_id, "state = ?", (TicketState.UNASSIGNED,))

    async def shard_pools(self, shard: str, epoch: int) -> dict[int, list[Range]]:
        """What the ledger says ``shard`` holds in its current epoch, per event."""
        pools: dict[int, list[Range]] = {}
        for event_id in self._events:
            ranges = await self._serials(
                event_id, "state = ? AND shard = ? AND epoch = ?", (TicketState.POOL, shard, epoch)
            )
            if ranges:
                pools[event_id] = ranges
        return pools

    async def pool_counts(self) -> dict[tuple[str, int], int]:
        """Tickets per (shard, event) still in shard pools."""
        rows = await self.driver.fetch(
            "SELECT shard, event_id, count(*) AS n FROM tickets WHERE state = ?"
            " GROUP BY shard, event_id",
            (TicketState.POOL,),
        )
        return {(r["shard"], r["event_id"]): r["n"] for r in rows}

    async def _move(
        self,
        tx: SqlTx,
        event_id: int,
        ranges: Sequence[Range],
        src: tuple[TicketState, str | None, int | None],
        dst: tuple[TicketState, str | None, int | None],
    ) -> None:
        """Move serials between states; every one must be in ``src`` or nothing moves."""
        moved = 0
        for a, b in ranges:
            moved += await tx._change(
                "UPDATE tickets SET state = ?, shard = ?, epoch = ?"
                " WHERE event_id = ? AND serial >= ? AND serial < ?"
                " AND state = ? AND shard IS NOT DISTINCT FROM ? AND epoch IS NOT DISTINCT FROM ?",
                (*dst, event_id, a, b, *src),
            )
        if moved != count(ranges):
            raise ValueError(f"{count(ranges) - moved} serials of event {event_id} are not {src}")
        tx.unassigned_delta[event_id] += moved * (
            (dst[0] is TicketState.UNASSIGNED) - (src[0] is TicketState.UNASSIGNED)
        )

    async def _log(
        self, tx: SqlTx, event_id: int, shard: str, epoch: int, ranges: Sequence[Range], action: str
    ) -> None:
        now = time.time()
        await tx.q.executemany(
            "INSERT INTO slices(event_id, shard, epoch, start, stop, action, at)"
            " VALUES (?,?,?,?,?,?,?)",
            [(event_id, shard, epoch, a, b, action, now) for a, b in ranges],
        )

    async def assign(self, event_id: int, pieces: dict[str, tuple[int, list[Range]]]) -> None:
        """Give unassigned serials to shards: ``{shard: (epoch, ranges)}``, one commit."""
        free = (TicketState.UNASSIGNED, None, None)
        async with self.transaction() as tx:
            for shard, (epoch, ranges) in pieces.items():
                await self._move(tx, event_id, ranges, free, (TicketState.POOL, shard, epoch))
                await self._log(tx, event_id, shard, epoch, ranges, "assign")

    async def transfer(
        self, event_id: int, ranges: list[Range], src: tuple[str, int], dst: tuple[str, int]
    ) -> None:
        """Move serials released by shard ``src`` into shard ``dst``'s pool."""
        pool = TicketState.POOL
        async with self.transaction() as tx:
            await self._move(tx, event_id, ranges, (pool, *src), (pool, *dst))
            await self._log(tx, event_id, src[0], src[1], ranges, "release")
            await self._log(tx, event_id, dst[0], dst[1], ranges, "assign")

    async def reclaim(self, shard: str) -> int:
        """Fence ``shard``: bump its epoch and take its unsold pool back. Returns the epoch."""
        async with self.transaction() as tx:
            epoch = await tx._scalar(
                "UPDATE shards SET epoch = epoch + 1 WHERE name = ? RETURNING epoch", (shard,)
            )
            if epoch is None:
                raise ValueError(f"unknown shard {shard!r}")
            rows = await tx._rows(
                "UPDATE tickets SET state = ?, shard = NULL, epoch = NULL"
                " WHERE state = ? AND shard = ? RETURNING event_id",
                (TicketState.UNASSIGNED, TicketState.POOL, shard),
            )
            tx.unassigned_delta.update(r["event_id"] for r in rows)
        return int(epoch)

    # -- sales -------------------------------------------------------------------------

    async def record_sales(
        self, shard: str, epoch: int, sales: Sequence[Sale], hold_seconds: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Record a shard's batch of grants as held orders.

        Returns (accepted orders, refusals, the newly created orders among the
        accepted); the decision is :func:`~.decide.decide_sales`. Batches that
        arrive while a commit runs share the next one (:mod:`.group`).
        """
        return await self._sales.submit(SalesBatch(shard, epoch, tuple(sales), hold_seconds))

    async def _record_group(self, batches: list[SalesBatch]) -> list[SalesResult]:
        """Several shards' batches in one transaction (one hop on SQLite), decided in
        arrival order."""
        results, written = await self.atomic(lambda tx: self._decide_group(tx, batches))
        self._wrote_orders(written)
        return results

    async def _decide_group(
        self, tx: SqlTx, batches: list[SalesBatch]
    ) -> tuple[list[SalesResult], int]:
        """The group's reads, decisions and writes (no I/O but ``tx``'s); returns the
        results and how many orders it wrote."""
        now = time.time()
        rows = await tx._rows("SELECT name, epoch FROM shards")
        epochs = {r["name"]: r["epoch"] for r in rows}
        every = [s for b in batches for s in b.sales]
        orders = ActiveOrders(await self._clashing_orders(tx, every))
        results: list[SalesResult] = []
        new: list[dict[str, Any]] = []
        for b in batches:
            decision = await self._take(tx, b, epochs.get(b.shard, -1), orders)
            fresh = [self._order(tx, b, s, now) for s in decision.new]
            for order in fresh:  # later batches of the group see these as taken
                orders.add(order)
            new += fresh
            results.append(([o for _, o in decision.dupes] + fresh, decision.refusals(), fresh))
        await self._insert_orders(tx, new)
        return results, len(new)

    async def _take(
        self, tx: SqlTx, b: SalesBatch, current_epoch: int, orders: ActiveOrders
    ) -> SalesDecision:
        """Decide ``b`` and hold its new sales' tickets, each only if it is in the
        shard's pool in its epoch (one conditional update: the database decides)."""
        decision = decide_sales(b.shard, b.epoch, current_epoch, b.sales, orders)
        held = await self._hold(tx, decision.new, b.shard, b.epoch)
        if len(held) < len(decision.new):
            decision.not_in_pool(held)
        return decision

    async def _clashing_orders(self, tx: SqlTx, sales: Sequence[Sale]) -> list[dict[str, Any]]:
        """The active orders of the sales' visitors and accounts (a re-sent sale's
        among them). One lookup per partial unique index: with "visitor IN OR account
        IN" SQLite scanned every active order of the event; UNION ALL, as an order
        found twice is one (by id)."""
        orders: dict[int, dict[str, Any]] = {}
        for event_id, group in _by_event(sales).items():
            for chunk in tx.chunks(group):
                parts = [tx.member("visitor", [s.visitor for s in chunk], "text")]
                accounts = [s.account for s in chunk if s.account is not None]
                if accounts:
                    parts.append(tx.member("account_id", accounts, "int"))
                for r in await tx._rows(
                    " UNION ALL ".join(
                        f"SELECT * FROM orders WHERE event_id = ? AND status IN {_ACTIVE}"
                        f" AND {cond}"
                        for cond, _ in parts
                    ),
                    [a for _, args in parts for a in (event_id, *args)],
                ):
                    orders[r["id"]] = r
        return list(orders.values())

    async def _hold(
        self, tx: SqlTx, sales: Sequence[Sale], shard: str, epoch: int
    ) -> set[tuple[int, int]]:
        """Hold the sales' tickets that are in ``shard``'s pool in ``epoch``; returns
        the (event, serial) held."""
        got: set[tuple[int, int]] = set()
        for event_id, group in _by_event(sales).items():
            for chunk in tx.chunks(group):
                serials, args = tx.member("serial", [s.serial for s in chunk], "int")
                for (serial,) in await tx._values(
                    f"UPDATE tickets SET state = ? WHERE event_id = ? AND {serials}"
                    " AND state = ? AND shard = ? AND epoch = ? RETURNING serial",
                    (TicketState.HELD, event_id, *args, TicketState.POOL, shard, epoch),
                ):
                    got.add((event_id, serial))
        return got

    @staticmethod
    def _order(tx: SqlTx, batch: SalesBatch, s: Sale, now: float) -> dict[str, Any]:
        """A new awaiting-payment order (its id comes from the database in :meth:`_hold`)."""
        return {
            "id": None,
            "event_id": s.event,
            "serial": s.serial,
            "visitor": s.visitor,
            "account_id": s.account,
            "shard": batch.shard,
            "epoch": batch.epoch,
            "price_cents": tx.price(s.event),
            "status": _AWAITING,
            "created_at": now,
            "expires_at": now + batch.hold_seconds,
            "version": 1,
        }

    async def _insert_orders(self, tx: SqlTx, new: list[dict[str, Any]]) -> None:
        """One awaiting-payment order per new sale; fills in the ids the database gave."""
        for chunk in tx.chunks(new):
            source, args = tx.rows_of(_ORDER_TYPES, chunk)
            rows = await tx._values(
                f"INSERT INTO orders({_ORDER_COLUMNS}) {source} RETURNING event_id, serial, id",
                args,
            )
            ids = {(e, s): i for e, s, i in rows}  # RETURNING's order is unspecified
            for o in chunk:
                o["id"] = ids[(o["event_id"], o["serial"])]

    # -- audit -------------------------------------------------------------------------

    async def last_sale_at(self, event_id: int) -> float | None:
        rows = await self.driver.fetch(
            "SELECT MAX(created_at) AS last FROM orders WHERE event_id = ?", (event_id,)
        )
        last = rows[0]["last"] if rows else None
        return None if last is None else float(last)

    async def audit(self, event_id: int | None = None) -> Audit:
        where, args = ("WHERE event_id = ?", (event_id,)) if event_id is not None else ("", ())
        a = Audit()
        a.total = sum(e.count for e in self._events.values() if event_id in (None, e.id))
        epochs = {s.name: s.epoch for s in await self.shards()}
        for r in await self.driver.fetch(
            f"SELECT state, shard, epoch, count(*) AS n FROM tickets {where}"
            " GROUP BY state, shard, epoch",
            args,
        ):
            state, shard, epoch, n = r["state"], r["shard"], r["epoch"], r["n"]
            if state == TicketState.UNASSIGNED:
                a.unassigned += n
            elif state == TicketState.POOL:
                a.pools[shard] = a.pools.get(shard, 0) + n
                if epochs.get(shard) != epoch:
                    a.problems.append(f"{n} tickets in {shard}'s pool carry stale epoch {epoch}")
            elif state == TicketState.HELD:
                a.held += n
            else:
                a.sold += n
        status_counts = {
            r["status"]: r["n"]
            for r in await self.driver.fetch(
                f"SELECT status, count(*) AS n FROM orders {where} GROUP BY status", args
            )
        }
        awaiting = status_counts.get(OrderStatus.AWAITING_PAYMENT, 0)
        if awaiting != a.held:
            a.problems.append(f"{a.held} tickets held but {awaiting} orders await payment")
        complete = status_counts.get(OrderStatus.COMPLETE, 0)
        if complete != a.sold:
            a.problems.append(f"{a.sold} tickets sold but {complete} orders complete")
        rows = await self.driver.fetch(f"SELECT count(*) AS n FROM tickets {where}", args)
        if int(rows[0]["n"]) != a.total:
            a.problems.append(f"{rows[0]['n']} ticket rows for a total of {a.total}")
        return a
