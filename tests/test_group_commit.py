"""Group commit: reports that arrive while a commit runs share the next transaction,
decided in arrival order as if committed one by one (on both backends), and a
failing group is retried item by item so one bad request fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import BACKENDS
from tests.pgserver import fresh_database
from ticketing.ledger import open_ledger
from ticketing.ledger.group import GroupCommit
from ticketing.wire import Sale

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_concurrent_reports_share_a_commit_and_are_decided_in_order(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'group.sqlite3'}"
    else:
        url = await fresh_database(request.getfixturevalue("postgres_admin"))
    ledger = await open_ledger(url)
    try:
        event = await ledger.create_event("Grouped", "", 1000, 20)
        for name in ("shard-1", "shard-2"):
            await ledger.register_shard(name, "127.0.0.1", 1, 2, 1.0)
        await ledger.assign(event.id, {"shard-1": (1, [(0, 10)]), "shard-2": (1, [(10, 20)])})
        e = event.id
        before = ledger.sales_commits
        one, two, again, stale, foreign = await asyncio.gather(
            ledger.record_sales("shard-1", 1, [Sale(e, 0, "ann"), Sale(e, 1, "bob")], 60),
            # cat on shard-2 is new; ann already won on shard-1 earlier in this group
            ledger.record_sales("shard-2", 1, [Sale(e, 10, "cat"), Sale(e, 11, "ann")], 60),
            # shard-1 re-sends ann's grant before its first report was answered
            ledger.record_sales("shard-1", 1, [Sale(e, 0, "ann")], 60),
            ledger.record_sales("shard-2", 0, [Sale(e, 12, "dan")], 60),  # an old epoch
            # shard-2 reports a ticket of shard-1's pool; eve's next one is fine
            ledger.record_sales("shard-2", 1, [Sale(e, 2, "eve"), Sale(e, 13, "fay")], 60),
        )
        # All five were queued before the committer ran: one transaction.
        assert ledger.sales_commits - before == 1
        ann = next(o for o in one[2] if o["visitor"] == "ann")
        assert isinstance(ann["id"], int)
        assert [o["visitor"] for o in two[2]] == ["cat"]
        assert [(r["serial"], r["reason"]) for r in two[1]] == [(11, "visitor_has_ticket")]
        assert two[1][0]["existing"]["id"] == ann["id"]
        assert again[2] == [] and [o["id"] for o in again[0]] == [ann["id"]]
        assert stale[2] == [] and [r["reason"] for r in stale[1]] == ["stale_epoch"]
        assert [(r["serial"], r["reason"]) for r in foreign[1]] == [(2, "not_in_pool")]
        assert [o["visitor"] for o in foreign[2]] == ["fay"]
        audit = await ledger.audit(e)
        assert audit.exact and audit.held == 4, audit.as_dict()
        assert audit.pools == {"shard-1": 8, "shard-2": 8}  # ticket 2 still shard-1's
    finally:
        await ledger.close()


async def test_a_failing_group_is_retried_one_by_one() -> None:
    calls: list[list[int]] = []
    started, gate = asyncio.Event(), asyncio.Event()

    async def commit(items: list[int]) -> list[int]:
        calls.append(items)
        if items == [0]:
            started.set()
            await gate.wait()  # hold the first commit so the rest queue behind it
        if 13 in items:
            raise ValueError("unlucky")
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(commit, size=lambda _: 1, max_size=100)
    first = asyncio.create_task(group.submit(0))
    await started.wait()
    rest = [asyncio.create_task(group.submit(i)) for i in (12, 13, 14)]
    gate.set()
    assert await first == 0
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert results[0] == 120 and results[2] == 140
    assert isinstance(results[1], ValueError)
    assert calls == [[0], [12, 13, 14], [12], [13], [14]]


async def test_a_group_stops_growing_at_its_size() -> None:
    sizes: list[int] = []

    async def commit(items: list[int]) -> list[int]:
        sizes.append(sum(items))
        return items

    group: GroupCommit[int, int] = GroupCommit(commit, size=lambda n: n, max_size=10)
    await asyncio.gather(*(group.submit(4) for _ in range(7)))
    await group.wait_idle()
    # All seven queued before the committer first ran (asyncio runs ready tasks in
    # order): groups of at most 10.
    assert sizes == [8, 8, 8, 4]
