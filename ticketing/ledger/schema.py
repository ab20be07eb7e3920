"""The ledger's tables, for both backends, and the ordered migrations that build them.

- ``events``, ``shards`` (with each shard's fencing ``epoch``), ``tickets`` (one row
  per ticket in exactly one state), ``slices`` (the log of slice moves), ``orders``.
- ``owners``: who holds each *sold* ticket now (the primary buyer or the last resale
  buyer); one row per sold ticket.
- ``listings``: resale offers, at most one open per ticket.
- ``resale_orders``: a buyer's checkout of a listing, with the same statuses and hold
  rules as ``orders``. A resale never touches ``tickets`` or ``orders`` (the ticket
  stays ``sold``), so the audit's cross-checks stay exact.
- ``payments``: one row per charge attempt; a ``pending`` row is the payment lock.
- ``waitlist``: per event, in join order; ``offered`` entries got a held order.
- ``revoked_sessions``: signed-out session ids, so sign-out survives a restart.

The invariants are the database's: partial unique indexes allow one active order
per ticket, per visitor and per account and event, one open listing per ticket,
one resale checkout per listing, one pending payment per order.

Schema versions: ``schema_version`` holds the version applied; :data:`MIGRATIONS`
are applied in order at start, and a ledger newer than the code is refused.
"""

from __future__ import annotations

from ..errors import ConfigError
from .driver import Driver
from .records import OrderKind
from .states import (
    ACTIVE_ORDER,
    OPEN_LISTING,
    ListingStatus,
    OrderStatus,
    PaymentState,
    TicketState,
    WaitlistStatus,
    sql_list,
)

ACTIVE = sql_list(ACTIVE_ORDER)

V1 = f"""
CREATE TABLE IF NOT EXISTS events (
    id {{ID}},
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    count INTEGER NOT NULL CHECK (count >= 0),
    created_at {{REAL}} NOT NULL
);
CREATE TABLE IF NOT EXISTS shards (
    name TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL DEFAULT 1,
    host TEXT NOT NULL,
    tls_port INTEGER NOT NULL,
    https_port INTEGER NOT NULL,
    weight {{REAL}} NOT NULL DEFAULT 1.0
);
CREATE TABLE IF NOT EXISTS tickets (
    event_id INTEGER NOT NULL REFERENCES events(id),
    serial INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN {sql_list(tuple(TicketState))}),
    shard TEXT,
    epoch INTEGER,
    PRIMARY KEY (event_id, serial)
){{NO_ROWID}};
CREATE INDEX IF NOT EXISTS tickets_by_state ON tickets(event_id, state, shard);
CREATE TABLE IF NOT EXISTS slices (
    id {{ID}},
    event_id INTEGER NOT NULL,
    shard TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    action TEXT NOT NULL,
    at {{REAL}} NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    id {{ID}},
    event_id INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    visitor TEXT NOT NULL,
    account_id INTEGER,
    shard TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    price_cents INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN {sql_list(tuple(OrderStatus))}),
    created_at {{REAL}} NOT NULL,
    expires_at {{REAL}} NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS orders_one_per_ticket
    ON orders(event_id, serial) WHERE status IN {ACTIVE};
CREATE UNIQUE INDEX IF NOT EXISTS orders_one_per_visitor
    ON orders(event_id, visitor) WHERE status IN {ACTIVE};
CREATE UNIQUE INDEX IF NOT EXISTS orders_one_per_account
    ON orders(event_id, account_id) WHERE account_id IS NOT NULL AND status IN {ACTIVE};
CREATE INDEX IF NOT EXISTS orders_by_expiry ON orders(status, expires_at);
CREATE TABLE IF NOT EXISTS owners (
    event_id INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    visitor TEXT NOT NULL,
    account_id INTEGER,
    order_id INTEGER NOT NULL,
    resale_order_id INTEGER,
    since {{REAL}} NOT NULL,
    PRIMARY KEY (event_id, serial)
);
CREATE INDEX IF NOT EXISTS owners_by_account ON owners(account_id);
CREATE INDEX IF NOT EXISTS owners_by_visitor ON owners(visitor);
CREATE TABLE IF NOT EXISTS listings (
    id {{ID}},
    event_id INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    visitor TEXT NOT NULL,
    account_id INTEGER,
    price_cents INTEGER NOT NULL CHECK (price_cents > 0),
    status TEXT NOT NULL CHECK (status IN {sql_list(tuple(ListingStatus))}),
    created_at {{REAL}} NOT NULL,
    updated_at {{REAL}} NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS listings_one_open_per_ticket
    ON listings(event_id, serial) WHERE status IN {sql_list(OPEN_LISTING)};
CREATE INDEX IF NOT EXISTS listings_by_event ON listings(event_id, status, price_cents);
CREATE TABLE IF NOT EXISTS resale_orders (
    id {{ID}},
    listing_id INTEGER NOT NULL REFERENCES listings(id),
    event_id INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    visitor TEXT NOT NULL,
    account_id INTEGER,
    price_cents INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN {sql_list(tuple(OrderStatus))}),
    created_at {{REAL}} NOT NULL,
    expires_at {{REAL}} NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS resale_orders_one_lock
    ON resale_orders(listing_id) WHERE status = '{OrderStatus.AWAITING_PAYMENT.value}';
CREATE INDEX IF NOT EXISTS resale_orders_by_expiry ON resale_orders(status, expires_at);
CREATE TABLE IF NOT EXISTS payments (
    id {{ID}},
    kind TEXT NOT NULL CHECK (kind IN {sql_list(tuple(OrderKind))}),
    order_id INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    amount_cents INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN {sql_list(tuple(PaymentState))}),
    charge_id TEXT,
    refund_id TEXT,
    message TEXT,
    started_at {{REAL}} NOT NULL,
    finished_at {{REAL}}
);
CREATE UNIQUE INDEX IF NOT EXISTS payments_one_pending
    ON payments(kind, order_id) WHERE state = '{PaymentState.PENDING.value}';
CREATE TABLE IF NOT EXISTS waitlist (
    id {{ID}},
    event_id INTEGER NOT NULL,
    visitor TEXT NOT NULL,
    account_id INTEGER,
    status TEXT NOT NULL CHECK (status IN {sql_list(tuple(WaitlistStatus))}),
    order_id INTEGER,
    joined_at {{REAL}} NOT NULL,
    offered_at {{REAL}}
);
CREATE UNIQUE INDEX IF NOT EXISTS waitlist_one_per_visitor
    ON waitlist(event_id, visitor) WHERE status = '{WaitlistStatus.WAITING.value}';
CREATE UNIQUE INDEX IF NOT EXISTS waitlist_one_per_account
    ON waitlist(event_id, account_id) WHERE status = '{WaitlistStatus.WAITING.value}';
CREATE TABLE IF NOT EXISTS revoked_sessions (
    sid TEXT PRIMARY KEY,
    exp {{REAL}} NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    id {{ID}},
    email TEXT UNIQUE NOT NULL,
    password_hash TEXT NOT NULL,
    created_at {{REAL}} NOT NULL
);
"""

