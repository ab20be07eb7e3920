"""CPU per ticket per role, and the projected ceiling of a bigger cluster: plain
arithmetic on what a run measured, so tests can check it by hand.

The projection is *not* a measurement. It assumes every role's CPU per sold ticket
stays what this run measured (the same visitors-to-tickets mix, no new contention),
that each process gets a whole core, that fronts and shards scale out linearly,
that main is one process (one core, the ledger beside it) and that the network is
not the limit. Load generators stand for the browsers: they are not the cluster's.

Main's CPU is split in two, as measured: a *fixed* load it carries whatever is sold
(heartbeats, the view pusher's ticks, timers: measured with nothing sold just before
the load, and scaled here by the number of linked front and shard processes, as if
all of it were per link: an upper bound), and the rest of its CPU over the load
divided by the tickets sold. That rest is taken as constant per ticket, although
most of it is per ledger commit (batches grow with the rate), so at a higher rate it
would be lower: the projection errs on main's expensive side.
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
    "tickets/s = min((1 - z (C - 1)) / m, max over f + s = C - 1 of min(f / F, s / S)); "
    "F, S = measured CPU s per sold ticket of all fronts, all shards; m = main's, beyond "
    "its fixed load; z = main's fixed CPU s per second per linked front or shard; "
    "main is one process on one core, fronts and shards share the other C - 1"
)


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
    main: float, fronts: float, shards: float, cores: int, *, main_fixed: float = 0.0
) -> Projection:
    """Tickets/s of a ``cores``-core cluster given each role's CPU s per sold ticket.

    Main gets one core (it is one process), less its fixed load: ``main_fixed`` CPU
    s per second for each of the other processes; the other ``cores - 1`` are split
    into whole front and shard processes, trying every split (a role that costs
    nothing, e.g. fronts when the front runs inside main, gets none). Ties in the
    limit go to main, then shards: the role that would have to get cheaper.
    """
    if cores < 2 and (fronts > 0 or shards > 0):
        raise ValueError("a cluster needs at least 2 cores: main and one more process")
    rest = cores - 1
    spare = max(0.0, 1.0 - main_fixed * rest)  # of main's core, once its fixed load is paid
    cap_main = spare / main if main > 0 else (float("inf") if spare > 0 else 0.0)
    best: tuple[float, int, int, str] = (0.0, 0, 0, SHARDS)
    for f in range(rest + 1):
        s = rest - f
        if (fronts > 0 and f == 0) or (shards > 0 and s == 0):
            continue  # a role with work needs at least one process
        cap_f = f / fronts if fronts > 0 else float("inf")
        cap_s = s / shards if shards > 0 else float("inf")
        if min(cap_f, cap_s) > best[0]:
            best = (min(cap_f, cap_s), f, s, SHARDS if cap_s <= cap_f else FRONTS)
    rate, f, s, limit = best
    if cap_main <= rate:
        rate, limit = cap_main, MAIN
    cost = {MAIN: main, FRONTS: fronts, SHARDS: shards}
    return Projection(
        cores=cores,
        tickets_per_s=round(rate, 1),
        fronts=f,
        shards=s,
        limited_by=limit,
        cost_us={k: round(v * 1e6, 1) for k, v in cost.items()},
        main_fixed_ms_per_s=round(1e3 * main_fixed * rest, 2),
    )
