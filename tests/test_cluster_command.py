"""`ticketing cluster` as a newcomer runs it: real processes, a real browser, Ctrl-C."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.browser import artifact, browser_context

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


async def read_until(stream: asyncio.StreamReader, pattern: str, seconds: float = 60) -> str:
    seen = ""
    async with asyncio.timeout(seconds):
        while not re.search(pattern, seen):
            line = await stream.readline()
            if not line:
                raise AssertionError(f"process ended before {pattern!r}; output:\n{seen}")
            seen += line.decode()
    return seen


async def test_cluster_command_serves_a_browser_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ticketing",
        "cluster",
        "--shards",
        "2",
        "--tickets",
        "4",
        "--data",
        str(tmp_path / "data"),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout
    try:
        out = await read_until(proc.stdout, r"Ctrl-C stops the cluster")
        url = re.search(r"Open (https://127\.0\.0\.1:\d+/) in a browser", out)
        assert url, out
        assert re.search(r"distributed: \{'shard-1': 2, 'shard-2': 2\}", out)

        async with browser_context() as context:
            page = await context.new_page()
            await page.goto(url.group(1))
            await page.wait_for_selector("[data-testid=ticket-id]:not(:empty)", timeout=20_000)
            ticket = await page.text_content("[data-testid=ticket-id]")
            await page.screenshot(path=str(artifact("cluster-command-ticket.png")))
        assert ticket and re.fullmatch(r"1-[0-3]", ticket)

        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        rest = await read_until(proc.stdout, r"stopping; audit: .*\n")
        assert '"held": 1' in rest and '"exact": true' in rest
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
