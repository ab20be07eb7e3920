"""The OpenAPI description of /api/v1 and the front door's JSON answers: complete, served,
and true (schemathesis on a live cluster)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode, checks

from tests.shop import open_shop
from ticketing.market.openapi import OPENAPI_PATH, openapi_spec
from ticketing.operator import OPERATOR_ENV

pytestmark = pytest.mark.timeout(90)

OPERATOR = "openapi-operator-0123456789"
METHODS = {"get", "post", "put", "patch", "delete"}
# WebSocket upgrades are not plain HTTP, and admissions redirect to a shard's page:
# described, not fuzzed.
NOT_FUZZED = {("GET", "/api/v1/ws"), ("GET", "/"), ("GET", "/events/{event_id}")}
# The front door's routes that are pages, scripts or text, not JSON answers.
NOT_JSON = ("/app", "/admin", "/queue/queue.js", "/metrics")
EXAMPLES = 15  # per operation and mode: ~28 operations, a few seconds in all

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def described() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi_spec()["paths"].items()
        for method in item
        if method in METHODS
    }


def routed(app: aiohttp.web.Application) -> set[tuple[str, str]]:
    """Every (method, path) the app answers with JSON (``/api/v1`` and the front door),
    with ``{name}`` for patterns."""
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method in ("HEAD", "*") or path.startswith(NOT_JSON):
            continue
        out.add((route.method, re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)))
    return out


async def test_every_api_route_is_described_and_nothing_else(make_cluster) -> None:
    shop = await open_shop(make_cluster)
    assert shop.cluster.redirect
    routes = routed(shop.cluster.redirect.app)
    assert len(routes) >= 29 and ("GET", "/events/{event_id}/queue") in routes
    assert routes - described() == set(), "routes missing from the description"
    assert described() - routes == set(), "described but not routed"


def test_a_front_process_answers_the_described_front_door() -> None:
    """A front process serves the same door (its marketplace is proxied, not routed)."""
    from ticketing.front.node import FrontServer

    door = routed(FrontServer("front-1").app)
    assert door == {(m, p) for m, p in described() if not p.startswith("/api/v1")}
    assert ("GET", "/events/{event_id}/queue") in door


async def test_the_description_is_served_and_valid_openapi_3_1(make_cluster, ca_context) -> None:
    shop = await open_shop(make_cluster)
    url = shop.cluster.front.rstrip("/") + OPENAPI_PATH
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_context)) as s:
        async with s.get(url) as resp:
            assert resp.status == 200
            spec = await resp.json()
    assert spec["openapi"] == "3.1.0" and spec == openapi_spec()
    schema = schemathesis.openapi.from_dict(spec)
    ops = [r.ok().path for r in schema.get_all_operations()]
    assert len(ops) == len(described())


def _fuzz(spec: dict[str, Any], base_url: str, ca: Path) -> list[str]:
    """Run schemathesis over every operation; returns the failures as text."""
    schema = schemathesis.openapi.from_dict(spec)
    session = requests.Session()
    session.verify = str(ca)
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    failures: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in NOT_FUZZED:
            continue
        # Valid requests and invalid ones (wrong types, missing fields, bad ids).
        cases = op.as_strategy() | op.as_strategy(GenerationMode.NEGATIVE)

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,  # the same examples every run: deterministic
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=cases)
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=base_url,
                session=session,
                headers=headers,
                checks=CHECKS,
                timeout=10,
                verify=str(ca),
            )

        try:
            run()
        except Exception as exc:  # collect every operation's failure, not just the first
            failures.append(f"{op.method.upper()} {op.path}: {exc}")
    return failures


async def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    make_cluster, keys, monkeypatch
) -> None:
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    shop = await open_shop(make_cluster)
    base = shop.cluster.front.rstrip("/")
    loop = asyncio.get_running_loop()
    # schemathesis is synchronous: it runs in a thread while this loop serves the cluster.
    failures = await asyncio.wait_for(
        loop.run_in_executor(None, _fuzz, openapi_spec(), base, keys / "ca.crt"), 75
    )
    assert failures == [], "\n\n".join(failures)
