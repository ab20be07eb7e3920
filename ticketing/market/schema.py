"""The marketplace's tables, next to the ledger's ``tickets`` and ``orders``.

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
"""

from __future__ import annotations

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
