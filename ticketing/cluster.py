"""A local cluster on this machine: main + redirect in this process, shards as processes.

With ``fronts=F`` it also starts F front processes (``ticketing front``) that dial
main's front link port; browsers then use them, and main's own front stays as the
marketplace backend they proxy to.

Used by ``ticketing cluster``, the benchmark and the multi-process tests. Shard
processes print one ``READY {json}`` line with their bound ports; they are stopped
by PID (SIGTERM, then SIGKILL after a grace period), never by name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from .edge import FRONT_LIMITS, SHARD_LIMITS
from .front.queue import QueueOptions
from .front.server import RedirectServer
from .main.server import MainServer
from .tls import write_cluster_keys

# A load test's whole crowd comes from 127.0.0.1: lift the per-address limits.
LOAD_TEST_SHARD_ARGS = ("--max-per-address", str(SHARD_LIMITS.max_connections))
LOAD_TEST_FRONT_OPTIONS: dict[str, Any] = {
    "limits": replace(FRONT_LIMITS, max_per_address=FRONT_LIMITS.max_connections),
    "admissions_per_address": None,
    "admissions_per_visitor": None,
    "queue": QueueOptions(entries_per_address=None),
}
LOAD_TEST_MAIN_ARGS = (
    *("--admissions-per-address", "off", "--admissions-per-visitor", "off"),
    *("--max-per-address", str(FRONT_LIMITS.max_connections)),
    *("--queue-entries-per-address", "off"),
)

log = logging.getLogger("ticketing.cluster")


@dataclass
class Child:
    """A helper process that prints ``READY [json]`` when it is up; stopped by PID."""

    name: str
    proc: asyncio.subprocess.Process
    ready: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def spawn(
        cls,
        name: str,
        args: Sequence[str],
        *,
        stdin_lines: Sequence[str] = (),
        timeout: float = 30.0,
        limit: int = 1 << 16,  # longest line it may print
        prefix: Sequence[str] = (),  # e.g. ("ip", "netns", "exec", NS): it execs python
        stderr: Any = None,  # where its log goes (default: ours)
    ) -> Self:
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            limit=limit,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children by PID
        )
        child = cls(name, proc, {})
        try:
            for line in stdin_lines:
                await child.send(line)
            async with asyncio.timeout(timeout):
                while True:
                    tag, payload = await child.read()
                    if tag == "":
                        raise RuntimeError(f"{name} exited with {await proc.wait()}")
                    if tag == "READY":
                        child.ready = payload or {}
                        return child
        except BaseException:
            await child.stop(grace=0)
            raise

    async def send(self, line: str) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def read(self) -> tuple[str, Any]:
        """The next ``TAG [json]`` line; ``("", None)`` at EOF."""
        assert self.proc.stdout
        line = (await self.proc.stdout.readline()).decode().rstrip("\n")
        if not line:
            return "", None
        tag, _, rest = line.partition(" ")
        try:
            return tag, json.loads(rest) if rest else None
        except ValueError:
            return tag, rest

    async def stop(self, grace: float = 10.0) -> int:
        """SIGTERM this PID, SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(self.proc.wait(), grace)
            except (TimeoutError, ProcessLookupError):
                if self.proc.returncode is None:
                    self.proc.kill()
        return await self.proc.wait()


@dataclass
class ShardProcess(Child):
    """A ``ticketing shard`` process; its READY line gives the bound ports."""

    @property
    def tls_port(self) -> int:
        return int(self.ready["tls_port"])

    @property
    def https_port(self) -> int:
        return int(self.ready["https_port"])

    @classmethod
    async def launch(
        cls,
        name: str,
        keys: Path,
        data: Path,
        *,
        host: str = "127.0.0.1",
        tls_port: int = 0,
        https_port: int = 0,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 30.0,
        prefix: Sequence[str] = (),  # e.g. ("ip", "netns", "exec", NS): on another host
    ) -> ShardProcess:
        args = [
            "-m",
            "ticketing",
            "shard",
            "--name",
            name,
            "--keys",
            str(keys),
            "--data",
            str(data),
            "--host",
            host,
            "--tls-port",
            str(tls_port),
            "--https-port",
            str(https_port),
            *extra_args,
        ]
        return await cls.spawn(name, args, timeout=ready_timeout, prefix=prefix)

    def kill(self) -> None:
        """Crash it (SIGKILL), as a power cut would."""
        if self.proc.returncode is None:
            self.proc.kill()


@dataclass
class FrontProcess(Child):
    """A ``ticketing front`` process; its READY line gives the bound HTTPS port."""

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @classmethod
    async def launch(
        cls,
        name: str,
        keys: Path,
        main: str | Sequence[str],  # HOST:PORT of main's front link port; several: failover
        *,
        market: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: Sequence[str] = (),
        prefix: Sequence[str] = (),
        ready_timeout: float = 30.0,
        stderr: Any = None,  # where its log goes (default: ours)
    ) -> FrontProcess:
        args = [
            *("-m", "ticketing", "front", "--name", name, "--keys", str(keys)),
            *(a for m in ([main] if isinstance(main, str) else main) for a in ("--main", m)),
            *("--host", host, "--port", str(port)),
            *(("--market", market) if market else ()),
            *extra_args,
        ]
        return await cls.spawn(name, args, timeout=ready_timeout, prefix=prefix, stderr=stderr)


