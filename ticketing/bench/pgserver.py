"""A throwaway PostgreSQL server: its own initdb in a temporary folder.

For the tests (``tests/pgserver.py``) and the benchmark's failover run (``bench
--fault kill-main --standby`` without ``--ledger``). The server listens on
127.0.0.1 on a free port and on a unix socket in its folder; ``stop()`` ends it
with ``pg_ctl`` and removes the folder. It needs PostgreSQL's server programs
(Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl``, found on PATH or in
``/usr/lib/postgresql/*/bin``); as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import asyncpg

__all__ = ["PostgresServer", "drop_database", "find_bin", "free_port", "fresh_database"]


def find_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, else Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """initdb + pg_ctl start; as root the server runs as the ``postgres`` user.

    ``synchronous_commit`` stays on (the default): a commit is durable, as in
    production; ``initdb --no-sync`` only skips syncing the empty cluster's files.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ticketing-pg-"))
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise FileNotFoundError("PostgreSQL server programs (initdb, pg_ctl) not found")
        if os.geteuid() == 0:  # the server refuses to run as root
            shutil.chown(self.dir, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        self._run(initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        )
        self._run(
            pg_ctl, "-D", str(data), "-l", str(self.dir / "log"), "-o", options, "-w", "start"
        )
        return self

    def stop(self) -> None:
        pg_ctl = find_bin("pg_ctl")
        if pg_ctl and (self.dir / "data").exists():
            self._run(pg_ctl, "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        subprocess.run(["rm", "-rf", str(self.dir)], check=False, timeout=120)


async def fresh_database(admin_url: str) -> str:
    """A new, empty database on the server; returns its URL."""
    name = "t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


async def drop_database(admin_url: str, url: str) -> None:
    """Drop a database made by :func:`fresh_database` (its files would pile up)."""
    name = url.rpartition("/")[2]
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
