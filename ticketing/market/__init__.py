"""The marketplace behind the front: accounts, checkout holds, payment, resale, waiting list.

It runs in main's process. Its rules are plain objects over explicit dependencies
(:class:`~.context.MarketContext`: the ledger's storage interface, a clock, the hold
time, the watchers); the ledger is the only code that touches the tables, so a
marketplace change and the ticket states it implies commit together.

Layout
------
- :mod:`.errors`: the refusals (``MarketError`` and its HTTP statuses).
- :mod:`.context`: what every rule is given; notices and effects.
- :mod:`.checks`: input checks (prices, ticket ids, card tokens, versions).
- :mod:`.views`: orders, held tickets and listings as JSON.
- :mod:`.orders`: reading an order with the ownership rule.
- :mod:`.holds`: expiry and cancellation, the waiting-list hand-on, the sweeper.
- :mod:`.checkout`: pay and cancel (and the pay-against-expiry rules).
- :mod:`.resale`: listings. :mod:`.waitlist`: the waiting list.
- :mod:`.signin`: sign up, in, out; claiming a visitor's rows.
- :mod:`.overview`: events on sale, and the audit.
- :mod:`.accounts`, :mod:`.sessions`, :mod:`.payment`: accounts, session tokens, cards.
- :mod:`.service`: :class:`Market`, the rules wired together, with its lifecycle.
- :mod:`.api`: the REST API and the page (``page/``) on the front's app.
"""

from __future__ import annotations

from ..ledger import OrderKind, Principal, owner_of
from .checks import MAX_CARD_TOKEN, MAX_PRICE_CENTS, check_price, check_version, parse_ticket_id
from .context import Effects, MarketContext, Notice, Watcher
from .errors import (
    Conflict,
    Forbidden,
    MarketError,
    NotFound,
    PaymentFailed,
    TooManyAttempts,
    Unauthorized,
)
from .service import Market, MarketHost

__all__ = [
    "MAX_CARD_TOKEN",
    "MAX_PRICE_CENTS",
    "Conflict",
    "Effects",
    "Forbidden",
    "Market",
    "MarketContext",
    "MarketError",
    "MarketHost",
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
    "owner_of",
    "parse_ticket_id",
]
