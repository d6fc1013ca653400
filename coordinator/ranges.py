"""Sets of sequence numbers kept as sorted half-open ranges [start, stop).

The books of a run (what was produced, shipped, saved, lost) are ranges, not
per-frame flags: a million saved frames are usually a handful of ranges, and
the missing-frame record lists gaps as ranges as the design asks.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


class RangeSet:
    """Sorted, merged, half-open integer ranges."""

    __slots__ = ("_r",)

    def __init__(self, ranges: Iterable[Iterable[int]] = ()) -> None:
        self._r: list[list[int]] = []
        for start, stop in ranges:
            self.add(int(start), int(stop))

    # -- building ------------------------------------------------------------
    def add(self, start: int, stop: int) -> None:
        """Add [start, stop); appending after the last range is O(1), the common case."""
        if stop <= start:
            return
        r = self._r
        if not r or start > r[-1][1]:
            r.append([start, stop])
            return
        if start >= r[-1][0]:
            r[-1][1] = max(r[-1][1], stop)
            return
        left = [x for x in r if x[1] < start]
        right = [x for x in r if x[0] > stop]
        touching = r[len(left):len(r) - len(right)]
        if touching:
            start, stop = min(start, touching[0][0]), max(stop, touching[-1][1])
        self._r = left + [[start, stop]] + right

    def add_seqs(self, seqs: np.ndarray) -> None:
        """Add every value of an integer array (any order, duplicates allowed).

        A batch of frames is almost always one run of consecutive seqs: that case costs
        two comparisons instead of a sort (it was a third of a processing node's Python time).
        """
        n = len(seqs)
        if n == 0:
            return
        first, last = int(seqs[0]), int(seqs[-1])
        if last - first + 1 == n and (n < 3 or bool(np.all(np.diff(seqs) == 1))):
            self.add(first, last + 1)
            return
        for start, stop in ranges_of(seqs):
            self.add(start, stop)

    def update(self, other: "RangeSet") -> None:
        for start, stop in other:
            self.add(start, stop)

    # -- queries -------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, int]]:
        return (tuple(x) for x in self._r)  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self._r)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self._r == other._r

    def __repr__(self) -> str:
        return f"RangeSet({self._r})"

    def count(self) -> int:
        """Number of integers in the set."""
        return sum(b - a for a, b in self._r)

    def __contains__(self, x: int) -> bool:
        return any(a <= x < b for a, b in self._r)

    def intersection(self, other: "RangeSet") -> "RangeSet":
        out, i, j = RangeSet(), 0, 0
        a, b = self._r, other._r
        while i < len(a) and j < len(b):
            lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
            if lo < hi:
                out._r.append([lo, hi])
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return out

    def difference(self, other: "RangeSet") -> "RangeSet":
        out = RangeSet()
        j = 0
        b = other._r
        for start, stop in self._r:
            cur = start
            while j < len(b) and b[j][1] <= cur:
                j += 1
            k = j
            while k < len(b) and b[k][0] < stop:
                if b[k][0] > cur:
                    out._r.append([cur, b[k][0]])
                cur = max(cur, b[k][1])
                k += 1
            if cur < stop:
                out._r.append([cur, stop])
        return out

    def to_list(self) -> list[list[int]]:
        """Plain form for msgpack/JSON."""
        return [list(x) for x in self._r]


def ranges_of(seqs: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ranges covering the values of an integer array, vectorised."""
    if len(seqs) == 0:
        return []
    s = np.unique(np.asarray(seqs, dtype=np.int64))
    breaks = np.flatnonzero(np.diff(s) != 1) + 1
    starts = np.concatenate(([s[0]], s[breaks]))
    stops = np.concatenate((s[breaks - 1], [s[-1]])) + 1
    return list(zip(starts.tolist(), stops.tolist()))
