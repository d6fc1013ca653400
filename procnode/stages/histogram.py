"""`histogram`: accumulate a table column into bins; the node's file shows it growing.

Uniform bins ([min, max, count]) use NumPy's own fixed-width path and explicit edges
its bisection path, so the counts are exactly `np.histogram` of the same values;
values outside the edges are counted as underflow and overflow.
"""
from __future__ import annotations

import time

import numpy as np

from procnode.events import EventBatch
from procnode.hdf5sink import HistogramWriter
from procnode.stages.base import Stage, StageContext
from procnode.stages.select import ChannelMatch

#: Units of pulse-table columns that are not the channel's physical unit.
COLUMN_UNITS = {"position": "samples", "time": "ns", "width": "samples", "left_ips": "samples",
                "right_ips": "samples", "left_base": "samples", "right_base": "samples",
                "left_edge": "samples", "right_edge": "samples", "plateau_size": "samples",
                "seq": "", "module": "", "channel": "", "timestamp": "ns", "flags": "", "present": ""}


def _unit(field: str, ctx: StageContext) -> str:
    if field in COLUMN_UNITS:
        return COLUMN_UNITS[field]
    units = {ax.unit for axes in ctx.axes.values() for ax in axes.values()}
    return units.pop() if len(units) == 1 else ""


class HistogramStage(Stage):
    kind = "histogram"

    def __init__(self, params: dict, ctx: StageContext) -> None:
        self.field = params["field"]
        self.name = params.get("name") or self.field
        self.table = params.get("table", "pulses")
        if params.get("bins") is not None:
            lo, hi, n = params["bins"]
            self.bins, self.range = int(n), (float(lo), float(hi))
            self.edges = np.linspace(lo, hi, int(n) + 1)
        else:
            self.edges = np.asarray(params["edges"], np.float64)
            self.bins, self.range = self.edges, None
        self.counts = np.zeros(len(self.edges) - 1, np.int64)
        self.under = self.over = self.entries = 0
        self.match = ChannelMatch(params.get("channel"), ctx)
        self.interval = float(params.get("update_interval", 1.0))
        self.unit = _unit(self.field, ctx)
        self.writer = ctx.open_file().add(HistogramWriter, self.name, self.field, self.edges, self.unit)
        self.next_update = time.monotonic() + self.interval
        self.dirty = False

    def values(self, batch: EventBatch) -> np.ndarray:
        table = batch.events if self.table == "events" else batch.tables.get(self.table)
        if table is None or len(table) == 0:
            return np.empty(0)
        if self.table != "events" and self.match.refs:
            table = table[self.match.mask(batch, table)]
        return table[self.field]

    def process(self, batch: EventBatch) -> EventBatch | None:
        v = self.values(batch)
        if len(v):
            counts, _ = np.histogram(v, bins=self.bins, range=self.range)
            self.counts += counts
            inside = int(counts.sum())
            below = int(np.count_nonzero(v < self.edges[0]))
            self.under += below
            self.over += len(v) - inside - below
            self.entries += len(v)
            self.dirty = True
        return batch

    def poll(self) -> None:
        if self.dirty and time.monotonic() >= self.next_update:
            self._update()

    def _update(self) -> None:
        self.writer.update(self.counts, self.under, self.over, self.entries)
        self.next_update = time.monotonic() + self.interval
        self.dirty = False

    def close(self) -> None:
        self._update()

    def report(self) -> dict:
        return {"entries": self.entries, "underflow": self.under, "overflow": self.over}
