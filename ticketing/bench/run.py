"""The ``bench`` command: pick the mode, run it on a fresh loop, print and save the results."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .crowd import run_crowd
from .e2e import run_e2e
from .fault import run_fault, timeline_svg
from .idle import run_idle
from .ledger_mode import run_ledger
from .options import Options, add_options, options_from_args
from .report import format_crowd, format_e2e, format_fault, format_idle, format_ledger

DESCRIPTION = "``ticketing bench``: how fast is the whole stack, and how much of it is ours?"

MODES: dict[
    str,
    tuple[
        Callable[[Options], Coroutine[Any, Any, dict[str, Any]]], Callable[[dict[str, Any]], str]
    ],
] = {
    "e2e": (run_e2e, format_e2e),
    "ledger": (run_ledger, format_ledger),
    "idle": (run_idle, format_idle),
    "fault": (run_fault, format_fault),  # chosen with --fault
    "crowd": (run_crowd, format_crowd),  # chosen with --arrival-rate (and no --fault)
}


def run_bench(opts: Options) -> dict[str, Any]:
    """Run ``opts.mode`` on a fresh event loop (uvloop unless ``--uvloop off``)."""
    run, _ = MODES[opts.mode]
    if opts.uvloop:
        import uvloop

        return uvloop.run(run(opts))
    return asyncio.run(run(opts))


def cmd_bench(args: argparse.Namespace) -> int:
    """``ticketing bench``: 0 when every check passed, 1 otherwise."""
    opts = options_from_args(args)
    out = run_bench(opts)
    print(MODES[opts.mode][1](out), flush=True)
    if opts.json_path:
        Path(opts.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json_path).write_text(json.dumps(out, indent=1) + "\n")
        if opts.mode == "fault":  # the answers' timeline as a picture, next to the JSON
            Path(opts.json_path).with_suffix(".svg").write_text(timeline_svg(out))
    return 0 if out["ok"] else 1


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``ticketing`` command's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="benchmark: e2e (with a bare-stack baseline), ledger, idle, --fault",
        description=DESCRIPTION,
    )
    add_options(p, tuple(MODES))
    p.set_defaults(fn=cmd_bench)
    return p
