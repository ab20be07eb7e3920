"""The front door: routes each browser to a shard with stock, with a signed admission token."""

from __future__ import annotations

from .server import RedirectServer

__all__ = ["RedirectServer"]
