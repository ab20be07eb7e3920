"""The visitor cookie, and the one place that turns it into the visitor's public id.

The front sets a random secret in an HttpOnly cookie on a browser's first visit.
That secret never leaves the cookie: admission tokens, shards, orders and the
waiting list carry the visitor's *public id*, a one-way function of the secret
(:func:`public_id`). Whoever sees an admission URL (history, screenshot, proxy log)
learns the public id, which cannot be turned back into the cookie, so it does not
let them read, pay, cancel or claim that visitor's anonymous orders.

A plain hash is enough (no key): the secret has 128 random bits, so the public id
cannot be guessed or inverted, and any front or main can derive it without sharing
a key. A browser that invents its own cookie value only names a visitor of its own.
"""

from __future__ import annotations

import base64
import hashlib

from aiohttp import web

VISITOR_COOKIE = "ticketing_visitor"
_DOMAIN = b"ticketing visitor id v1\x00"  # so this hash means nothing anywhere else


def valid_visitor(visitor: str) -> bool:
    """A visitor secret as we issue them (16-64 URL-safe characters)."""
    return (
        16 <= len(visitor) <= 64
        and visitor.isascii()
        and visitor.replace("-", "").replace("_", "").isalnum()
    )


def public_id(secret: str) -> str:
    """The visitor's public id (what tokens and orders carry) for a cookie ``secret``."""
    digest = hashlib.sha256(_DOMAIN + secret.encode("utf-8")).digest()
    return "p" + base64.urlsafe_b64encode(digest[:24]).decode("ascii")


def set_visitor_cookie(resp: web.StreamResponse, visitor: str) -> None:
    resp.set_cookie(
        VISITOR_COOKIE, visitor, max_age=86400, httponly=True, secure=True, samesite="Lax", path="/"
    )
