"""The tests' PostgreSQL server: ``TICKETING_TEST_POSTGRES=postgresql://user@host/db``
names one (each test still gets a fresh database on it); otherwise the session starts
a throwaway server of its own (:mod:`ticketing.bench.pgserver`, shared with the bench).
"""

from __future__ import annotations

from ticketing.bench.pgserver import (
    PostgresServer,
    drop_database,
    find_bin,
    free_port,
    fresh_database,
)

ENV = "TICKETING_TEST_POSTGRES"

__all__ = ["ENV", "PostgresServer", "drop_database", "find_bin", "free_port", "fresh_database"]
