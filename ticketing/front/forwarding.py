"""The visitor's address across a front's proxy, believed only with a front's signature.

Main's marketplace rate-limits sign-ins per client address. Behind a front process
every request comes from the front's address, so the front adds
``X-Ticketing-Client``: a short-lived token with the visitor's address, signed with
the front's certified key. Main takes the address from it only when the signature
checks against a key it certified (no trust in a plain ``X-Forwarded-For`` that
any browser could send).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import TokenError
from ..tokens import KeyRing, TokenSigner

CLIENT_HEADER = "X-Ticketing-Client"
CLIENT = "client"  # token type
CLIENT_TTL = 30.0
# Not forwarded either way: they describe one hop's connection, not the request.
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-encoding",
        CLIENT_HEADER.lower(),
    }
)


def sign_client(signer: TokenSigner, address: str) -> str:
    return signer.sign(CLIENT, {"ip": address}, CLIENT_TTL)


def forwarded_client(ring: Callable[[], KeyRing]) -> Any:
    """Middleware: a request signed by a certified front gets the visitor's address."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        token = request.headers.get(CLIENT_HEADER)
        if token:
            try:
                ip = ring().verify(token, CLIENT).get("ip")
            except TokenError:
                ip = None
            if isinstance(ip, str) and 0 < len(ip) <= 64:
                request = request.clone(remote=ip)
        return await handler(request)

    return middleware
