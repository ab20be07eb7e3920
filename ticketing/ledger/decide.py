"""The decision on a shard's batch of reported sales: a plain function, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..wire import Sale
from .states import TicketState

# (state, shard, epoch) of a ticket row
TicketRow = tuple[str, str | None, int | None]


@dataclass
class SalesDecision:
    """``new``: record these; ``dupes``: re-sent, answer with their order; ``refused``."""

    new: list[Sale] = field(default_factory=list)
    dupes: list[tuple[Sale, dict[str, Any]]] = field(default_factory=list)
    refused: list[tuple[Sale, str, dict[str, Any] | None]] = field(default_factory=list)

    def refusals(self) -> list[dict[str, Any]]:
        """The refusals as they travel back to the shard."""
        return [
            {"event": s.event, "serial": s.serial, "reason": why, "existing": existing}
            for s, why, existing in self.refused
        ]


class ActiveOrders:
    """Active orders that may clash with new sales, indexed as the decision looks them
    up; a group commit adds each batch's new orders before deciding the next."""

    def __init__(self, orders: Iterable[dict[str, Any]] = ()) -> None:
        self.by_ticket: dict[tuple[int, int], dict[str, Any]] = {}
        self.by_visitor: dict[tuple[int, str], dict[str, Any]] = {}
        self.by_account: dict[tuple[int, int], dict[str, Any]] = {}
        for order in orders:
            self.add(order)

    def add(self, order: dict[str, Any]) -> None:
        event = order["event_id"]
        self.by_ticket[(event, order["serial"])] = order
        self.by_visitor[(event, order["visitor"])] = order
        if order.get("account_id") is not None:
            self.by_account[(event, order["account_id"])] = order


def decide_sales(
    shard: str,
    epoch: int,
    current_epoch: int,
    sales: Sequence[Sale],
    tickets: dict[tuple[int, int], TicketRow],
    orders: ActiveOrders | Iterable[dict[str, Any]],
) -> SalesDecision:
    """Which of ``sales`` become held orders.

    ``tickets`` are the rows of the reported serials, ``orders`` the active orders
    of those serials, visitors and accounts. A re-sent sale (same ticket, visitor
    and shard) is answered with its existing order; a stale epoch, a ticket not in
    that shard's pool, or a visitor/account that already holds a ticket of the
    event (also within this batch) is refused.
    """
    active = orders if isinstance(orders, ActiveOrders) else ActiveOrders(orders)
    out = SalesDecision()
    taken: set[tuple[int, str, object]] = set()
    for sale in sales:
        key = (sale.event, sale.serial)
        existing = active.by_ticket.get(key)
        if existing and existing["visitor"] == sale.visitor and existing["shard"] == shard:
            out.dupes.append((sale, existing))  # a re-sent report: answer as before
            continue
        if epoch != current_epoch:
            out.refused.append((sale, "stale_epoch", None))
            continue
        # One ticket per visitor and per signed-in account (two browsers, one person).
        mine = active.by_visitor.get((sale.event, sale.visitor))
        if mine is None and sale.account is not None:
            mine = active.by_account.get((sale.event, sale.account))
        if mine is not None:
            out.refused.append((sale, "visitor_has_ticket", mine))
            continue
        who: set[tuple[int, str, object]] = {(sale.event, "visitor", sale.visitor)}
        if sale.account is not None:
            who.add((sale.event, "account", sale.account))
        if who & taken:
            out.refused.append((sale, "visitor_has_ticket", None))
            continue
        if tickets.get(key) != (TicketState.POOL, shard, epoch):
            out.refused.append((sale, "not_in_pool", None))
            continue
        taken |= who
        out.new.append(sale)
    return out
