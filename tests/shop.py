"""A cluster with its marketplace and one event on sale, for the market, API and browser tests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from tests.conftest import Cluster
from ticketing.ledger import OrderKind
from ticketing.market import Market, Principal
from ticketing.market.payment import TestPaymentProvider

PASSWORD = "correct horse battery"


class Clock:
    """Real time plus an offset the test can advance."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Shop:
    """A cluster with its marketplace and one event on sale."""

    cluster: Cluster
    event: int
    clock: Clock

    @property
    def market(self) -> Market:
        assert self.cluster.redirect and self.cluster.redirect.market
        return self.cluster.redirect.market

    @property
    def payments(self) -> TestPaymentProvider:
        provider = self.market.payments
        assert isinstance(provider, TestPaymentProvider)
        return provider

    async def grant(self, p: Principal, event: int | None = None) -> dict[str, Any]:
        """A real grant on a shard (as the page's WSS request does): the held order."""
        msg = await self.request(p, event)
        assert msg["type"] == "ticket", msg
        return await self.order(msg["order_id"])

    async def request(self, p: Principal, event: int | None = None) -> dict[str, Any]:
        """One ticket request on the first shard; the message the page would get."""
        waiter = self.cluster.shards[0].enqueue(p.visitor, event or self.event, p.account_id)
        return await asyncio.wait_for(waiter.future, 20)

    async def order(self, order_id: int, kind: str = "order") -> dict[str, Any]:
        """The order's row, as the ledger has it."""
        row = await self.market.ledger.reader().order(OrderKind(kind), order_id)
        assert row is not None
        return row

    async def payment_states(self, order_id: int, kind: str = "order") -> list[str]:
        return await self.market.ledger.reader().payment_states(OrderKind(kind), order_id)

    async def ticket_state(self, event: int, serial: int) -> str:
        return str(await self.market.ledger.reader().ticket_state(event, serial))

    async def buy(self, p: Principal) -> dict[str, Any]:
        """Grant and pay: ``p`` holds a sold ticket."""
        order = await self.grant(p)
        return await self.market.pay("order", order["id"], p, "tok_visa")

    async def assert_exact(self) -> dict[str, Any]:
        audit = await self.market.audit()
        assert audit["exact"], audit
        return audit


async def open_shop(
    make_cluster: Any,
    *,
    tickets: int = 5,
    hold: float = 60.0,
    price: str = "25.00",
    shards: int = 1,
) -> Shop:
    cluster = await make_cluster(shards, redirect=True, hold_seconds=hold)
    event = await cluster.main.init_tickets("Opening night", "General admission", price, tickets)
    await cluster.main.distribute_tickets()
    clock = Clock()
    shop = Shop(cluster, event, clock)
    shop.market.clock = clock
    return shop


class GatedProvider(TestPaymentProvider):
    """The test provider, but each charge waits at a gate the test opens."""

    def __init__(self) -> None:
        super().__init__()
        self.charging = asyncio.Event()  # a charge has reached the provider
        self.gate = asyncio.Event()

    async def charge(self, **kwargs: Any) -> Any:
        self.charging.set()
        await self.gate.wait()
        return await super().charge(**kwargs)


def when_closed(market: Market, order_id: int) -> asyncio.Future[dict[str, Any]]:
    """Resolves with the order when the market reports it expired or cancelled."""
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def watch(notice: Any) -> None:
        order = notice.data.get("order", {})
        if notice.type == "order" and order.get("id") == order_id and not done.done():
            done.set_result(order)

    market.watchers.append(watch)
    return done


def visitor(name: str) -> Principal:
    return Principal(f"visitor-{name}-".ljust(22, "0"))  # the dash keeps names distinct


def signed_in(name: str, account_id: int) -> Principal:
    """A signed-in buyer as the rules see one (no account row: the rules need only the id)."""
    return Principal(visitor(name).visitor, 10_000 + account_id)


async def account(shop: Shop, name: str) -> Principal:
    """A signed-up account with its own visitor id."""
    p = visitor(name)
    acct, _ = await shop.market.signup(f"{name}@example.com", PASSWORD, p)
    return Principal(p.visitor, acct.id)
