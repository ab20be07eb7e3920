"""What every marketplace rule is given: the ledger, a clock, the hold time, the notifier.

Rules are plain objects over these explicit dependencies, so each can be tested
with a ledger file and a fake clock: no sockets, no running main. A rule makes its
changes inside one ``ledger.transaction()`` and collects the side effects in an
:class:`Effects`; :meth:`MarketContext.finish` runs them once the commit is done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..ledger import Ledger, OrderKind, Principal
from .views import order_json

log = logging.getLogger("ticketing.market")

Clock = Callable[[], float]


@dataclass(frozen=True)
class Notice:
    """Something an open front page may want to know; ``owner`` None means everyone."""

    type: str
    data: dict[str, Any]
    owner: Principal | None = None

    def message(self) -> dict[str, Any]:
        return {"type": self.type, **self.data}


Watcher = Callable[[Notice], Awaitable[None] | None]


@dataclass
class Effects:
    """What to do once a transaction has committed."""

    notices: list[Notice] = field(default_factory=list)
    wake: bool = False  # a new hold exists: the sweeper recomputes its next deadline
    counts: list[tuple[str, int]] = field(default_factory=list)  # ("sold"|"released", event)


@dataclass
class MarketContext:
    """The explicit dependencies of the marketplace rules."""

    ledger: Ledger
    clock: Clock = time.time
    hold_seconds: float = 15 * 60
    currency: str = "EUR"
    watchers: list[Watcher] = field(default_factory=list)
    wake: Callable[[], None] = lambda: None  # the sweeper's; set when it starts
    count: Callable[[str, int], None] = lambda what, event: None  # metrics, after commit

    async def finish(self, fx: Effects) -> None:
        """Side effects of a committed change: wake the sweeper, push live notices."""
        if fx.wake:
            self.wake()
        for what, event in fx.counts:
            self.count(what, event)
        for notice in fx.notices:
            for watcher in list(self.watchers):
                try:
                    result = watcher(notice)
                    if result is not None:
                        await result
                except Exception:  # a broken watcher must not undo a committed change
                    log.exception("market watcher failed")

    async def event_names(self) -> dict[int, dict[str, Any]]:
        return {e.id: {"id": e.id, "name": e.name} for e in await self.ledger.events()}

    def order_json(
        self, kind: OrderKind, row: dict[str, Any], events: dict[int, dict[str, Any]]
    ) -> dict[str, Any]:
        return order_json(kind, row, events, now=self.clock(), currency=self.currency)
