"""``ticketing bench``: how fast is the whole stack, and how much of it is ours?

Five modes, each on this machine only (127.0.0.1), every loop bounded in count and
time (``--max-seconds``):

``e2e`` (default)
    A local cluster (:class:`~ticketing.cluster.LocalCluster`: main + redirect in this
    process, ``--shards`` shard processes, fresh keys and SQLite files in a temporary
    directory) and ``--clients`` visitors for ``--tickets`` tickets, fired by
    ``--workers`` load-generator processes (``worker.py``) through the redirect
    over real TLS, ``--concurrency`` in flight. In the same run, a **baseline**: the
    bare stack doing the same network work with no ticketing logic
    (``baseline.py``: one aiohttp HTTPS redirect process + ``--shards`` WSS
    processes, the same certificates, clients, concurrency and process layout).
    With ``--fronts F`` the visitors go through F front processes (each worker takes
    them in turn) and the baseline has F 302 processes; the table then has each
    process's CPU per ticket over the load phase (GO to the last answer: start-up
    excluded), main's fixed load measured for 2 s before GO with nothing sold, and a
    projected ceiling for ``--cores`` cores (``projection.py``: arithmetic on the
    measurement, labelled as such; main's cost per report and per sale come from two
    short ``ledger`` runs made first, ``--slope-tickets``). The sale is
    checked: nothing oversold, every granted id distinct, every granted
    ticket committed in main's ledger, and an exact audit (:func:`check_sale`); the
    exit code is 1 when a check fails.

``ledger``
    Main's ledger alone: a real :class:`~ticketing.main.MainServer` and
    synthetic shard processes (``synthetic_shard.py``) that report every ticket of their
    slice as sold over the real mutual-TLS links, ``--batch`` sales per request, as
    fast as main commits them.

``idle``
    ``--connections`` idle WSS connections held open on one shard (each admitted with
    a real token signed by main) and the shard's RSS per connection; with
    ``--waiting N``, N visitors holding places in the front's waiting room instead.

``--arrival-rate R --duration S`` without ``--fault`` (``crowd.py``)
    A flash crowd through the waiting room: R x S visitors arriving at a steady
    pace, each waiting in line like the page; errors, the sale's checks, winners'
    median time-to-ticket against the time to the last ticket, FCFS inversions,
    position and ETA accuracy, the answers' timeline.

``--fault kill-shard|partition-shard|kill-main`` (``fault.py``)
    A steady crowd (``--arrival-rate`` visitors/s for ``--duration`` s) against main
    as its own process and the shard processes, one fault mid-sale, an independent
    record of what every visitor saw, and the fault's figures: detection, fencing,
    stranded stock sold elsewhere, false sold-outs, FCFS inversions, the longest
    wait without an answer, a 0.5 s timeline (SVG next to the JSON).

Where the CPU time is counted: main and the redirect run in *this* process, the
visitors in worker processes, so server CPU = this process + the shard processes,
and the load generator's CPU is reported apart. The harness itself (progress bar,
reading the workers' reports, sampling RSS) also runs here; the baseline phase,
during which this process serves nothing, measures that overhead.

Layout: ``options`` (what a run is asked), ``load`` (visitors from worker processes),
``e2e``, ``ledger_mode``, ``idle``, ``crowd`` and ``fault`` (the modes), ``checks`` (the verdict on a sale),
``meter`` and ``progress`` (CPU/RSS, the bar), ``children`` and ``workspace`` (helper
processes, data directory), ``report`` (the tables) and ``run`` (the command).
"""

from __future__ import annotations

from .checks import Verdict, check_sale, percentile
from .e2e import run_e2e
from .idle import run_idle
from .ledger_mode import run_ledger
from .load import split
from .meter import Meter
from .options import Options, options_from_args
from .progress import Progress
from .report import format_e2e, format_idle, format_ledger
from .run import MODES, add_parser, cmd_bench, run_bench
from .workspace import machine

__all__ = [
    "MODES",
    "Meter",
    "Options",
    "Progress",
    "Verdict",
    "add_parser",
    "check_sale",
    "cmd_bench",
    "format_e2e",
    "format_idle",
    "format_ledger",
    "machine",
    "options_from_args",
    "percentile",
    "run_bench",
    "run_e2e",
    "run_idle",
    "run_ledger",
    "split",
]
