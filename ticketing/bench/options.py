"""What a run is asked to do: defaults, targets, :class:`Options` and its command-line
arguments."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..ledger import is_postgres
from ..ledger.driver import redact
from .projection import DEFAULT_CORES

# Defaults: the target configuration.
DEFAULT_SHARDS = 2
DEFAULT_CLIENTS = 3000
DEFAULT_TICKETS = 2000
DEFAULT_CONCURRENCY = 64
DEFAULT_WORKERS = 2
DEFAULT_MAX_SECONDS = 120.0
DEFAULT_SLOPE_TICKETS = 20_000  # e2e --fronts: the ledger run at full batches (projection)
LEDGER_TICKETS = 100_000
IDLE_CONNECTIONS = 5000
TARGET_WAITING = 20_000  # idle --waiting: visitors in a front's line within TARGET_IDLE_RSS
FAULTS = ("kill-shard", "partition-shard", "kill-main")
FAULT_TICKETS = 600
DEFAULT_ARRIVAL_RATE = 20.0  # visitors per second (the fault scenarios)
CROWD_TICKETS = 1000  # crowd mode (--arrival-rate without --fault): issue 12's scenario
DEFAULT_DURATION = 40.0  # seconds of arrivals

# Targets (reported; only the correctness checks decide the exit code).
TARGET_RATIO = 0.8  # throughput vs the bare stack, front inside main (--fronts 0)
# Issue 11's targets with front processes (--fronts F >= 1):
TARGET_RATIO_FRONTS = 0.9  # throughput vs the bare stack in the same layout
TARGET_CPU_RATIO_FRONTS = 1.3  # server CPU per ticket vs the bare stack, at most
TARGET_MAIN_US = 100.0  # main's CPU µs per sold ticket, at most
TARGET_CEILING_TPS = 10_000.0  # projected ceiling of a DEFAULT_CORES-core cluster
# durable tickets/s of the ledger alone, per backend (issue 13)
TARGET_LEDGER_TPS = {"sqlite": 40_000, "postgresql": 20_000}
TARGET_IDLE_RSS = 1 << 30  # 5,000 idle connections (20,000 waiting visitors) within 1 GiB
TARGET_MEDIAN_SHARE = 0.5  # crowd: winners' median time-to-ticket / time to the last ticket
TARGET_FCFS_INVERSIONS = 0.01  # crowd: share of visitors refused while a later one won
TARGET_FAILOVER_S = 5.0  # kill-main --standby: the kill to the new leader's first ticket


@dataclass
class Options:
    """One run of ``ticketing bench``, as the command line asked for it."""

    mode: str = "e2e"
    shards: int = DEFAULT_SHARDS
    fronts: int = 0  # front processes (0: the front runs inside main, in this process)
    cores: int = DEFAULT_CORES  # the projected ceiling's cluster size
    slope_tickets: int = DEFAULT_SLOPE_TICKETS  # e2e --fronts: main's per-report/per-sale runs
    clients: int = DEFAULT_CLIENTS
    tickets: int = DEFAULT_TICKETS
    concurrency: int = DEFAULT_CONCURRENCY
    workers: int = DEFAULT_WORKERS
    uvloop: bool = True
    max_seconds: float = DEFAULT_MAX_SECONDS
    baseline: bool = True
    rounds: int = 1
    batch: int = 256
    in_flight: int = 4
    ledger: str | None = None  # ledger mode: postgresql://... (an empty database); default SQLite
    connections: int = IDLE_CONNECTIONS
    waiting: int = 0  # idle mode: visitors waiting in a front's line instead of WSS
    progress: bool = True
    json_path: str | None = None
    keep: str | None = None  # keep the data directory here (default: a deleted temp dir)
    # Fault mode
    fault: str | None = None
    arrival_rate: float = DEFAULT_ARRIVAL_RATE
    duration: float = DEFAULT_DURATION
    queue_trickle: bool = False  # crowd: the fronts' --queue-trickle
    fault_at: float | None = None  # seconds after the first arrival (default: 40 % in)
    fault_seconds: float | None = None  # partition/main down for this long
    standby: bool = False  # kill-main: a standby main takes over (PostgreSQL ledger, fronts)
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.0
    reclaim_after: float = 10.0

    @property
    def loop_flag(self) -> list[str]:
        return ["--uvloop"] if self.uvloop else []

    def public(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("json_path", "progress")}
        if self.ledger:
            out["ledger"] = redact(self.ledger)  # reports and JSON never carry a password
        return out


def add_options(p: argparse.ArgumentParser, modes: Sequence[str]) -> None:
    """The ``bench`` command's arguments (read back by :func:`options_from_args`)."""
    p.add_argument(
        "--mode", choices=tuple(modes), default="e2e", help="what to measure (default e2e)"
    )
    # The cluster and the sale
    p.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help="K shard processes")
    p.add_argument(
        "--fronts",
        type=int,
        default=0,
        help="e2e: F front processes, and F 302 processes in the baseline; crowd: F front"
        " processes with one waiting room (default 0: the front inside main)",
    )
    p.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="N visitors")
    p.add_argument(
        "--tickets",
        type=int,
        default=None,
        help=f"M tickets (default {DEFAULT_TICKETS}; {LEDGER_TICKETS} in ledger mode)",
    )
    # The load generator
    p.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="visitors in flight (total)"
    )
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="load-generator processes")
    p.add_argument("--uvloop", choices=("on", "off"), default="on", help="every process's loop")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help="bound on each load phase; unfinished visitors count as errors",
    )
    p.add_argument("--no-baseline", action="store_true", help="e2e: skip the bare-stack run")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="e2e: baseline/ticketing pairs in ABBA order; the table shows the medians",
    )
    p.add_argument(
        "--cores",
        type=int,
        default=DEFAULT_CORES,
        help=f"e2e: cores of the cluster the projected ceiling is for (default {DEFAULT_CORES})",
    )
    p.add_argument(
        "--slope-tickets",
        type=int,
        default=DEFAULT_SLOPE_TICKETS,
        help="e2e with --fronts: tickets of the --mode ledger run at full batches that, with"
        " one at batches of 16 (a quarter as many), splits main's CPU into per report and per"
        f" sale for the projection (0: none; default {DEFAULT_SLOPE_TICKETS})",
    )
    # Ledger mode
    p.add_argument("--batch", type=int, default=256, help="ledger: sales per report")
    p.add_argument(
        "--ledger",
        metavar="URL",
        help="ledger and kill-main --standby: main's ledger at URL (postgresql://..., an empty"
        " database; default a fresh SQLite file, or with --standby a throwaway PostgreSQL"
        " server started for the run)",
    )
    p.add_argument("--in-flight", type=int, default=4, help="ledger: reports in flight per shard")
    # Idle mode
    p.add_argument(
        "--connections", type=int, default=IDLE_CONNECTIONS, help="idle: WSS connections to hold"
    )
    p.add_argument(
        "--waiting",
        type=int,
        default=0,
        help="idle: instead, this many visitors waiting in the front's waiting room",
    )
    # Fault mode
    p.add_argument(
        "--fault", choices=FAULTS, help="fault mode: steady arrivals, this fault mid-sale"
    )
    p.add_argument(
        "--arrival-rate",
        type=float,
        help=f"visitors/s; without --fault: the crowd mode (fault default {DEFAULT_ARRIVAL_RATE:g})",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        help="fault and crowd: seconds of arrivals",
    )
    p.add_argument(
        "--queue-trickle",
        choices=["on", "off"],
        default="off",
        help="crowd: the fronts take new TLS handshakes one at a time while the line covers"
        " every ticket left (front --queue-trickle; default off)",
    )
    p.add_argument("--fault-at", type=float, help="fault: seconds in (default: 40 %% of duration)")
    p.add_argument(
        "--fault-seconds",
        type=float,
        help="fault: partition length / main's downtime (default: reclaim-after + 5 / 3 s)",
    )
    p.add_argument(
        "--standby",
        action="store_true",
        help="kill-main: a leader and a standby main on one PostgreSQL ledger (--ledger, else a"
        " throwaway server), visitors through --fronts front processes (default 1) given both;"
        " the leader is SIGKILLed, not restarted",
    )
    p.add_argument("--heartbeat-interval", type=float, default=1.0, help="fault: every link")
    p.add_argument("--heartbeat-timeout", type=float, default=3.0, help="fault: every link")
    p.add_argument("--reclaim-after", type=float, default=10.0, help="fault: main's fencing")
    # Output
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--keep", metavar="DIR", help="keep keys, ledger and journals in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def options_from_args(args: argparse.Namespace) -> Options:
    """:class:`Options` from the parsed arguments; SystemExit on values out of range."""
    crowd = args.arrival_rate is not None and not args.fault
    mode = "fault" if args.fault else "crowd" if crowd else args.mode
    rate = DEFAULT_ARRIVAL_RATE if args.arrival_rate is None else args.arrival_rate
    tickets = args.tickets
    if tickets is None:
        tickets = {"ledger": LEDGER_TICKETS, "fault": FAULT_TICKETS, "crowd": CROWD_TICKETS}.get(
            mode, DEFAULT_TICKETS
        )
    if mode in ("fault", "crowd") and (rate <= 0 or args.duration <= 0):
        raise SystemExit("--arrival-rate and --duration must be > 0")
    clients = args.clients
    if mode in ("fault", "crowd"):  # rate x duration visitors, bounded like any other load
        clients = max(1, round(rate * args.duration))
    if args.waiting < 0:
        raise SystemExit("--waiting must be >= 0")
    for name in ("shards", "clients", "concurrency", "workers", "batch", "in_flight", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.slope_tickets < 0:
        raise SystemExit("--slope-tickets must be >= 0")
    if args.fronts < 0 or args.cores < 2:
        raise SystemExit("--fronts must be >= 0 and --cores >= 2")
    if args.standby and args.fault != "kill-main":
        raise SystemExit("--standby goes with --fault kill-main")
    if args.standby and args.ledger and not is_postgres(args.ledger):
        raise SystemExit("--standby needs a shared ledger: --ledger postgresql://...")
    if mode == "fault" and args.ledger and not args.standby:
        raise SystemExit("--ledger in fault mode needs --standby (the other faults use SQLite)")
    fronts = args.fronts
    if args.standby and fronts == 0:
        fronts = 1  # browsers need a door that follows the new leader
    if tickets < 0 or args.connections < 0 or args.max_seconds <= 0:
        raise SystemExit("--tickets/--connections must be >= 0 and --max-seconds > 0")
    return Options(
        mode=mode,
        shards=args.shards,
        fronts=fronts,
        cores=args.cores,
        slope_tickets=args.slope_tickets,
        clients=clients,
        tickets=tickets,
        concurrency=args.concurrency,
        workers=args.workers,
        uvloop=args.uvloop == "on",
        max_seconds=args.max_seconds,
        baseline=not args.no_baseline,
        rounds=args.rounds,
        batch=args.batch,
        in_flight=args.in_flight,
        ledger=args.ledger,
        connections=args.connections,
        waiting=args.waiting,
        progress=not args.quiet,
        json_path=args.json,
        keep=args.keep,
        fault=args.fault,
        arrival_rate=rate,
        duration=args.duration,
        queue_trickle=args.queue_trickle == "on",
        fault_at=args.fault_at,
        fault_seconds=args.fault_seconds,
        standby=args.standby,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        reclaim_after=args.reclaim_after,
    )
