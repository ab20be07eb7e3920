"""``ticketing bench``: a small real run of each mode, and checks that can fail.

The e2e run is the real thing at toy size (K=2 shard processes, N=30 visitors from a
worker process over real TLS, M=20 tickets, plus the bare-stack baseline); its
ticket ids and audit are then fed to the checker whole and broken, to show the
checker catches an oversold, duplicated or unaudited sale.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ticketing import bench
from ticketing.bench import check_sale, percentile, split
from ticketing.bench.projection import MainCost, per_ticket_us, project_ceiling, role_costs

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
EXACT = {"total": 20, "unassigned": 0, "held": 20, "sold": 0, "exact": True, "problems": []}


def run_bench(*args: str, timeout: float = 50) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``ticketing bench ARGS --json F`` as a separate process; returns (process, JSON)."""
    out = Path(args[args.index("--json") + 1])
    proc = subprocess.run(
        [sys.executable, "-m", "ticketing", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    return proc, json.loads(out.read_text()) if out.exists() else None


# -- the checker alone -----------------------------------------------------------------


def ids(n: int, event: int = 1) -> list[str]:
    return [f"{event}-{s}" for s in range(n)]


def test_a_clean_sale_passes() -> None:
    v = check_sale(ids(20), 20, EXACT)
    assert v.ok and v.problems == []
    assert (v.granted, v.distinct, v.oversold, v.unconfirmed) == (20, 20, 0, 0)


def test_a_ticket_granted_twice_fails() -> None:
    v = check_sale([*ids(19), "1-3"], 20, {**EXACT, "held": 19})
    assert not v.ok
    assert v.oversold == 1 and v.distinct == 19 and v.granted == 20
    assert any("granted twice" in p and "1-3" in p for p in v.problems)


def test_more_grants_than_tickets_fails() -> None:
    v = check_sale(ids(22), 20, {**EXACT, "held": 22})
    assert not v.ok and v.oversold == 2
    assert any(p.startswith("oversold 2") for p in v.problems)
    assert any("not tickets of the event" in p for p in v.problems)  # serials 20 and 21


def test_an_inexact_audit_fails() -> None:
    audit = {**EXACT, "exact": False, "problems": ["19 tickets held but 20 orders await payment"]}
    v = check_sale(ids(20), 20, audit)
    assert not v.ok and v.oversold == 0
    assert v.problems == ["audit not exact: 19 tickets held but 20 orders await payment"]


def test_a_grant_the_ledger_never_committed_fails() -> None:
    v = check_sale(ids(20), 20, {**EXACT, "held": 19, "unassigned": 1})
    assert not v.ok and v.unconfirmed == 1


def test_an_audit_of_another_size_fails() -> None:
    assert not check_sale(ids(20), 20, {**EXACT, "total": 21}).ok


def test_percentile_and_split() -> None:
    assert percentile([], 50) is None
    values = [float(x) for x in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (
        50.0,
        95.0,
        99.0,
    )
    assert percentile([3.0], 99) == 3.0
    assert split(10, 3) == [4, 3, 3] and sum(split(3000, 2)) == 3000


# -- real runs ----------------------------------------------------------------------------------


def test_e2e_small_run_and_its_checks(tmp_path: Path) -> None:
    proc, out = run_bench(
        "--shards", "2", "--clients", "30", "--tickets", "20", "--workers", "1",
        "--concurrency", "8", "--max-seconds", "30", "--quiet",
        "--json", str(tmp_path / "e2e.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT: ok" in proc.stdout and "oversold" in proc.stdout
    t, b = out["ticketing"], out["baseline"]
    assert out["ok"] and t["verdict"]["ok"]
    assert t["granted"] == 20 and t["sold_out"] == 10 and t["errors"] == 0
    ids_ = out["rounds"][0]["ticketing"]["ticket_ids"]  # kept per round, for re-checking
    assert len(set(ids_)) == 20 and t["verdict"]["oversold"] == 0
    assert t["audit"]["exact"] and t["audit"]["held"] == 20
    assert b["granted"] == 30 and b["errors"] == 0  # the baseline answers every visitor
    assert t["tickets_per_s"] > 0 and out["ratio"]["throughput"] > 0
    assert t["latency_ms"]["p50"] <= t["latency_ms"]["p95"] <= t["latency_ms"]["p99"]
    assert set(t["cpu_s"]) >= {"main+redirect", "shard-1", "shard-2", "ticketing-worker-1"}
    assert set(b["cpu_s"]) >= {"redirect", "shard-1", "shard-2", "baseline-worker-1"}
    assert all(v > 0 for v in t["peak_rss_mb"].values())

    # The same sale, broken three ways: the checker must say so.
    audit = t["audit"]
    assert check_sale(ids_, 20, audit).ok
    assert not check_sale([*ids_, ids_[0]], 20, audit).ok  # a ticket id granted twice
    assert check_sale(ids_, 19, audit).oversold == 1  # more grants than tickets
    assert not check_sale(ids_, 20, {**audit, "exact": False}).ok  # an inexact audit


def test_a_failed_check_makes_the_exit_code_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command turns a failed verdict into exit code 1 (result from a real run's shape)."""
    verdict = check_sale([*ids(20), "1-0"], 20, EXACT)
    phase = {
        "finished": 21, "visitors_per_s": 1.0, "granted": 21, "tickets_per_s": 1.0,
        "latency_ms": {"p50": 1.0, "p95": 1.0, "p99": 1.0}, "sold_out": 0, "errors": 0,
        "server_cpu_s": 0.1, "server_cpu_ms_per_ticket": 1.0, "loadgen_cpu_s": 0.1,
        "cpu_s": {"main+redirect": 0.1}, "peak_rss_mb": {"main+redirect": 50.0},
        "audit": {**EXACT, "in_pools": 0}, "verdict": verdict.as_dict(), "error_samples": {},
    }  # fmt: skip
    broken = {
        "mode": "e2e",
        "options": bench.Options(clients=21, tickets=20, baseline=False).public(),
        "machine": bench.machine(),
        "rounds": [{"ticketing": phase}],
        "ticketing": phase,
        "ok": verdict.ok,
        "problems": verdict.problems,
    }
    monkeypatch.setattr(bench.run, "run_bench", lambda opts: broken)
    from ticketing.cli import main

    assert main(["bench", "--no-baseline", "--json", str(tmp_path / "x.json")]) == 1
    printed = capsys.readouterr().out
    assert "RESULT: FAILED" in printed and "granted twice" in printed
    assert json.loads((tmp_path / "x.json").read_text())["ok"] is False


def test_ledger_mode_small_run(tmp_path: Path) -> None:
    proc, out = run_bench(
        "--mode", "ledger", "--shards", "2", "--tickets", "3000", "--batch", "64",
        "--uvloop", "off", "--max-seconds", "30", "--quiet",
        "--json", str(tmp_path / "ledger.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = out["ledger"]
    assert out["ok"] and r["recorded"] == 3000 and r["refused"] == 0
    assert r["audit"]["exact"] and r["audit"]["held"] == 3000
    assert r["reports"] >= 3000 // 64 and r["tickets_per_s"] > 0


def test_idle_mode_small_run(tmp_path: Path) -> None:
    proc, out = run_bench(
        "--mode", "idle", "--connections", "40", "--workers", "2", "--max-seconds", "30",
        "--quiet", "--json", str(tmp_path / "idle.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = out["idle"]
    assert out["ok"] and r["held_by_shard"] == 40 and r["failed"] == 0
    assert r["shard_rss_mb_held"] >= r["shard_rss_mb_before"] > 0


def test_crowd_mode_small_run_through_the_waiting_room(tmp_path: Path) -> None:
    proc, out = run_bench(
        "--arrival-rate", "200", "--duration", "1", "--tickets", "60", "--shards", "1",
        "--max-seconds", "30", "--quiet", "--json", str(tmp_path / "crowd.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    c, load = out["crowd"], out["load"]
    assert out["mode"] == "crowd" and load["errors"] == 0 and out["verdict"]["oversold"] == 0
    assert load["granted"] == 60 and load["sold_out"] == 140 and out["audit"]["exact"]
    assert c["visitors"] == 200 and 0 < c["median_share"] <= 1
    assert "median / last ticket" in proc.stdout and "position error" in proc.stdout


@pytest.mark.parametrize("fronts, front", [("0", "main+front"), ("1", "front-1")])
def test_idle_waiting_small_run(tmp_path: Path, fronts: str, front: str) -> None:
    proc, out = run_bench(
        "--mode", "idle", "--waiting", "60", "--fronts", fronts, "--max-seconds", "30",
        "--quiet", "--json", str(tmp_path / "waiting.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = out["waiting"]
    assert out["ok"] and r["in_line"] == 60 and r["failed"] == 0 and r["front"] == front
    assert r["front_rss_mb_held"] > 0 and "waiting visitors within 1 GiB" in proc.stdout


def test_rank_inversions_count_refusals_ranked_before_a_winner() -> None:
    from ticketing.bench.crowd import rank_inversions

    queue = [[1, 0, 1, 0, 1], [2, 0, 2, 0, 2], [3, 0, 3, 0, 3], None]
    assert rank_inversions(["ticket", "ticket", "sold_out", "ticket"], queue) == 0
    assert rank_inversions(["sold_out", "ticket", "ticket", "sold_out"], queue) == 1


def test_waiting_accuracy_compares_with_who_was_really_ahead() -> None:
    from ticketing.bench.crowd import waiting_accuracy

    # rank, shown_at, position, eta, released_at: the second was told 2 (one ahead, true),
    # the third 5 while only two were still ahead of it, and an ETA 1 s too long.
    queue = [[1, 0.0, 1, 0.0, 1.0], [2, 0.0, 2, 2.0, 2.0], [3, 0.5, 5, 3.5, 3.0], None]
    r = waiting_accuracy(queue)
    assert r["queued_visitors"] == 3 and r["position_error_p95"] == 2.0
    assert r["position_error_p50"] == 0.0 and r["eta_error_s_p95"] == 1.0


# -- the projected ceiling: plain arithmetic ------------------------------------------------


def test_projection_splits_the_cores_and_names_the_limit() -> None:
    # 63 cores for fronts and shards; fronts cost 200 µs, shards 400 µs per ticket:
    # 21 fronts + 42 shards give min(21 / 200e-6, 42 / 400e-6) = 105,000 tickets/s,
    # but main at 50 µs caps it at 1 / 50e-6 = 20,000.
    p = project_ceiling(50e-6, 200e-6, 400e-6, 64)
    assert (p.tickets_per_s, p.limited_by) == (20_000.0, "main")
    assert (p.fronts, p.shards) == (21, 42)
    # A cheap main: the best split limits it, here at the shards (21/2e-4 > 42/4e-4 is a tie,
    # broken towards shards).
    p = project_ceiling(1e-6, 200e-6, 400e-6, 64)
    assert (p.tickets_per_s, p.fronts, p.shards, p.limited_by) == (105_000.0, 21, 42, "shards")
    # 4 cores: 3 to split; fronts 1 ms, shards 1 ms: 1+2 or 2+1 give 1,000/s, fronts limit
    # in 1+2 (the first best split).
    p = project_ceiling(1e-6, 1e-3, 1e-3, 4)
    assert (p.tickets_per_s, p.fronts, p.shards, p.limited_by) == (1_000.0, 1, 2, "fronts")
    # The front inside main (no front processes): every other core is a shard.
    p = project_ceiling(1e-3, 0.0, 2e-3, 64)
    assert (p.fronts, p.shards, p.limited_by, p.tickets_per_s) == (0, 63, "main", 1_000.0)
    assert p.cost_us == {"main": 1000.0, "fronts": 0.0, "shards": 2000.0}
    # Main's fixed load comes off its core first: 63 linked processes at 4 ms/s each
    # leave 1 - 0.252 of it, so a 50 µs main caps at 0.748 / 50e-6 = 14,960 tickets/s.
    p = project_ceiling(50e-6, 200e-6, 400e-6, 64, main_fixed=4e-3)
    assert (p.tickets_per_s, p.limited_by, p.main_fixed_ms_per_s) == (14_960.0, "main", 252.0)
    p = project_ceiling(50e-6, 200e-6, 400e-6, 64, main_fixed=0.02)  # more than its core
    assert (p.tickets_per_s, p.limited_by) == (0.0, "main")
    d = p.as_dict()
    assert "not a measurement" in d["kind"] and "M(f, s) = (1 - z (f + s)" in d["formula"]
    with pytest.raises(ValueError):
        project_ceiling(1e-3, 1e-3, 1e-3, 1)


def test_mains_capacity_charges_reports_per_shard_and_load_per_front() -> None:
    # m = 20 µs a sale, r = 1 ms a report beyond its sales, z = 2 ms/s per link, y = 10 ms/s
    # per front, shards report every 0.2 s: with 10 fronts and 20 shards main's core has
    # 1 - 0.06 - 0.1 - 100 * 1e-3 = 0.74 left, at 20e-6 + 1e-3 / 256 s a ticket.
    main = MainCost(20e-6, per_link=2e-3, per_front=10e-3, per_report=1e-3, linger=0.2)
    assert main.capacity(10, 20) == pytest.approx(0.74 / (20e-6 + 1e-3 / 256))
    assert MainCost(1e-3, per_link=0.5).capacity(1, 1) == 0.0  # its core is spent
    # Cheap fronts and shards: main limits; a front costs main more than a shard, so
    # the split takes as few fronts as keep up (3 fronts take 30,000/s).
    p = project_ceiling(main, 100e-6, 100e-6, 64)
    assert p.limited_by == "main" and (p.fronts, p.shards) == (3, 60)
    assert p.tickets_per_s == pytest.approx(main.capacity(3, 60), abs=0.1)
    assert p.tickets_per_s > main.capacity(31, 32)
    assert p.main is not None and p.main["y_ms_per_s"] == 10.0
    # Dear fronts and shards: they limit it, as with main's CPU taken per ticket.
    p = project_ceiling(main, 2e-3, 2e-3, 64)
    assert p.limited_by in ("fronts", "shards") and p.tickets_per_s == pytest.approx(31 / 2e-3)
    # Without per-report costs the model is the per-ticket one.
    flat = MainCost(50e-6, per_link=4e-3)
    assert project_ceiling(flat, 200e-6, 400e-6, 64).tickets_per_s == 14_960.0


def test_role_costs_sum_each_roles_processes() -> None:
    cpu = {"main": 0.2, "front-1": 1.0, "front-2": 1.0, "shard-1": 3.0, "shard-2": 1.0}
    cpu |= {"harness": 9.0, "ticketing-worker-1": 9.0}  # not the cluster's: left out
    assert role_costs(cpu, 1000) == pytest.approx({"main": 2e-4, "fronts": 2e-3, "shards": 4e-3})
    assert role_costs({"main+redirect": 1.0, "redirect": 1.0}, 100) == pytest.approx(
        {"main": 0.01, "fronts": 0.01, "shards": 0.0}
    )
    assert per_ticket_us({"main": 0.2}, 2000) == {"main": 100.0}
    assert per_ticket_us({"main": 0.2}, 0) == {}


def test_e2e_with_a_front_process(tmp_path: Path) -> None:
    """``--fronts 1``: visitors through a front process; the baseline in the same layout."""
    proc, out = run_bench(
        "--shards", "1", "--fronts", "1", "--clients", "24", "--tickets", "16",
        "--workers", "1", "--concurrency", "6", "--max-seconds", "20", "--cores", "16",
        "--slope-tickets", "1024", "--quiet", "--json", str(tmp_path / "fronts.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t, b = out["ticketing"], out["baseline"]
    assert out["ok"] and t["granted"] == 16 and t["sold_out"] == 8 and t["errors"] == 0
    assert t["audit"]["exact"] and b["granted"] == 24 and b["errors"] == 0
    # The same roles on both sides (main only in the real run), each measured.
    assert set(t["cpu_s"]) >= {"main", "front-1", "shard-1"}
    assert set(b["cpu_s"]) >= {"front-1", "shard-1"} and "redirect" not in b["cpu_s"]
    assert t["cpu_s"]["front-1"] > 0 and b["cpu_s"]["front-1"] > 0  # the front served them
    costs = t["cpu_us_per_ticket"]
    assert costs["front-1"] == pytest.approx(1e6 * t["cpu_s"]["front-1"] / 16, rel=0.01)
    assert "load generators" in costs
    c = t["ledger_commits"]  # main batched the 16 sales into at most 16 commits
    assert c["sales"] == 16 and 1 <= c["commits"] <= 16
    p = out["projection"]
    assert p["cores"] == 16 and p["fronts"] + p["shards"] == 15 and p["tickets_per_s"] > 0
    assert p["limited_by"] in ("main", "fronts", "shards")
    # Main's cost split by the two ledger runs: a report of 256 costs more than one of 16.
    slope = out["ledger_slope"]
    (small, full) = slope["runs"]
    assert (small["batch"], full["batch"]) == (16, 256) and small["reports"] >= 20
    assert slope["per_sale_us"] > 0 and full["cpu_us_per_report"] > small["cpu_us_per_report"]
    assert p["main"]["m_us"] == pytest.approx(slope["per_sale_us"], abs=0.1)
    assert p["main"]["linger_s"] > 0 and p["main"]["y_ms_per_s"] >= 0
    assert {g["name"] for g in out["targets"]} >= {"ceiling limited by"}
    assert "PROJECTION (not a measurement)" in proc.stdout and "M(f, s) = (1 - z" in proc.stdout
    fixed = t["main_fixed"]  # measured before GO, with nothing sold
    assert fixed["links"] == 2 and fixed["cpu_ms_per_s"] > 0 and fixed["us_per_ticket"] > 0
    assert t["load_seconds"] > 0 and "main's CPU per ticket" in proc.stdout


def test_hello_lag_is_the_fronts_stamp_less_the_arrival() -> None:
    from ticketing.bench.crowd import hello_lag

    # Arrivals at 10 and 11 s (monotonic); wall = monotonic + 1000; hellos 0.5 and 2 s later.
    queue = [[1_010_500_000, 0, 1, 0, 0], None, [1_013_000_000, 0, 2, 0, 0]]
    lag = hello_lag([10.0, 10.5, 11.0], queue, 1000.0)
    assert lag == {"p50": 0.5, "p95": 2.0}
    assert hello_lag([10.0], [None], 1000.0) == {"p50": None, "p95": None}
