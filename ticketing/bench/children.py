"""The bench's helper processes: starting them, reading their last line, stopping them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..cluster import Child

STREAM_LIMIT = 64 << 20  # the workers' RESULT line holds one entry per visitor


async def spawn_child(name: str, args: Sequence[str], **options: Any) -> Child:
    """A bench helper process; its result lines can be long (one entry per visitor)."""
    return await Child.spawn(name, args, limit=STREAM_LIMIT, **options)


async def spawn_workers(
    label: str, jobs: Sequence[dict[str, Any]], loop_flag: Sequence[str]
) -> list[Child]:
    """One load-generator process per job (given as a JSON line on its stdin), together."""
    return list(
        await asyncio.gather(
            *(
                spawn_child(
                    f"{label}-worker-{i + 1}",
                    ["-m", "ticketing.bench.worker", *loop_flag],
                    stdin_lines=[json.dumps(job)],
                )
                for i, job in enumerate(jobs)
            )
        )
    )


async def stop_all(children: Iterable[Child]) -> None:
    await asyncio.gather(*(c.stop() for c in children), return_exceptions=True)


async def final_line(child: Child, tag: str, seconds: float) -> dict[str, Any] | None:
    """The payload of ``child``'s next ``tag`` line; None if it ends or ``seconds`` pass first."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                got, payload = await child.read()
                if got == tag:
                    return payload  # type: ignore[no-any-return]
                if got == "":
                    return None
    except TimeoutError:
        return None
