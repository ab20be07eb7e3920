"""The ledger's storage interface: what main and the marketplace may ask of a backend.

:class:`Ledger` is main's face (events, shards, pools, sales, audit, each one
transaction); :class:`LedgerTx` is one unit of work of the marketplace, from
``async with ledger.transaction() as tx`` (committed at the end, rolled back on an
error) or ``ledger.reader()`` (reads, no transaction). Rows travel as plain dicts
keyed by column name. :class:`~.sql.SqlLedger` implements both over a
:class:`~.driver.Driver`: SQLite (embedded, the default) or PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from ..slices import Range
from ..wire import Sale
from .records import Audit, Event, OrderKind, Principal, ShardRecord
from .states import ListingStatus, OrderStatus, PaymentState, TicketState


class LedgerTx(Protocol):
    def price(self, event_id: int) -> int: ...

    async def set_ticket_state(
        self, event_id: int, serial: int, src: TicketState, dst: TicketState
    ) -> None:
        """Move one ticket between states; it must be in ``src``."""
        ...

    async def ticket_state(self, event_id: int, serial: int) -> str | None: ...

    async def available(self, event_id: int) -> int:
        """Tickets of the event still on sale (main's pool or a shard's)."""
        ...

    async def available_by_event(self) -> dict[int, int]: ...

    async def has_ticket(self, event_id: int, p: Principal) -> bool:
        """An active order or an owned ticket of the event, by visitor or by account."""
        ...

    async def order(self, kind: OrderKind, order_id: int) -> dict[str, Any] | None: ...

    async def orders_of(self, kind: OrderKind, p: Principal) -> list[dict[str, Any]]: ...

    async def set_order_status(
        self, kind: OrderKind, order_id: int, src: OrderStatus, dst: OrderStatus
    ) -> bool:
        """Change an order's status if it is still ``src`` (its version moves on)."""
        ...

    async def bump_order_version(self, kind: OrderKind, order_id: int) -> int: ...

    async def insert_offer(
        self, event_id: int, serial: int, owner: Principal, now: float, hold_seconds: float
    ) -> dict[str, Any]:
        """A held order for a waiting-list entry (never on a shard)."""
        ...

    async def insert_resale_order(
        self, listing: dict[str, Any], buyer: Principal, now: float, hold_seconds: float
    ) -> int: ...

    async def overdue_orders(self, kind: OrderKind, now: float) -> list[dict[str, Any]]:
        """Held orders past their expiry and not locked by a payment in progress."""
        ...

    async def next_deadline(self, pay_timeout: float) -> float | None:
        """The earliest hold expiry or payment-lock timeout still ahead, if any."""
        ...

    async def payment_pending(self, kind: OrderKind, order_id: int) -> bool: ...

    async def start_payment(
        self, kind: OrderKind, order_id: int, key: str, amount_cents: int, now: float
    ) -> int: ...

    async def finish_payment(
        self,
        payment_id: int,
        state: PaymentState,
        now: float,
        *,
        message: str | None = None,
        charge_id: str | None = None,
        refund_id: str | None = None,
    ) -> None: ...

    async def succeeded_payment(self, kind: OrderKind, order_id: int) -> dict[str, Any] | None: ...

    async def payment_states(self, kind: OrderKind, order_id: int) -> list[str]: ...

    async def abandon_stale_payments(self, started_before: float, now: float) -> int:
        """Payment locks older than the pay timeout (a crash mid-charge) are given up."""
        ...

    async def owner(self, event_id: int, serial: int) -> dict[str, Any] | None: ...

    async def add_owner(self, order: dict[str, Any], now: float) -> None: ...

    async def transfer_owner(self, resale_order: dict[str, Any], now: float) -> None:
        """The resale buyer now holds the ticket."""
        ...

    async def remove_owner(self, event_id: int, serial: int) -> None: ...

    async def tickets_of(self, p: Principal) -> list[dict[str, Any]]:
        """Sold tickets ``p`` holds, each with the id of its open listing (or None)."""
        ...

    async def listing(self, listing_id: int) -> dict[str, Any] | None:
        """A listing with ``locked_until`` (its buyer's hold expiry while locked)."""
        ...

    async def listings_by_id(self, ids: Sequence[int]) -> list[dict[str, Any]]: ...

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
        ...

    async def open_listing_id(self, event_id: int, serial: int) -> int | None: ...

    async def insert_listing(self, owner: dict[str, Any], price_cents: int, now: float) -> int: ...

    async def set_listing_status(
        self,
        listing_id: int,
        src: ListingStatus,
        dst: ListingStatus,
        now: float,
        version: int | None = None,
    ) -> bool:
        """Change a listing's status if it is still ``src`` (and at ``version`` if given)."""
        ...

    async def set_listing_price(
        self, listing_id: int, price_cents: int, version: int, now: float
    ) -> bool:
        """Only an unlocked (``active``) listing at ``version`` takes a new price."""
        ...

    async def waitlist_head(self, event_id: int) -> dict[str, Any] | None: ...

    async def waitlist_entry(self, event_id: int, p: Principal) -> dict[str, Any] | None:
        """``p``'s latest waiting or offered entry for the event, with its position."""
        ...

    async def waiting_by_event(self) -> dict[int, int]: ...

    async def join_waitlist(self, event_id: int, p: Principal, now: float) -> int: ...

    async def leave_waitlist(self, event_id: int, p: Principal) -> bool: ...

    async def skip_waitlist_entry(self, entry_id: int) -> None: ...

    async def mark_offered(self, entry_id: int, order_id: int, now: float) -> None: ...

    async def claim_conflicts(self, p: Principal) -> list[dict[str, Any]]:
        """The visitor's held orders that claiming would make a second ticket of its account."""
        ...

    async def claim(self, p: Principal) -> int:
        """Give the visitor's account-less rows to ``p.account_id``; returns how many."""
        ...

    async def revoke_session(self, sid: str, exp: float, now: float) -> None: ...

    async def revoked_sessions(self, now: float) -> list[tuple[str, float]]: ...

    async def market_problems(self, sold: int, event_id: int | None = None) -> list[str]:
        """What the marketplace's rows say that does not add up (``sold`` from the audit)."""
        ...


