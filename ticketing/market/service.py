"""The :class:`Market`: the rules wired together, with their lifecycle and JSON views.

The rules (:class:`~.holds.Holds`, :class:`~.checkout.Checkout`,
:class:`~.resale.Resale`, :class:`~.waitlist.Waitlist`, :class:`~.signin.Signin`)
are plain objects over a :class:`~.context.MarketContext`; this class builds them
once its host (main) has opened the ledger, and answers the API in JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..ledger import Ledger, OrderKind, Principal, SqlLedger
from ..metrics import MainMetrics
from ..tokens import TokenSigner
from ..wire import SessionClaims
from .accounts import Account, Accounts, SigninThrottle
from .checkout import Checkout
from .context import Clock, MarketContext, Watcher, log
from .errors import NotFound
from .holds import Holds
from .orders import owned
from .overview import audit, events_overview
from .payment import PaymentProvider, TestPaymentProvider
from .resale import Resale
from .sessions import DEFAULT_TTL, SessionManager
from .signin import Signin
from .views import listing_json, ticket_json
from .waitlist import Waitlist


class MarketHost(Protocol):
    """What the market needs of the process it runs in (:class:`~ticketing.main.MainServer`)."""

    ledger: SqlLedger | None
    signer: TokenSigner | None
    hold_seconds: float
    sale_listeners: list[Callable[[list[dict[str, Any]]], Any]]
    metrics: MainMetrics

    async def start(self) -> None: ...


class Market:
    """The marketplace of one main server. Started and closed by the front (``api.py``)."""

    def __init__(
        self,
        main: MarketHost,
        *,
        payments: PaymentProvider | None = None,
        currency: str = "EUR",
        clock: Clock | None = None,
        session_ttl: float = DEFAULT_TTL,
        # Timeouts
        pay_timeout: float = 120.0,
        sweep_interval: float = 5.0,
    ) -> None:
        self.main = main
        self._payments: PaymentProvider = payments or TestPaymentProvider()
        self.currency = currency
        self.session_ttl = session_ttl
        self.pay_timeout, self.sweep_interval = pay_timeout, sweep_interval
        self.watchers: list[Watcher] = []
        self.throttle = SigninThrottle()
        self._clock = clock
        self._ctx: MarketContext | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # -- wiring and lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Wire the rules over main's ledger, expire overdue holds now, then sweep."""
        if self._ctx is not None:
            return
        await self.main.start()
        assert self.main.ledger is not None and self.main.signer is not None
        ctx = MarketContext(
            self.main.ledger,
            hold_seconds=self.main.hold_seconds,
            currency=self.currency,
            watchers=self.watchers,
            count=self.main.metrics.count_ticket,
        )
        if self._clock is not None:
            ctx.clock = self._clock
        accounts = Accounts(self.main.ledger.driver, clock=ctx.clock)
        await accounts.init_schema()
        sessions = SessionManager(self.main.signer, ttl=self.session_ttl)
        self.holds = Holds(ctx, pay_timeout=self.pay_timeout, sweep_interval=self.sweep_interval)
        self.checkout = Checkout(ctx, self.holds, self._payments)
        self.resale = Resale(ctx)
        self.waitlist = Waitlist(ctx)
        self.signins = Signin(ctx, accounts, sessions, self.holds, self.throttle)
        await self.signins.load_revocations()
        self._ctx = ctx
        self.main.sale_listeners.append(self.holds.on_sales)
        await self.holds.sweep()
        self._sweeper = asyncio.create_task(self.holds.run(), name="market-sweeper")
        log.info("market started (hold %.0fs)", ctx.hold_seconds)

    async def close(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            return
        with contextlib.suppress(ValueError):
            self.main.sale_listeners.remove(self.holds.on_sales)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        log.info("market closed")

    async def __aenter__(self) -> Market:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def ctx(self) -> MarketContext:
        if self._ctx is None:
            raise RuntimeError("market not started")
        return self._ctx

    @property
    def ledger(self) -> Ledger:
        return self.ctx.ledger

    @property
    def clock(self) -> Clock:
        return self.ctx.clock if self._ctx is not None else (self._clock or time.time)

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._clock = clock
        if self._ctx is not None:
            self._ctx.clock = clock

    @property
    def payments(self) -> PaymentProvider:
        return self._payments

    @payments.setter
    def payments(self, provider: PaymentProvider) -> None:
        self._payments = provider
        if self._ctx is not None:
            self.checkout.payments = provider

    @property
    def sessions(self) -> SessionManager:
        return self.signins.sessions

    @property
    def accounts(self) -> Accounts:
        return self.signins.accounts

    async def sweep(self, now: float | None = None) -> float | None:
        return await self.holds.sweep(now)

    # -- accounts ------------------------------------------------------------------------

    def session(self, token: str | None) -> SessionClaims | None:
        return self.signins.session(token) if self._ctx is not None else None

    async def signup(self, email: object, password: object, p: Principal) -> tuple[Account, str]:
        return await self.signins.signup(email, password, p)

    async def signin(
        self, email: object, password: object, p: Principal, address: str = ""
    ) -> tuple[Account, str]:
        return await self.signins.signin(email, password, p, address)

    async def signout(self, claims: SessionClaims | None) -> bool:
        return await self.signins.signout(claims)

    async def account(self, account_id: int) -> Account | None:
        return await self.accounts.get(account_id)

    # -- orders ----------------------------------------------------------------------------

    async def order(self, kind: str, order_id: int, p: Principal) -> dict[str, Any]:
        row = await owned(self.ledger.reader(), OrderKind(kind), order_id, p)
        return self.ctx.order_json(OrderKind(kind), row, await self.ctx.event_names())

    async def orders_of(self, p: Principal) -> list[dict[str, Any]]:
        """The requester's orders of both kinds, newest first."""
        events = await self.ctx.event_names()
        tx = self.ledger.reader()
        out = [
            self.ctx.order_json(kind, row, events)
            for kind in OrderKind
            for row in await tx.orders_of(kind, p)
        ]
        return sorted(out, key=lambda o: -o["created_at"])

    async def pay(
        self, kind: str, order_id: int, p: Principal, card: object, version: int | None = None
    ) -> dict[str, Any]:
        row = await self.checkout.pay(OrderKind(kind), order_id, p, card, version)
        return self.ctx.order_json(OrderKind(kind), row, await self.ctx.event_names())

    async def cancel(
        self, kind: str, order_id: int, p: Principal, version: int | None = None
    ) -> dict[str, Any]:
        await self.checkout.cancel(OrderKind(kind), order_id, p, version)
        return await self.order(kind, order_id, p)

    async def tickets_of(self, p: Principal) -> list[dict[str, Any]]:
        """Sold tickets the requester holds now, with their open listing if any."""
        tx = self.ledger.reader()
        rows = await tx.tickets_of(p)
        listings = await self._listings_by_id([r["listing_id"] for r in rows if r["listing_id"]])
        events = await self.ctx.event_names()
        return [ticket_json(r, events, listings.get(r["listing_id"])) for r in rows]

    # -- resale ------------------------------------------------------------------------------

    async def _listings_by_id(
        self, ids: list[int], viewer: Principal | None = None
    ) -> dict[int, dict[str, Any]]:
        rows = await self.ledger.reader().listings_by_id(ids)
        return {r["id"]: listing_json(r, currency=self.currency, viewer=viewer) for r in rows}

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
        rows = await self.ledger.reader().find_listings(
            event_id=event_id, min_price=min_price, max_price=max_price, seller=seller
        )
        return [listing_json(r, currency=self.currency, viewer=viewer) for r in rows]

    async def listing(self, listing_id: int, viewer: Principal | None = None) -> dict[str, Any]:
        found = await self._listings_by_id([listing_id], viewer)
        if listing_id not in found:
            raise NotFound(f"no listing {listing_id}")
        return found[listing_id]

    async def create_listing(
        self, p: Principal, ticket: object, price_cents: object
    ) -> dict[str, Any]:
        return await self.listing(await self.resale.create(p, ticket, price_cents), p)

    async def edit_listing(
        self, p: Principal, listing_id: int, price_cents: object, version: int | None = None
    ) -> dict[str, Any]:
        await self.resale.edit(p, listing_id, price_cents, version)
        return await self.listing(listing_id, p)

    async def withdraw_listing(
        self, p: Principal, listing_id: int, version: int | None = None
    ) -> dict[str, Any]:
        await self.resale.withdraw(p, listing_id, version)
        return await self.listing(listing_id, p)

    async def buy_listing(self, p: Principal, listing_id: int) -> dict[str, Any]:
        order_id = await self.resale.buy(p, listing_id)
        return await self.order(OrderKind.RESALE, order_id, p)

    # -- waiting list, events, audit ------------------------------------------------------

    async def join_waitlist(self, p: Principal, event_id: int) -> dict[str, Any]:
        await self.waitlist.join(p, event_id)
        return await self.waitlist.status(p, event_id)

    async def waitlist_status(self, p: Principal, event_id: int) -> dict[str, Any]:
        return await self.waitlist.status(p, event_id)

    async def leave_waitlist(self, p: Principal, event_id: int) -> dict[str, Any]:
        await self.waitlist.leave(p, event_id)
        return await self.waitlist.status(p, event_id)

    async def events_overview(self) -> list[dict[str, Any]]:
        return await events_overview(self.ctx)

    async def audit(self, event_id: int | None = None) -> dict[str, Any]:
        return await audit(self.ctx, event_id)
