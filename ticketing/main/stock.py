"""Where an event's unsold tickets are, seen from main: what a front's answer needs.

Plain data and plain functions (no I/O): the embedded front and the remote fronts
decide with the same code on the same structure, :class:`EventRoutes`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

_rng = random.Random()


@dataclass(frozen=True, slots=True)
class StockView:
    """Counts of one event's unsold tickets by where they sit.

    ``stranded`` is stock in the pool of a shard main cannot reach and has not
    fenced yet: it is not sold out, only out of reach until the shard returns or
    its epoch is bumped (``reclaim_after``).
    """

    online_shards: int = 0
    in_live_pools: int = 0
    unassigned: int = 0
    stranded: int = 0

    @property
    def remaining(self) -> int:
        return self.in_live_pools + self.unassigned + self.stranded

    @property
    def routable(self) -> bool:
        """A live shard can sell a ticket now (from its pool, or main's unassigned)."""
        return self.online_shards > 0 and (self.in_live_pools > 0 or self.unassigned > 0)


@dataclass(frozen=True, slots=True)
class Route:
    """One shard as a router sees it: where browsers reach it, its link, its stock."""

    name: str
    url: str  # the shard's https origin for browsers
    online: bool
    stock: int

    @property
    def https_url(self) -> str:  # the name ShardLink uses: one redirect code for both
        return self.url


@dataclass(frozen=True, slots=True)
class EventRoutes:
    """Everything a front needs to route one event's visitors, and nothing more.

    Main builds it from its live state (:meth:`MainServer.routes`) for the embedded
    front, and pushes the same structure to remote fronts (``ToFront.VIEW``): one
    decision (:meth:`view`, :meth:`pick`), two data sources.
    """

    event: int
    info: dict[str, Any]  # the event's public fields (name, price...)
    unassigned: int
    shards: tuple[Route, ...] = ()

    def view(self) -> StockView:
        online = [s for s in self.shards if s.online]
        return StockView(
            online_shards=len(online),
            in_live_pools=sum(s.stock for s in online),
            unassigned=self.unassigned,
            stranded=sum(s.stock for s in self.shards if not s.online),
        )

    def pick(self, rng: random.Random | None = None) -> Route | None:
        """An online shard for a new visitor, weighted by its remaining stock.

        When no shard holds stock but main still has unassigned tickets, any online
        shard will do: it asks main for stock on the visitor's arrival.
        """
        r = rng or _rng
        online = [s for s in self.shards if s.online]
        stocked = [s for s in online if s.stock > 0]
        if stocked:
            return r.choices(stocked, [s.stock for s in stocked])[0]
        if online and self.unassigned > 0:
            return r.choice(online)
        return None

    def out_of_reach(self) -> EventRoutes:
        """The same stock seen from a front cut off from main: all of it stranded.

        The shards keep their link flags (they may well be up: "please wait", not
        "no shard online"), but every unsold ticket counts as out of reach.
        """
        held = self.unassigned + sum(s.stock for s in self.shards)
        return replace(
            self,
            unassigned=0,
            shards=tuple(replace(s, stock=0) for s in self.shards)
            + ((Route("(unreachable)", "", False, held),) if held else ()),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "info": self.info,
            "unassigned": self.unassigned,
            "shards": [[s.name, s.url, s.online, s.stock] for s in self.shards],
        }

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> EventRoutes:
        shards = tuple(
            Route(str(name), str(url), bool(online), int(stock))
            for name, url, online, stock in item["shards"]
        )
        info = item["info"]
        if not isinstance(info, dict):
            raise ValueError("info must be an object")
        return cls(int(item["event"]), info, int(item["unassigned"]), shards)
