"""Liveness of a link, as a plain clock-driven state machine (no I/O, no asyncio).

A silent partition closes nothing: TCP keeps buffering our writes and the reader
simply never wakes. So each side sends a heartbeat line when it has sent nothing
for ``interval`` seconds, and declares the peer gone when it has *received*
nothing for ``timeout`` seconds. Any line counts as a sign of life, so a busy link
sends no heartbeats at all.

The asyncio link (``link.py``) tells it when bytes went out or came in and asks
:meth:`Heartbeat.poll` what to do at :meth:`Heartbeat.next_check`. Tests drive it
with a fake clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Timeouts (the defaults of every server's heartbeat_interval / heartbeat_timeout)
DEFAULT_HEARTBEAT_INTERVAL = 1.0
DEFAULT_HEARTBEAT_TIMEOUT = 3.0


class Beat(enum.Enum):
    """What :meth:`Heartbeat.poll` asks the link to do now."""

    NOTHING = "nothing"
    SEND = "send"  # we have been quiet for ``interval``: send a heartbeat line
    DEAD = "dead"  # the peer has been silent for ``timeout``: close the link


@dataclass
class Heartbeat:
    """Send/receive bookkeeping of one link. Times are seconds on one monotonic clock."""

    interval: float = DEFAULT_HEARTBEAT_INTERVAL
    timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    last_sent: float = 0.0
    last_received: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.interval < self.timeout:
            # A timeout at or under the interval would call a healthy idle peer dead.
            raise ValueError("need 0 < heartbeat_interval < heartbeat_timeout")

    def start(self, now: float) -> None:
        """The link is up: both clocks start now."""
        self.last_sent = self.last_received = now

    def sent(self, now: float) -> None:
        self.last_sent = now

    def received(self, now: float) -> None:
        self.last_received = now

    def silence(self, now: float) -> float:
        """Seconds since the peer last sent anything."""
        return now - self.last_received

    def poll(self, now: float) -> Beat:
        if now - self.last_received >= self.timeout:
            return Beat.DEAD
        if now - self.last_sent >= self.interval:
            return Beat.SEND
        return Beat.NOTHING

    def next_check(self, now: float) -> float:
        """Seconds until :meth:`poll` can next answer something other than NOTHING."""
        due = min(self.last_sent + self.interval, self.last_received + self.timeout)
        return max(0.0, due - now)
