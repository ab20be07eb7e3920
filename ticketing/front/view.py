"""A front process's local copy of what main pushes: routes, keys, sign-outs. No I/O.

:class:`PushedView` is the :class:`~ticketing.front.source.RoutingSource` of a
front process. Main fills it over the link (``ToFront.VIEW`` deltas per event,
``ToFront.KEYS``, ``ToFront.REVOKED``); the front routes from it with no round
trip. While main is away (``linked`` False) every event's stock is reported out of
reach, so the shared decision answers "please wait", never "sold out" or an error.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import TokenError
from ..main.stock import EventRoutes
from ..market.sessions import SessionVerifier
from ..tokens import KeyRing, TokenSigner, TokenVerifier
from ..wire import SessionClaims


class PushedView:
    """Routing state pushed by main, plus this front's own signing key."""

    def __init__(self, signer: TokenSigner) -> None:
        self._signer = signer
        self.events: dict[int, EventRoutes] = {}
        self.keys = KeyRing()  # certified fronts' keys, for place tokens of any front
        self.set_keys({})  # ours, even before main has certified it
        self.sessions: SessionVerifier | None = None  # main's key, from its hello
        self.updated = 0.0  # monotonic time of the last change main pushed
        self._linked = False

    # -- fed by the link ----------------------------------------------------------------

    def reset(self, hello: dict[str, Any]) -> None:
        """Main's hello answer: its session key, the certified keys, the whole view."""
        main_key = bytes.fromhex(hello["session_key"])
        if self.sessions is None or self.sessions.verifier.public_bytes != main_key:
            self.sessions = SessionVerifier(TokenVerifier(main_key))
        self.keys = KeyRing(TokenVerifier(main_key))
        self.set_keys(hello["keys"])
        self.events = {}
        self.apply({"events": {str(r["event"]): r for r in hello["view"]}, "gone": []})
        self.revoke(hello.get("revoked", []))
        self._linked = True

    def lost(self) -> None:
        """The link to main closed: nothing is within reach until it is back."""
        self._linked = False

    def apply(self, delta: dict[str, Any]) -> None:
        for item in delta["events"].values():
            routes = EventRoutes.from_wire(item)
            self.events[routes.event] = routes
        for eid in delta.get("gone", ()):
            self.events.pop(int(eid), None)
        self.updated = time.monotonic()

    def set_keys(self, keys: dict[str, str]) -> None:
        """Main's certified keys, and always our own: our tickets and places stay good
        here while main is away (a queue ticket lives for hours)."""
        assert self._signer.kid is not None
        own = self._signer.public_key_bytes.hex()
        self.keys.replace({**keys, self._signer.kid: own})

    def revoke(self, sessions: list[list[Any]]) -> None:
        if self.sessions is not None:
            self.sessions.add_revocations((str(sid), float(exp)) for sid, exp in sessions)

    def session(self, cookie: str | None) -> SessionClaims | None:
        """The signed-in account of a session cookie, checked locally with main's key."""
        if not cookie or self.sessions is None:
            return None
        try:
            return self.sessions.verify(cookie)
        except TokenError:
            return None

    # -- RoutingSource ---------------------------------------------------------------------

    @property
    def linked(self) -> bool:
        return self._linked

    @property
    def signer(self) -> TokenSigner:
        return self._signer

    @property
    def places(self) -> KeyRing:
        return self.keys

    async def latest_event(self) -> int | None:
        return max(self.events) if self.events else None

    async def event_info(self, event_id: int) -> dict[str, Any] | None:
        routes = self.events.get(event_id)
        return None if routes is None else routes.info

    def routes(self, event_id: int) -> EventRoutes:
        routes = self.events.get(event_id) or EventRoutes(event_id, {}, 0)
        return routes if self._linked else routes.out_of_reach()

    def up(self) -> bool:
        return self._linked and any(
            s.online for routes in self.events.values() for s in routes.shards
        )
