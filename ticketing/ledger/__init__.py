"""Main's ledger: the storage interface and its SQLite backend (main's process only)."""

from __future__ import annotations

from .sqlite import ACTIVE, SCHEMA, Audit, Event, Ledger, ShardRecord, decide_sales

__all__ = ["ACTIVE", "SCHEMA", "Audit", "Event", "Ledger", "ShardRecord", "decide_sales"]
