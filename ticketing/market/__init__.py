"""The marketplace behind the front: accounts, checkout holds, payment, resale, waiting list.

It lives in main's process and writes to main's ledger file, inside
:meth:`Ledger.transaction` whenever tickets or orders change, so a marketplace
change and the ticket states it implies commit together.

Layout
------
- :mod:`.errors`: the refusals (``MarketError`` and its HTTP statuses).
- :mod:`.ownership`: who is asking (``Principal``) and which rows are theirs.
- :mod:`.schema`: the marketplace's tables.
- :mod:`.base`: notices, order kinds, shared checks, the market's state.
- :mod:`.views`: orders, held tickets and listings as JSON.
- :mod:`.signin`: accounts and sessions, claiming a visitor's rows.
- :mod:`.waitlist`: joining and leaving a sold-out event's waiting list.
- :mod:`.expiry`: the sweeper, and releasing tickets to the waiting list or the pool.
- :mod:`.checkout`: pay and cancel (and the pay-against-expiry rules).
- :mod:`.resale`: listings.
- :mod:`.overview`: events on sale, and the audit.
- :mod:`.service`: :class:`Market`, the parts assembled, with its lifecycle.
"""

from __future__ import annotations

from .base import (
    KINDS,
    MAX_PRICE_CENTS,
    PRIMARY,
    RESALE,
    Notice,
    OrderKind,
    Watcher,
    check_price,
    check_version,
    fetch,
    parse_ticket_id,
)
from .checkout import MAX_CARD_TOKEN
from .errors import (
    Conflict,
    Forbidden,
    MarketError,
    NotFound,
    PaymentFailed,
    TooManyAttempts,
    Unauthorized,
)
from .ownership import Principal, owner_of
from .schema import CLAIMABLE, OPEN_LISTING, SCHEMA, WAITLIST_SHARD
from .service import Market

__all__ = [
    "CLAIMABLE",
    "KINDS",
    "MAX_CARD_TOKEN",
    "MAX_PRICE_CENTS",
    "OPEN_LISTING",
    "PRIMARY",
    "RESALE",
    "SCHEMA",
    "WAITLIST_SHARD",
    "Conflict",
    "Forbidden",
    "Market",
    "MarketError",
    "NotFound",
    "Notice",
    "OrderKind",
    "PaymentFailed",
    "Principal",
    "TooManyAttempts",
    "Unauthorized",
    "Watcher",
    "check_price",
    "check_version",
    "fetch",
    "owner_of",
    "parse_ticket_id",
]
