"""Cluster core end to end: real sockets, real mutual TLS, real SQLite files.

Splitting, late shards, restarts of main and of a shard on their files, re-sent
grants, fencing, reconnection and custom commands. After every step the ledger's
audit must be exact and each linked shard's pool must equal what the ledger says.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKENDS, Cluster, ClusterFactory
from tests.helpers import eventually
from ticketing import ClientServer, CommandError, MainServer, TicketingError
from ticketing.changes import wait_any
from ticketing.ledger import Audit
from ticketing.slices import expand
from ticketing.wire import Sale

pytestmark = pytest.mark.timeout(40)


# -- helpers ---------------------------------------------------------------------------


async def assert_exact(main: MainServer, **expected: Any) -> Audit:
    """The audit is exact; ``expected`` fields (total, unassigned, pools...) match."""
    audit = await main.audit()
    assert audit.exact, audit.problems
    for key, value in expected.items():
        assert getattr(audit, key) == value, (key, audit)
    return audit


async def assert_in_sync(main: MainServer, shards: list[ClientServer]) -> None:
    """Each linked shard holds exactly the serials the ledger gives it."""
    assert main.ledger
    for shard in shards:
        sl = main.shards[shard.name]
        assert sl.online and shard.epoch == sl.epoch
        ledger_pools = await main.ledger.shard_pools(shard.name, sl.epoch)
        mine = {e: p.ranges() for e, p in shard.dispenser.pools.items() if len(p)}
        assert mine == ledger_pools, shard.name
        assert sl.stock == {e: len(expand(r)) for e, r in ledger_pools.items()}


def linked(main: MainServer, shard: ClientServer, old_link: object = None) -> bool:
    """Main sees the shard online and the shard has finished its (re)sync."""
    sl = main.shards.get(shard.name)
    return bool(
        sl
        and sl.online
        and shard.link is not None
        and shard.link is not old_link
        and shard.status()["linked"]
    )


async def grant(shard: ClientServer, visitor: str, event: int) -> dict[str, Any]:
    """What a browser queued at ``shard`` is told (after main committed the sale)."""
    waiter = shard.enqueue(visitor, event)
    return await asyncio.wait_for(waiter.future, 10)


async def orders(main: MainServer) -> list[tuple[int, int, str, str, str]]:
    assert main.ledger
    rows = await main.ledger.driver.fetch(
        "SELECT id, serial, visitor, shard, status FROM orders ORDER BY id"
    )
    return [tuple(r.values()) for r in rows]  # type: ignore[misc]


async def restart_shard(cluster: Cluster, old: ClientServer) -> ClientServer:
    """A new process for ``old``'s name on the same journal file and link port."""
    port = old.tls_port
    assert port
    await old.close()
    await cluster.main.changes.wait_for(lambda: not cluster.main.shards[old.name].online, 5)
    shard = ClientServer(old.name, data_dir=cluster.data)
    shard.set_certificate_path(cluster.keys)
    cluster.shards.append(shard)
    await shard.start()
    return shard


# -- splitting ------------------------------------------------------------------------------


