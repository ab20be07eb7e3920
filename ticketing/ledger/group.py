"""Group commit: requests that arrive while a commit runs share the next one.

A commit costs a round trip or two and a disk flush whatever it carries; the rows
cost little. While one transaction is in flight, the reports that arrive queue up
here and go together in the next, so under load a commit carries many shards'
batches and when quiet a lone report commits at once (no linger, no added wait).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Runs ``commit(items) -> results`` (one result per item, in order), one at a time.

    ``size(item)`` weighs an item (sales in a report); a group stops growing at
    ``max_size`` so one commit stays bounded in time and statement size. When a
    group fails, its items are retried one by one, so one bad request fails alone.
    """

    def __init__(
        self,
        commit: Callable[[list[Item]], Awaitable[list[Result]]],
        size: Callable[[Item], int],
        max_size: int,
    ) -> None:
        self._commit = commit
        self._size = size
        self._max = max_size
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.groups = 0  # commits made (for tests and the bench)

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # a caller that gave up must not log an error
        self._queue.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await asyncio.shield(future)  # a cancelled caller leaves the group intact

    async def wait_idle(self) -> None:
        """Until nothing is queued or committing (before the database is closed)."""
        while self._runner is not None and not self._runner.done():
            await asyncio.wait({self._runner})

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        taken, total = 0, 0
        for item, _ in self._queue:
            total += self._size(item)
            if taken and total > self._max:
                break
            taken += 1
        group, self._queue = self._queue[:taken], self._queue[taken:]
        return group

    async def _run(self) -> None:
        group: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            await self._drain(group)
        except asyncio.CancelledError:
            for _, future in group + self._queue:
                future.cancel()
            self._queue.clear()
            raise

    async def _drain(self, group: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        while self._queue:
            group[:] = self._take()
            self.groups += 1
            try:
                results = await self._commit([item for item, _ in group])
            except Exception as exc:
                if len(group) == 1:
                    _settle(group[0][1], exc=exc)
                    continue
                log.warning("a group of %d commits failed (%s): one by one", len(group), exc)
                for item, future in group:
                    try:
                        (result,) = await self._commit([item])
                    except Exception as one:
                        _settle(future, exc=one)
                    else:
                        _settle(future, result)
                continue
            for (_, future), result in zip(group, results, strict=True):
                _settle(future, result)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(
    future: asyncio.Future[Result], result: Result | None = None, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]
