"""The ledger's two backends: schema versions, refusal of a newer schema, copying a
ledger from SQLite to PostgreSQL and back with the audit unchanged, ``ticketing
audit`` on both."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKENDS
from tests.pgserver import fresh_database
from ticketing.errors import ConfigError
from ticketing.ledger import (
    OrderKind,
    Principal,
    SqliteDriver,
    SqlLedger,
    open_driver,
    open_ledger,
)
from ticketing.ledger.copy import CopyError, copy_ledger
from ticketing.ledger.driver import Queries
from ticketing.ledger.schema import LATEST, schema_version
from ticketing.wire import Sale

pytestmark = pytest.mark.timeout(60)


async def url_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest, name: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / name}.sqlite3"
    return await fresh_database(request.getfixturevalue("postgres_admin"))


async def busy_ledger(url: str) -> SqlLedger:
    """A ledger with an event, a shard's pool, held and paid-for orders, an account."""
    ledger = await open_ledger(url)
    event = await ledger.create_event("Copied", "", 1500, 6)
    await ledger.register_shard("shard-1", "127.0.0.1", 1, 2, 1.0)
    await ledger.assign(event.id, {"shard-1": (1, [(0, 4)])})
    _, _, fresh = await ledger.record_sales(
        "shard-1", 1, [Sale(event.id, 0, "ann"), Sale(event.id, 1, "bob")], 60
    )
    async with ledger.transaction() as tx:  # bob's order paid: sold, with an owner
        bob = next(o for o in fresh if o["visitor"] == "bob")
        await tx.set_order_status(OrderKind.PRIMARY, bob["id"], "awaiting_payment", "complete")
        await tx.set_ticket_state(event.id, 1, "held", "sold")
        await tx.add_owner(bob, 1.0)
        await tx.start_payment(OrderKind.PRIMARY, bob["id"], "k1", 1500, 1.0)
    return ledger


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_schema_is_versioned_and_a_newer_one_is_refused(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = await url_for(backend, tmp_path, request, "versioned")
    ledger = await open_ledger(url)
    assert await schema_version(ledger.driver) == LATEST
    await ledger.close()
    ledger = await open_ledger(url)  # opening again applies nothing twice
    rows = await ledger.driver.fetch("SELECT version FROM schema_version ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, LATEST + 1))
    async with ledger.driver.transaction() as q:  # a newer ticketing migrated it further
        await q.execute("INSERT INTO schema_version(version) VALUES (?)", (LATEST + 1,))
    await ledger.close()
    with pytest.raises(ConfigError, match="newer than this code knows"):
        await SqlLedger.open(await open_driver(url))


async def test_a_ledger_moves_to_postgresql_and_back_with_the_same_audit(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    source = await busy_ledger(await url_for("sqlite", tmp_path, request, "source"))
    pg = await open_ledger(await url_for("postgresql", tmp_path, request, "pg"))
    before, after = await copy_ledger(source, pg)
    assert before.as_dict() == after.as_dict() and after.exact
    assert (after.held, after.sold, after.unassigned) == (1, 1, 2)
    # The copy goes on working: new ids follow the copied ones, rules see the rows.
    moved = await open_ledger(pg.url)
    _, _, fresh = await moved.record_sales("shard-1", 1, [Sale(1, 2, "cy")], 60)
    assert fresh[0]["id"] == 3
    assert await moved.reader().has_ticket(1, Principal("bob"))
    with pytest.raises(CopyError, match="not empty"):
        await copy_ledger(source, moved)
    back = await open_ledger(await url_for("sqlite", tmp_path, request, "back"))
    _, again = await copy_ledger(moved, back)
    assert again.exact and again.held == 2
    for ledger in (source, pg, moved, back):
        await ledger.close()


async def test_the_cli_copies_and_audits_on_both_backends(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    sqlite_url = await url_for("sqlite", tmp_path, request, "cli")
    await (await busy_ledger(sqlite_url)).close()
    pg_url = await url_for("postgresql", tmp_path, request, "cli-pg")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "ticketing", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    copied = run("ledger", "copy", "--from", sqlite_url, "--to", pg_url)
    assert copied.returncode == 0, copied.stderr
    assert "***" in copied.stdout or "postgres@" in copied.stdout  # no password printed
    for url in (sqlite_url, pg_url):
        audit = run("audit", "--ledger", url, "--json")
        assert audit.returncode == 0, audit.stderr
        assert '"exact": true' in audit.stdout and '"held": 1' in audit.stdout


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_atomic_transaction_commits_whole_or_not_at_all(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``Driver.atomic`` (the sales path's one-hop transaction on SQLite): a body that
    fails, or awaits anything but its queries, leaves nothing behind."""
    ledger = await open_ledger(await url_for(backend, tmp_path, request, "atomic"))
    insert = "INSERT INTO revoked_sessions(sid, exp) VALUES (?, ?)"

    async def add(q: Queries, sid: str) -> int:
        return await q.execute(insert, (sid, 1.0))

    async def add_then_fail(q: Queries) -> None:
        await add(q, "failed")
        raise ValueError("the body failed")

    async def add_then_wait(q: Queries) -> None:
        await add(q, "waited")
        await asyncio.sleep(0)  # not the database: the body may not suspend

    assert await ledger.driver.atomic(lambda q: add(q, "kept")) == 1
    with pytest.raises(ValueError, match="the body failed"):
        await ledger.driver.atomic(add_then_fail)
    if backend == "sqlite":  # PostgreSQL runs the body on the event loop: it may wait
        with pytest.raises(RuntimeError, match="awaited something besides"):
            await ledger.driver.atomic(add_then_wait)
    rows = await ledger.driver.fetch("SELECT sid FROM revoked_sessions ORDER BY sid")
    assert [r["sid"] for r in rows] == ["kept"]
    await ledger.close()


async def test_a_transaction_cancelled_while_it_begins_leaves_the_sqlite_ledger_usable(
    tmp_path: Path,
) -> None:
    """The statements run on the database's thread whatever happens to the awaiting
    coroutine: one cancelled while its BEGIN runs must roll back, else the next
    transaction finds it still open."""
    ledger = await open_ledger(f"sqlite:///{tmp_path / 'cancelled.sqlite3'}")
    driver = ledger.driver
    assert isinstance(driver, SqliteDriver)
    begun, go = threading.Event(), threading.Event()
    real = driver._conn

    class Held:  # the connection, whose BEGIN waits for the test's word
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("BEGIN"):
                begun.set()
                go.wait(10)
            return real.execute(sql, *args)

    driver._conn = Held()  # type: ignore[assignment]
    task = asyncio.create_task(ledger.create_event("Cancelled", "", 100, 3))
    assert await asyncio.to_thread(begun.wait, 10)  # BEGIN is running on the thread
    task.cancel()
    go.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    driver._conn = real
    event = await ledger.create_event("After", "", 100, 3)  # a new transaction begins
    assert (await ledger.audit(event.id)).exact and len(await ledger.events()) == 1
    await ledger.close()
