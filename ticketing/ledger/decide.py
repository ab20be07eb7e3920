"""The decision on a shard's batch of reported sales: a plain function, no I/O."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..wire import Sale


@dataclass
class SalesDecision:
    """``new``: record these; ``dupes``: re-sent, answer with their order; ``refused``."""

    new: list[Sale] = field(default_factory=list)
    dupes: list[tuple[Sale, dict[str, Any]]] = field(default_factory=list)
    refused: list[tuple[Sale, str, dict[str, Any] | None]] = field(default_factory=list)

    def not_in_pool(self, held: Collection[tuple[int, int]]) -> None:
        """Refuse the new sales whose ticket the database did not find in the shard's
        pool (a bug, or a shard reporting what it no longer owns). A later sale of
        the same visitor in the batch stays refused as "visitor_has_ticket" without an
        order: the shard puts its ticket back and queues the visitor again, at the
        head."""
        lost = [s for s in self.new if (s.event, s.serial) not in held]
        self.new = [s for s in self.new if (s.event, s.serial) in held]
        self.refused += [(s, "not_in_pool", None) for s in lost]

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
        self.by_visitor: dict[tuple[int, str], dict[str, Any]] = {}
        self.by_account: dict[tuple[int, int], dict[str, Any]] = {}
        for order in orders:
            self.add(order)

    def add(self, order: dict[str, Any]) -> None:
        event = order["event_id"]
        self.by_visitor[(event, order["visitor"])] = order
        if order.get("account_id") is not None:
            self.by_account[(event, order["account_id"])] = order


def decide_sales(
    shard: str,
    epoch: int,
    current_epoch: int,
    sales: Sequence[Sale],
    orders: ActiveOrders | Iterable[dict[str, Any]],
) -> SalesDecision:
    """Which of ``sales`` become held orders, if their tickets are in the shard's pool.

    ``orders`` are the active orders of the sales' visitors and accounts. A re-sent
    sale (the visitor's order is for that ticket, from that shard) is answered with
    its existing order; a stale epoch, or a visitor/account that already holds a
    ticket of the event (also within this batch) is refused. Whether each ticket is
    in the shard's pool the database says as it takes it (a conditional update;
    :meth:`SalesDecision.not_in_pool`).
    """
    active = orders if isinstance(orders, ActiveOrders) else ActiveOrders(orders)
    out = SalesDecision()
    # Who won earlier in this batch (the sales path: no set built per sale).
    visitors: set[tuple[int, str]] = set()
    accounts: set[tuple[int, int]] = set()
    for sale in sales:
        visitor = (sale.event, sale.visitor)
        mine = active.by_visitor.get(visitor)
        if mine and mine["serial"] == sale.serial and mine["shard"] == shard:
            out.dupes.append((sale, mine))  # a re-sent report: answer as before
            continue
        if epoch != current_epoch:
            out.refused.append((sale, "stale_epoch", None))
            continue
        # One ticket per visitor and per signed-in account (two browsers, one person).
        account = None if sale.account is None else (sale.event, sale.account)
        if mine is None and account is not None:
            mine = active.by_account.get(account)
        if mine is not None:
            out.refused.append((sale, "visitor_has_ticket", mine))
            continue
        if visitor in visitors or (account is not None and account in accounts):
            out.refused.append((sale, "visitor_has_ticket", None))
            continue
        visitors.add(visitor)
        if account is not None:
            accounts.add(account)
        out.new.append(sale)
    return out
