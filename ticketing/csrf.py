"""Cross-site request forgery: which requests may change state on the front.

``SameSite=Lax`` cookies are not enough: the shards are other ports of the same
site, so a page there (or anything else on the site) sends our cookies along. A
state-changing request (anything but GET, HEAD, OPTIONS) is accepted only when

- its ``Origin``, if any, is the front's own (the request's ``https://Host``, or a
  configured public origin): a foreign ``Origin`` is a 403; and
- it is ``Content-Type: application/json`` (with a body or without): a cross-origin
  page can only send that after a CORS preflight, which we never grant, so a
  ``no-cors`` fetch or an HTML form cannot forge one. Requests with an
  ``Authorization`` header (operators) need no JSON type: browsers never add that
  header to a cross-site request by themselves.

WebSocket upgrades check ``Origin`` the same way (browsers always send it).
Clients that send no ``Origin`` (curl, scripts) hold no victim's cookies.
"""

from __future__ import annotations

from aiohttp import web

PUBLIC_ORIGINS = web.AppKey("public_origins", list[str])
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def own_origin(request: web.Request) -> str:
    return f"https://{request.host}"


def origin_allowed(request: web.Request) -> bool:
    """No ``Origin`` header, or the front's own."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin == own_origin(request) or origin in request.app.get(PUBLIC_ORIGINS, ())


def refusal(request: web.Request) -> tuple[int, str] | None:
    """Why a request must not change state ((status, message)), or None when it may."""
    if request.method in SAFE_METHODS:
        return None
    if not origin_allowed(request):
        return 403, "cross-origin request refused"
    if request.content_type != "application/json" and "Authorization" not in request.headers:
        return 415, "send Content-Type: application/json"
    return None
