"""The main server's process: links to shards, distribution, stock moves, fencing."""

from __future__ import annotations

from .server import MainServer, ShardLink, price_to_cents

__all__ = ["MainServer", "ShardLink", "price_to_cents"]
