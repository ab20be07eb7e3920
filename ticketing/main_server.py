"""``from ticketing.main_server import MainServer``: the original design's import path."""

from __future__ import annotations

from .main.server import MainServer

__all__ = ["MainServer"]
