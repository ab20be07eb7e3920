"""A wake-up for code that waits until some in-process state holds.

A server calls :meth:`Changes.notify` whenever its observable state changes (a link
up or down, an epoch, a queue, unconfirmed grants); a waiter re-checks its condition
on each wake-up instead of polling on a timer::

    await shard.changes.wait_for(lambda: shard.link is None, timeout=5)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence


class Changes:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake every current waiter (each re-checks its own condition)."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, condition: Callable[[], object], timeout: float) -> None:
        """Return once ``condition()`` is true; :class:`TimeoutError` after ``timeout``."""
        await wait_any([self], condition, timeout)


async def wait_any(
    sources: Sequence[Changes], condition: Callable[[], object], timeout: float
) -> None:
    """Like :meth:`Changes.wait_for`, for a condition on several servers' state."""
    async with asyncio.timeout(timeout):
        while not condition():
            waits = [asyncio.ensure_future(c._event.wait()) for c in sources]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
