"""The results as a table for people (the JSON is the results themselves)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .options import IDLE_CONNECTIONS, TARGET_WAITING
from .projection import FORMULA


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:,.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_e2e(out: dict[str, Any]) -> str:
    t, b = out["ticketing"], out.get("baseline") or {}
    o = out["options"]
    head = (
        f"e2e: {o['shards']} shards, "
        + (f"{o['fronts']} fronts, " if o.get("fronts") else "front inside main, ")
        + f"{o['clients']} visitors, {o['tickets']} tickets, "
        f"concurrency {o['concurrency']}, {o['workers']} worker processes, "
        f"{'uvloop' if o['uvloop'] else 'asyncio'}, {out['machine']['cpus']} CPUs"
        + (f", {o['rounds']} rounds (medians)" if o["rounds"] > 1 else "")
    )

    def row(name: str, key: Callable[[dict[str, Any]], Any]) -> tuple[str, str, str]:
        return (name, _fmt(key(b)) if b else "-", _fmt(key(t)))

    def lat(p: str) -> Callable[[dict[str, Any]], Any]:
        return lambda r: r["latency_ms"][p]

    def rss(r: dict[str, Any]) -> str:
        return ", ".join(f"{n} {v:.0f}" for n, v in r["peak_rss_mb"].items() if "worker" not in n)

    rows: list[tuple[str, ...]] = [
        ("", "baseline", "ticketing"),
        row("visitors finished", lambda r: r["finished"]),
        row("visitors/s", lambda r: r["visitors_per_s"]),
        row("tickets granted", lambda r: r["granted"]),
        row("tickets/s", lambda r: r["tickets_per_s"]),
        row("time-to-ticket p50 ms", lat("p50")),
        row("time-to-ticket p95 ms", lat("p95")),
        row("time-to-ticket p99 ms", lat("p99")),
        row("sold-out answers", lambda r: r["sold_out"]),
        row("waited in a front's line", lambda r: r.get("queued", 0)),
        row("errors", lambda r: r["errors"]),
        row("server CPU s", lambda r: r["server_cpu_s"]),
        row("server CPU ms/ticket", lambda r: r["server_cpu_ms_per_ticket"]),
        row("server CPU ms/visitor", lambda r: _per(r["server_cpu_s"], r["finished"])),
        row("load generator CPU s", lambda r: r["loadgen_cpu_s"]),
    ]
    verdicts = [r["ticketing"]["verdict"] for r in out["rounds"]]
    audits = [r["ticketing"]["audit"] for r in out["rounds"]]
    every = f" (all {len(verdicts)} rounds)" if len(verdicts) > 1 else ""
    checks = [
        ("oversold", _fmt(sum(v["oversold"] for v in verdicts)) + every),
        (
            "distinct tickets == granted",
            ", ".join(f"{v['distinct']} == {v['granted']}" for v in verdicts),
        ),
        (
            "unconfirmed grants",
            _fmt(sum(v["unconfirmed"] for v in verdicts)) + every,
        ),
        (
            "audit",
            ("exact" if all(a["exact"] for a in audits) else "NOT EXACT") + every,
        ),
        (
            "audit detail",
            f"total {t['audit']['total']}, unassigned {t['audit']['unassigned']}, "
            f"pools {t['audit']['in_pools']}, held {t['audit']['held']}, sold {t['audit']['sold']}",
        ),
    ]
    lines = [head, "", _table(rows), "", _cost_table(b, t), ""]
    for name, r in (("baseline", b), ("ticketing", t)):
        if r:
            cpu = ", ".join(f"{n} {s:.2f}" for n, s in r["cpu_s"].items())
            lines.append(f"{name} CPU s: {cpu}")
            lines.append(f"{name} peak RSS MiB: {rss(r)}")
    if t.get("ledger_commits"):
        c = t["ledger_commits"]
        lines.append(
            f"main's ledger: {c['commits']:,} commits, {_fmt(c['sales_per_commit'])} sales per commit"
        )
    fixed = t.get("main_fixed")
    if fixed and fixed["us_per_ticket"] is not None:
        main_us = next(v for n, v in t["cpu_us_per_ticket"].items() if n.startswith("main"))
        lines.append(
            f"main's CPU per ticket {_fmt(main_us)} us over the {t['load_seconds']:.1f} s load"
            f" phase (start-up excluded); of it fixed {_fmt(fixed['us_per_ticket'])} us"
            f" ({fixed['cpu_ms_per_s']:.1f} ms/s with nothing sold, {fixed['links']} links,"
            f" measured {fixed['window_s']:g} s before GO), per ticket beyond that"
            f" {_fmt(round(main_us - fixed['us_per_ticket'], 1))} us"
        )
    if b:
        lines.append(
            f"harness overhead (this process during the baseline): {b['harness_cpu_s']:.2f} s CPU"
            " (in main's figures too: an upper bound, not subtracted)"
        )
    lines.append("")
    lines += [f"{k:<28} {v_}" for k, v_ in checks]
    if "ratio" in out:
        r = out["ratio"]
        met = "met" if r["target_met"] else "MISSED"
        lines.append(
            f"{'throughput vs baseline':<28} {r['throughput']:.2f}x (target >= {r['target']}: {met})"
        )
        if len(r["per_round"]) > 1:
            per = ", ".join(_fmt(x) for x in r["per_round"])
            lines.append(f"{'ratio per round':<28} {per} (table: median rounds)")
        if r["server_cpu_per_ticket"]:
            lines.append(f"{'server CPU/ticket vs baseline':<28} {r['server_cpu_per_ticket']:.2f}x")
    lines += _projection_lines(out)
    for name, r in (("baseline", b), ("ticketing", t)):
        for msg, n in (r.get("error_samples") or {}).items():
            lines.append(f"{name} error x{n}: {msg}")
    lines.append("RESULT: " + ("ok" if out["ok"] else "FAILED: " + "; ".join(out["problems"])))
    return "\n".join(lines)


def _per(total: float, n: int) -> float | None:
    return round(1000 * total / n, 3) if n else None


def _cost_table(b: dict[str, Any], t: dict[str, Any]) -> str:
    """CPU µs per sold ticket of each role (the baseline "sells" every visitor)."""
    names = list(t.get("cpu_us_per_ticket", {}))
    names += [n for n in b.get("cpu_us_per_ticket", {}) if n not in names]
    names.sort(key=lambda n: n == "load generators")  # the clients last
    rows: list[tuple[str, ...]] = [("CPU us per ticket", "baseline", "ticketing")]
    for n in names:
        rows.append(
            (
                n,
                _fmt((b.get("cpu_us_per_ticket") or {}).get(n)),
                _fmt((t.get("cpu_us_per_ticket") or {}).get(n)),
            )
        )
    return _table(rows)


def _projection_lines(out: dict[str, Any]) -> list[str]:
    p = out.get("projection")
    if not p:
        return []
    c = p["cost_us"]
    lines = [
        "",
        f"PROJECTION (not a measurement): a {p['cores']}-core cluster, from this run's CPU per"
        " sold ticket",
        *(f"  {part}" for part in FORMULA.split("; ")),
    ]
    mc = p.get("main") or {}
    slope = out.get("ledger_slope")
    if slope and mc.get("r_us"):
        runs = ", ".join(f"{r['cpu_us_per_report']:g} us at {r['batch']}" for r in slope["runs"])
        lines.append(f"  main per report (two --mode ledger runs, one report in flight): {runs}")
        lines.append(
            f"  m = {mc['m_us']:g} us, r = {mc['r_us']:g} us, z = {mc['z_ms_per_s']:g} ms/s,"
            f" y = {mc['y_ms_per_s']:g} ms/s, L = {mc['linger_s']:g} s, B = {mc['batch']}"
        )
    else:
        lines.append(
            f"  m = {c['main']:g} us, z (C - 1) = {p.get('main_fixed_ms_per_s', 0):g} ms/s"
        )
    lines.append(
        f"  F = {c['fronts']:g} us, S = {c['shards']:g} us"
        f" -> {p['tickets_per_s']:,.0f} tickets/s with 1 main + {p['fronts']} fronts +"
        f" {p['shards']} shards, limited by {p['limited_by']}"
    )
    bp = out.get("baseline_projection")
    if bp:
        lines.append(
            f"  bare stack, same formula (a ticket per visitor): {bp['tickets_per_s']:,.0f}"
            " tickets/s"
            f" ({bp['fronts']} fronts + {bp['shards']} shards, limited by {bp['limited_by']})"
        )
    if out.get("targets"):
        lines += ["", "targets (issue 11; meant for --fronts 2 at N=3,000):"]
        for g in out["targets"]:
            met = "met" if g["met"] else "MISSED"
            lines.append(f"  {g['name']:<40} {_fmt(g['value']):>10}  ({g['target']}: {met})")
    return lines


def format_ledger(out: dict[str, Any]) -> str:
    r = out["ledger"]
    a = r["audit"]
    rows = [
        ("", "ledger"),
        ("tickets recorded", _fmt(r["recorded"])),
        ("seconds", _fmt(r["seconds"])),
        ("tickets/s (durable)", _fmt(r["tickets_per_s"])),
        ("batch (sales/request)", _fmt(r["batch"])),
        ("reports in flight/shard", _fmt(r["in_flight_per_shard"])),
        ("report_sales requests", _fmt(r["reports"])),
        ("ledger commits (grouped)", _fmt(r.get("commits"))),
        ("main CPU us/ticket", _fmt(r["main_cpu_us_per_ticket"])),
    ]
    met = "met" if r["target_met"] else "MISSED"
    lines = [
        f"ledger: {out['options']['shards']} synthetic shards, synchronous={r['synchronous']}, "
        f"{'uvloop' if out['options']['uvloop'] else 'asyncio'}",
        "",
        _table(rows),
        "",
        "CPU s: " + ", ".join(f"{n} {s:.2f}" for n, s in r["cpu_s"].items()),
        "peak RSS MiB: " + ", ".join(f"{n} {v:.0f}" for n, v in r["peak_rss_mb"].items()),
        f"audit: {'exact' if a['exact'] else 'NOT EXACT'} (total {a['total']}, held {a['held']})",
        f"target on {r['backend']} >= {r['target']:,} tickets/s: {met}",
        "RESULT: " + ("ok" if out["ok"] else "FAILED: " + "; ".join(out.get("problems", []))),
    ]
    return "\n".join(lines)


def format_idle(out: dict[str, Any]) -> str:
    if "waiting" in out:
        return _format_waiting(out)
    r = out["idle"]
    rows = [
        ("", "idle"),
        ("connections asked", _fmt(r["connections"])),
        ("held by the shard", _fmt(r["held_by_shard"])),
        ("failed", _fmt(r["failed"])),
        ("opened/s", _fmt(r["opened_per_s"])),
        ("shard RSS MiB before", _fmt(r["shard_rss_mb_before"])),
        ("shard RSS MiB held", _fmt(r["shard_rss_mb_held"])),
        ("shard KiB/connection", _fmt(r["shard_kib_per_connection"])),
    ]
    met = "met" if r["target_met"] else "MISSED"
    lines = [
        f"idle: 1 shard, {'uvloop' if out['options']['uvloop'] else 'asyncio'}",
        "",
        _table(rows),
        "",
        "peak RSS MiB: " + ", ".join(f"{n} {v:.0f}" for n, v in r["peak_rss_mb"].items()),
        f"target: {IDLE_CONNECTIONS:,} idle connections within 1 GiB shard RSS: {met}",
        *(f"failed x{n}: {msg}" for msg, n in r["failure_samples"].items()),
        "RESULT: " + ("ok" if out["ok"] else "FAILED: " + "; ".join(out.get("problems", []))),
    ]
    return "\n".join(lines)


def _lag(lag: dict[str, float | None] | None) -> str:
    if not lag or lag["p50"] is None or lag["p95"] is None:
        return "-"
    return f"{lag['p50']:.2f} s / {lag['p95']:.2f} s"


def _front_name(name: str | None) -> str:
    return "main's process" if name in (None, "main+front") else f"its own process, {name}"


def _format_waiting(out: dict[str, Any]) -> str:
    r = out["waiting"]
    rows = [
        ("", "waiting room"),
        ("visitors asked", _fmt(r["visitors"])),
        ("in the front's line", _fmt(r["in_line"])),
        ("failed", _fmt(r["failed"])),
        ("entered/s", _fmt(r["entered_per_s"])),
        ("front connections open", _fmt(r["front_connections_at_measure"])),
        ("front RSS MiB before", _fmt(r["front_rss_mb_before"])),
        ("front RSS MiB held", _fmt(r["front_rss_mb_held"])),
        ("front KiB/waiter", _fmt(r["front_kib_per_waiter"])),
    ]
    met = "met" if r["target_met"] else "MISSED"
    lines = [
        f"idle --waiting: 1 front ({_front_name(r.get('front'))}),"
        f" {'uvloop' if out['options']['uvloop'] else 'asyncio'}",
        "",
        _table(rows),
        "",
        "peak RSS MiB: " + ", ".join(f"{n} {v:.0f}" for n, v in r["peak_rss_mb"].items()),
        f"target: {TARGET_WAITING:,} waiting visitors within 1 GiB front RSS: {met}",
        *(f"failed x{n}: {msg}" for msg, n in r["failure_samples"].items()),
        "RESULT: " + ("ok" if out["ok"] else "FAILED: " + "; ".join(out.get("problems", []))),
    ]
    return "\n".join(lines)


THROWAWAY = "a throwaway server"


def format_fault(out: dict[str, Any]) -> str:
    """The fault run: what visitors saw, how fast the cluster noticed, the checks."""
    f, load, a, v = out["fault"], out["load"], out["audit"], out["verdict"]
    o = out["options"]
    inv = f["fcfs_inversions"]

    def s(x: Any) -> str:
        return "-" if x is None else f"{x:.2f} s"

    rows = [
        ("", o["fault"]),
        ("visitors (arrived)", _fmt(f["visitors"])),
        ("tickets granted", _fmt(load["granted"])),
        ("sold-out answers", _fmt(load["sold_out"])),
        ("errors", _fmt(load["errors"])),
        ("told to wait (visitors)", _fmt(f["waited"])),
        ("sent back by a shard", _fmt(f["sent_back"])),
        ("fault at", s(f["fault_at_s"])),
        ("fault -> detected", s(f["detected_after_s"])),
        ("fault -> fenced", s(f["fenced_after_s"])),
        ("fault -> recovered", s(f["recovered_after_s"])),
        ("stranded tickets", _fmt(f["stranded"])),
        ("stranded sold elsewhere", _fmt(f["stranded_sold_elsewhere"])),
        ("fault -> stranded sold elsewhere", s(f["stranded_first_sold_after_s"])),
        ("fault -> last stranded sold", s(f["stranded_last_sold_after_s"])),
        ("fault -> next ticket", s(f["first_ticket_after_fault_s"])),
        *(
            [
                ("fault -> the standby leads", s(f["led_after_s"])),
                ("fault -> first ticket, new leader", s(f["first_ticket_new_main_s"])),
            ]
            if o.get("standby")
            else []
        ),
        ("longest wait without an answer", s(f["longest_silence_s"])),
        ("wait without an answer p99", s(f["silence_p99_s"])),
    ]
    checks = [
        ("oversold", _fmt(v["oversold"])),
        ("audit", "exact" if a["exact"] else "NOT EXACT"),
        (
            "audit detail",
            f"total {a['total']}, unassigned {a['unassigned']}, pools {a['in_pools']}, "
            f"held {a['held']}, sold {a['sold']}",
        ),
        ("false sold-outs", _fmt(f["false_sold_outs"])),
        *(
            [
                (
                    "failover target",
                    f"kill -> first ticket under the new leader <= {t['target_s']:g} s: "
                    + ("met" if t["met"] else "MISSED"),
                )
            ]
            if (t := out.get("failover_target"))
            else []
        ),
        ("FCFS inversions outside", _fmt(inv["outside"])),
        (
            "FCFS inversions in window",
            f"{inv['inside']} (window {f['window_s'][0]:.1f}-{f['window_s'][1]:.1f} s)",
        ),
    ]
    lines = [
        f"fault: {o['fault']}, {o['shards']} shards, {o['tickets']} tickets, "
        f"{o['arrival_rate']:g} arrivals/s for {o['duration']:g} s, heartbeat "
        f"{o['heartbeat_interval']:g}/{o['heartbeat_timeout']:g} s, reclaim after "
        f"{o['reclaim_after']:g} s, {out['machine']['cpus']} CPUs"
        + (
            f"; a leader and a standby main on PostgreSQL ({o.get('ledger') or THROWAWAY}),"
            f" {o['fronts']} front process(es)"
            if o.get("standby")
            else ""
        ),
        "",
        _table(rows),
        "",
        *(f"{k:<28} {v_}" for k, v_ in checks),
        *(f"error x{n}: {msg}" for msg, n in (load.get("error_samples") or {}).items()),
        "RESULT: " + ("ok" if out["ok"] else "FAILED: " + "; ".join(out["problems"])),
    ]
    return "\n".join(lines)


def format_crowd(out: dict[str, Any]) -> str:
    """The crowd through the waiting room: the targets, the waiting figures, the checks."""
    c, load, a, v, o = out["crowd"], out["load"], out["audit"], out["verdict"], out["options"]
    w, t = c["waiting"], out["targets"]

    def s(x: Any) -> str:
        return "-" if x is None else f"{x:.2f} s"

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    rows = [
        ("", "crowd"),
        ("visitors (arrived)", _fmt(c["visitors"])),
        ("tickets granted", _fmt(load["granted"])),
        ("sold-out answers", _fmt(load["sold_out"])),
        ("errors + timeouts", _fmt(load["errors"])),
        ("waited in line (visitors)", _fmt(w["queued_visitors"])),
        (
            "sent straight on / released",
            f"{_fmt(c['front'].get('direct'))} / {_fmt(c['front'].get('released'))}",
        ),
        ("winners' median time-to-ticket", s(c["winners_median_s"])),
        ("time to the last ticket", s(c["time_to_last_ticket_s"])),
        (
            "position error p50 / p95",
            f"{_fmt(w['position_error_p50'])} / {_fmt(w['position_error_p95'])}",
        ),
        ("ETA error p50 / p95", f"{s(w['eta_error_s_p50'])} / {s(w['eta_error_s_p95'])}"),
        ("FCFS inversions", f"{c['fcfs_inversions']} ({100 * c['fcfs_inversions_share']:.2f} %)"),
        ("  beyond 10 ms of the last winner", _fmt(c["fcfs_inversions_beyond_jitter"])),
        ("  in the fronts' order (ranks)", _fmt(c.get("rank_inversions"))),
        ("arrival to its first connect p50 / p95", _lag(c.get("dial_lag_s"))),
        ("arrival to the front's stamp p50 / p95", _lag(c.get("hello_lag_s"))),
    ]
    timeline = c["timeline"]
    lines = [
        f"crowd: {o['shards']} shards, {o.get('fronts') or 'no'} front processes"
        f"{'' if o.get('fronts') else ' (the front inside main)'}, {o['tickets']} tickets,"
        f" {o['arrival_rate']:g} arrivals/s for {o['duration']:g} s, {o['workers']} worker"
        f" processes, {out['machine']['cpus']} CPUs"
        f"{', handshakes trickle once the line is full' if o.get('queue_trickle') else ''}",
        "",
        _table(rows),
        "",
        f"{'median / last ticket':<28} {_fmt(c['median_share'])} (target <= "
        f"{t['median_share']:g}: {met(t['median_share_met'])})",
        f"{'FCFS inversions share':<28} {100 * c['fcfs_inversions_share']:.2f} % (target <= "
        f"{100 * t['fcfs_inversions_share']:g} %: {met(t['fcfs_met'])})",
        f"{'oversold':<28} {_fmt(v['oversold'])}",
        f"{'audit':<28} {'exact' if a['exact'] else 'NOT EXACT'} (total {a['total']}, "
        f"unassigned {a['unassigned']}, pools {a['in_pools']}, held {a['held']}, sold {a['sold']})",
        f"{'answers per 0.5 s':<28} tickets {timeline['ticket']}",
        f"{'':<28} sold out {timeline['sold_out']}",
        *(f"error x{n}: {msg}" for msg, n in (load.get("error_samples") or {}).items()),
        "RESULT: " + ("ok" if out["ok"] else "FAILED: " + "; ".join(out["problems"])),
    ]
    return "\n".join(lines)
