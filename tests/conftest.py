"""Shared fixtures: real cluster keys, in-process clusters on 127.0.0.1 port 0, and the
ledger backend (SQLite by default; a module runs on both with
``pytestmark = pytest.mark.parametrize("ledger_backend", BACKENDS, indirect=True)``)."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.pgserver import ENV as POSTGRES_ENV
from tests.pgserver import PostgresServer, drop_database, find_bin, fresh_database
from ticketing import ClientServer, MainServer, RedirectServer, write_cluster_keys
from ticketing.cluster import LOAD_TEST_FRONT_OPTIONS, FrontProcess

SHARD_NAMES = [f"shard-{i}" for i in range(1, 6)]
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_admin(pytestconfig: pytest.Config) -> Iterator[str]:
    """An administrative URL of a PostgreSQL server: ``$TICKETING_TEST_POSTGRES``, or
    a throwaway server started here (``scripts/test`` installs Debian's postgresql)."""
    given = os.environ.get(POSTGRES_ENV)
    if given:
        yield given
        return
    if not find_bin("initdb"):
        pytest.skip(f"no PostgreSQL: install Debian's postgresql or set {POSTGRES_ENV}")
    server = PostgresServer().start()
    # Stopped when the session ends, outside any one test's timeout.
    pytestconfig.add_cleanup(server.stop)
    yield server.admin_url


@pytest.fixture(params=["sqlite"])
def ledger_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def ledger_url(
    ledger_backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[str | None]:
    """None for SQLite (each main's file in its data folder), else a fresh database."""
    if ledger_backend == "sqlite":
        yield None
        return
    admin = request.getfixturevalue("postgres_admin")
    url = await fresh_database(admin)
    yield url
    await drop_database(admin, url)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's own `keys` output: a CA, main, shard-1..shard-5, front-1..front-2."""
    return write_cluster_keys(
        tmp_path_factory.mktemp("keys"), SHARD_NAMES, fronts=["front-1", "front-2"]
    )


@pytest.fixture(scope="session")
def foreign_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated cluster CA with the same node names."""
    return write_cluster_keys(tmp_path_factory.mktemp("foreign"), SHARD_NAMES)


@pytest.fixture(scope="session")
def ca_context(keys: Path) -> ssl.SSLContext:
    """What a browser trusting the cluster CA uses."""
    return ssl.create_default_context(cafile=str(keys / "ca.crt"))


@dataclass
class Cluster:
    keys: Path
    data: Path
    main: MainServer
    shards: list[ClientServer] = field(default_factory=list)
    redirect: RedirectServer | None = None
    fronts: list[FrontProcess] = field(default_factory=list)

    @property
    def front(self) -> str:
        """Where browsers go: the first front process if any, else main's own front."""
        if self.fronts:
            return f"https://127.0.0.1:{self.fronts[0].port}/"
        assert self.redirect and self.redirect.port
        return f"https://127.0.0.1:{self.redirect.port}/"

    async def add_front_process(self, name: str = "front-1") -> FrontProcess:
        """A ``ticketing front`` process in front of this main (its marketplace proxied)."""
        assert self.redirect and self.redirect.port
        link_port = await self.main.serve_fronts(0)
        front = await FrontProcess.launch(
            name,
            self.keys,
            f"127.0.0.1:{link_port}",
            market=f"https://127.0.0.1:{self.redirect.port}",
        )
        self.fronts.append(front)
        async with asyncio.timeout(10):
            while name not in self.main.front_keys:  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.02)
        assert self.main.fronts
        await self.main.fronts.in_sync()
        return front

    async def add_shard(self, name: str, *, connect: bool = True, **opts: Any) -> ClientServer:
        shard = ClientServer(name, data_dir=self.data, **opts)
        shard.set_certificate_path(self.keys)
        await shard.create_client_server(0)
        await shard.create_https_server(0)
        self.shards.append(shard)
        if connect:
            await self.main.connect_client_server("127.0.0.1", shard.tls_port, shard.https_port)
        return shard

    async def close(self) -> None:
        for front in self.fronts:
            await front.stop()
        if self.redirect:
            await self.redirect.close()
        await self.main.close()
        for shard in self.shards:
            await shard.close()


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def make_cluster(
    keys: Path, tmp_path: Path, ledger_url: str | None
) -> AsyncIterator[ClusterFactory]:
    """``await make_cluster(3, redirect=True, hold_seconds=...)`` -> a linked Cluster."""
    made: list[Cluster] = []

    async def factory(
        n_shards: int = 2, *, redirect: bool = False, load_test: bool = False, **main_opts: Any
    ) -> Cluster:
        """``load_test``: a crowd from 127.0.0.1 (per-address limits lifted)."""
        data = tmp_path / f"cluster{len(made)}"
        main_opts.setdefault("ledger_url", ledger_url)
        main = MainServer(data_dir=data, **main_opts)
        main.set_certificate_path(keys)
        await main.start()
        cluster = Cluster(keys, data, main)
        made.append(cluster)
        for name in SHARD_NAMES[:n_shards]:
            await cluster.add_shard(name)
        if redirect:
            cluster.redirect = RedirectServer(
                main, **(LOAD_TEST_FRONT_OPTIONS if load_test else {})
            )
            await cluster.redirect.create_server(0)
        return cluster

    yield factory
    for cluster in made:
        await cluster.close()
