"""``ledger`` mode: main's ledger alone, fed by synthetic shards
(``python -m ticketing.bench.synthetic_shard``)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ..cluster import Child, shard_names
from ..ledger import is_postgres
from ..process import tune_gc
from ..tls import write_cluster_keys
from .children import final_line, spawn_child, stop_all
from .meter import Meter
from .options import TARGET_LEDGER_TPS, Options
from .progress import SAMPLE_EVERY, Progress
from .workspace import DataDir, machine


async def run_ledger(opts: Options) -> dict[str, Any]:
    from ..main.server import MainServer

    names = shard_names(opts.shards)
    out: dict[str, Any] = {"mode": "ledger", "options": opts.public(), "machine": machine()}
    commits = 0
    with DataDir(opts) as data:
        keys = write_cluster_keys(data / "keys", names)
        children: list[Child] = []
        main = MainServer(data_dir=data, ledger_url=opts.ledger)
        main.set_certificate_path(keys)
        recorded = 0
        last = 0.0

        def on_sale(fresh: list[dict[str, Any]]) -> None:
            nonlocal recorded, last
            recorded += len(fresh)
            last = time.monotonic()

        main.sale_listeners.append(on_sale)
        try:
            children = list(
                await asyncio.gather(
                    *(
                        spawn_child(
                            f"synthetic-{n}",
                            [
                                "-m",
                                "ticketing.bench.synthetic_shard",
                                "--name",
                                n,
                                "--keys",
                                str(keys),
                                "--batch",
                                str(opts.batch),
                                "--in-flight",
                                str(opts.in_flight),
                                *opts.loop_flag,
                            ],
                        )
                        for n in names
                    )
                )
            )
            async with main:
                for c in children:
                    await main.connect_client_server("127.0.0.1", c.ready["tls_port"], 0)
                tune_gc()  # as `ticketing main` does once it is up
                event_id = await main.init_tickets(
                    "Ledger bench", "synthetic", "10.00", opts.tickets
                )
                meter = Meter({"main": os.getpid(), **{c.name: c.pid for c in children}})
                bar = Progress("ledger", opts.tickets, "tickets recorded", opts.progress)
                meter.begin()
                t0 = time.monotonic()
                await main.distribute_tickets()
                deadline = t0 + opts.max_seconds
                drawn = 0.0
                while recorded < opts.tickets and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)  # fine-grained: the run lasts a few seconds
                    if time.monotonic() - drawn >= SAMPLE_EVERY:
                        drawn = time.monotonic()
                        meter.sample()
                        bar.draw(recorded, len(children), "shards")
                bar.draw(recorded, len(children), "shards")
                bar.close()
                meter.end()
                audit = (await main.audit(event_id)).as_dict()
                assert main.ledger is not None
                commits = main.ledger.sales_commits
                reports = [await final_line(c, "DONE", 5.0) for c in children]
        finally:
            await stop_all(children)
    window = (last - t0) if recorded else 0.0
    out["ledger"] = {
        "tickets": opts.tickets,
        "recorded": recorded,
        "seconds": round(window, 3),
        "tickets_per_s": round(recorded / window, 1) if window else 0.0,
        "batch": opts.batch,
        "in_flight_per_shard": opts.in_flight,
        "reports": sum(int(r.get("reports", 0)) for r in reports if r),
        "refused": sum(int(r.get("refused", 0)) for r in reports if r),
        "commits": commits,
        "cpu_s": {n: round(v, 3) for n, v in meter.cpu.items()},
        "main_cpu_us_per_ticket": round(1e6 * meter.cpu["main"] / recorded, 1)
        if recorded
        else None,
        "peak_rss_mb": {n: round(v / 2**20, 1) for n, v in meter.rss_peak.items()},
        "audit": audit,
        "synchronous": main.synchronous,
    }
    backend = "postgresql" if opts.ledger and is_postgres(opts.ledger) else "sqlite"
    out["ledger"]["backend"] = backend
    out["ledger"]["target"] = TARGET_LEDGER_TPS[backend]
    out["ledger"]["target_met"] = out["ledger"]["tickets_per_s"] >= TARGET_LEDGER_TPS[backend]
    exact = audit["exact"] and audit["held"] == recorded == opts.tickets
    out["ok"] = bool(exact and not out["ledger"]["refused"])
    if not out["ok"]:
        out["problems"] = [f"recorded {recorded} of {opts.tickets}; audit {audit}"]
    return out
