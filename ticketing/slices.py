"""Ticket serials as compact ranges, and the pure arithmetic of splitting a pool.

A pool travels and is stored as sorted, disjoint half-open ranges ``[start, end)`` of
ticket serials, never as one message or row per ticket. Everything here is plain
synchronous code: callers decide here first, then do the I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

Range = tuple[int, int]


def compress(serials: Iterable[int]) -> list[Range]:
    """Sorted serials -> ranges: ``[1, 2, 3, 7] -> [(1, 4), (7, 8)]``."""
    out: list[list[int]] = []
    for s in sorted(serials):
        if out and out[-1][1] == s:
            out[-1][1] = s + 1
        elif not out or out[-1][1] < s:
            out.append([s, s + 1])
    return [(a, b) for a, b in out]


def count(ranges: Iterable[Range]) -> int:
    return sum(b - a for a, b in ranges)


def expand(ranges: Iterable[Range]) -> list[int]:
    return [s for a, b in ranges for s in range(a, b)]


def parse_ranges(value: object) -> list[Range]:
    """Validate ranges received from a peer (JSON lists); raise ValueError if bad."""
    if not isinstance(value, list):
        raise ValueError("ranges must be a list")
    out: list[Range] = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(type(x) is int for x in item)
            or not 0 <= item[0] < item[1]
        ):
            raise ValueError(f"bad range {item!r}")
        out.append((item[0], item[1]))
    out.sort()
    for (_, end), (start, _) in zip(out, out[1:], strict=False):
        if start < end:
            raise ValueError("ranges overlap")
    return out


def shares(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` by ``weights`` (largest remainder).

    Equal weights give sizes differing by at most one, the remainder spread one by
    one over the first shards: 10 over 3 -> [4, 3, 3], 1 over 5 -> [1, 0, 0, 0, 0].
    """
    if total < 0:
        raise ValueError("total must be >= 0")
    if not weights:
        return []
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    scale = sum(weights)
    exact = [total * w / scale for w in weights]
    base = [int(x) for x in exact]
    left = total - sum(base)
    # Largest fractional part first; ties go to the earlier shard.
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[:left]:
        base[i] += 1
    return base


def cut(ranges: Sequence[Range], sizes: Sequence[int]) -> list[list[Range]]:
    """Cut consecutive pieces of the given sizes off ``ranges`` (in order)."""
    if sum(sizes) > count(ranges):
        raise ValueError("not enough serials to cut")
    pieces: list[list[Range]] = []
    it = iter(ranges)
    cur: Range | None = None
    for size in sizes:
        piece: list[Range] = []
        while size > 0:
            if cur is None:
                cur = next(it)
            a, b = cur
            take = min(size, b - a)
            piece.append((a, a + take))
            size -= take
            cur = (a + take, b) if a + take < b else None
        pieces.append(piece)
    return pieces


class RangeSet:
    """A mutable pool of serials kept as sorted disjoint ranges.

    ``take()`` hands out the lowest serial (first come, first served gets the
    front), ``release_tail()`` gives away the highest ones (stock moved to another
    shard never touches what is about to be handed out).
    """

    __slots__ = ("_ranges", "_count")

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self._ranges: list[list[int]] = []
        self._count = 0
        self.add(ranges)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, serial: int) -> bool:
        i = bisect.bisect_right(self._ranges, [serial, float("inf")]) - 1
        return i >= 0 and self._ranges[i][0] <= serial < self._ranges[i][1]

    def ranges(self) -> list[Range]:
        return [(a, b) for a, b in self._ranges]

    def add(self, ranges: Iterable[Range]) -> None:
        """Add serials; raise ValueError if any is already present."""
        merged = [(a, b) for a, b in self._ranges]
        new = sorted((a, b) for a, b in ranges if a < b)
        for (_, end), (start, _) in zip(new, new[1:], strict=False):
            if start < end:
                raise ValueError("ranges overlap")
        if not new:
            return
        combined = sorted(merged + new)
        out: list[list[int]] = []
        for a, b in combined:
            if out and a < out[-1][1]:
                raise ValueError(f"serial {a} already in pool")
            if out and a == out[-1][1]:
                out[-1][1] = b
            else:
                out.append([a, b])
        self._ranges = out
        self._count += count(new)

    def take(self) -> int | None:
        """Remove and return the lowest serial, or None when empty."""
        if not self._ranges:
            return None
        first = self._ranges[0]
        serial = first[0]
        first[0] += 1
        if first[0] == first[1]:
            self._ranges.pop(0)
        self._count -= 1
        return serial

    def put_back(self, serial: int) -> None:
        self.add([(serial, serial + 1)])

    def discard(self, serials: Iterable[int]) -> None:
        drop = set(serials)
        keep = [s for s in expand(self.ranges()) if s not in drop]
        self._ranges = [list(r) for r in compress(keep)]
        self._count = len(keep)

    def release_tail(self, n: int) -> list[Range]:
        """Remove up to ``n`` of the highest serials and return them as ranges."""
        out: list[Range] = []
        while n > 0 and self._ranges:
            last = self._ranges[-1]
            take = min(n, last[1] - last[0])
            out.append((last[1] - take, last[1]))
            last[1] -= take
            if last[0] == last[1]:
                self._ranges.pop()
            n -= take
            self._count -= take
        return sorted(out)