# One sold ticket per event per account: claiming anonymous tickets on sign-in
# must not give an account a second one.
V2 = """
CREATE UNIQUE INDEX IF NOT EXISTS owners_one_per_account
    ON owners(event_id, account_id) WHERE account_id IS NOT NULL;
"""

# Which main leads (one row): its term and its lease (main/leader.py).
V3 = """
CREATE TABLE IF NOT EXISTS leadership (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    term INTEGER NOT NULL,
    holder TEXT NOT NULL,
    expires_at {REAL} NOT NULL
);
"""

# The waiting room's settings per event (records.Event). One ADD COLUMN per
# statement: the portable form (SQLite cannot add several in one).
V4 = """
ALTER TABLE events ADD COLUMN sale_starts_at {REAL};
ALTER TABLE events ADD COLUMN prequeue_order TEXT NOT NULL DEFAULT 'random';
ALTER TABLE events ADD COLUMN pow_bits INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN release_rate {REAL};
"""

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "ledger, marketplace and account tables", V1),
    (2, "one owned ticket per event per account", V2),
    (3, "leadership: term and lease", V3),
    (4, "waiting-room settings per event", V4),
]
LATEST = MIGRATIONS[-1][0]

DIALECTS = {
    "sqlite": {"ID": "INTEGER PRIMARY KEY", "REAL": "REAL", "NO_ROWID": " WITHOUT ROWID"},
    "postgresql": {
        "ID": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "REAL": "DOUBLE PRECISION",
        "NO_ROWID": "",
    },
}


def ddl(template: str, dialect: str) -> str:
    """A migration's DDL in one backend's dialect."""
    out = template
    for key, value in DIALECTS[dialect].items():
        out = out.replace("{" + key + "}", value)
    return out


async def schema_version(driver: Driver) -> int:
    await driver.script("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")
    rows = await driver.fetch("SELECT MAX(version) AS v FROM schema_version")
    return int(rows[0]["v"] or 0)


async def migrate(driver: Driver) -> int:
    """Apply the missing migrations in order; returns the version now in force."""
    current = await schema_version(driver)
    if current > LATEST:
        raise ConfigError(
            f"the ledger at {driver.url} has schema version {current}, newer than this"
            f" code knows ({LATEST}): upgrade ticketing before opening it"
        )
    for version, _, template in MIGRATIONS:
        if version > current:
            # One script: the DDL and its version row (one transaction on PostgreSQL).
            record = f"INSERT INTO schema_version(version) VALUES ({int(version)});"
            await driver.script(ddl(template, driver.dialect) + record)
    return max(current, LATEST)
