"""The leadership row on PostgreSQL: a leader's long write transaction does not hold
up its own lease renewal, while a standby's takeover waits for it and fences every
later transaction of the old term."""

from __future__ import annotations

import asyncio

import pytest

from tests.pgserver import drop_database, fresh_database
from ticketing.errors import NotLeader
from ticketing.ledger import open_ledger
from ticketing.ledger.driver import Driver
from ticketing.main.leader import Lease

pytestmark = pytest.mark.timeout(60)


async def test_a_long_transaction_neither_delays_the_renewal_nor_survives_a_takeover(
    postgres_admin: str,
) -> None:
    url = await fresh_database(postgres_admin)
    leader = await open_ledger(url)
    standby = await open_ledger(url)
    try:
        lease = Lease(leader.driver, "main-1", lease=0.5)
        leader.fence_term = await lease.take()
        taker = Lease(standby.driver, "main-2", lease=0.5)
        in_tx, finish = asyncio.Event(), asyncio.Event()

        async def long_write() -> None:
            async with leader.transaction() as tx:  # holds the term's lock until it commits
                await tx._change("UPDATE shards SET weight = weight")
                in_tx.set()
                await finish.wait()

        writing = asyncio.create_task(long_write())
        await in_tx.wait()
        assert await asyncio.wait_for(lease.renew(), 5)  # not behind the open transaction
        # The lease runs out (the leader is "paused"); the takeover waits for the write.
        taking = asyncio.create_task(_take_when_expired(taker))
        while not await _waiting_for_a_row_lock(standby.driver):  # noqa: ASYNC110
            assert not taking.done(), "the takeover did not wait for the open transaction"
            await asyncio.sleep(0.05)
        assert not taking.done()
        finish.set()
        await writing  # the old term's transaction in flight commits
        assert await asyncio.wait_for(taking, 10) == leader.fence_term + 1
        with pytest.raises(NotLeader):
            async with leader.transaction():
                pass
        assert not await lease.renew()
    finally:
        await leader.close()
        await standby.close()
        await drop_database(postgres_admin, url)


async def _waiting_for_a_row_lock(driver: Driver) -> bool:
    rows = await driver.fetch(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE 'SELECT id FROM leadership%FOR UPDATE'"
    )
    return bool(rows[0]["n"])


async def _take_when_expired(lease: Lease) -> int:
    while (term := await lease.try_acquire()) is None:  # noqa: ASYNC110 - a row in another process
        await asyncio.sleep(0.05)
    return term
