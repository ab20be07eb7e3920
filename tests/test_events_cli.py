"""``ticketing event ...`` as a separate process against a live cluster's admin API."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path

import pytest

from ticketing.events_cli import table
from ticketing.operator import OPERATOR_ENV, OPERATOR_FILE_ENV

pytestmark = pytest.mark.timeout(60)

OPERATOR = "events-cli-operator-0123456789"


async def cli(cluster, *args: str, token: str | None = OPERATOR) -> tuple[int, str, str]:
    """Run ``ticketing event ARGS`` in its own process while this loop serves the cluster."""
    env = {k: v for k, v in os.environ.items() if k not in (OPERATOR_ENV, OPERATOR_FILE_ENV)}
    if token:
        env[OPERATOR_ENV] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ticketing",
        "event",
        *args,
        "--url",
        cluster.front,
        "--ca",
        str(cluster.keys / "ca.crt"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_create_list_distribute_show(make_cluster, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)  # the cluster's admin API accepts it
    cluster = await make_cluster(2, redirect=True)

    code, out, err = await cli(
        cluster, "create", "--name", "Jazz night", "--price", "12.50", "--count", "11", "--json"
    )
    assert code == 0, err
    event = json.loads(out)
    assert (event["name"], event["price_cents"], event["count"]) == ("Jazz night", 1250, 11)

    code, out, err = await cli(cluster, "list", "--json")
    assert code == 0, err
    [listed] = json.loads(out)
    assert (listed["id"], listed["unassigned"], listed["in_pools"]) == (event["id"], 11, 0)

    code, out, err = await cli(cluster, "distribute", str(event["id"]))
    assert code == 0, err
    assert "6 to shard-1, 5 to shard-2" in out or "5 to shard-1, 6 to shard-2" in out

    code, out, err = await cli(cluster, "list")  # a readable table
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == [
        "ID",
        "NAME",
        "PRICE_CENTS",
        "COUNT",
        "UNASSIGNED",
        "IN_POOLS",
        "AVAILABLE",
        "WAITLIST",
    ]
    assert "Jazz night" in row and row.split()[-4:] == ["0", "11", "11", "0"]

    code, out, err = await cli(cluster, "show", str(event["id"]), "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["audit"]["exact"] and shown["audit"]["in_pools"] == 11
    assert sorted(s["stock"] for s in shown["shards"]) == [5, 6]

    code, out, err = await cli(cluster, "show", str(event["id"]))
    assert code == 0, err
    assert "audit exact" in out and "shard-1" in out

    token_file = tmp_path / "token"
    token_file.write_text(OPERATOR + "\n")
    code, out, err = await cli(cluster, "show", "999", "--token-file", str(token_file), token=None)
    assert code == 1 and "404" in err and "no event 999" in err


async def test_refusals_are_clear(make_cluster, monkeypatch) -> None:
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    cluster = await make_cluster(1, redirect=True)
    code, _, err = await cli(cluster, "list", token="x" * 30)
    assert code == 1 and "401" in err and "wrong operator credential" in err
    code, _, err = await cli(cluster, "list", token=None)
    assert code == 2 and OPERATOR_ENV in err
    code, _, err = await cli(cluster, "create", "--name", "X", "--price", "1", "--count", "0")
    assert code == 1 and "count must be" in err
    code, _, err = await cli(cluster, "schedule", "1", "--at", "2030-01-01T10:00Z")
    assert code == 1 and "404" in err and "no event 1" in err
    code, _, err = await cli(cluster, "schedule", "1", "--at", "tomorrow")
    assert code == 2 and "ISO 8601" in err


async def test_schedule_sets_the_sale_start_and_waiting_room(make_cluster, monkeypatch) -> None:
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    cluster = await make_cluster(1, redirect=True)
    event_id = await cluster.main.init_tickets("Later", "", "5", 3)
    args = ("--order", "arrival", "--pow-bits", "12", "--release-rate", "50")
    code, out, err = await cli(
        cluster, "schedule", str(event_id), "--at", "2030-01-01T10:00Z", *args
    )
    assert code == 0, err
    assert "on sale 2030-01-01T10:00:00Z, pre-queue arrival, proof of work 12 bits" in out
    event = await cluster.main.event(event_id)
    assert (event.sale_starts_at, event.prequeue_order, event.pow_bits, event.release_rate) == (
        1893492000.0,
        "arrival",
        12,
        50.0,
    )
    code, out, _ = await cli(cluster, "schedule", str(event_id), "--at", "none")
    assert code == 0 and "on sale now" in out
    assert (await cluster.main.event(event_id)).sale_starts_at is None


def test_table_aligns_columns() -> None:
    out = io.StringIO()
    table([{"id": 1, "name": "a"}, {"id": 22, "name": "bbb"}], ["id", "name"], out)
    assert out.getvalue().splitlines() == ["ID  NAME", " 1  a", "22  bbb"]
