"""For everyone and for operators: the events on sale, and the audit."""

from __future__ import annotations

from typing import Any

from .context import MarketContext


async def events_overview(ctx: MarketContext) -> list[dict[str, Any]]:
    """Every event with what is still available and the waiting list's length."""
    tx = ctx.ledger.reader()
    available = await tx.available_by_event()
    waiting = await tx.waiting_by_event()
    return [
        dict(
            e.public(),
            currency=ctx.currency,
            available=available.get(e.id, 0),
            sold_out=not available.get(e.id, 0),
            waitlist=waiting.get(e.id, 0),
        )
        for e in await ctx.ledger.events()
    ]


async def audit(ctx: MarketContext, event_id: int | None = None) -> dict[str, Any]:
    """The ledger's audit plus the marketplace's own cross-checks."""
    out = (await ctx.ledger.audit(event_id)).as_dict()
    problems = await ctx.ledger.reader().market_problems(out["sold"], event_id)
    out["market_problems"] = problems
    out["exact"] = bool(out["exact"]) and not problems
    return out
