"""What every ticketing process needs from the operating system and the runtime: stop
signals, fd limits, the garbage collector's settings."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import signal
import sys


def stop_signal() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM; the handlers are in place when this returns."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def wait_for_stop(stop: asyncio.Event | None = None) -> None:
    """Return on SIGINT or SIGTERM (Ctrl-C stops cleanly)."""
    await (stop or stop_signal()).wait()


def say(line: str) -> None:
    """Print ``line`` now; when nobody reads our stdout any more, carry on without it.

    A standby main started by ``ticketing cluster`` outlives that process when it was
    the leader the standby replaces: a dead reader's pipe must not stop the new leader.
    """
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # later lines (and the exit flush) vanish
        os.close(devnull)


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


# A server allocates a few dicts and tuples per message, nearly all freed by their
# reference counts: the collector's default (a pass every 700 allocations, each one
# visiting every object of its generation) was about a tenth of main's CPU in the
# ledger benchmark. 20,000 makes the passes rare; the cyclic garbage they would have
# found (few cycles are made per request) waits a little longer.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Once a server is up: freeze what start-up made (imports, certificates, caches:
    never collected again) and make collector passes rare (:data:`GC_THRESHOLDS`).

    For a process of its own (the ``ticketing`` commands, the benchmarks): the
    collector's settings are the whole process's, not the library's to change.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
