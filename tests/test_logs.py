"""Structured logs: JSON lines with role, node and request ids, and no secret in any line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.shop import PASSWORD
from ticketing.logs import REQUEST_ID, add_secret, scrub, setup_logging
from ticketing.market.sessions import COOKIE_NAME
from ticketing.operator import OPERATOR_ENV
from ticketing.visitor import VISITOR_COOKIE
from ticketing.web_client import WebClient

pytestmark = pytest.mark.timeout(60)

OPERATOR = "logs-operator-secret-0123456789"


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """This process's logs as JSON lines at DEBUG, into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    buf = io.StringIO()
    setup_logging("json", level=logging.DEBUG, role="main", node="main", stream=buf)
    yield buf
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)
    logging.getLogger("aiosqlite").setLevel(logging.NOTSET)


def test_scrub_masks_tokens_cookies_passwords_and_registered_secrets() -> None:
    add_secret("registered-secret-value")
    line = scrub(
        "GET /ws?event=1&token=abc.def&x=1 Authorization: Bearer s3cr3t "
        f"Cookie: {COOKIE_NAME}=SESSVAL; {VISITOR_COOKIE}=VISVAL "
        '{"password": "hunter22"} registered-secret-value'
    )
    for secret in ("abc.def", "s3cr3t", "SESSVAL", "VISVAL", "hunter22", "registered-secret-value"):
        assert secret not in line, secret
    assert "event=1" in line and "x=1" in line


def test_a_json_line_has_time_level_role_node_event_and_fields(json_logs) -> None:
    token = REQUEST_ID.set("r-1")
    try:
        logging.getLogger("ticketing.test").warning(
            "paid %s", "order 7", extra={"fields": {"order": 7}}
        )
    finally:
        REQUEST_ID.reset(token)
    [line] = json_logs.getvalue().splitlines()
    rec = json.loads(line)
    assert rec["level"] == "warning" and rec["role"] == "main" and rec["node"] == "main"
    assert rec["event"] == "paid order 7" and rec["fields"] == {"order": 7}
    assert rec["request_id"] == "r-1" and rec["time"].endswith("Z")


async def test_no_secret_in_any_log_line_during_a_journey(
    make_cluster, monkeypatch, ca_context, json_logs
) -> None:
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    cluster = await make_cluster(1, redirect=True, hold_seconds=60)
    event = await cluster.main.init_tickets("Logged show", "", "5.00", 3)
    await cluster.main.distribute_tickets()
    front = cluster.front.rstrip("/")
    secrets: list[str] = [PASSWORD, OPERATOR]
    async with WebClient(ca_context, timeout=30) as web:
        s = web.session
        body = {"email": "log@example.com", "password": PASSWORD}
        async with s.post(front + "/api/v1/accounts", json=body) as resp:
            assert resp.status == 201
            secrets.append(resp.cookies[COOKIE_NAME].value)
        async with s.post(front + "/api/v1/session", json=dict(body, password="wrong" + PASSWORD)):
            pass  # a failed sign-in is logged; its password must not be
        status, location, _ = await web.admission(f"{front}/events/{event}")
        assert status == 302 and location
        admission = parse_qs(urlsplit(location).query)["token"][0]
        secrets.append(admission)
        outcome = await web.claim(location)
        assert outcome.kind == "ticket"
        replay = await web.claim(location)  # refused and logged: already used
        assert replay.kind == "refused"
        url = f"{front}/api/v1/orders/{outcome.message['order_id']}/pay"
        async with s.post(url, json={"card": "tok_visa"}) as resp:
            assert resp.status == 200
        auth = {"Authorization": f"Bearer {OPERATOR}"}
        async with s.get(front + "/api/v1/admin/status", headers=auth) as resp:
            assert resp.status == 200
        async with s.get(front + "/metrics", headers=auth) as resp:
            assert resp.status == 200
        async with s.get(f"{front}/events/{event}?token={admission}") as resp:
            pass  # a token in a query string is never logged
        for cookie in s.cookie_jar:
            if cookie.key == VISITOR_COOKIE:
                secrets.append(cookie.value)
    await asyncio.sleep(0)
    lines = json_logs.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert len(secrets) == 5 and all(len(x) >= 16 for x in secrets)
    for line in lines:
        for secret in secrets:
            assert secret not in line, (secret, line)
    access = [r for r in records if r["logger"] == "ticketing.access"]
    assert len(access) == 7 and all(r.get("request_id") for r in access)
    assert len({r["request_id"] for r in access}) == len(access)  # one id per request
    assert any("refused upgrade" in r["event"] for r in records)


async def test_a_shard_process_logs_json_lines(keys: Path, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ticketing",
        "shard",
        "--name",
        "shard-1",
        "--keys",
        str(keys),
        "--data",
        str(tmp_path),
        "--tls-port",
        "0",
        "--https-port",
        "0",
        "--log-format",
        "json",
        "--log-level",
        "info",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        assert proc.stdout and proc.stderr
        ready = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert ready.startswith(b"READY ")
    finally:
        proc.send_signal(signal.SIGTERM)  # our own child, by PID
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    records = [json.loads(line) for line in err.decode().splitlines()]
    assert records and all(r["role"] == "shard" and r["node"] == "shard-1" for r in records)
    assert any("started" in r["event"] for r in records)
    assert any(r["event"].endswith("closed") for r in records)
