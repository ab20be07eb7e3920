"""The checks of a sale, and the percentile: plain functions, so tests can feed them
broken results."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..wire import ticket_id


@dataclass
class Verdict:
    """What the checks found in a sale. ``ok`` is what the exit code reports."""

    tickets: int
    granted: int
    distinct: int
    oversold: int
    unconfirmed: int
    audit_exact: bool
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "tickets": self.tickets,
            "granted": self.granted,
            "distinct": self.distinct,
            "oversold": self.oversold,
            "unconfirmed": self.unconfirmed,
            "audit_exact": self.audit_exact,
            "ok": self.ok,
            "problems": self.problems,
        }


def check_sale(
    ticket_ids: Sequence[str], tickets: int, audit: dict[str, Any], event_id: int = 1
) -> Verdict:
    """Check one sale of ``tickets`` tickets as the visitors saw it and as the ledger has it.

    - oversold = ids granted twice + distinct ids beyond ``tickets`` (must be 0);
    - every id must be a ticket of the event (serial in ``[0, tickets)``);
    - distinct ids == grants;
    - the audit must be exact, sum to ``tickets``, and hold (held + sold) at least
      every granted ticket: a visitor told "yours" for a sale main never committed
      breaks "confirm after commit".
    """
    granted = len(ticket_ids)
    distinct = len(set(ticket_ids))
    oversold = (granted - distinct) + max(0, distinct - tickets)
    valid = {ticket_id(event_id, s) for s in range(tickets)}
    foreign = sorted(set(ticket_ids) - valid)
    committed = int(audit.get("held", 0)) + int(audit.get("sold", 0))
    unconfirmed = max(0, distinct - committed)
    exact = bool(audit.get("exact"))
    problems: list[str] = []
    if oversold:
        problems.append(
            f"oversold {oversold} (granted {granted}, distinct {distinct}, of {tickets})"
        )
    if distinct != granted:
        dupes = [t for t, n in Counter(ticket_ids).items() if n > 1]
        problems.append(f"{granted - distinct} ticket ids granted twice, e.g. {dupes[:3]}")
    if foreign:
        problems.append(f"{len(foreign)} granted ids are not tickets of the event: {foreign[:3]}")
    if not exact:
        problems.append(f"audit not exact: {'; '.join(audit.get('problems') or ['(no detail)'])}")
    if int(audit.get("total", -1)) != tickets:
        problems.append(f"audit total {audit.get('total')} != {tickets} tickets")
    if unconfirmed:
        problems.append(f"{unconfirmed} granted tickets are not held or sold in the ledger")
    return Verdict(tickets, granted, distinct, oversold, unconfirmed, exact, problems)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]
