"""The progress bar on stderr, and how often it (and the meter) is refreshed."""

from __future__ import annotations

import sys
import time

SAMPLE_EVERY = 0.25  # seconds: progress redraw and RSS sampling


class Progress:
    """A one-line progress bar on stderr, redrawn with ``\\r`` (plain text)."""

    def __init__(self, label: str, total: int, unit: str, enabled: bool = True) -> None:
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.t0 = time.monotonic()
        self.width = 0

    def draw(self, done: int, second: int, extra: str = "") -> None:
        if not self.enabled:
            return
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * 24)
        text = (
            f"\r{self.label:<10} [{bar:<24}] {done}/{self.total} {self.unit}"
            f"  {second} {extra}  {time.monotonic() - self.t0:5.1f}s"
        )
        self.width = max(self.width, len(text))
        sys.stderr.write(text.ljust(self.width))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