@dataclass
class LocalCluster:
    """Main and the redirect in this process, ``shards`` shard processes."""

    data: Path
    shard_names: list[str]
    host: str = "127.0.0.1"
    redirect_port: int = 0
    main_options: dict[str, Any] = field(default_factory=dict)
    shard_args: Sequence[str] = ()
    redirect_options: dict[str, Any] = field(default_factory=dict)
    # A crowd from 127.0.0.1 stands for thousands of buyers (tests, benchmarks): lift the
    # per-address connection caps and admission rate limits. Never on a public front.
    load_test: bool = False
    fronts: int = 0  # front processes (0: browsers use main's embedded front)
    front_args: Sequence[str] = ()
    main: MainServer | None = None
    redirect: RedirectServer | None = None
    processes: list[ShardProcess] = field(default_factory=list)
    front_processes: list[FrontProcess] = field(default_factory=list)
    front_link_port: int | None = None

    @property
    def keys(self) -> Path:
        return self.data / "keys"

    @property
    def front_url(self) -> str:
        """Where browsers go: the first front process, else main's embedded front."""
        return self.front_urls[0]

    @property
    def front_urls(self) -> list[str]:
        if self.front_processes:
            return [f"https://{self.host}:{f.port}/" for f in self.front_processes]
        assert self.redirect and self.redirect.port
        return [f"https://{self.host}:{self.redirect.port}/"]

    def front_names(self) -> list[str]:
        return front_names(self.fronts)

    async def add_front(self, name: str, port: int = 0) -> FrontProcess:
        """Start one more front process (mid-sale is fine: it dials main)."""
        assert self.main and self.redirect and self.front_link_port
        if not (self.keys / f"{name}.crt").exists():
            write_cluster_keys(self.keys, [], include_main=False, fronts=[name])
        lifted = LOAD_TEST_MAIN_ARGS if self.load_test else ()
        front = await FrontProcess.launch(
            name,
            self.keys,
            f"{self.host}:{self.front_link_port}",
            market=f"https://{self.host}:{self.redirect.port}",
            host=self.host,
            port=port,
            # Its token key in the data folder: a restarted front keeps its queue tickets.
            extra_args=[*lifted, "--data", str(self.data), *self.front_args],
        )
        self.front_processes.append(front)
        async with asyncio.timeout(10):  # routable only once main certified its key
            while name not in self.main.front_keys:  # noqa: ASYNC110 (another process's hello)
                await asyncio.sleep(0.02)
        return front

    async def fronts_in_sync(self, timeout: float = 5.0) -> None:
        """Until every front process has main's current view (e.g. of a new event)."""
        assert self.main
        if self.main.fronts is not None:
            await self.main.fronts.in_sync(timeout)

    async def start(self) -> LocalCluster:
        keys = self.keys
        nodes = ["main", *self.shard_names, *self.front_names()]
        missing = [n for n in nodes if not (keys / f"{n}.crt").exists()]
        if missing:
            write_cluster_keys(
                keys,
                [n for n in self.shard_names if n in missing],
                include_main="main" in missing,
                fronts=[n for n in self.front_names() if n in missing],
            )
        try:
            self.processes = list(
                await asyncio.gather(
                    *(
                        ShardProcess.launch(
                            n, keys, self.data, host=self.host, extra_args=self._shard_args()
                        )
                        for n in self.shard_names
                    )
                )
            )
            self.main = MainServer(data_dir=self.data, **self.main_options)
            self.main.set_certificate_path(keys)
            for p in self.processes:
                await self.main.connect_client_server(self.host, p.tls_port, p.https_port)
            self.redirect = RedirectServer(self.main, **self._redirect_options())
            await self.redirect.create_server(self.redirect_port, self.host)
            if self.fronts:
                self.front_link_port = await self.main.serve_fronts(0, self.host)
                base = self.redirect_port + 1 if self.redirect_port else 0
                for i, name in enumerate(self.front_names()):
                    await self.add_front(name, base + i if base else 0)
        except BaseException:
            await self.stop()
            raise
        return self

    def _shard_args(self) -> list[str]:
        lifted = LOAD_TEST_SHARD_ARGS if self.load_test else ()
        return [*lifted, *self.shard_args]

    def _redirect_options(self) -> dict[str, Any]:
        if not self.load_test:
            return self.redirect_options
        return {**LOAD_TEST_FRONT_OPTIONS, **self.redirect_options}

    async def stop(self) -> None:
        await asyncio.gather(*(f.stop() for f in self.front_processes))
        if self.redirect:
            await self.redirect.close()
        if self.main:
            await self.main.close()
        codes = await asyncio.gather(*(p.stop() for p in self.processes))
        for p, code in zip(self.processes, codes, strict=True):
            log.info("shard %s (pid %d) exited with %s", p.name, p.pid, code)

    async def __aenter__(self) -> LocalCluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def shard_names(n: int) -> list[str]:
    return [f"shard-{i}" for i in range(1, n + 1)]


def front_names(n: int) -> list[str]:
    return [f"front-{i}" for i in range(1, n + 1)]
