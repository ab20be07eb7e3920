"""Graceful drain on SIGTERM: finish what was promised, take nothing new, then exit.

A **shard** stops accepting browsers (its listening socket closes; open connections
stay), keeps granting to the visitors already queued — each grant journaled,
reported and confirmed by main as usual — until its queue and its unacknowledged
grants are empty or the grace period ends. Whoever is still waiting then gets
``{"type": "error", "message": "... try again"}`` (the page retries through the
front), never silence. Tickets not granted stay in its pool, in main's ledger.

**Main** stops its front (no new admissions; requests in flight finish), then keeps
recording the shards' reports until every linked shard has an empty queue and no
unacknowledged grant, or the grace period ends; then it closes its links and the
ledger (each batch is one transaction: a batch is recorded whole or not at all).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .errors import TicketingError
from .wire import ToShard

if TYPE_CHECKING:
    from .front.server import RedirectServer
    from .main.server import MainServer
    from .shard.server import ClientServer

log = logging.getLogger("ticketing.drain")

DEFAULT_GRACE = 10.0
POLL = 0.05  # seconds between looks at the queues (bounded by the grace period)
SETTLE = 0.5  # tokens minted just before the front stopped reach their shard meanwhile


async def _until(done: Any, grace: float) -> bool:
    """Poll ``done()`` (sync or async) until true or ``grace`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while True:
        result = done()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(POLL)


async def drain_shard(shard: ClientServer, grace: float = DEFAULT_GRACE) -> bool:
    """Answer every queued visitor (grants confirmed, or a retry); True if all in time."""
    web = shard._web  # the browser port, when the shard has one
    if web is not None and web.server is not None:
        web.server.close(close_connections=False)  # no new browsers; open ones stay
    d = shard.dispenser
    before = d.queued()
    clean = await _until(lambda: not d.queued() and not d.unacked, grace)
    if not clean:
        log.warning(
            "%s: drain grace (%.1fs) over: %d still queued, %d unconfirmed",
            shard.name,
            grace,
            d.queued(),
            len(d.unacked),
        )
    for waiters in d.queues.values():
        for w in waiters:
            w.answer({"type": "error", "message": "this shard is shutting down, try again"})
    if web is not None:  # let the handlers send those answers before the sockets close
        await _until(lambda: not web.live, min(1.0, grace))
    log.info("%s: drained (%d were queued at SIGTERM)", shard.name, before)
    return clean


async def drain_main(
    main: MainServer, front: RedirectServer | None = None, grace: float = DEFAULT_GRACE
) -> bool:
    """Stop admitting, let the shards' queues empty through the ledger; True if in time."""
    if front is not None and front.runner is not None:
        for site in list(front.runner.sites):
            await site.stop()  # no new connections; aiohttp lets in-flight requests finish

    async def quiet() -> bool:
        for sl in main.online_shards():
            try:
                st = await asyncio.wait_for(main.call(sl.name or "", ToShard.STATUS), 2.0)
            except (TicketingError, TimeoutError):
                continue  # gone: what it holds waits for its return or its fencing
            if st.get("queued") or st.get("unacked"):
                return False
        return True

    await asyncio.sleep(min(SETTLE, grace))
    clean = await _until(quiet, grace)
    if not clean:
        log.warning("main: drain grace (%.1fs) over with shards still busy", grace)
    log.info("main: drained")
    return clean
