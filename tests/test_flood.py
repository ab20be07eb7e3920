"""A bounded slow-client and connection flood against a real front and a real shard.

Main (+ the front) and one shard run as their own processes, so their memory can be
read from ``/proc``. From 127.0.0.1 the flood opens a burst of idle TCP connections
(more than the per-address cap), slow TLS clients that send one header line at a
time, and reconnecting clients; meanwhile a buyer on 127.0.0.2 keeps visiting
(admission on the front, a ticket over the shard's WSS). Bounded: about 1,300
connections per server in about 3 seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import statistics
import sys
import time
from pathlib import Path

import pytest

from tests.test_crash import read_line_matching
from ticketing.cluster import ShardProcess
from ticketing.process import raise_fd_limit
from ticketing.tls import write_cluster_keys
from ticketing.web_client import WebClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

LIMITS = ("--max-per-address", "300", "--handshake-timeout", "1", "--header-timeout", "1")
BURST = 500  # idle TCP connections at once, per server (the cap admits 300)
SLOW = 60  # TLS clients sending headers one line at a time, per server
CHURN = 50  # clients reconnecting as soon as they are dropped, per server
FLOOD_SECONDS = 3.0
MIB = 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def dropped(reader: asyncio.StreamReader) -> None:
    """Until the server closes the connection (EOF or reset)."""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while await reader.read(4096):
            pass


async def idle(port: int, held: list[asyncio.StreamWriter]) -> bool:
    """One idle TCP connection; True when the server dropped it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    held.append(writer)
    await asyncio.wait_for(dropped(reader), 10)
    return True


async def slow(port: int, ctx: ssl.SSLContext) -> float:
    """A TLS client dribbling header lines; seconds until the server dropped it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    t0 = time.monotonic()
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        for i in range(40):  # 12 s at most; the header timeout is 1 s
            writer.write(f"X-Slow-{i}: 1\r\n".encode())
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.3) == b"":
                    break
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
    return time.monotonic() - t0


async def churn(port: int, deadline: float) -> int:
    """Reconnect as soon as dropped, until ``deadline``; returns how many connections."""
    n = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            n += 1
            await asyncio.wait_for(dropped(reader), 5)
            writer.close()
        await asyncio.sleep(0.2)
    return n


async def visit(front: str, ctx: ssl.SSLContext) -> tuple[str, float]:
    """A buyer on another machine (127.0.0.2): admission, then a ticket over WSS."""
    t0 = time.perf_counter()
    async with WebClient(ctx, timeout=20, source="127.0.0.2") as client:
        outcome = await client.get_ticket(front)
    if outcome.kind != "ticket":
        print("buyer:", outcome)
    return outcome.kind, time.perf_counter() - t0


async def test_front_and_shard_keep_serving_through_a_flood_and_give_memory_back(
    tmp_path: Path,
) -> None:
    raise_fd_limit()
    keys = write_cluster_keys(tmp_path / "keys", ["shard-1"])
    data = tmp_path / "data"
    ctx = ssl.create_default_context(cafile=str(keys / "ca.crt"))
    shard = await ShardProcess.launch("shard-1", keys, data, extra_args=LIMITS)
    main = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ticketing", "main", "--keys", str(keys), "--data", str(data), "--port", "0"),
        *("--tickets", "1000", "--shard", f"127.0.0.1:{shard.tls_port}:{shard.https_port}"),
        *("--admissions-per-address", "off", *LIMITS),  # the buyer stands for many
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    held: list[asyncio.StreamWriter] = []
    try:
        assert main.stdout
        front = (await read_line_matching(main.stdout, r"redirect server: (https://\S+)"))[1]
        front_port = int(front.rstrip("/").rsplit(":", 1)[1])
        pids = {"front": main.pid, "shard": shard.pid}
        for _ in range(10):  # warm up: imports, caches, the first handshakes
            assert (await visit(front, ctx))[0] == "ticket"
        before = {name: rss(pid) for name, pid in pids.items()}

        # The flood, against both servers at once, and the buyer visiting throughout.
        deadline = time.monotonic() + FLOOD_SECONDS
        ports = (front_port, shard.https_port)
        slow_tasks = [asyncio.ensure_future(slow(p, ctx)) for p in ports for _ in range(SLOW)]
        await asyncio.sleep(0.2)  # the slow ones are in; now the burst over the cap
        idle_tasks = [asyncio.ensure_future(idle(p, held)) for p in ports for _ in range(BURST)]
        churn_tasks = [
            asyncio.ensure_future(churn(p, deadline)) for p in ports for _ in range(CHURN)
        ]
        during: list[tuple[str, float]] = []
        peak = dict(before)
        while time.monotonic() < deadline:
            during.append(await visit(front, ctx))
            await asyncio.sleep(0.05)
            peak = {name: max(peak[name], rss(pid)) for name, pid in pids.items()}
        slow_seconds = await asyncio.gather(*slow_tasks)
        assert all(await asyncio.gather(*idle_tasks))  # every idle one was dropped
        churned = sum(await asyncio.gather(*churn_tasks))
        for w in held:
            w.close()

        # After: memory comes back, buyers are served as before.
        after: dict[str, int] = {}
        async with asyncio.timeout(20):
            while True:
                after = {name: rss(pid) for name, pid in pids.items()}
                if all(after[n] <= before[n] + 12 * MIB for n in pids):
                    break
                await asyncio.sleep(0.2)  # noqa: ASYNC110 - another process's memory
        later = [await visit(front, ctx) for _ in range(5)]
    finally:
        for w in held:
            w.close()
        if main.returncode is None:
            main.terminate()
        await asyncio.wait_for(main.wait(), 30)
        await shard.stop()

    latencies = [t for _, t in during]
    print(
        f"\nflood: {len(ports) * (BURST + SLOW)} burst+slow connections, {churned} reconnects;"
        f" buyer visits during: {len(during)}, p50 {statistics.median(latencies) * 1000:.0f} ms,"
        f" max {max(latencies) * 1000:.0f} ms; slow clients dropped after"
        f" max {max(slow_seconds):.1f} s"
    )
    for name in pids:
        print(
            f"{name} RSS MiB: before {before[name] / MIB:.1f}, peak {peak[name] / MIB:.1f},"
            f" after {after[name] / MIB:.1f}"
        )
    assert [kind for kind, _ in during] == ["ticket"] * len(during) and len(during) >= 3
    assert [kind for kind, _ in later] == ["ticket"] * 5
    assert max(latencies) < 5.0
    assert max(slow_seconds) < 4.0  # header timeout 1 s, not minutes
    assert churned > 0
