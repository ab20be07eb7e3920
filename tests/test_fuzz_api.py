"""Random query strings, ids and JSON bodies against every route of the front: never a 5xx.

One real cluster (main, a shard, the front with the marketplace; real TLS on
127.0.0.1) runs on its own event loop in a thread for the whole module, so
hypothesis can drive plain synchronous HTTPS requests at it. Examples are bounded
and derandomized (the same ones every run).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ticketing import ClientServer, MainServer, RedirectServer
from ticketing.market.api import OPERATOR_ENV

pytestmark = pytest.mark.timeout(180)

OPERATOR = "operator-secret-fuzz-0123456789"
EXAMPLES = 150


class Server:
    """The cluster on a background loop; ``port`` is the front's."""

    def __init__(self, keys: Path, data: Path) -> None:
        self.keys, self.data = keys, data
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self.routes: list[tuple[str, str]] = []

    def run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(60)

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        self.shard = ClientServer("shard-1", data_dir=self.data)
        self.shard.set_certificate_path(self.keys)
        await self.shard.create_client_server(0)
        await self.shard.create_https_server(0)
        self.main = MainServer(data_dir=self.data)
        self.main.set_certificate_path(self.keys)
        await self.main.connect_client_server(
            "127.0.0.1", self.shard.tls_port, self.shard.https_port
        )
        await self.main.init_tickets("Fuzz", "", "5.00", 20)
        await self.main.distribute_tickets()
        self.front = RedirectServer(self.main)
        self.port = await self.front.create_server(0)
        for route in self.front.app.router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter")
            if path and route.method != "HEAD":
                self.routes.append((route.method, path))

    def stop(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _stop(self) -> None:
        await self.front.close()
        await self.main.close()
        await self.shard.close()


@pytest.fixture(scope="module")
def server(keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    old = os.environ.get(OPERATOR_ENV)
    os.environ[OPERATOR_ENV] = OPERATOR  # read when the front mounts the marketplace
    s = Server(keys, tmp_path_factory.mktemp("fuzz"))
    try:
        s.start()
    finally:
        if old is None:
            os.environ.pop(OPERATOR_ENV, None)
        else:
            os.environ[OPERATOR_ENV] = old
    yield s
    s.stop()


def request(
    server: Server,
    ctx: ssl.SSLContext,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# Anything at all, surrogates included (JSON escapes them as \\udXXX)
any_text = st.text(st.characters(blacklist_categories=()), max_size=40)
digits = st.text(st.sampled_from("0123456789²³٣१"), min_size=1, max_size=25)
ids = st.one_of(
    st.integers(-3, 10**30).map(str), digits, any_text.filter(bool), st.just("1"), st.just("2")
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False),
    any_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "email": st.one_of(any_text, st.just("fuzz@example.com"), st.emails().map(str)),
    "password": st.one_of(any_text, st.just("correct horse battery")),
    "card": st.one_of(st.sampled_from(["tok_visa", "tok_decline"]), any_text),
    "ticket_id": st.one_of(st.tuples(ids, ids).map("-".join), any_text),
    "price_cents": st.one_of(st.integers(-10, 10**25), json_values),
    "version": st.one_of(st.integers(-2, 10**20), json_values),
    "name": any_text,
    "description": any_text,
    "price": st.one_of(
        st.sampled_from(["NaN", "Infinity", "-1", "1e30", "2.50", "0.001"]),
        st.floats(),
        st.integers(-(10**30), 10**30),
        any_text,
    ),
    "count": st.one_of(st.integers(-5, 30), any_text, st.none()),  # small: events are real
}
bodies = st.one_of(
    st.fixed_dictionaries({}, optional=FIELDS).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.none(),
)
queries = st.dictionaries(
    st.sampled_from(["event", "min_price", "max_price", "mine", "version", "id", "token"]),
    st.one_of(ids, any_text),
    max_size=3,
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=foo-bar",
        "text/plain",
        None,
    ]
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    query=queries,
    body=bodies,
    content_type=content_types,
    operator=st.booleans(),
)
def test_no_route_answers_5xx(
    server: Server,
    ca_context: ssl.SSLContext,
    data: st.DataObject,
    query: dict[str, str],
    body: bytes | None,
    content_type: str | None,
    operator: bool,
) -> None:
    assert server.routes  # every route of the app, front and API
    method, template = data.draw(st.sampled_from(server.routes), label="route")
    path = template
    for name in ("{id}", "{event_id}", "{name}"):
        if name in path:
            path = path.replace(name, quote(data.draw(ids, label=name), safe=""))
    qs = urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in query.items()})
    headers = {"Origin": f"https://127.0.0.1:{server.port}", "Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    if operator:
        headers["Authorization"] = f"Bearer {OPERATOR}"
    status, answer = request(
        server, ca_context, method, path + ("?" + qs if qs else ""), body, headers
    )
    assert status < 500, (method, path, qs, body, status, answer[:300])
    if path.startswith("/api/") and status >= 400:
        assert json.loads(answer)["errors"], answer
