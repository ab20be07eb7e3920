"""``crowd`` mode (``--arrival-rate R --duration S``): a flash crowd through the waiting room.

R x S visitors arrive at a steady pace (the workers' ``rate`` mode: every visitor a
fresh :class:`~ticketing.web_client.WebClient` that waits in line like the page)
at a :class:`~ticketing.cluster.LocalCluster` (main + front in this process, K
shard processes; with ``--fronts F``, F front processes the visitors are spread
over, one line across them all). Reported, from every visitor's own record: errors and timeouts,
the sale's checks (``check_sale``), the winners' median time-to-ticket against the
time to the last ticket, first-come-first-served inversions, how true the shown
position and ETA were, and the answers' timeline.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Sequence
from statistics import median
from typing import Any

from ..cluster import LocalCluster, shard_names
from ..front.queue import QueueOptions
from ..process import raise_fd_limit, tune_gc
from .checks import check_sale, percentile
from .fault import answer_timeline, inversions
from .load import drive_visits
from .options import TARGET_FCFS_INVERSIONS, TARGET_MEDIAN_SHARE, Options
from .workspace import DataDir, machine

JITTER = 0.01  # seconds: arrivals closer than this are not told apart (see analyze_crowd)


def stat(values: Sequence[float], p: float, digits: int) -> float | None:
    """The ``p``-th percentile, rounded (None: no values)."""
    v = percentile(values, p)
    return None if v is None else round(v, digits)


def waiting_accuracy(queue: Sequence[list[float] | None]) -> dict[str, Any]:
    """Shown position vs visitors actually released ahead; shown ETA vs actual wait.

    A visitor shown position ``p`` at time ``s`` had ``p - 1`` ahead; the truth is
    how many with a lower rank were released after ``s`` (they were still ahead).
    """
    rows = [q for q in queue if q is not None and q[4] > 0]
    released = sorted((q[0], q[4]) for q in rows)  # by rank
    ranks = [r for r, _ in released]
    pos_err: list[float] = []  # |shown - true|, visitors
    rel_err: list[float] = []  # the same over the true position
    eta_err: list[float] = []
    for rank, shown_at, position, eta, released_at in rows:
        ahead = released[: bisect.bisect_left(ranks, rank)]
        truth = 1 + sum(1 for _, t in ahead if t >= shown_at)
        pos_err.append(abs(position - truth))
        rel_err.append(abs(position - truth) / truth)
        eta_err.append(abs(eta - (released_at - shown_at)))

    return {
        "queued_visitors": len(rows),
        "position_error_p50": stat(pos_err, 50, 1),  # visitors: |shown - true|
        "position_error_p95": stat(pos_err, 95, 1),
        "position_error_relative_p50": stat(rel_err, 50, 3),
        "position_error_relative_p95": stat(rel_err, 95, 3),
        "eta_error_s_p50": stat(eta_err, 50, 2),
        "eta_error_s_p95": stat(eta_err, 95, 2),
    }


def rank_inversions(kinds: Sequence[str], queue: Sequence[list[float] | None]) -> int:
    """Visitors in line refused while one ranked after them got a ticket: the order
    as the fronts saw arrivals (their stamps: when the kernel had each connection),
    without the load generator's own delay between stamping a visitor's arrival and
    its first byte on the wire."""
    ranked = [(q[0], k == "ticket") for k, q in zip(kinds, queue, strict=True) if q]
    top = max((r for r, won in ranked if won), default=None)
    return 0 if top is None else sum(1 for r, won in ranked if not won and r < top)


def hello_lag(
    arrivals: Sequence[float], queue: Sequence[list[float] | None], offset: float
) -> dict[str, float | None]:
    """Seconds from a queued visitor's arrival (the load generator's monotonic stamp)
    to its rank (the front's wall-clock stamp of its connection, µs; ``offset``: wall
    minus monotonic time on this host): the load generator's delay before its first
    byte, plus the front's before accepting it where the kernel's time is not known. An upper bound: a rank is never below a
    horizon already reported, so an old stamp's rank is later than the stamp."""
    lags = [q[0] / 1e6 - offset - a for a, q in zip(arrivals, queue, strict=True) if q]
    return {"p50": stat(lags, 50, 3), "p95": stat(lags, 95, 3)}


