"""`filter`: keep the events that satisfy every condition; the others are vetoed (and booked).

Conditions work on whole columns of a batch's tables: a count of pulses (of some
channels, with column ranges) per event, a coincidence of pulses on several channels
within a time window, event flags to reject.
"""
from __future__ import annotations

import numpy as np

from coordinator.frames import FLAG_BITS
from procnode.events import EventBatch
from procnode.stages.base import Stage, StageContext


class ChannelMatch:
    """Which rows of a pulse table belong to some channels (CH: every module; module.CH: one)."""

    def __init__(self, refs: list[str] | None, ctx: StageContext) -> None:
        self.refs = list(refs or [])
        self.index = {st.name: {c: i for i, c in enumerate(st.channels)} for st in ctx.streams}

    def mask(self, batch: EventBatch, table: np.ndarray) -> np.ndarray:
        if not self.refs:
            return np.ones(len(table), bool)
        out = np.zeros(len(table), bool)
        chans = self.index[batch.stream]
        for ref in self.refs:
            module, _, ch = ref.rpartition(".")
            hit = table["channel"] == chans.get(ch, -1)
            if module:
                hit &= table["module"] == (batch.modules.index(module) if module in batch.modules else -1)
            out |= hit
        return out


def rows_where(table: np.ndarray, where: dict) -> np.ndarray:
    keep = np.ones(len(table), bool)
    for col, (lo, hi) in where.items():
        if lo is not None:
            keep &= table[col] >= lo
        if hi is not None:
            keep &= table[col] <= hi
    return keep


def event_index(batch: EventBatch, table: np.ndarray) -> np.ndarray:
    """Row of the batch each table row belongs to (tables and events are in seq order)."""
    return np.searchsorted(batch.seq, table["seq"])


class FilterStage(Stage):
    kind = "filter"

    def __init__(self, params: dict, ctx: StageContext) -> None:
        self.pulses = params.get("pulses")
        self.coincidence = params.get("coincidence")
        self.reject = 0
        for name in params.get("reject_flags") or ():
            self.reject |= FLAG_BITS[name]
        self.invert = bool(params.get("invert"))
        self.match_pulses = ChannelMatch(self.pulses.get("channel") if self.pulses else None, ctx)
        self.match_coinc = [ChannelMatch([c], ctx) for c in (self.coincidence or {}).get("channels", [])]
        self.kept = self.dropped = 0

    def process(self, batch: EventBatch) -> EventBatch | None:
        keep = np.ones(len(batch), bool)
        if self.pulses:
            keep &= self._count_ok(batch)
        if self.coincidence:
            keep &= self._coincident(batch)
        if self.reject:
            keep &= (batch.events["flags"] & self.reject) == 0
        if self.invert:
            keep = ~keep
        n = int(keep.sum())
        self.kept += n
        self.dropped += len(batch) - n
        return batch.select(keep)

    def _count_ok(self, batch: EventBatch) -> np.ndarray:
        p = self.pulses
        table = batch.tables.get(p["table"], np.empty(0, [("seq", "<u8")]))
        rows = rows_where(table, p.get("where") or {}) & self.match_pulses.mask(batch, table)
        counts = np.bincount(event_index(batch, table[rows]), minlength=len(batch))
        ok = counts >= p.get("min_count", 1)
        if p.get("max_count") is not None:
            ok &= counts <= p["max_count"]
        return ok

    def _coincident(self, batch: EventBatch) -> np.ndarray:
        """Events with, for some pulse of the first channel, a pulse of every other channel
        within +-window_ns of it."""
        c = self.coincidence
        table = batch.tables.get(c["table"], np.empty(0, [("seq", "<u8"), ("time", "<f8")]))
        out = np.zeros(len(batch), bool)
        if len(table) == 0:
            return out
        base = rows_where(table, c.get("where") or {})
        # integer sort keys: event, then time in 1/100 ns (exact enough, no float rounding at scale)
        w = int(round(float(c["window_ns"]) * 100))
        t0 = float(table["time"].min())
        span = int(round((float(table["time"].max()) - t0) * 100)) + 2 * w + 1

        def keys(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            sub = table[rows]
            event = event_index(batch, sub)
            return event, event.astype(np.int64) * span + np.rint((sub["time"] - t0) * 100).astype(np.int64)

        a_event, a_key = keys(base & self.match_coinc[0].mask(batch, table))
        ok = np.ones(len(a_key), bool)
        for match in self.match_coinc[1:]:
            key = np.sort(keys(base & match.mask(batch, table))[1])
            ok &= np.searchsorted(key, a_key + w, side="right") > np.searchsorted(key, a_key - w, side="left")
        out[a_event[ok]] = True
        return out

    def report(self) -> dict:
        return {"kept": self.kept, "vetoed": self.dropped}
