"""Where a front gets what it routes on: one interface, two data sources.

The embedded front (``RedirectServer(main)``) reads main's live state in the same
process (:class:`MainSource`); a front process reads the view main pushes over its
link (:class:`~ticketing.front.view.PushedView`). Both hand the front the same
plain structure, :class:`~ticketing.main.stock.EventRoutes`, and the front makes one
decision on it (``admission.choose_answer``, ``EventRoutes.pick``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..main.stock import EventRoutes
from ..tokens import KeyRing, TokenSigner, TokenVerifier

if TYPE_CHECKING:
    from ..main.server import MainServer


class RoutingSource(Protocol):
    """What the front's admission path reads (no I/O on the routing decision itself)."""

    @property
    def linked(self) -> bool:
        """Main is reachable now (False: everything is out of reach: "please wait")."""
        ...

    @property
    def signer(self) -> TokenSigner:
        """Signs this front's admission and place tokens."""
        ...

    @property
    def places(self) -> TokenVerifier | KeyRing:
        """Checks place tokens (this front's, or any certified front's)."""
        ...

    async def latest_event(self) -> int | None: ...

    async def event_info(self, event_id: int) -> dict[str, Any] | None:
        """The event's public fields (``name``, ...), or None when there is no such event."""
        ...

    def routes(self, event_id: int) -> EventRoutes: ...

    def up(self) -> bool:
        """For the public ``/health``: some shard can be routed to."""
        ...


class MainSource:
    """The embedded front's source: main's own state, in this process."""

    def __init__(self, main: MainServer) -> None:
        self.main = main
        self._places: KeyRing | None = None
        self._certified: dict[str, str] | None = None  # the front keys _places holds

    @property
    def linked(self) -> bool:
        return True  # main is this process

    @property
    def signer(self) -> TokenSigner:
        assert self.main.signer, "main not started"
        return self.main.signer

    @property
    def places(self) -> KeyRing:
        """Main's key and every certified front's (a place or queue ticket of any)."""
        if self._places is None:
            self._places = KeyRing(self.signer.verifier())
        if self._certified is not self.main.front_keys:  # certify_fronts replaces it
            self._certified = self.main.front_keys
            self._places.replace(self._certified)
        return self._places

    async def latest_event(self) -> int | None:
        events = await self.main.events()
        return events[-1].id if events else None

    async def event_info(self, event_id: int) -> dict[str, Any] | None:
        event = await self.main.event(event_id)
        return None if event is None else event.public()

    def routes(self, event_id: int) -> EventRoutes:
        return self.main.routes(event_id)

    def up(self) -> bool:
        return bool(self.main.online_shards())
