"""``ticketing bench --fault``: the analysis on made-up visits, and one short real run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.pgserver import drop_database, fresh_database
from tests.test_bench import run_bench
from ticketing.bench.fault import (
    analyze,
    false_sold_outs,
    inversions,
    last_grant_at,
    timeline_svg,
)
from ticketing.ledger import open_ledger

pytestmark = pytest.mark.timeout(90)


def test_an_inversion_is_a_refusal_while_a_later_arrival_got_a_ticket() -> None:
    arrivals = [1.0, 2.0, 3.0, 4.0, 20.0]
    ends = [1.5, 2.5, 12.0, 4.5, 20.5]
    kinds = ["ticket", "sold_out", "error", "ticket", "sold_out"]
    # 2.0 and 3.0 were refused and 4.0 got a ticket; 20.0 came after every buyer.
    got = inversions(arrivals, ends, kinds, window=(10.0, 15.0))
    assert got == {"inside": 1, "outside": 1}  # 3.0's visit overlaps the window; 2.0's not
    assert inversions(arrivals, ends, ["ticket"] * 5, window=(0, 1)) == {
        "inside": 0,
        "outside": 0,
    }


def test_a_sold_out_before_the_last_grant_or_with_stock_left_is_false() -> None:
    ends, kinds = [1.0, 2.0, 3.0, 4.0], ["ticket", "sold_out", "ticket", "sold_out"]
    assert false_sold_outs(ends, kinds, 0, last_grant=2.9) == 1  # the one at 2.0
    assert false_sold_outs(ends, kinds, unsold_at_end=5, last_grant=2.9) == 2  # never sold
    assert false_sold_outs([1.0, 2.0], ["ticket", "sold_out"], 0, last_grant=0.9) == 0
    assert false_sold_outs([2.0], ["sold_out"], 0, last_grant=None) == 0  # nothing granted


def test_a_sold_out_heard_before_the_last_answer_but_after_the_last_grant_is_true() -> None:
    """The last buyer's "yours" arrives late (3.0) but the server granted it at 1.5:
    the visitor who heard "sold out" at 2.0 was told the truth."""
    ends, kinds = [1.0, 3.0, 2.0], ["ticket", "ticket", "sold_out"]
    assert false_sold_outs(ends, kinds, 0, last_grant=1.5) == 0
    assert false_sold_outs(ends, kinds, 0, last_grant=2.5) == 1  # granted after it: false


async def test_the_last_grant_is_the_ledgers_newest_order_on_the_monotonic_clock(
    tmp_path: Path,
) -> None:
    ledger = await open_ledger(tmp_path / "ledger.sqlite3")
    try:
        assert await last_grant_at(ledger, 1) is None  # no order yet
        wall = time.time() - 5.0  # granted 5 s ago
        for serial, at in ((0, wall - 1.0), (1, wall)):
            await ledger.driver.execute(
                "INSERT INTO orders(event_id, serial, visitor, shard, epoch, price_cents,"
                " status, created_at, expires_at) VALUES (1, ?, ?, 's', 1, 100,"
                " 'awaiting_payment', ?, ?)",
                (serial, f"v{serial}", at, at + 900),
            )
        got = await last_grant_at(ledger, 1)
        assert got is not None and abs(got - (time.monotonic() - 5.0)) < 0.5
    finally:
        await ledger.close()


def test_analyze_times_the_fault_and_the_stranded_stock() -> None:
    visitors = {
        "t0": 100.0,
        "kinds": ["ticket", "ticket", "ticket", "sold_out"],
        "tickets": ["1-0", "1-7", "1-8", None],
        "ends": [101.0, 112.0, 113.0, 112.8],
        "arrivals": [100.5, 104.0, 105.0, 112.5],
        "waits": [0, 3, 2, 0],
        "hops": [0, 1, 0, 0],
        "silences": [0.1, 2.5, 1.0, 0.2],
    }
    marks = {"detected": 103.0, "fenced": 111.0, "recovered": 111.0, "led": 110.5}
    f = analyze(
        visitors,
        fault_t=102.0,
        marks=marks,
        stranded={7, 8},
        unsold_at_end=0,
        # The server granted the last ticket at 112.5; its "yours" came at 113.0, after
        # the "sold out" at 112.8: that one was true.
        last_grant=112.5,
        grace=3,
    )
    assert f["detected_after_s"] == 1.0 and f["fenced_after_s"] == 9.0
    assert f["led_after_s"] == 8.5 and f["first_ticket_new_main_s"] == 10.0
    assert f["stranded_first_sold_after_s"] == 10.0 and f["stranded_last_sold_after_s"] == 11.0
    assert f["false_sold_outs"] == 0 and f["fcfs_inversions"] == {"inside": 0, "outside": 0}
    assert f["longest_silence_s"] == 2.5 and f["waited"] == 2 and f["sent_back"] == 1
    assert sum(f["timeline"]["ticket"]) == 3 and sum(f["timeline"]["arrivals"]) == 4
    svg = timeline_svg({"title": "t", "fault": f})
    assert svg.startswith("<svg") and "fenced" in svg and svg.endswith("</svg>")


@pytest.mark.slow
def test_a_short_kill_shard_run_passes_its_checks(tmp_path) -> None:
    proc, out = run_bench(
        "--fault=kill-shard",
        "--arrival-rate=15",
        "--duration=6",
        "--tickets=60",
        "--fault-at=1.5",
        "--heartbeat-interval=0.2",
        "--heartbeat-timeout=0.8",
        "--reclaim-after=1.5",
        "--workers=1",
        "--quiet",
        "--json",
        str(tmp_path / "fault.json"),
        timeout=80,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    f = out["fault"]
    assert out["verdict"]["oversold"] == 0 and out["audit"]["exact"]
    assert f["false_sold_outs"] == 0 and f["fcfs_inversions"]["outside"] == 0
    assert f["detected_after_s"] is not None and f["detected_after_s"] <= 0.8 + 1
    assert f["stranded_first_sold_after_s"] is not None
    assert f["stranded_first_sold_after_s"] <= 1.5 + 2
    assert (tmp_path / "fault.svg").read_text().startswith("<svg")
    assert "fault -> detected" in proc.stdout and "RESULT: ok" in proc.stdout


@pytest.mark.slow
async def test_a_short_kill_main_run_with_a_standby_fails_over(
    tmp_path, request: pytest.FixtureRequest
) -> None:
    admin = request.getfixturevalue("postgres_admin")
    url = await fresh_database(admin)
    try:
        proc, out = await asyncio.to_thread(
            run_bench,
            "--fault=kill-main",
            "--standby",
            f"--ledger={url}",
            "--arrival-rate=15",
            "--duration=6",
            # More tickets than visitors: any "sold out" is false (the end of a sale,
            # where a loaded machine can deliver one shard's "sold out" just before
            # another's last "yours", does not come into it).
            "--tickets=120",
            "--fault-at=1.5",
            "--heartbeat-interval=0.3",
            "--heartbeat-timeout=1.2",
            "--workers=1",
            "--quiet",
            "--json",
            str(tmp_path / "fault.json"),
            timeout=80,
        )
    finally:
        await drop_database(admin, url)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    f = out["fault"]
    assert out["verdict"]["oversold"] == 0 and out["audit"]["exact"]
    assert out["load"]["errors"] == 0 and f["false_sold_outs"] == 0
    assert out["load"]["granted"] == 90  # every visitor, across the failover
    assert f["led_after_s"] is not None and f["first_ticket_new_main_s"] is not None
    assert "fault -> first ticket, new leader" in proc.stdout and "RESULT: ok" in proc.stdout
