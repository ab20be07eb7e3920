"""For everyone and for operators: the events on sale, and the audit."""

from __future__ import annotations

from typing import Any

from .base import KINDS, MarketBase, fetch


class OverviewMixin(MarketBase):
    """Counts across events, and the marketplace's cross-checks on top of the ledger's."""

    async def events_overview(self) -> list[dict[str, Any]]:
        db = self.ledger.db
        available = {
            r[0]: r[1]
            for r in await fetch(
                db,
                "SELECT event_id, count(*) FROM tickets WHERE state IN ('unassigned', 'pool')"
                " GROUP BY event_id",
            )
        }
        waiting = {
            r[0]: r[1]
            for r in await fetch(
                db,
                "SELECT event_id, count(*) FROM waitlist WHERE status = 'waiting' GROUP BY event_id",
            )
        }
        return [
            dict(
                e.public(),
                currency=self.currency,
                available=available.get(e.id, 0),
                sold_out=not available.get(e.id, 0),
                waitlist=waiting.get(e.id, 0),
            )
            for e in await self.ledger.events()
        ]

    async def audit(self, event_id: int | None = None) -> dict[str, Any]:
        """The ledger's audit plus the marketplace's own cross-checks."""
        audit = (await self.ledger.audit(event_id)).as_dict()
        db = self.ledger.db
        scope = "" if event_id is None else f" AND x.event_id = {int(event_id)}"

        async def n(sql: str) -> int:
            return int((await fetch(db, sql + scope))[0][0])

        problems: list[str] = []
        owners = await n("SELECT count(*) FROM owners x WHERE 1 = 1")
        if owners != audit["sold"]:
            problems.append(f"{audit['sold']} tickets sold but {owners} have an owner")
        orphans = await n(
            "SELECT count(*) FROM owners x WHERE NOT EXISTS (SELECT 1 FROM tickets t"
            " WHERE t.event_id = x.event_id AND t.serial = x.serial AND t.state = 'sold')"
        )
        if orphans:
            problems.append(f"{orphans} owners hold a ticket that is not sold")
        locked = await n("SELECT count(*) FROM listings x WHERE status = 'locked'")
        checkouts = await n(
            "SELECT count(*) FROM resale_orders x WHERE status = 'awaiting_payment'"
        )
        if locked != checkouts:
            problems.append(f"{locked} listings locked but {checkouts} resale checkouts open")
        foreign = await n(
            "SELECT count(*) FROM listings x JOIN owners o"
            " ON o.event_id = x.event_id AND o.serial = x.serial"
            " WHERE x.status IN ('active', 'locked')"
            " AND (o.visitor != x.visitor OR o.account_id IS NOT x.account_id)"
        )
        if foreign:
            problems.append(f"{foreign} open listings are not their ticket holder's")
        for kind in KINDS.values():
            twice = await n(
                f"SELECT count(*) FROM {kind.table} x WHERE (SELECT count(*) FROM payments p"
                f" WHERE p.kind = '{kind.name}' AND p.order_id = x.id"
                " AND p.state = 'succeeded') > 1"
            )
            if twice:
                problems.append(f"{twice} {kind.table} charged more than once")
            unpaid = await n(
                f"SELECT count(*) FROM {kind.table} x WHERE status = 'complete'"
                " AND price_cents > 0 AND NOT EXISTS (SELECT 1 FROM payments p WHERE"
                f" p.kind = '{kind.name}' AND p.order_id = x.id AND p.state = 'succeeded')"
            )
            if unpaid:
                problems.append(f"{unpaid} complete {kind.table} without a payment")
        audit["market_problems"] = problems
        audit["exact"] = bool(audit["exact"]) and not problems
        return audit