async def test_ten_tickets_over_three_shards(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster(3)
    main = cluster.main
    event = await main.init_tickets("Opening night", "General admission", "25.00", 10)
    await assert_exact(main, total=10, unassigned=10, pools={})
    given = await main.distribute_tickets(event)
    assert given == {"shard-1": 4, "shard-2": 3, "shard-3": 3}
    assert [len(s.dispenser.pools[event]) for s in cluster.shards] == [4, 3, 3]
    serials = sorted(s for sh in cluster.shards for s in expand(sh.dispenser.pools[event].ranges()))
    assert serials == list(range(10))  # disjoint, nothing lost
    await assert_exact(main, total=10, unassigned=0, pools=given)
    await assert_in_sync(main, cluster.shards)
    # Shards keep the event's public info for their pages.
    assert cluster.shards[0].dispenser.events[event]["price_cents"] == 2500


def batches(main: MainServer) -> tuple[int, int]:
    """(reports recorded, sales in them), from main's batch-size histogram."""
    r = main.metrics.registry
    count = r.get_sample_value("ticketing_ledger_batch_size_sales_count") or 0
    total = r.get_sample_value("ticketing_ledger_batch_size_sales_sum") or 0
    return int(count), int(total)


async def test_a_report_lingers_for_more_grants_unless_quiet_or_full(
    make_cluster: ClusterFactory,
) -> None:
    """After a quiet spell a grant is reported at once; right after a report the next
    one waits ``report_linger`` (an hour here: it never passes in this test) for more
    grants, or until a full batch (``max_batch``) is queued."""
    cluster = await make_cluster(0)
    shard = await cluster.add_shard("shard-1", report_linger=3600.0, max_batch=2)
    main = cluster.main
    event = await main.init_tickets("Linger", "", "1.00", 5)
    await main.distribute_tickets(event)
    first = await grant(shard, "ann", event)  # no report before: no wait
    assert first["type"] == "ticket" and batches(main) == (1, 1)
    bob = shard.enqueue("bob", event)
    for _ in range(20):  # the dispatcher runs, and holds bob's grant back
        await asyncio.sleep(0)
    assert bob.waiting and batches(main) == (1, 1)
    cat = shard.enqueue("cat", event)  # a full batch: it goes now, both in one report
    got = await asyncio.gather(bob.future, cat.future)
    assert [m["type"] for m in got] == ["ticket", "ticket"]
    assert batches(main) == (2, 3)
    await assert_exact(main, total=5, held=3)


async def test_zero_tickets(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster(3)
    event = await cluster.main.init_tickets("Empty", "", "0", 0)
    assert await cluster.main.distribute_tickets(event) == {
        "shard-1": 0,
        "shard-2": 0,
        "shard-3": 0,
    }
    assert all(len(s.dispenser.pools.get(event, ())) == 0 for s in cluster.shards)
    await assert_exact(cluster.main, total=0, unassigned=0, pools={})


async def test_one_ticket_over_five_shards(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster(5)
    event = await cluster.main.init_tickets("Solo", "", "10", 1)
    given = await cluster.main.distribute_tickets(event)
    assert sorted(given.values()) == [0, 0, 0, 0, 1]
    holders = [s.name for s in cluster.shards if len(s.dispenser.pools.get(event, ()))]
    assert holders == [name for name, n in given.items() if n]
    await assert_exact(cluster.main, total=1, unassigned=0, held=0)
    await assert_in_sync(cluster.main, cluster.shards)


async def test_weights(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster(2)
    event = await cluster.main.init_tickets("Weighted", "", "5", 8)
    given = await cluster.main.distribute_tickets(event, weights={"shard-1": 3, "shard-2": 1})
    assert given == {"shard-1": 6, "shard-2": 2}
    await assert_exact(cluster.main, pools={"shard-1": 6, "shard-2": 2})
    await assert_in_sync(cluster.main, cluster.shards)


async def test_late_shard_gets_a_share_of_what_is_unassigned(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster(2)
    main = cluster.main
    a = await main.init_tickets("A", "", "1", 10)
    assert await main.distribute_tickets(a) == {"shard-1": 5, "shard-2": 5}
    b = await main.init_tickets("B", "", "1", 9)  # not distributed yet
    await assert_exact(main, total=19, unassigned=9)

    late = await cluster.add_shard("shard-3")
    assert late.dispenser.pools == {}  # linked, nothing given yet
    given = await main.distribute_tickets()  # every event: only B has anything left
    assert given == {"shard-1": 3, "shard-2": 3, "shard-3": 3}
    assert set(late.dispenser.pools) == {b}
    assert len(cluster.shards[0].dispenser.pools[a]) == 5  # A untouched
    await assert_exact(
        main, total=19, unassigned=0, pools={f"shard-{i}": 8 for i in (1, 2)} | {"shard-3": 3}
    )

    c = await main.init_tickets("C", "", "1", 4)
    assert await main.distribute_tickets(c, shards=["shard-3"]) == {"shard-3": 4}
    assert len(late.dispenser.pools[c]) == 4
    assert await main.distribute_tickets() == {"shard-1": 0, "shard-2": 0, "shard-3": 0}
    await assert_exact(main, total=23, unassigned=0)
    await assert_in_sync(main, cluster.shards)


async def test_distribute_needs_a_linked_shard(tmp_path: Path, keys: Path) -> None:
    main = MainServer(data_dir=tmp_path)
    main.set_certificate_path(keys)
    async with main:
        event = await main.init_tickets("Lonely", "", "1", 3)
        with pytest.raises(TicketingError):
            await main.distribute_tickets(event)
        await assert_exact(main, total=3, unassigned=3)


# -- restarts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ledger_backend", BACKENDS, indirect=True)
async def test_main_restart_keeps_the_ledger_and_assigns_nothing_twice(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(2)
    main = cluster.main
    event = await main.init_tickets("Restart", "", "20", 10)
    await main.distribute_tickets(event)
    first = await grant(cluster.shards[0], "visitor-1", event)
    assert first["type"] == "ticket", first
    before = await assert_exact(main, total=10, held=1, pools={"shard-1": 4, "shard-2": 5})
    pools_before = [s.dispenser.pools[event].ranges() for s in cluster.shards]

    await main.close()
    for s in cluster.shards:
        await s.changes.wait_for(lambda s=s: s.link is None, 5)
    main = cluster.main = MainServer(data_dir=cluster.data, ledger_url=main.ledger_url)
    main.set_certificate_path(cluster.keys)
    for shard in cluster.shards:
        assert shard.tls_port and shard.https_port
        await main.connect_client_server("127.0.0.1", shard.tls_port, shard.https_port)

    after = await assert_exact(main)
    assert after.as_dict() == before.as_dict()
    assert [s.dispenser.pools[event].ranges() for s in cluster.shards] == pools_before
    assert [s.epoch for s in cluster.shards] == [1, 1]  # a restart is not a fencing
    assert await main.distribute_tickets() == {"shard-1": 0, "shard-2": 0}
    await assert_in_sync(main, cluster.shards)

    second = await grant(cluster.shards[1], "visitor-2", event)
    assert second["type"] == "ticket" and second["ticket_id"] != first["ticket_id"]
    await assert_exact(main, total=10, held=2)
    assert len(await orders(main)) == 2


async def test_shard_restart_restores_its_pool_from_the_journal(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(2, reconnect_max=0.3)
    main = cluster.main
    event = await main.init_tickets("Journal", "", "20", 10)
    await main.distribute_tickets(event)
    sold = await grant(cluster.shards[0], "visitor-1", event)
    assert sold["type"] == "ticket" and sold["ticket_id"] == f"{event}-0"
    pool_before = cluster.shards[0].dispenser.pools[event].ranges()
    assert len(expand(pool_before)) == 4
    port = cluster.shards[0].tls_port

    shard = await restart_shard(cluster, cluster.shards[0])
    # Before any link: the journal alone gives back the slice and the epoch.
    assert shard.dispenser.pools[event].ranges() == pool_before
    assert shard.epoch == 1
    # The sale may still be journaled as unacknowledged (the shard died before it
    # wrote main's answer down): then it is re-sent, and recorded only once.
    assert set(shard.dispenser.unacked) <= {(event, 0)}
    assert shard.dispenser.events[event]["name"] == "Journal"

    await shard.create_client_server(port)  # same port: main's reconnect loop finds it
    await wait_any(
        [main.changes, shard.changes],
        lambda: linked(main, shard) and not shard.dispenser.unacked,
        10,
    )
    assert shard.dispenser.pools[event].ranges() == pool_before
    assert len(await orders(main)) == 1
    await assert_exact(main, total=10, held=1, pools={"shard-1": 4, "shard-2": 5})
    await assert_in_sync(main, [shard, cluster.shards[1]])
    again = await grant(shard, "visitor-2", event)
    assert again["type"] == "ticket" and again["ticket_id"] != sold["ticket_id"]
    await assert_exact(main, held=2)


def wire(sale: Sale) -> dict[str, Any]:
    return {"event": sale.event, "serial": sale.serial, "visitor": sale.visitor, "account": None}


async def test_unreported_grant_is_resent_after_a_crash_and_recorded_once(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(1, reconnect_max=0.3)
    main = cluster.main
    event = await main.init_tickets("Crash", "", "20", 10)
    await main.distribute_tickets(event)
    old = cluster.shards[0]
    port = old.tls_port
    # The shard granted serial 0 and journaled it, then died before reporting it.
    serial = old.dispenser.pools[event].take()
    assert serial == 0
    sale = Sale(event, serial, "visitor-a")
    assert old.journal
    await old.journal.record_grants([(sale, old.epoch)])
    assert await orders(main) == []

    shard = await restart_shard(cluster, old)
    assert list(shard.dispenser.unacked) == [(event, 0)]
    assert 0 not in shard.dispenser.pools[event]
    await shard.create_client_server(port)
    await wait_any(
        [main.changes, shard.changes],
        lambda: linked(main, shard) and not shard.dispenser.unacked,
        10,
    )

    [order] = await orders(main)
    assert order[1:] == (0, "visitor-a", "shard-1", "awaiting_payment")
    await assert_exact(main, total=10, held=1, pools={"shard-1": 9})
    assert shard.journal
    assert (await shard.journal.load()).unacked == []  # settled in the journal too
    await assert_in_sync(main, [shard])

    # Re-sending it again is answered with the same order, not a second one.
    assert shard.link
    reply = await shard.link.request("report_sales", {"epoch": shard.epoch, "sales": [wire(sale)]})
    assert [o["id"] for o in reply["accepted"]] == [order[0]] and reply["refused"] == []
    assert len(await orders(main)) == 1
    await assert_exact(main, held=1)


async def test_grant_whose_ack_was_lost_is_recorded_once(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster(1)
    main = cluster.main
    event = await main.init_tickets("Lost ack", "", "20", 6)
    await main.distribute_tickets(event)
    shard = cluster.shards[0]
    from ticketing.shard.dispenser import Pending

    serial = shard.dispenser.pools[event].take()
    assert serial is not None
    sale = Sale(event, serial, "visitor-b")
    shard.dispenser.unacked[(event, serial)] = Pending(sale, shard.epoch, None)
    assert shard.journal and shard.link
    await shard.journal.record_grants([(sale, shard.epoch)])
    # Main commits the report, but its answer is lost with the link.
    reply = await shard.link.request("report_sales", {"epoch": shard.epoch, "sales": [wire(sale)]})
    [order_id] = [o["id"] for o in reply["accepted"]]
    old_link = shard.link
    await old_link.close("cut mid-report")

    await wait_any(
        [main.changes, shard.changes],
        lambda: linked(main, shard, old_link) and not shard.dispenser.unacked,
        10,
    )
    assert [o[0] for o in await orders(main)] == [order_id]
    assert (await shard.journal.load()).unacked == []
    await assert_exact(main, total=6, held=1, pools={"shard-1": 5})
    await assert_in_sync(main, [shard])


# -- fencing ---------------------------------------------------------------------------------------


async def test_reclaim_fences_the_shard(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster(2)
    main = cluster.main
    event = await main.init_tickets("Fenced", "", "20", 10)
    await main.distribute_tickets(event)
    s1 = cluster.shards[0]

    assert await main.reclaim_shard("shard-1") == 2
    assert main.ledger and (await main.ledger.shard("shard-1")).epoch == 2  # type: ignore[union-attr]
    await assert_exact(main, total=10, unassigned=5, pools={"shard-2": 5}, held=0)

    # A still-linked shard is cut off and re-syncs into the new epoch with an empty pool.
    await wait_any([main.changes, s1.changes], lambda: linked(main, s1) and s1.epoch == 2, 10)
    assert len(s1.dispenser.pools.get(event, ())) == 0
    # Whatever is said under the old epoch is refused.
    assert s1.link
    reply = await s1.link.request(
        "report_sales",
        {"epoch": 1, "sales": [{"event": event, "serial": 0, "visitor": "v"}]},
    )
    assert reply["accepted"] == []
    assert [r["reason"] for r in reply["refused"]] == ["stale_epoch"]
    with pytest.raises(CommandError) as info:
        await s1.link.request("need_stock", {"event": event, "epoch": 1})
    assert info.value.code == "stale_epoch"
    await assert_exact(main, total=10, unassigned=5, pools={"shard-2": 5}, held=0)
    assert await orders(main) == []

    assert await main.distribute_tickets(event) == {"shard-1": 3, "shard-2": 2}
    await assert_exact(main, total=10, unassigned=0, pools={"shard-1": 3, "shard-2": 7})
    await assert_in_sync(main, cluster.shards)
    assert s1.link
    reply = await s1.link.request(
        "report_sales",
        {"epoch": 1, "sales": [{"event": event, "serial": 9, "visitor": "v"}]},
    )
    assert [r["reason"] for r in reply["refused"]] == ["stale_epoch"]


async def test_dead_shard_reclaimed_then_back_with_an_old_grant(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(2, reconnect_max=0.3)
    main = cluster.main
    event = await main.init_tickets("Zombie", "", "20", 10)
    await main.distribute_tickets(event)
    old = cluster.shards[0]
    port = old.tls_port
    serial = old.dispenser.pools[event].take()
    assert serial is not None and old.journal
    await old.journal.record_grants([(Sale(event, serial, "visitor-z"), old.epoch)])

    shard = await restart_shard(cluster, old)  # "dead": not listening yet
    assert await main.reclaim_shard("shard-1") == 2
    await assert_exact(main, total=10, unassigned=5, pools={"shard-2": 5})

    await shard.create_client_server(port)
    await wait_any(
        [main.changes, shard.changes],
        lambda: linked(main, shard) and not shard.dispenser.unacked,
        10,
    )
    assert shard.epoch == 2
    assert await orders(main) == []  # the epoch-1 grant was refused
    assert shard.dispenser.pools.get(event) is None or len(shard.dispenser.pools[event]) == 0
    assert shard.journal and (await shard.journal.load()).unacked == []
    await assert_exact(main, total=10, unassigned=5, pools={"shard-2": 5}, held=0)
    await assert_in_sync(main, cluster.shards[1:] + [shard])


# -- reconnection ---------------------------------------------------------------------------------


async def test_main_reconnects_after_the_link_drops(
    make_cluster: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    cluster = await make_cluster(1)
    main, shard = cluster.main, cluster.shards[0]
    event = await main.init_tickets("Blip", "", "1", 4)
    await main.distribute_tickets(event)
    sl = main.shards["shard-1"]
    main_side = sl.link
    assert main_side and shard.link
    await shard.link.close("test drops the link")
    await asyncio.wait_for(main_side.closed.wait(), 5)
    await wait_any(
        [main.changes, shard.changes], lambda: linked(main, shard) and sl.link is not main_side, 10
    )
    assert any("shard-1 offline; reconnecting" in r.getMessage() for r in caplog.records)
    assert await main.call("shard-1", "ping") == {}
    await assert_exact(main, total=4, pools={"shard-1": 4})
    await assert_in_sync(main, [shard])


async def test_reconnect_backs_off_while_the_shard_is_away(
    make_cluster: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ticketing.main")
    cluster = await make_cluster(1, reconnect_min=0.05, reconnect_max=0.4)
    main, shard = cluster.main, cluster.shards[0]
    port = shard.tls_port
    assert shard._tls_server and shard.link and port
    shard._tls_server.close()  # the shard stops accepting links...
    await shard.link.close("going away")  # ...and drops the current one

    def delays() -> list[float]:
        found = (re.search(r"retry in ([\d.]+)s", r.getMessage()) for r in caplog.records)
        return [float(m.group(1)) for m in found if m]

    await eventually(lambda: len(delays()) >= 4, 10)
    assert not main.shards["shard-1"].online
    d = delays()[:4]
    assert d == sorted(d) and d[-1] > d[0]  # growing waits
    assert max(delays()) <= 0.4  # capped by reconnect_max

    await shard.create_client_server(port)
    await wait_any([main.changes, shard.changes], lambda: linked(main, shard), 10)
    assert await main.call("shard-1", "status") == shard.status()


# -- custom commands ------------------------------------------------------------------------------


async def test_custom_commands_both_ways(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster(1)
    main, shard = cluster.main, cluster.shards[0]

    async def stats(args: dict[str, Any]) -> dict[str, Any]:
        return {"queued": shard.dispenser.queued(), "echo": args}

    shard.register_command("stats", stats)
    assert await main.call("shard-1", "stats", {"x": [1, 2]}) == {
        "queued": 0,
        "echo": {"x": [1, 2]},
    }

    seen: list[dict[str, Any]] = []

    async def note(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        return {"noted": len(seen)}

    main.register_command("note", note)
    assert shard.link
    assert await shard.link.request("note", {"a": 1}) == {"noted": 1}
    assert seen == [{"a": 1}]

    with pytest.raises(CommandError) as info:
        await main.call("shard-1", "no_such_command")
    assert info.value.code == "unknown_command" and info.value.cmd == "no_such_command"
    with pytest.raises(CommandError) as info:
        await shard.link.request("no_such_command")
    assert info.value.code == "unknown_command"

    async def needs_x(args: dict[str, Any]) -> Any:
        return args["x"]

    shard.register_command("needs_x", needs_x)
    with pytest.raises(CommandError) as info:
        await main.call("shard-1", "needs_x", {})
    assert info.value.code == "bad_args" and "KeyError" in info.value.message
    assert await main.call("shard-1", "needs_x", {"x": 5}) == 5

    async def deliberate(args: dict[str, Any]) -> Any:
        raise CommandError("deliberate", "sold_out", "nothing left")

    main.register_command("deliberate", deliberate)
    with pytest.raises(CommandError) as info:
        await shard.link.request("deliberate")
    assert (info.value.code, info.value.message) == ("sold_out", "nothing left")

    for name in ("hello", "sync", "set_pool", "assign", "release", "status", "ping", ""):
        with pytest.raises(ValueError):
            shard.register_command(name, stats)
    for name in ("hello", "report_sales", "need_stock"):
        with pytest.raises(ValueError):
            main.register_command(name, note)
    assert await main.call("shard-1", "ping") == {}  # built-ins untouched

    with pytest.raises(TicketingError):
        await main.call("shard-9", "stats")
