"""A shard's process: its link to main, the FCFS dispenser, its journal, its browser port."""

from __future__ import annotations

from .server import ClientServer

__all__ = ["ClientServer"]
