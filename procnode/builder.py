"""Event builder: the parts of one seq, sent by several modules, become one event.

Parts arrive in messages of consecutive seqs from each module.  The dispatch schedule
sends seqs in blocks (`dispatch_block`), so the builder keeps one group per block:
a buffer of `block` rows per module, filled by row copies through byte views (no
per-frame Python), and a bool matrix of which parts are here.  An event leaves the
builder as soon as every part is here or known never to come (a gap notice from its
module: ring overrun, source error), or when it has waited `timeout` seconds since
its first part arrived; then it is incomplete, and which parts are missing is recorded.
A part that arrives after its event has left is counted as late and dropped, never
mixed into another event.  Parts whose timestamps differ by more than the tolerance
are flagged (FLAG_TIME_MISMATCH) and their seqs recorded.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coordinator.frames import FLAG_INCOMPLETE, FLAG_TIME_MISMATCH
from coordinator.ranges import RangeSet
from procnode.events import EVENT_DTYPE, EventBatch
from coordinator.units import Axis

#: Groups (blocks) held at most; beyond, the oldest is given up (its events leave incomplete).
MAX_GROUPS = 256


def in_ranges(rs: RangeSet, seqs: np.ndarray) -> np.ndarray:
    """Bool per seq: inside one of the half-open ranges of `rs`."""
    if not len(rs) or not len(seqs):
        return np.zeros(len(seqs), bool)
    bounds = np.array(list(rs), dtype=np.int64)
    i = np.searchsorted(bounds[:, 0], seqs.astype(np.int64), side="right") - 1
    ok = i >= 0
    return ok & (seqs.astype(np.int64) < np.where(ok, bounds[np.maximum(i, 0), 1], 0))


class _Group:
    """The events of one dispatch block: base .. base + size - 1."""

    def __init__(self, base: int, size: int, modules: tuple[str, ...], dtype: np.dtype) -> None:
        self.base = base
        self.parts = {m: np.zeros(size, dtype) for m in modules}
        self.bytes = {m: p.view(np.uint8).reshape(size, dtype.itemsize) for m, p in self.parts.items()}
        self.have = np.zeros((len(modules), size), bool)
        self.first_seen = np.full(size, np.inf)
        self.emitted = np.zeros(size, bool)


@dataclass
class BuilderStats:
    complete: int = 0
    incomplete: int = 0
    late: dict[str, RangeSet] = field(default_factory=dict)        # parts that came after their event left
    missing: dict[str, RangeSet] = field(default_factory=dict)     # parts absent from events that left
    mismatch: RangeSet = field(default_factory=RangeSet)           # events with disagreeing timestamps


class EventBuilder:
    def __init__(self, stream: str, modules: tuple[str, ...], dtype: np.dtype, axes: dict[str, Axis],
                 block: int, timeout: float, tolerance_ns: float) -> None:
        self.stream = stream
        self.modules = modules
        self.dtype = dtype
        self.axes = axes
        self.block = max(1, block)
        self.timeout = timeout
        self.tolerance = tolerance_ns
        self.groups: dict[int, _Group] = {}
        self.gone: dict[str, RangeSet] = {m: RangeSet() for m in modules}   # gap notices
        self.left = RangeSet()                                              # seqs whose event has left
        self.stats = BuilderStats(late={m: RangeSet() for m in modules},
                                  missing={m: RangeSet() for m in modules})
        self.consumed = {m: 0 for m in modules}    # parts taken off the wire (credit to give back)

    # ---- input ----------------------------------------------------------------------------
    def add(self, module: str, records: np.ndarray, now: float) -> list[EventBatch]:
        """Store a message's parts; return the events they complete."""
        seqs = records["seq"].astype(np.int64)
        late = in_ranges(self.left, seqs)
        if late.any():
            self.stats.late[module].add_seqs(seqs[late])
            self.consumed[module] += int(late.sum())
            records, seqs = records[~late], seqs[~late]
        raw = np.ascontiguousarray(records).view(np.uint8).reshape(len(records), self.dtype.itemsize)
        mi = self.modules.index(module)
        touched = []
        blocks = seqs // self.block
        for b in np.unique(blocks):
            sel = blocks == b
            g = self._group(int(b))
            rows = seqs[sel] - g.base
            dup = g.have[mi, rows]
            if dup.any():                       # a part sent twice: count it, keep the first
                self.stats.late[module].add_seqs(seqs[sel][dup])
                self.consumed[module] += int(dup.sum())
                rows, src = rows[~dup], raw[sel][~dup]
            else:
                src = raw[sel]
            g.bytes[module][rows] = src
            g.have[mi, rows] = True
            g.first_seen[rows] = np.minimum(g.first_seen[rows], now)
            touched.append(g)
        out = [batch for g in touched for batch in self._emit(g, self._ready(g))]
        out.extend(self._limit())
        return out

    def gap(self, module: str, first: int, last: int) -> list[EventBatch]:
        """Module says seqs first..last will never come: events waiting only for them can leave."""
        self.gone[module].add(first, last + 1)
        out = []
        for b in range(first // self.block, last // self.block + 1):
            g = self.groups.get(b)
            if g is not None:
                out.extend(self._emit(g, self._ready(g)))
        return out

    def expire(self, now: float) -> list[EventBatch]:
        """Events that waited longer than the timeout leave incomplete."""
        out = []
        for g in list(self.groups.values()):
            due = ~g.emitted & (g.first_seen + self.timeout <= now)
            if due.any():
                out.extend(self._emit(g, due))
        return out

    def flush(self) -> list[EventBatch]:
        """End of run: every event with at least one part leaves now."""
        out = []
        for g in list(self.groups.values()):
            out.extend(self._emit(g, ~g.emitted & g.have.any(axis=0)))
        self.groups.clear()
        return out

    def pending(self) -> int:
        return sum(int((g.have.any(axis=0) & ~g.emitted).sum()) for g in self.groups.values())

    # ---- internals --------------------------------------------------------------------------
    def _group(self, b: int) -> _Group:
        g = self.groups.get(b)
        if g is None:
            g = self.groups[b] = _Group(b * self.block, self.block, self.modules, self.dtype)
        return g

    def _ready(self, g: _Group) -> np.ndarray:
        seqs = np.arange(g.base, g.base + self.block)
        known = g.have.copy()
        for i, m in enumerate(self.modules):
            if len(self.gone[m]):
                known[i] |= in_ranges(self.gone[m], seqs)
        return ~g.emitted & g.have.any(axis=0) & known.all(axis=0)

    def _limit(self) -> list[EventBatch]:
        out = []
        while len(self.groups) > MAX_GROUPS:
            g = self.groups[min(self.groups)]
            out.extend(self._emit(g, ~g.emitted & g.have.any(axis=0)))
            self.groups.pop(g.base // self.block, None)
        return out

    def _emit(self, g: _Group, rows_mask: np.ndarray) -> list[EventBatch]:
        rows = np.flatnonzero(rows_mask)
        if len(rows) == 0:
            return []
        g.emitted[rows] = True
        seqs = (g.base + rows).astype(np.uint64)
        have = g.have[:, rows]
        self.left.add_seqs(seqs)
        ev = np.zeros(len(rows), EVENT_DTYPE)
        ev["seq"] = seqs
        ts = np.stack([g.parts[m]["timestamp"][rows] for m in self.modules]).astype(np.int64)
        lo = np.where(have, ts, np.iinfo(np.int64).max).min(axis=0)
        hi = np.where(have, ts, np.iinfo(np.int64).min).max(axis=0)
        ev["timestamp"] = lo
        flags = np.zeros(len(rows), np.uint32)
        for i, m in enumerate(self.modules):
            flags |= np.where(have[i], g.parts[m]["flags"][rows], 0).astype(np.uint32)
            ev["present"] |= np.where(have[i], np.uint32(1 << i), np.uint32(0))
        mismatch = (hi - lo) > self.tolerance
        if mismatch.any():
            flags[mismatch] |= FLAG_TIME_MISMATCH
            self.stats.mismatch.add_seqs(seqs[mismatch])
        whole = have.all(axis=0)
        flags[~whole] |= FLAG_INCOMPLETE
        ev["flags"] = flags
        for i, m in enumerate(self.modules):
            if not have[i].all():
                self.stats.missing[m].add_seqs(seqs[~have[i]])
            self.consumed[m] += int(have[i].sum())
        self.stats.complete += int(whole.sum())
        self.stats.incomplete += int((~whole).sum())
        contiguous = rows[-1] - rows[0] + 1 == len(rows)
        sl = slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows
        parts = {m: g.parts[m][sl] for i, m in enumerate(self.modules) if have[i].any()}
        if g.emitted.all() or (g.emitted | ~g.have.any(axis=0)).all() and self._all_gone(g):
            self.groups.pop(g.base // self.block, None)
        return [EventBatch(self.stream, self.modules, ev, parts, self.axes)]

    def _all_gone(self, g: _Group) -> bool:
        """Rows never seen are all announced as gaps by every module: nothing more can come."""
        unseen = np.flatnonzero(~g.have.any(axis=0)) + g.base
        return all(in_ranges(self.gone[m], unseen).all() for m in self.modules)
