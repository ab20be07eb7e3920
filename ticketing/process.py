"""What every ticketing process needs from the operating system: stop signals, fd limits."""

from __future__ import annotations

import asyncio
import resource
import signal


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
