"""A local cluster on this machine: main + redirect in this process, shards as processes.

Used by ``ticketing cluster``, the benchmark and the multi-process tests. Shard
processes print one ``READY {json}`` line with their bound ports; they are stopped
by PID (SIGTERM, then SIGKILL after a grace period), never by name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .main_server import MainServer
from .redirect_server import RedirectServer
from .tls import write_cluster_keys

log = logging.getLogger("ticketing.cluster")


@dataclass
class ShardProcess:
    name: str
    proc: asyncio.subprocess.Process
    tls_port: int
    https_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def spawn(
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
    ) -> ShardProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
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
            stdout=asyncio.subprocess.PIPE,
            # Own process group: Ctrl-C reaches only the parent, which stops main
            # first and then each shard by PID, in order.
            start_new_session=True,
        )
        assert proc.stdout
        try:
            async with asyncio.timeout(ready_timeout):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"shard {name} exited with {await proc.wait()}")
                    if line.startswith(b"READY "):
                        ports = json.loads(line[6:])
                        break
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        return cls(name, proc, ports["tls_port"], ports["https_port"])

    async def stop(self, grace: float = 10.0) -> int:
        """SIGTERM this PID, SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.proc.kill()
        return await self.proc.wait()

    def kill(self) -> None:
        """Crash it (SIGKILL), as a power cut would."""
        if self.proc.returncode is None:
            self.proc.kill()


@dataclass
class LocalCluster:
    """Main and the redirect in this process, ``shards`` shard processes."""

    data: Path
    shard_names: list[str]
    host: str = "127.0.0.1"
    redirect_port: int = 0
    main_options: dict[str, Any] = field(default_factory=dict)
    shard_args: Sequence[str] = ()
    main: MainServer | None = None
    redirect: RedirectServer | None = None
    processes: list[ShardProcess] = field(default_factory=list)

    @property
    def keys(self) -> Path:
        return self.data / "keys"

    @property
    def front_url(self) -> str:
        assert self.redirect and self.redirect.port
        return f"https://{self.host}:{self.redirect.port}/"

    async def start(self) -> LocalCluster:
        keys = self.keys
        missing = [n for n in ["main", *self.shard_names] if not (keys / f"{n}.crt").exists()]
        if missing:
            write_cluster_keys(
                keys, [n for n in self.shard_names if n in missing], include_main="main" in missing
            )
        try:
            self.processes = list(
                await asyncio.gather(
                    *(
                        ShardProcess.spawn(
                            n, keys, self.data, host=self.host, extra_args=self.shard_args
                        )
                        for n in self.shard_names
                    )
                )
            )
            self.main = MainServer(data_dir=self.data, **self.main_options)
            self.main.set_certificate_path(keys)
            for p in self.processes:
                await self.main.connect_client_server(self.host, p.tls_port, p.https_port)
            self.redirect = RedirectServer(self.main)
            await self.redirect.create_server(self.redirect_port, self.host)
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
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


def pids(cluster: LocalCluster) -> list[int]:
    return [os.getpid(), *(p.pid for p in cluster.processes)]
