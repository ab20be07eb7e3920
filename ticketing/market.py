"""The marketplace behind the front: accounts, checkout holds, payment, resale, waiting list.

It lives in main's process and writes to main's ledger file, inside
:meth:`Ledger.transaction` whenever tickets or orders change, so a marketplace
change and the ticket states it implies commit together.

Who owns what
-------------
A row with an ``account_id`` (order, resale order, owned ticket, listing, waiting
list entry) belongs to that account. A row without one belongs to the *visitor*
(the ``ticketing_visitor`` cookie), whoever holds that cookie, signed in or not.
Signing up or in claims the visitor's rows for the account (:meth:`Market.claim`).

Tables (next to the ledger's ``tickets`` and ``orders``)
--------------------------------------------------------
- ``owners``: who holds each *sold* ticket now (the primary buyer, or the last
  resale buyer). One row per sold ticket, checked by :meth:`Market.audit`.
- ``listings``: resale offers (``active`` -> ``locked`` by a buyer's checkout ->
  ``sold``; or ``withdrawn``). At most one open listing per ticket.
- ``resale_orders``: a buyer's checkout of a listing, with the same statuses and
  hold rules as ``orders``. A resale never touches ``tickets`` or ``orders`` (the
  ticket stays ``sold``), so the ledger audit's cross-checks stay exact.
- ``payments``: one row per charge attempt. A ``pending`` row is the order's
  payment lock: the sweeper does not expire a locked order.
- ``waitlist``: per event, in join order; ``offered`` entries got a held order.
- ``revoked_sessions``: signed-out session ids, so sign-out survives a restart.

Pay against expiry (the one outcome)
------------------------------------
``pay`` first locks the order in one transaction: it must be ``awaiting_payment``,
unexpired, unlocked (and at the client's ``version`` if given); the version is
bumped and a ``pending`` payment is written. Only then is the card charged, with
the idempotency key ``<kind>-<id>-v<version>``. A payment that locked the order
before its expiry therefore completes it even when the charge answers later; an
order the sweeper expired first is refused (409) without any charge. A decline
unlocks the order (the hold stays until its expiry; an overdue one expires at once).
A lock older than ``pay_timeout`` (a crash mid-charge) is abandoned by the sweeper,
and if a charge still succeeds for an order that is no longer payable, it is refunded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiosqlite

from .accounts import BAD_CREDENTIALS, DUPLICATE_EMAIL, Account, Accounts
from .db import open_db
from .errors import TicketingError, TokenError, ValidationError
from .ledger import Ledger, ticket_id
from .payment import PaymentDeclined, PaymentError, PaymentProvider, TestPaymentProvider
from .sessions import DEFAULT_TTL, SessionClaims, SessionManager

if TYPE_CHECKING:
    from .main_server import MainServer

log = logging.getLogger("ticketing.market")

SCHEMA = """
CREATE TABLE IF NOT EXISTS owners (
    event_id INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    visitor TEXT NOT NULL,
    account_id INTEGER,
    order_id INTEGER NOT NULL,
    resale_order_id INTEGER,
    since REAL NOT NULL,
    PRIMARY KEY (event_id, serial)
);
CREATE INDEX IF NOT EXISTS owners_by_account ON owners(account_id);
CREATE INDEX IF NOT EXISTS owners_by_visitor ON owners(visitor);
CREATE TABLE IF NOT EXISTS listings (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    visitor TEXT NOT NULL,
    account_id INTEGER,
    price_cents INTEGER NOT NULL CHECK (price_cents > 0),
    status TEXT NOT NULL CHECK (status IN ('active', 'locked', 'sold', 'withdrawn')),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS listings_one_open_per_ticket
    ON listings(event_id, serial) WHERE status IN ('active', 'locked');
CREATE INDEX IF NOT EXISTS listings_by_event ON listings(event_id, status, price_cents);
CREATE TABLE IF NOT EXISTS resale_orders (
    id INTEGER PRIMARY KEY,
    listing_id INTEGER NOT NULL REFERENCES listings(id),
    event_id INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    visitor TEXT NOT NULL,
    account_id INTEGER,
    price_cents INTEGER NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('awaiting_payment', 'complete', 'expired', 'cancelled')),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS resale_orders_one_lock
    ON resale_orders(listing_id) WHERE status = 'awaiting_payment';
CREATE INDEX IF NOT EXISTS resale_orders_by_expiry ON resale_orders(status, expires_at);
CREATE TABLE IF NOT EXISTS payments (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('order', 'resale')),
    order_id INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    amount_cents INTEGER NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('pending', 'succeeded', 'declined', 'failed', 'refunded')),
    charge_id TEXT,
    refund_id TEXT,
    message TEXT,
    started_at REAL NOT NULL,
    finished_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS payments_one_pending
    ON payments(kind, order_id) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS waitlist (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL,
    visitor TEXT NOT NULL,
    account_id INTEGER,
    status TEXT NOT NULL CHECK (status IN ('waiting', 'offered', 'left', 'skipped')),
    order_id INTEGER,
    joined_at REAL NOT NULL,
    offered_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS waitlist_one_per_visitor
    ON waitlist(event_id, visitor) WHERE status = 'waiting';
CREATE UNIQUE INDEX IF NOT EXISTS waitlist_one_per_account
    ON waitlist(event_id, account_id) WHERE status = 'waiting';
CREATE TABLE IF NOT EXISTS revoked_sessions (
    sid TEXT PRIMARY KEY,
    exp REAL NOT NULL
);
"""

# Tables whose rows a visitor can own and an account can claim.
CLAIMABLE = ("orders", "resale_orders", "owners", "listings", "waitlist")
OPEN_LISTING = ("active", "locked")
WAITLIST_SHARD = "main"  # orders offered from the waiting list were never on a shard

# Limits
MAX_PRICE_CENTS = 100_000_000
MAX_CARD_TOKEN = 128


# -- errors ------------------------------------------------------------------------


class MarketError(TicketingError):
    """A refused marketplace request; ``status`` is the HTTP status the API answers with.

    ::

        MarketError (400)
         ├── Unauthorized  401  not signed in / wrong credentials
         ├── PaymentFailed 402  the card was declined or the provider failed
         ├── Forbidden     403  someone else's order, your own listing, ...
         ├── NotFound      404
         └── Conflict      409  wrong state, locked, version mismatch, duplicate
    """

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.status} {self.message}" + (f" ({self.field})" if self.field else "")


class Unauthorized(MarketError):
    status = 401


class PaymentFailed(MarketError):
    status = 402


class Forbidden(MarketError):
    status = 403


class NotFound(MarketError):
    status = 404


class Conflict(MarketError):
    status = 409


# -- who is asking ---------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """The requester: a visitor id (cookie) and the signed-in account, if any."""

    visitor: str
    account_id: int | None = None

    def owns(self, row: dict[str, Any]) -> bool:
        """The ownership rule: the row's account if it has one, else its visitor."""
        if row["account_id"] is not None:
            return bool(row["account_id"] == self.account_id)
        return bool(row["visitor"] == self.visitor)

    def match(self, prefix: str = "") -> tuple[str, tuple[Any, ...]]:
        """SQL condition (and its parameters) for rows :meth:`owns` accepts."""
        v, a = f"{prefix}visitor", f"{prefix}account_id"
        if self.account_id is None:
            return f"({a} IS NULL AND {v} = ?)", (self.visitor,)
        return f"({a} = ? OR ({a} IS NULL AND {v} = ?))", (self.account_id, self.visitor)


def owner_of(row: dict[str, Any]) -> Principal:
    return Principal(row["visitor"], row["account_id"])


@dataclass(frozen=True)
class Notice:
    """Something an open front page may want to know; ``owner`` None means everyone."""

    type: str
    data: dict[str, Any]
    owner: Principal | None = None

    def message(self) -> dict[str, Any]:
        return {"type": self.type, **self.data}


Watcher = Callable[[Notice], Awaitable[None] | None]


@dataclass(frozen=True)
class OrderKind:
    """Primary orders and resale orders share the hold/pay/cancel/expire rules."""

    name: str
    table: str


PRIMARY = OrderKind("order", "orders")
RESALE = OrderKind("resale", "resale_orders")
KINDS = {k.name: k for k in (PRIMARY, RESALE)}


@dataclass
class _Effects:
    """What to do once a transaction has committed."""

    notices: list[Notice] = field(default_factory=list)
    restock: bool = False  # tickets went back to main's pool: refresh its counts
    wake: bool = False  # a new hold exists: the sweeper recomputes its next deadline
    events: dict[int, dict[str, Any]] | None = None  # names for notices, read once


async def fetch(
    db: aiosqlite.Connection, sql: str, args: Iterable[Any] = ()
) -> list[aiosqlite.Row]:
    """All rows of a query, as a list (rows index by position and by column name)."""
    return list(await db.execute_fetchall(sql, tuple(args)))


def parse_ticket_id(value: object) -> tuple[int, int]:
    """``"3-17"`` -> ``(3, 17)``; :class:`ValidationError` otherwise."""
    if isinstance(value, str):
        event, _, serial = value.partition("-")
        if event.isdigit() and serial.isdigit() and len(value) <= 40:
            return int(event), int(serial)
    raise ValidationError("ticket_id must look like '<event>-<serial>'", "ticket_id")


def check_price(value: object, name: str = "price_cents") -> int:
    if type(value) is not int or not 0 < value <= MAX_PRICE_CENTS:
        raise ValidationError(
            f"{name} must be a whole number of cents between 1 and {MAX_PRICE_CENTS}", name
        )
    return value


def check_version(row: dict[str, Any], version: int | None, what: str) -> None:
    """Optimistic concurrency: refuse a change based on an outdated read."""
    if version is None:
        return
    if type(version) is not int:
        raise ValidationError("version must be an integer", "version")
    if row["version"] != version:
        raise Conflict(
            f"this {what} changed since you loaded it (version {row['version']}, not {version});"
            " reload and try again",
            "version",
        )


class Market:
    """The marketplace of one main server. Started and closed by the front (``api.py``)."""

    def __init__(
        self,
        main: MainServer,
        *,
        payments: PaymentProvider | None = None,
        currency: str = "EUR",
        clock: Callable[[], float] = time.time,
        session_ttl: float = DEFAULT_TTL,
        # Timeouts
        pay_timeout: float = 120.0,
        sweep_interval: float = 5.0,
    ) -> None:
        self.main = main
        self.payments: PaymentProvider = payments or TestPaymentProvider()
        self.currency = currency
        self.clock = clock
        self.session_ttl = session_ttl
        self.pay_timeout = pay_timeout
        self.sweep_interval = sweep_interval
        self.accounts: Accounts | None = None
        self.sessions: SessionManager | None = None
        self.watchers: list[Watcher] = []
        self._accounts_db: aiosqlite.Connection | None = None
        self._wake = asyncio.Event()
        self._next_sweep = float("inf")  # when the sweeper plans to wake up on its own
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False

    # -- lifecycle -------------------------------------------------------------------

    @property
    def ledger(self) -> Ledger:
        if self.main.ledger is None:
            raise TicketingError("main server not started")
        return self.main.ledger

    async def start(self) -> None:
        """Create the tables, expire overdue holds now, then sweep on every deadline."""
        if self._started:
            return
        self._started = True
        await self.main.start()
        async with self.ledger.transaction() as db:
            await db.executescript(SCHEMA)
        # Accounts get their own connection: their commits must never land in the
        # middle of a ledger transaction on the shared one.
        self._accounts_db = await open_db(
            self.main.ledger_path, "", synchronous=self.main.synchronous
        )
        self.accounts = Accounts(self._accounts_db, clock=self.clock)
        await self.accounts.init_schema()
        assert self.main.signer is not None
        self.sessions = SessionManager(self.main.signer, ttl=self.session_ttl)
        rows = await fetch(
            self.ledger.db, "SELECT sid, exp FROM revoked_sessions WHERE exp > ?", (self.clock(),)
        )
        self.sessions.add_revocations((r[0], r[1]) for r in rows)
        self.main.sale_listeners.append(self._on_sales)
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="market-sweeper")
        log.info("market started (hold %.0fs)", self.main.hold_seconds)

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(ValueError):
            self.main.sale_listeners.remove(self._on_sales)
        for task in [self._sweeper, *self._tasks]:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._accounts_db is not None:
            await self._accounts_db.close()
            self._accounts_db = None
        log.info("market closed")

    async def __aenter__(self) -> Market:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _on_sales(self, fresh: list[dict[str, Any]]) -> None:
        # New holds: recompute the next deadline, but only when one is due before the
        # sweeper's planned wake-up (a sweep per sales batch held the ledger lock for
        # most of a flash sale).
        if min(o["expires_at"] for o in fresh) < self._next_sweep:
            self._wake.set()

    async def _finish(self, fx: _Effects) -> None:
        """Side effects of a committed change: counts, sweeper, live notices."""
        if fx.restock:
            await self.main.refresh_counts()
        if fx.wake:
            self._wake.set()
        for notice in fx.notices:
            for watcher in list(self.watchers):
                try:
                    result = watcher(notice)
                    if result is not None:
                        await result
                except Exception:  # a broken watcher must not undo a committed change
                    log.exception("market watcher failed")

    # -- accounts and sessions ----------------------------------------------------------

    def _accounts(self) -> Accounts:
        if self.accounts is None:
            raise TicketingError("market not started")
        return self.accounts

    def session(self, token: str | None) -> SessionClaims | None:
        """The valid session of a cookie value, or None (no DB lookup: a signature check)."""
        if not token or self.sessions is None:
            return None
        try:
            return self.sessions.verify(token)
        except TokenError:
            return None

    async def signup(self, email: object, password: object, p: Principal) -> tuple[Account, str]:
        """Create an account, sign it in and claim the visitor's orders and tickets."""
        try:
            account = await self._accounts().signup(email, password)  # type: ignore[arg-type]
        except ValidationError as exc:
            if exc.message == DUPLICATE_EMAIL:
                raise Conflict(exc.message, "email") from exc
            raise
        return account, await self._sign_in(account, p)

    async def signin(self, email: object, password: object, p: Principal) -> tuple[Account, str]:
        try:
            account = await self._accounts().signin(email, password)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise Unauthorized(BAD_CREDENTIALS) from exc
        return account, await self._sign_in(account, p)

    async def _sign_in(self, account: Account, p: Principal) -> str:
        await self.claim(Principal(p.visitor, account.id))
        assert self.sessions is not None
        return self.sessions.issue(account)

    async def signout(self, claims: SessionClaims | None) -> bool:
        """Revoke the session (persisted, so a restart keeps it signed out)."""
        if claims is None or self.sessions is None:
            return False
        revoked = self.sessions.revoke(claims)
        async with self.ledger.transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO revoked_sessions(sid, exp) VALUES (?, ?)",
                (claims.sid, claims.exp),
            )
            await db.execute("DELETE FROM revoked_sessions WHERE exp <= ?", (self.clock(),))
        return revoked

    async def account(self, account_id: int) -> Account | None:
        return await self._accounts().get(account_id)

    async def claim(self, p: Principal) -> int:
        """Give the visitor's account-less rows to ``p.account_id``; returns how many."""
        if p.account_id is None:
            return 0
        n = 0
        async with self.ledger.transaction() as db:
            for table in CLAIMABLE:
                # OR IGNORE: an account already waiting for that event keeps its place.
                cur = await db.execute(
                    f"UPDATE OR IGNORE {table} SET account_id = ?"
                    " WHERE visitor = ? AND account_id IS NULL",
                    (p.account_id, p.visitor),
                )
                n += cur.rowcount
        return n

    # -- reading ---------------------------------------------------------------------------

    async def _event_names(self) -> dict[int, dict[str, Any]]:
        return {e.id: {"id": e.id, "name": e.name} for e in await self.ledger.events()}

    async def _names(self, fx: _Effects) -> dict[int, dict[str, Any]]:
        if fx.events is None:
            fx.events = await self._event_names()
        return fx.events

    def order_json(
        self, kind: OrderKind, row: dict[str, Any], events: dict[int, dict[str, Any]]
    ) -> dict[str, Any]:
        now = self.clock()
        out = {
            "kind": kind.name,
            "id": row["id"],
            "ticket_id": ticket_id(row["event_id"], row["serial"]),
            "event": events.get(row["event_id"], {"id": row["event_id"]}),
            "price_cents": row["price_cents"],
            "currency": self.currency,
            "status": row["status"],
            "created_at": row["created_at"],
            "expires_at": row["expires_at"],
            "seconds_left": (
                round(max(0.0, row["expires_at"] - now), 1)
                if row["status"] == "awaiting_payment"
                else 0
            ),
            "version": row["version"],
        }
        if kind is RESALE:
            out["listing_id"] = row["listing_id"]
        return out

    async def order(self, kind_name: str, order_id: int, p: Principal) -> dict[str, Any]:
        kind = KINDS[kind_name]
        row = await self._owned(self.ledger.db, kind, order_id, p)
        return self.order_json(kind, row, await self._event_names())

    async def orders_of(self, p: Principal) -> list[dict[str, Any]]:
        """The requester's orders of both kinds, newest first."""
        where, args = p.match()
        events = await self._event_names()
        out = []
        for kind in KINDS.values():
            rows = await fetch(self.ledger.db, f"SELECT * FROM {kind.table} WHERE {where}", args)
            out += [self.order_json(kind, dict(r), events) for r in rows]
        return sorted(out, key=lambda o: -o["created_at"])

    async def tickets_of(self, p: Principal) -> list[dict[str, Any]]:
        """Sold tickets the requester holds now, with their open listing if any."""
        where, args = p.match("o.")
        events = await self._event_names()
        rows = await fetch(
            self.ledger.db,
            "SELECT o.*, l.id AS listing_id FROM owners o LEFT JOIN listings l"
            " ON l.event_id = o.event_id AND l.serial = o.serial"
            f" AND l.status IN ('active', 'locked') WHERE {where}"
            " ORDER BY o.event_id, o.serial",
            args,
        )
        listings = await self._listings_by_id([r["listing_id"] for r in rows if r["listing_id"]])
        return [
            {
                "ticket_id": ticket_id(r["event_id"], r["serial"]),
                "event": events.get(r["event_id"], {"id": r["event_id"]}),
                "order_id": r["order_id"],
                "resale_order_id": r["resale_order_id"],
                "since": r["since"],
                "listing": listings.get(r["listing_id"]) if r["listing_id"] else None,
            }
            for r in rows
        ]

    async def _owned(
        self, db: aiosqlite.Connection, kind: OrderKind, order_id: int, p: Principal
    ) -> dict[str, Any]:
        rows = await fetch(db, f"SELECT * FROM {kind.table} WHERE id = ?", (order_id,))
        if not rows:
            raise NotFound(f"no {'resale ' if kind is RESALE else ''}order {order_id}")
        row = dict(rows[0])
        if not p.owns(row):
            raise Forbidden("this order belongs to someone else")
        return row

    # -- checkout: pay, cancel, expire ------------------------------------------------------

    async def pay(
        self,
        kind_name: str,
        order_id: int,
        p: Principal,
        card: object,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Pay an order held by ``p`` (see the module docstring for the race rules)."""
        kind = KINDS[kind_name]
        if not isinstance(card, str) or not 0 < len(card) <= MAX_CARD_TOKEN:
            raise ValidationError("card must be a card token such as 'tok_visa'", "card")
        now = self.clock()
        fx = _Effects()
        overdue = False
        key, payment_id = "", None
        async with self.ledger.transaction() as db:
            order = await self._owned(db, kind, order_id, p)
            check_version(order, version, "order")
            self._check_open(order)
            if order["expires_at"] <= now:
                # Overdue but not swept yet: expiry wins, and it commits now.
                overdue = await self._close_order(db, kind, order, "expired", now, fx)
            else:
                if await self._pending(db, kind, order_id):
                    raise Conflict("a payment for this order is already in progress")
                order["version"] += 1
                await db.execute(
                    f"UPDATE {kind.table} SET version = ? WHERE id = ?",
                    (order["version"], order_id),
                )
                key = f"{kind.name}-{order_id}-v{order['version']}"
                cur = await db.execute(
                    "INSERT INTO payments(kind, order_id, idempotency_key, amount_cents, state,"
                    " started_at) VALUES (?, ?, ?, ?, 'pending', ?)",
                    (kind.name, order_id, key, order["price_cents"], now),
                )
                payment_id = cur.lastrowid
        if overdue:
            await self._finish(fx)
            raise Conflict("the hold on this order has expired; the ticket went back on sale")
        assert payment_id is not None
        # The charge and its settlement must not be cut in half by a dropped request.
        return await asyncio.shield(self._charge(kind, order, card, key, payment_id))

    async def _charge(
        self, kind: OrderKind, order: dict[str, Any], card: str, key: str, payment_id: int
    ) -> dict[str, Any]:
        charge_id: str | None = None
        failure: tuple[str, PaymentFailed] | None = None  # (payment state, error to raise)
        try:
            if order["price_cents"] > 0:
                charge = await self.payments.charge(
                    amount_cents=order["price_cents"],
                    currency=self.currency,
                    card_token=card,
                    idempotency_key=key,
                )
                charge_id = charge.id
        except PaymentDeclined as exc:
            failure = ("declined", PaymentFailed(exc.message, "card"))
        except PaymentError as exc:
            failure = ("failed", PaymentFailed(f"payment failed: {exc.message}", "card"))
        except Exception as exc:  # the provider broke: unlock, never leave it pending
            log.exception("payment provider failed")
            failure = ("failed", PaymentFailed(f"payment failed: {exc}", "card"))
        now = self.clock()
        fx = _Effects(wake=True)
        won = False
        async with self.ledger.transaction() as db:
            if failure is not None:
                await db.execute(
                    "UPDATE payments SET state = ?, message = ?, finished_at = ? WHERE id = ?",
                    (failure[0], failure[1].message, now, payment_id),
                )
                # Unlocked again: if the hold ran out meanwhile, it ends now.
                rows = await fetch(db, f"SELECT * FROM {kind.table} WHERE id = ?", (order["id"],))
                current = dict(rows[0])
                if current["status"] == "awaiting_payment" and current["expires_at"] <= now:
                    await self._close_order(db, kind, current, "expired", now, fx)
            else:
                won = await self._complete(db, kind, order, now, fx)
                await db.execute(
                    "UPDATE payments SET state = 'succeeded', charge_id = ?, finished_at = ?"
                    " WHERE id = ?",
                    (charge_id, now, payment_id),
                )
        await self._finish(fx)
        if failure is not None:
            raise failure[1]
        if not won:
            await self._refund(payment_id, charge_id)
            raise Conflict("this order could not be completed; your payment was refunded")
        return await self.order(kind.name, order["id"], owner_of(order))

    async def _refund(self, payment_id: int, charge_id: str | None) -> None:
        refund_id = None
        if charge_id is not None:
            refund_id = (await self.payments.refund(charge_id)).id
        async with self.ledger.transaction() as db:
            await db.execute(
                "UPDATE payments SET state = 'refunded', refund_id = ?, finished_at = ?"
                " WHERE id = ?",
                (refund_id, self.clock(), payment_id),
            )

    @staticmethod
    def _check_open(order: dict[str, Any]) -> None:
        status = order["status"]
        if status == "complete":
            raise Conflict("this order is already paid")
        if status == "expired":
            raise Conflict("the hold on this order has expired; the ticket went back on sale")
        if status == "cancelled":
            raise Conflict("this order was cancelled")

    async def _pending(self, db: aiosqlite.Connection, kind: OrderKind, order_id: int) -> bool:
        rows = await fetch(
            db,
            "SELECT 1 FROM payments WHERE kind = ? AND order_id = ? AND state = 'pending'",
            (kind.name, order_id),
        )
        return bool(rows)

    async def _complete(
        self,
        db: aiosqlite.Connection,
        kind: OrderKind,
        order: dict[str, Any],
        now: float,
        fx: _Effects,
    ) -> bool:
        """Paid: the order completes and the buyer holds the ticket. False if it was lost."""
        cur = await db.execute(
            f"UPDATE {kind.table} SET status = 'complete', version = version + 1"
            " WHERE id = ? AND status = 'awaiting_payment'",
            (order["id"],),
        )
        if cur.rowcount != 1:
            return False
        key = (order["event_id"], order["serial"])
        if kind is PRIMARY:
            await self._set_ticket(db, key, "held", "sold")
            await db.execute(
                "INSERT INTO owners(event_id, serial, visitor, account_id, order_id, since)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (*key, order["visitor"], order["account_id"], order["id"], now),
            )
        else:
            await db.execute(
                "UPDATE listings SET status = 'sold', version = version + 1, updated_at = ?"
                " WHERE id = ? AND status = 'locked'",
                (now, order["listing_id"]),
            )
            cur = await db.execute(
                "UPDATE owners SET visitor = ?, account_id = ?, resale_order_id = ?, since = ?"
                " WHERE event_id = ? AND serial = ?",
                (order["visitor"], order["account_id"], order["id"], now, *key),
            )
            if cur.rowcount != 1:
                raise ValueError(f"ticket {ticket_id(*key)} has no owner to sell from")
            fx.notices.append(Notice("listings", {"listing_id": order["listing_id"]}))
        return True

    async def cancel(
        self, kind_name: str, order_id: int, p: Principal, version: int | None = None
    ) -> dict[str, Any]:
        """Cancel a held order (the ticket goes back on sale), or a paid booking (refunded)."""
        kind = KINDS[kind_name]
        now = self.clock()
        fx = _Effects()
        refund: dict[str, Any] | None = None
        async with self.ledger.transaction() as db:
            order = await self._owned(db, kind, order_id, p)
            check_version(order, version, "order")
            if order["status"] == "complete":
                refund = await self._cancel_booking(db, kind, order, p, now, fx)
            else:
                self._check_open(order)
                if await self._pending(db, kind, order_id):
                    raise Conflict(
                        "a payment for this order is in progress; it cannot be cancelled"
                    )
                await self._close_order(db, kind, order, "cancelled", now, fx)
        await self._finish(fx)
        if refund is not None:
            await self._refund(refund["id"], refund["charge_id"])
        return await self.order(kind_name, order_id, p)

    async def _cancel_booking(
        self,
        db: aiosqlite.Connection,
        kind: OrderKind,
        order: dict[str, Any],
        p: Principal,
        now: float,
        fx: _Effects,
    ) -> dict[str, Any] | None:
        """A paid primary ticket still held by its buyer, unlisted: cancel and refund."""
        if kind is RESALE:
            raise Conflict("a ticket bought on resale cannot be cancelled; list it for resale")
        key = (order["event_id"], order["serial"])
        rows = await fetch(db, "SELECT * FROM owners WHERE event_id = ? AND serial = ?", key)
        if not rows or rows[0]["order_id"] != order["id"] or rows[0]["resale_order_id"]:
            raise Conflict("this ticket has been resold; the booking cannot be cancelled")
        if not p.owns(dict(rows[0])):
            raise Forbidden("this ticket belongs to someone else")
        listed = await fetch(
            db,
            "SELECT id FROM listings WHERE event_id = ? AND serial = ?"
            " AND status IN ('active', 'locked')",
            key,
        )
        if listed:
            raise Conflict("this ticket is listed for resale; withdraw the listing first")
        await db.execute("DELETE FROM owners WHERE event_id = ? AND serial = ?", key)
        await self._close_order(db, kind, order, "cancelled", now, fx, ticket_from="sold")
        paid = await fetch(
            db,
            "SELECT id, charge_id FROM payments WHERE kind = ? AND order_id = ?"
            " AND state = 'succeeded'",
            (kind.name, order["id"]),
        )
        return dict(paid[0]) if paid else None

    async def _close_order(
        self,
        db: aiosqlite.Connection,
        kind: OrderKind,
        order: dict[str, Any],
        status: str,
        now: float,
        fx: _Effects,
        *,
        ticket_from: str = "held",
    ) -> bool:
        """Expire or cancel an order and put what it held back on sale."""
        cur = await db.execute(
            f"UPDATE {kind.table} SET status = ?, version = version + 1"
            " WHERE id = ? AND status = ?",
            (status, order["id"], order["status"]),
        )
        if cur.rowcount != 1:
            return False
        if kind is PRIMARY:
            await self._release(db, order["event_id"], order["serial"], ticket_from, now, fx)
        else:
            await db.execute(
                "UPDATE listings SET status = 'active', version = version + 1, updated_at = ?"
                " WHERE id = ? AND status = 'locked'",
                (now, order["listing_id"]),
            )
            fx.notices.append(Notice("listings", {"listing_id": order["listing_id"]}))
        order = dict(order, status=status, version=order["version"] + 1)
        events = await self._names(fx)
        fx.notices.append(
            Notice("order", {"order": self.order_json(kind, order, events)}, owner_of(order))
        )
        return True

    async def _set_ticket(
        self, db: aiosqlite.Connection, key: tuple[int, int], src: str, dst: str
    ) -> None:
        extra = ", shard = NULL, epoch = NULL" if dst == "unassigned" else ""
        cur = await db.execute(
            f"UPDATE tickets SET state = ?{extra} WHERE event_id = ? AND serial = ? AND state = ?",
            (dst, *key, src),
        )
        if cur.rowcount != 1:
            raise ValueError(f"ticket {ticket_id(*key)} is not {src}")

    async def _release(
        self,
        db: aiosqlite.Connection,
        event_id: int,
        serial: int,
        src: str,
        now: float,
        fx: _Effects,
    ) -> None:
        """A ticket comes back: to the head of the waiting list, else to main's pool."""
        while True:
            rows = await fetch(
                db,
                "SELECT * FROM waitlist WHERE event_id = ? AND status = 'waiting'"
                " ORDER BY id LIMIT 1",
                (event_id,),
            )
            if not rows:
                break
            entry = dict(rows[0])
            if await self._has_ticket(db, event_id, owner_of(entry)):
                await db.execute(
                    "UPDATE waitlist SET status = 'skipped' WHERE id = ?", (entry["id"],)
                )
                continue
            price = (await fetch(db, "SELECT price_cents FROM events WHERE id = ?", (event_id,)))[
                0
            ][0]
            order = {
                "event_id": event_id,
                "serial": serial,
                "visitor": entry["visitor"],
                "account_id": entry["account_id"],
                "shard": WAITLIST_SHARD,
                "epoch": 0,
                "price_cents": price,
                "status": "awaiting_payment",
                "created_at": now,
                "expires_at": now + self.main.hold_seconds,
                "version": 1,
            }
            cur = await db.execute(
                "INSERT INTO orders(event_id, serial, visitor, account_id, shard, epoch,"
                " price_cents, status, created_at, expires_at, version) VALUES"
                " (:event_id, :serial, :visitor, :account_id, :shard, :epoch, :price_cents,"
                " :status, :created_at, :expires_at, :version)",
                order,
            )
            order["id"] = cur.lastrowid
            if src != "held":
                await self._set_ticket(db, (event_id, serial), src, "held")
            await db.execute(
                "UPDATE waitlist SET status = 'offered', order_id = ?, offered_at = ? WHERE id = ?",
                (order["id"], now, entry["id"]),
            )
            events = await self._names(fx)
            fx.notices.append(
                Notice("offer", {"order": self.order_json(PRIMARY, order, events)}, owner_of(entry))
            )
            fx.notices.append(Notice("waitlist", {"event_id": event_id}))
            fx.wake = True
            log.info(
                "ticket %s offered to waiting list entry %d",
                ticket_id(event_id, serial),
                entry["id"],
            )
            return
        await self._set_ticket(db, (event_id, serial), src, "unassigned")
        fx.restock = True

    async def _has_ticket(self, db: aiosqlite.Connection, event_id: int, p: Principal) -> bool:
        """An active order or a held ticket for the event, by visitor or by account."""
        rows = await fetch(
            db,
            "SELECT 1 FROM orders WHERE event_id = ? AND status IN ('awaiting_payment', 'complete')"
            " AND (visitor = ? OR account_id = ?)"
            " UNION ALL SELECT 1 FROM owners WHERE event_id = ? AND (visitor = ? OR account_id = ?)",
            (event_id, p.visitor, p.account_id, event_id, p.visitor, p.account_id),
        )
        return bool(rows)

    # -- the sweeper ------------------------------------------------------------------------

    async def sweep(self, now: float | None = None) -> float | None:
        """Expire every overdue, unlocked hold in one commit; returns the next deadline."""
        now = self.clock() if now is None else now
        fx = _Effects()
        async with self.ledger.transaction() as db:
            stale = await db.execute(
                "UPDATE payments SET state = 'failed', finished_at = ?,"
                " message = 'abandoned: no answer from the payment provider in time'"
                " WHERE state = 'pending' AND started_at <= ?",
                (now, now - self.pay_timeout),
            )
            if stale.rowcount:
                log.warning(
                    "%d payment locks abandoned after %.0fs", stale.rowcount, self.pay_timeout
                )
            for kind in KINDS.values():
                for row in await fetch(
                    db,
                    f"SELECT * FROM {kind.table} o WHERE status = 'awaiting_payment'"
                    f" AND expires_at <= ? AND NOT EXISTS ({self._lock_sql(kind)})",
                    (now,),
                ):
                    await self._close_order(db, kind, dict(row), "expired", now, fx)
            due = await self._next_due(db)
        await self._finish(fx)
        n = sum(1 for x in fx.notices if x.type == "order")
        if n:
            log.info("expired %d holds", n)
        return due

    @staticmethod
    def _lock_sql(kind: OrderKind) -> str:
        return (
            "SELECT 1 FROM payments p WHERE p.state = 'pending'"
            f" AND p.kind = '{kind.name}' AND p.order_id = o.id"
        )

    async def _next_due(self, db: aiosqlite.Connection) -> float | None:
        dues: list[float] = []
        for kind in KINDS.values():
            rows = await fetch(
                db,
                f"SELECT MIN(expires_at) FROM {kind.table} o WHERE status = 'awaiting_payment'"
                f" AND NOT EXISTS ({self._lock_sql(kind)})",
            )
            if rows[0][0] is not None:
                dues.append(float(rows[0][0]))
        rows = await fetch(db, "SELECT MIN(started_at) FROM payments WHERE state = 'pending'")
        if rows[0][0] is not None:
            dues.append(float(rows[0][0]) + self.pay_timeout)
        return min(dues) if dues else None

    async def _sweep_loop(self) -> None:
        while True:
            self._wake.clear()
            self._next_sweep = float("inf")  # a hold made during the sweep: sweep again
            try:
                due = await self.sweep()
            except Exception:  # keep sweeping: a stopped sweeper would hold tickets forever
                log.exception("sweep failed")
                due = None
            delay = self.sweep_interval
            if due is not None:
                delay = min(delay, due - self.clock())
            delay = max(delay, 0.005)
            self._next_sweep = self.clock() + delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    # -- resale -------------------------------------------------------------------------------

    def _listing_json(self, row: dict[str, Any], locked_until: float | None) -> dict[str, Any]:
        return {
            "id": row["id"],
            "ticket_id": ticket_id(row["event_id"], row["serial"]),
            "event_id": row["event_id"],
            "price_cents": row["price_cents"],
            "currency": self.currency,
            "status": row["status"],
            "locked_until": locked_until if row["status"] == "locked" else None,
            "version": row["version"],
            "updated_at": row["updated_at"],
        }

    async def _listings_by_id(
        self, ids: Iterable[int], p: Principal | None = None
    ) -> dict[int, dict[str, Any]]:
        ids = list(ids)
        if not ids:
            return {}
        rows = await fetch(
            self.ledger.db,
            "SELECT l.*, r.expires_at AS locked_until FROM listings l LEFT JOIN resale_orders r"
            " ON r.listing_id = l.id AND r.status = 'awaiting_payment'"
            f" WHERE l.id IN ({','.join('?' * len(ids))})",
            ids,
        )
        return {r["id"]: self._listing_view(dict(r), p) for r in rows}

    def _listing_view(self, row: dict[str, Any], p: Principal | None) -> dict[str, Any]:
        out = self._listing_json(row, row.get("locked_until"))
        if p is not None:
            out["mine"] = p.owns(row)
        return out

    async def listings(
        self,
        *,
        event_id: int | None = None,
        min_price: int | None = None,
        max_price: int | None = None,
        seller: Principal | None = None,
        viewer: Principal | None = None,
    ) -> list[dict[str, Any]]:
        """Open listings (cheapest first), or all of ``seller``'s listings."""
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if seller is not None:
            cond, cargs = seller.match("l.")
            where.append(cond)
            args += cargs
        else:
            where.append("l.status IN ('active', 'locked')")
        for cond, value in (
            ("l.event_id = ?", event_id),
            ("l.price_cents >= ?", min_price),
            ("l.price_cents <= ?", max_price),
        ):
            if value is not None:
                where.append(cond)
                args.append(value)
        rows = await fetch(
            self.ledger.db,
            "SELECT l.*, r.expires_at AS locked_until FROM listings l LEFT JOIN resale_orders r"
            " ON r.listing_id = l.id AND r.status = 'awaiting_payment'"
            f" WHERE {' AND '.join(where)} ORDER BY l.price_cents, l.id LIMIT 500",
            args,
        )
        return [self._listing_view(dict(r), viewer) for r in rows]

    async def listing(self, listing_id: int, viewer: Principal | None = None) -> dict[str, Any]:
        found = await self._listings_by_id([listing_id], viewer)
        if listing_id not in found:
            raise NotFound(f"no listing {listing_id}")
        return found[listing_id]

    async def _listing_row(self, db: aiosqlite.Connection, listing_id: int) -> dict[str, Any]:
        rows = await fetch(
            db,
            "SELECT l.*, r.expires_at AS locked_until FROM listings l LEFT JOIN resale_orders r"
            " ON r.listing_id = l.id AND r.status = 'awaiting_payment' WHERE l.id = ?",
            (listing_id,),
        )
        if not rows:
            raise NotFound(f"no listing {listing_id}")
        return dict(rows[0])

    def _check_listing_unlocked(self, row: dict[str, Any]) -> None:
        if row["status"] == "locked":
            left = max(0, round((row["locked_until"] or 0) - self.clock()))
            raise Conflict(
                "this listing is locked: a buyer is checking out"
                f" (for up to {left // 60}:{left % 60:02d} more); try again after the hold ends"
            )
        if row["status"] == "sold":
            raise Conflict("this listing is already sold")
        if row["status"] == "withdrawn":
            raise Conflict("this listing was withdrawn")

    async def create_listing(
        self, p: Principal, ticket: object, price_cents: object
    ) -> dict[str, Any]:
        """List a ticket ``p`` holds (sold to them) for resale at ``price_cents``."""
        if p.account_id is None:
            raise Unauthorized("sign in to sell a ticket")
        event_id, serial = parse_ticket_id(ticket)
        price = check_price(price_cents)
        now = self.clock()
        async with self.ledger.transaction() as db:
            rows = await fetch(
                db, "SELECT * FROM owners WHERE event_id = ? AND serial = ?", (event_id, serial)
            )
            if not rows:
                raise NotFound(
                    f"ticket {ticket_id(event_id, serial)} is not a sold ticket", "ticket_id"
                )
            owner = dict(rows[0])
            if not p.owns(owner):
                raise Forbidden("you can only list a ticket you hold", "ticket_id")
            listed = await fetch(
                db,
                "SELECT id FROM listings WHERE event_id = ? AND serial = ?"
                " AND status IN ('active', 'locked')",
                (event_id, serial),
            )
            if listed:
                raise Conflict(
                    f"this ticket is already listed (listing {listed[0][0]})", "ticket_id"
                )
            cur = await db.execute(
                "INSERT INTO listings(event_id, serial, visitor, account_id, price_cents, status,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'active', ?, ?)",
                (event_id, serial, owner["visitor"], owner["account_id"], price, now, now),
            )
            listing_id = cur.lastrowid
        assert listing_id is not None
        await self._finish(_Effects(notices=[Notice("listings", {"listing_id": listing_id})]))
        return await self.listing(listing_id, p)

    async def edit_listing(
        self, p: Principal, listing_id: int, price_cents: object, version: int | None = None
    ) -> dict[str, Any]:
        price = check_price(price_cents)
        async with self.ledger.transaction() as db:
            row = await self._seller_listing(db, listing_id, p, version)
            await db.execute(
                "UPDATE listings SET price_cents = ?, version = version + 1, updated_at = ?"
                " WHERE id = ? AND status = 'active' AND version = ?",
                (price, self.clock(), listing_id, row["version"]),
            )
        await self._finish(_Effects(notices=[Notice("listings", {"listing_id": listing_id})]))
        return await self.listing(listing_id, p)

    async def withdraw_listing(
        self, p: Principal, listing_id: int, version: int | None = None
    ) -> dict[str, Any]:
        async with self.ledger.transaction() as db:
            row = await self._seller_listing(db, listing_id, p, version)
            await db.execute(
                "UPDATE listings SET status = 'withdrawn', version = version + 1, updated_at = ?"
                " WHERE id = ? AND status = 'active' AND version = ?",
                (self.clock(), listing_id, row["version"]),
            )
        await self._finish(_Effects(notices=[Notice("listings", {"listing_id": listing_id})]))
        return await self.listing(listing_id, p)

    async def _seller_listing(
        self, db: aiosqlite.Connection, listing_id: int, p: Principal, version: int | None
    ) -> dict[str, Any]:
        """The seller's listing, unlocked and at ``version``: safe to change in this transaction."""
        row = await self._listing_row(db, listing_id)
        if not p.owns(row):
            raise Forbidden("only the seller can change this listing")
        self._check_listing_unlocked(row)
        check_version(row, version, "listing")
        return row

    async def buy_listing(self, p: Principal, listing_id: int) -> dict[str, Any]:
        """Start a resale checkout: the listing is locked for the hold time, for ``p`` only."""
        now = self.clock()
        async with self.ledger.transaction() as db:
            row = await self._listing_row(db, listing_id)
            if p.owns(row):
                raise Forbidden("you cannot buy your own listing")
            self._check_listing_unlocked(row)
            cur = await db.execute(
                "UPDATE listings SET status = 'locked', version = version + 1, updated_at = ?"
                " WHERE id = ? AND status = 'active'",
                (now, listing_id),
            )
            if cur.rowcount != 1:
                raise Conflict("this listing is no longer available")
            cur = await db.execute(
                "INSERT INTO resale_orders(listing_id, event_id, serial, visitor, account_id,"
                " price_cents, status, created_at, expires_at) VALUES"
                " (?, ?, ?, ?, ?, ?, 'awaiting_payment', ?, ?)",
                (
                    listing_id,
                    row["event_id"],
                    row["serial"],
                    p.visitor,
                    p.account_id,
                    row["price_cents"],
                    now,
                    now + self.main.hold_seconds,
                ),
            )
            order_id = cur.lastrowid
        assert order_id is not None
        await self._finish(
            _Effects(notices=[Notice("listings", {"listing_id": listing_id})], wake=True)
        )
        return await self.order(RESALE.name, order_id, p)

    # -- waiting list ------------------------------------------------------------------------

    async def _available(self, db: aiosqlite.Connection, event_id: int) -> int:
        rows = await fetch(
            db,
            "SELECT count(*) FROM tickets WHERE event_id = ? AND state IN ('unassigned', 'pool')",
            (event_id,),
        )
        return int(rows[0][0])

    async def _event_row(self, event_id: int) -> dict[str, Any]:
        event = await self.ledger.event(event_id)
        if event is None:
            raise NotFound(f"no event {event_id}")
        return event.public()

    async def join_waitlist(self, p: Principal, event_id: int) -> dict[str, Any]:
        """Join a sold-out event's waiting list; returns the entry with its position."""
        await self._event_row(event_id)
        async with self.ledger.transaction() as db:
            if await self._available(db, event_id):
                raise Conflict(
                    "tickets for this event are still on sale: get one from the start page"
                )
            if await self._has_ticket(db, event_id, p):
                raise Conflict("you already have a ticket for this event")
            where, args = p.match()
            mine = await fetch(
                db,
                f"SELECT id FROM waitlist WHERE event_id = ? AND status = 'waiting' AND {where}",
                (event_id, *args),
            )
            if mine:
                raise Conflict("you are already on this waiting list")
            await db.execute(
                "INSERT INTO waitlist(event_id, visitor, account_id, status, joined_at)"
                " VALUES (?, ?, ?, 'waiting', ?)",
                (event_id, p.visitor, p.account_id, self.clock()),
            )
        await self._finish(_Effects(notices=[Notice("waitlist", {"event_id": event_id})]))
        return await self.waitlist_status(p, event_id)

    async def waitlist_status(self, p: Principal, event_id: int) -> dict[str, Any]:
        """The requester's place: ``position`` (1 = next) or their offer, and the length."""
        await self._event_row(event_id)
        db = self.ledger.db
        where, args = p.match()
        rows = await fetch(
            db,
            f"SELECT * FROM waitlist WHERE event_id = ? AND {where}"
            " AND status IN ('waiting', 'offered') ORDER BY id DESC LIMIT 1",
            (event_id, *args),
        )
        length = (
            await fetch(
                db,
                "SELECT count(*) FROM waitlist WHERE event_id = ? AND status = 'waiting'",
                (event_id,),
            )
        )[0][0]
        out: dict[str, Any] = {"event_id": event_id, "length": length, "status": None}
        if rows:
            entry = dict(rows[0])
            out.update(status=entry["status"], joined_at=entry["joined_at"])
            if entry["status"] == "waiting":
                ahead = await fetch(
                    db,
                    "SELECT count(*) FROM waitlist WHERE event_id = ? AND status = 'waiting'"
                    " AND id <= ?",
                    (event_id, entry["id"]),
                )
                out["position"] = ahead[0][0]
            else:
                out["order_id"] = entry["order_id"]
        return out

    async def leave_waitlist(self, p: Principal, event_id: int) -> dict[str, Any]:
        where, args = p.match()
        async with self.ledger.transaction() as db:
            cur = await db.execute(
                f"UPDATE waitlist SET status = 'left' WHERE event_id = ? AND status = 'waiting'"
                f" AND {where}",
                (event_id, *args),
            )
            if cur.rowcount == 0:
                raise NotFound("you are not on this waiting list")
        await self._finish(_Effects(notices=[Notice("waitlist", {"event_id": event_id})]))
        return await self.waitlist_status(p, event_id)

    # -- events, operators and the audit ------------------------------------------------------

    async def events_overview(self) -> list[dict[str, Any]]:
        db = self.ledger.db
        available = {
            r[0]: r[1]
            for r in await fetch(
                db,
                "SELECT event_id, count(*) FROM tickets WHERE state IN ('unassigned', 'pool')"
                " GROUP BY event_id",
            )
        }
        waiting = {
            r[0]: r[1]
            for r in await fetch(
                db,
                "SELECT event_id, count(*) FROM waitlist WHERE status = 'waiting' GROUP BY event_id",
            )
        }
        return [
            dict(
                e.public(),
                currency=self.currency,
                available=available.get(e.id, 0),
                sold_out=not available.get(e.id, 0),
                waitlist=waiting.get(e.id, 0),
            )
            for e in await self.ledger.events()
        ]

    async def audit(self, event_id: int | None = None) -> dict[str, Any]:
        """The ledger's audit plus the marketplace's own cross-checks."""
        audit = (await self.ledger.audit(event_id)).as_dict()
        db = self.ledger.db
        scope = "" if event_id is None else f" AND x.event_id = {int(event_id)}"

        async def n(sql: str) -> int:
            return int((await fetch(db, sql + scope))[0][0])

        problems: list[str] = []
        owners = await n("SELECT count(*) FROM owners x WHERE 1 = 1")
        if owners != audit["sold"]:
            problems.append(f"{audit['sold']} tickets sold but {owners} have an owner")
        orphans = await n(
            "SELECT count(*) FROM owners x WHERE NOT EXISTS (SELECT 1 FROM tickets t"
            " WHERE t.event_id = x.event_id AND t.serial = x.serial AND t.state = 'sold')"
        )
        if orphans:
            problems.append(f"{orphans} owners hold a ticket that is not sold")
        locked = await n("SELECT count(*) FROM listings x WHERE status = 'locked'")
        checkouts = await n(
            "SELECT count(*) FROM resale_orders x WHERE status = 'awaiting_payment'"
        )
        if locked != checkouts:
            problems.append(f"{locked} listings locked but {checkouts} resale checkouts open")
        foreign = await n(
            "SELECT count(*) FROM listings x JOIN owners o"
            " ON o.event_id = x.event_id AND o.serial = x.serial"
            " WHERE x.status IN ('active', 'locked')"
            " AND (o.visitor != x.visitor OR o.account_id IS NOT x.account_id)"
        )
        if foreign:
            problems.append(f"{foreign} open listings are not their ticket holder's")
        for kind in KINDS.values():
            twice = await n(
                f"SELECT count(*) FROM {kind.table} x WHERE (SELECT count(*) FROM payments p"
                f" WHERE p.kind = '{kind.name}' AND p.order_id = x.id"
                " AND p.state = 'succeeded') > 1"
            )
            if twice:
                problems.append(f"{twice} {kind.table} charged more than once")
            unpaid = await n(
                f"SELECT count(*) FROM {kind.table} x WHERE status = 'complete'"
                " AND price_cents > 0 AND NOT EXISTS (SELECT 1 FROM payments p WHERE"
                f" p.kind = '{kind.name}' AND p.order_id = x.id AND p.state = 'succeeded')"
            )
            if unpaid:
                problems.append(f"{unpaid} complete {kind.table} without a payment")
        audit["market_problems"] = problems
        audit["exact"] = bool(audit["exact"]) and not problems
        return audit
