"""``from ticketing.client_server import ClientServer``: the original design's import path."""

from __future__ import annotations

from .shard.server import ClientServer

__all__ = ["ClientServer"]
