"""Where an event's unsold tickets are, seen from main: what the front's answer needs."""

from __future__ import annotations

from dataclasses import dataclass


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
