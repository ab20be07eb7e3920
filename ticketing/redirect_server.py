"""``from ticketing.redirect_server import RedirectServer``: the original design's import path."""

from __future__ import annotations

from .front.server import RedirectServer

__all__ = ["RedirectServer"]