class Ledger(Protocol):
    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[LedgerTx]:
        """One unit of work: commit on success, roll back on any error."""
        ...

    def reader(self) -> LedgerTx:
        """Reads outside any transaction (each statement sees the last commit)."""
        ...

    async def create_event(
        self, name: str, description: str, price_cents: int, n: int
    ) -> Event: ...

    async def events(self) -> list[Event]: ...

    async def update_event(self, event_id: int, **settings: Any) -> Event:
        """Change an event's waiting-room settings (``records.WAITROOM_SETTINGS``)."""
        ...

    async def event(self, event_id: int) -> Event | None: ...

    def unassigned_count(self, event_id: int) -> int:
        """Tickets of the event in main's pool, as of the last commit (no I/O)."""
        ...

    async def register_shard(
        self, name: str, host: str, tls_port: int, https_port: int, weight: float
    ) -> ShardRecord: ...

    async def shard(self, name: str) -> ShardRecord | None: ...

    async def shards(self) -> list[ShardRecord]: ...

    async def unassigned(self, event_id: int) -> list[Range]: ...

    async def shard_pools(self, shard: str, epoch: int) -> dict[int, list[Range]]:
        """What the ledger says ``shard`` holds in its current epoch, per event."""
        ...

    async def pool_counts(self) -> dict[tuple[str, int], int]:
        """Tickets per (shard, event) still in shard pools."""
        ...

    async def assign(self, event_id: int, pieces: dict[str, tuple[int, list[Range]]]) -> None:
        """Give unassigned serials to shards: ``{shard: (epoch, ranges)}``, one commit."""
        ...

    async def transfer(
        self, event_id: int, ranges: list[Range], src: tuple[str, int], dst: tuple[str, int]
    ) -> None:
        """Move serials released by shard ``src`` into shard ``dst``'s pool."""
        ...

    async def reclaim(self, shard: str) -> int:
        """Fence ``shard``: bump its epoch and take its unsold pool back. Returns the epoch."""
        ...

    async def record_sales(
        self, shard: str, epoch: int, sales: Sequence[Sale], hold_seconds: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Record a shard's batch of grants as held orders, in one commit."""
        ...

    async def audit(self, event_id: int | None = None) -> Audit: ...

    async def last_sale_at(self, event_id: int) -> float | None:
        """When the event's newest order was recorded (wall clock), None before any."""
        ...
