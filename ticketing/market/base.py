"""What every part of the market shares: notices, order kinds, checks, the ledger."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiosqlite

from ..errors import TicketingError, ValidationError
from ..ledger import Ledger
from .accounts import Accounts, SigninThrottle
from .errors import Conflict
from .ownership import Principal
from .payment import PaymentProvider, TestPaymentProvider
from .sessions import DEFAULT_TTL, SessionManager

if TYPE_CHECKING:
    from ..main.server import MainServer

log = logging.getLogger("ticketing.market")

# Limits
MAX_PRICE_CENTS = 100_000_000


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
class Effects:
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
        # ASCII digits only ("²".isdigit() is true), and within SQLite's integers
        if all(0 < len(n) <= 12 and n.isascii() and n.isdigit() for n in (event, serial)):
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


class MarketBase:
    """The market's state and the plumbing its parts share (see :class:`Market`)."""

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
        self.signin_throttle = SigninThrottle()
        self.sessions: SessionManager | None = None
        self.watchers: list[Watcher] = []
        self._accounts_db: aiosqlite.Connection | None = None
        self._wake = asyncio.Event()
        self._next_sweep = float("inf")  # when the sweeper plans to wake up on its own
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False

    @property
    def ledger(self) -> Ledger:
        if self.main.ledger is None:
            raise TicketingError("main server not started")
        return self.main.ledger

    async def _finish(self, fx: Effects) -> None:
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

    async def _event_names(self) -> dict[int, dict[str, Any]]:
        return {e.id: {"id": e.id, "name": e.name} for e in await self.ledger.events()}

    async def _names(self, fx: Effects) -> dict[int, dict[str, Any]]:
        if fx.events is None:
            fx.events = await self._event_names()
        return fx.events
