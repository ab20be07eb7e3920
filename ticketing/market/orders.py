"""Reading orders (both kinds) with the ownership rule applied."""

from __future__ import annotations

from typing import Any

from ..ledger import LedgerTx, OrderKind, Principal
from .errors import Forbidden, NotFound


async def owned(tx: LedgerTx, kind: OrderKind, order_id: int, p: Principal) -> dict[str, Any]:
    """The order if ``p`` owns it; :class:`NotFound` / :class:`Forbidden` otherwise."""
    row = await tx.order(kind, order_id)
    if row is None:
        raise NotFound(f"no {'resale ' if kind is OrderKind.RESALE else ''}order {order_id}")
    if not p.owns(row):
        raise Forbidden("this order belongs to someone else")
    return row
