"""The visitor cookie: one random id per browser, set by the front door.

The front sets it on a browser's first visit; the marketplace reads it to know
whose anonymous orders a request may see.
"""

from __future__ import annotations

from aiohttp import web

VISITOR_COOKIE = "ticketing_visitor"


def valid_visitor(visitor: str) -> bool:
    """A visitor id as we issue them (16-64 URL-safe characters)."""
    return 16 <= len(visitor) <= 64 and visitor.replace("-", "").replace("_", "").isalnum()


def set_visitor_cookie(resp: web.StreamResponse, visitor: str) -> None:
    resp.set_cookie(
        VISITOR_COOKIE, visitor, max_age=86400, httponly=True, secure=True, samesite="Lax", path="/"
    )
