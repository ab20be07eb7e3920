"""CPU per ticket per role, and the projected ceiling of a bigger cluster: plain
arithmetic on what a run measured, so tests can check it by hand.

The projection is *not* a measurement. It assumes every role's CPU per sold ticket
stays what this run measured (the same visitors-to-tickets mix, no new contention),
that each process gets a whole core, that fronts and shards scale out linearly,
that main is one process (one core, the ledger beside it) and that the network is
not the limit. Load generators stand for the browsers: they are not the cluster's.

Main's CPU is modelled from what it does (:class:`MainCost`): a *fixed* load per
linked front or shard whatever is sold (heartbeats, the view pusher's ticks, timers:
measured with nothing sold just before the load, charged per link: an upper bound),
a load per front while a sale runs (line reports, view pushes), a cost per shard
report (a commit, a round trip) and a cost per sale. Per report and per sale come
from two short ``--mode ledger`` runs at small and full batches; per front is what
main spent in the e2e run beyond the other three. A shard reports at most once per
linger (plus full batches at once), so main's cost per report does not grow with
the rate: in a bigger cluster batches grow instead. Without those measurements
(``--fronts 0``, or none made) main's CPU beyond its fixed load is taken as constant
per ticket, which errs on main's expensive side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_CORES = 64
MAIN = "main"
FRONTS = "fronts"
SHARDS = "shards"

FORMULA = (
    "tickets/s = max over f + s = C - 1 of min(f / F, s / S, M(f, s)); "
    "M(f, s) = (1 - z (f + s) - y f - r s / L) / (m + r / B): what main's one core takes; "
    "F, S = measured CPU s per sold ticket of all fronts, all shards; "
    "z = main's fixed CPU s per second per linked front or shard (nothing sold); "
    "y = main's CPU s per second per front during the sale (line reports, view pushes); "
    "r = main's CPU s per shard report beyond its sales, m = per sale (two --mode ledger runs); "
    "L = a shard's report linger, B = a full batch (reported at once); "
    "without r: m = main's CPU per ticket beyond its fixed load, y = 0"
)


@dataclass(frozen=True)
class MainCost:
    """Main's CPU seconds: per sale, per shard report, per second per link and per front."""

    per_sale: float  # m
    per_link: float = 0.0  # z: fixed, with nothing sold
    per_front: float = 0.0  # y: while a sale runs
    per_report: float = 0.0  # r: beyond the report's sales
    linger: float = 0.0  # L: a shard reports at most once per linger (0: r unused)
    batch: int = 256  # B: a full batch goes at once

    def capacity(self, fronts: int, shards: int) -> float:
        """Tickets/s main's one core takes with ``fronts`` and ``shards`` linked."""
        reports = shards / self.linger if self.linger > 0 and self.per_report > 0 else 0.0
        spare = 1.0 - self.per_link * (fronts + shards) - self.per_front * fronts
        spare -= reports * self.per_report
        per_ticket = self.per_sale + self.per_report / self.batch
        if spare <= 0:
            return 0.0
        return spare / per_ticket if per_ticket > 0 else float("inf")

    def as_us(self) -> dict[str, float]:
        return {
            "m_us": round(1e6 * self.per_sale, 1),
            "r_us": round(1e6 * self.per_report, 1),
            "z_ms_per_s": round(1e3 * self.per_link, 3),
            "y_ms_per_s": round(1e3 * self.per_front, 3),
            "linger_s": self.linger,
            "batch": self.batch,
        }


@dataclass(frozen=True)
class Projection:
    """The best split of ``cores`` among main, fronts and shards, and what limits it."""

    cores: int
    tickets_per_s: float
    fronts: int  # cores (processes) given to fronts
    shards: int
    limited_by: str  # MAIN, FRONTS or SHARDS
    cost_us: dict[str, float]  # the measured inputs, CPU µs per sold ticket per role
    main_fixed_ms_per_s: float = 0.0  # z (C - 1): main's fixed load in this cluster
    main: dict[str, float] | None = None  # the inputs of main's capacity (MainCost)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "formula": FORMULA, "kind": "projection, not a measurement"}


def per_ticket_us(cpu_s: Mapping[str, float], tickets: int) -> dict[str, float]:
    """Each process's CPU seconds as µs per sold ticket (empty when nothing was sold)."""
    if tickets <= 0:
        return {}
    return {name: round(1e6 * s / tickets, 1) for name, s in cpu_s.items()}


def role_of(name: str) -> str | None:
    """Which role a measured process plays: main (also main+redirect), fronts, shards; None
    for load generators and the harness."""
    if name.startswith("main"):
        return MAIN
    if name.startswith("front-") or name == "redirect":
        return FRONTS
    if name.startswith("shard-"):
        return SHARDS
    return None


def role_costs(cpu_s: Mapping[str, float], tickets: int) -> dict[str, float]:
    """CPU s per sold ticket of each role, summed over its processes (0 for a role absent)."""
    out = dict.fromkeys((MAIN, FRONTS, SHARDS), 0.0)
    for name, s in cpu_s.items():
        role = role_of(name)
        if role is not None and tickets > 0:
            out[role] += s / tickets
    return out


def project_ceiling(
    main: float | MainCost, fronts: float, shards: float, cores: int, *, main_fixed: float = 0.0
) -> Projection:
    """Tickets/s of a ``cores``-core cluster given each role's CPU s per sold ticket.

    Main gets one core (it is one process): ``main`` is its :class:`MainCost`, or
    its CPU s per ticket beyond its fixed load, ``main_fixed`` CPU s per second for
    each of the other processes. The other ``cores - 1`` are split into whole front
    and shard processes, trying every split (a role that costs nothing, e.g. fronts
    when the front runs inside main, gets none). Ties in the limit go to main, then
    shards: the role that would have to get cheaper.
    """
    if cores < 2 and (fronts > 0 or shards > 0):
        raise ValueError("a cluster needs at least 2 cores: main and one more process")
    cost_main = main if isinstance(main, MainCost) else MainCost(main, per_link=main_fixed)
    rest = cores - 1
    # Ties (main limits several splits alike) go to the split best for fronts and shards.
    best: tuple[float, float, int, int, str] = (-1.0, -1.0, 0, 0, SHARDS)
    for f in range(rest + 1):
        s = rest - f
        if (fronts > 0 and f == 0) or (shards > 0 and s == 0):
            continue  # a role with work needs at least one process
        cap_f = f / fronts if fronts > 0 else float("inf")
        cap_s = s / shards if shards > 0 else float("inf")
        cap_m = cost_main.capacity(f, s)
        edge = min(cap_f, cap_s)
        rate = min(edge, cap_m)
        if (rate, edge) > best[:2]:
            limit = MAIN if cap_m <= edge else SHARDS if cap_s <= cap_f else FRONTS
            best = (rate, edge, f, s, limit)
    rate, _, f, s, limit = best
    cost = {MAIN: cost_main.per_sale, FRONTS: fronts, SHARDS: shards}
    return Projection(
        cores=cores,
        tickets_per_s=round(max(0.0, rate), 1),
        fronts=f,
        shards=s,
        limited_by=limit,
        cost_us={k: round(v * 1e6, 1) for k, v in cost.items()},
        main_fixed_ms_per_s=round(1e3 * cost_main.per_link * rest, 2),
        main=cost_main.as_us(),
    )
