"""Token buckets per key (client address, visitor, email), and log lines that cannot flood.

``RateLimiter(Rate(burst=30, per_second=0.5)).take(key)`` returns 0 when ``key`` may
go ahead (and spends a token), else the seconds until it may: what a 429's
``Retry-After`` says. In memory, per process: a limit protects the process that
enforces it, without a database write per request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class Rate:
    """``burst`` requests at once, then ``per_second`` on average."""

    burst: int
    per_second: float

    def __post_init__(self) -> None:
        if self.burst < 1 or not self.per_second > 0 or not math.isfinite(self.per_second):
            raise ValueError(f"a rate needs burst >= 1 and 0 < per_second < inf, not {self}")

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"30/60"`` (30 at once, 30 per 60 s) or ``"30/60/5"`` (burst 30, 5 per 60 s)."""
        parts = text.split("/")
        try:
            if len(parts) == 2:
                n, seconds = int(parts[0]), float(parts[1])
                return cls(n, n / seconds)
            if len(parts) == 3:
                return cls(int(parts[0]), int(parts[2]) / float(parts[1]))
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"bad rate {text!r}: {exc}") from exc
        raise ValueError(f"bad rate {text!r}: use BURST/SECONDS or BURST/SECONDS/COUNT")


class RateLimiter:
    """One token bucket per key; the least recently used keys are forgotten first."""

    # Limits
    MAX_KEYS = 100_000  # a forgotten key starts with a full bucket: memory stays bounded

    def __init__(self, rate: Rate, *, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, when)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable) -> float:
        """Spend one token of ``key``: 0.0 if it had one, else seconds until it will."""
        now = self.clock()
        tokens, when = self._buckets.pop(key, (float(self.rate.burst), now))
        tokens = min(float(self.rate.burst), tokens + (now - when) * self.rate.per_second)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate.per_second
        self._buckets[key] = (tokens, now)  # re-inserted: dict order is recency
        while len(self._buckets) > self.MAX_KEYS:
            del self._buckets[next(iter(self._buckets))]
        return wait


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class LogThrottle:
    """At most one line per ``interval`` per key; the next one says how many were dropped.

    For things an attacker can trigger at will (refused connections, refused tokens):
    the log must say it happens without growing by megabytes a minute.
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 10.0, *, clock: Clock = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` logged within ``interval``; True if logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped:
            msg += " (and %d more like it in the last %.0f s)"
            args = (*args, dropped, now - last if last is not None else 0.0)
        self.logger.log(level, msg, *args)
        return True