def analyze_crowd(visitors: dict[str, Any], clock_offset: float | None = None) -> dict[str, Any]:
    """The crowd's figures from every visitor's record (plain function); with
    ``clock_offset`` (wall minus monotonic seconds here) the lag to the fronts' stamps."""
    kinds, ends, arrivals = visitors["kinds"], visitors["ends"], visitors["arrivals"]
    t0 = min(arrivals, default=visitors["t0"])
    waits = [
        e - a for k, e, a in zip(kinds, ends, arrivals, strict=True) if k == "ticket"
    ]  # arrival to ticket, waiting room included
    last = max((e for k, e in zip(kinds, ends, strict=True) if k == "ticket"), default=t0)
    to_last = last - t0
    inv = inversions(arrivals, ends, kinds, (float("inf"), float("-inf")))["outside"]
    # The same, ignoring winners who arrived within JITTER of the refused visitor: the
    # load generator stamps arrivals before its own scheduling delays.
    latest = max((a for k, a in zip(kinds, arrivals, strict=True) if k == "ticket"), default=t0)
    beyond = sum(
        1 for k, a in zip(kinds, arrivals, strict=True) if k != "ticket" and a < latest - JITTER
    )
    share = round(median(waits) / to_last, 3) if waits and to_last > 0 else None
    # The load generator's own delay from a visitor's stamp to its first connect (the
    # rest of the lag to the front's stamp is the network and the front's accept).
    dialed = visitors.get("dialed") or arrivals
    dial_lag = [d - a for d, a in zip(dialed, arrivals, strict=True)]
    return {
        "visitors": len(kinds),
        "winners_median_s": round(median(waits), 3) if waits else None,
        "time_to_last_ticket_s": round(to_last, 3),
        "median_share": share,
        "fcfs_inversions": inv,
        "fcfs_inversions_share": round(inv / len(kinds), 4) if kinds else 0.0,
        "fcfs_inversions_beyond_jitter": beyond,
        "dial_lag_s": {"p50": stat(dial_lag, 50, 3), "p95": stat(dial_lag, 95, 3)},
        "rank_inversions": rank_inversions(kinds, visitors["queue"]),
        "hello_lag_s": None
        if clock_offset is None
        else hello_lag(arrivals, visitors["queue"], clock_offset),
        "waiting": waiting_accuracy(visitors["queue"]),
        "timeline": answer_timeline(t0, arrivals, ends, kinds),
    }


async def run_crowd(opts: Options) -> dict[str, Any]:
    raise_fd_limit()
    out: dict[str, Any] = {"mode": "crowd", "options": opts.public(), "machine": machine()}
    with DataDir(opts) as data:
        trickle = opts.queue_trickle
        cluster = LocalCluster(
            data,
            shard_names(opts.shards),
            shard_args=opts.loop_flag,
            load_test=True,
            fronts=opts.fronts,
            front_args=[*opts.loop_flag, "--queue-trickle", "on" if trickle else "off"],
            # The embedded front (--fronts 0): the load test's waiting room, trickling or not.
            redirect_options={"queue": QueueOptions(entries_per_address=None, trickle=trickle)},
        )
        async with cluster:
            main = cluster.main
            assert main is not None
            event_id = await main.init_tickets("Flash crowd", "crowd", "25.00", opts.tickets)
            await main.distribute_tickets()
            await cluster.fronts_in_sync()  # every front knows the event before GO
            tune_gc()  # main runs here: as `ticketing main` does once it is up
            servers = {
                "main" if opts.fronts else "main+front": os.getpid(),
                **{f.name: f.pid for f in cluster.front_processes},
                **{p.name: p.pid for p in cluster.processes},
            }
            load = await drive_visits(
                "crowd",
                cluster.front_urls,
                cluster.keys / "ca.crt",
                servers,
                opts,
                goal=opts.tickets,
                rate=opts.arrival_rate,
            )
            audit = (await main.audit(event_id)).as_dict()
            front = dict(main.lines.counts)  # every front's, as main released them
    visitors = load.pop("visitors")
    verdict = check_sale(load.pop("ticket_ids"), opts.tickets, audit, event_id)
    crowd = analyze_crowd(visitors, time.time() - time.monotonic())
    crowd["front"] = front  # visitors sent on at once, and released from the line
    out.update(load=load, audit=audit, verdict=verdict.as_dict(), crowd=crowd)
    out["visitors"] = visitors  # every visitor's record, for a closer look at the JSON
    problems = list(verdict.problems)
    if load["errors"]:
        problems.append(f"{load['errors']} errors or timeouts")
    out["targets"] = {
        "median_share": TARGET_MEDIAN_SHARE,
        "median_share_met": crowd["median_share"] is not None
        and crowd["median_share"] <= TARGET_MEDIAN_SHARE,
        "fcfs_inversions_share": TARGET_FCFS_INVERSIONS,
        "fcfs_met": crowd["fcfs_inversions_share"] <= TARGET_FCFS_INVERSIONS,
    }
    out["ok"] = not problems
    out["problems"] = problems
    return out
