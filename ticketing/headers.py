"""Security headers on every page and API answer (shard port and front alike).

The shard page's URL carries a single-use admission token: ``no-referrer`` keeps it
out of any Referer; the checkout must not be framed (clickjacking); scripts, styles
and connections come from the page's own origin only (``'self'`` covers its wss).
"""

from __future__ import annotations

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Strict-Transport-Security": "max-age=31536000",
}
