"""`pha`: pulse-height analysis with scipy.signal.find_peaks semantics, on whole batches.

Every peak of every waveform becomes one row of the stage's table (default `pulses`):
seq, module, channel, position (sample), time (ns from the trigger), height (the
channel's physical unit) and the properties its parameters ask for, named as
find_peaks names them (singular).  Amplitude parameters are given in the physical
unit (volts) and converted once to the stored unit, so the analysis runs on the
integers as they came from the ADC (no float copy of the batch).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from procnode.events import EventBatch
from procnode.peaks import find_peaks_batch
from procnode.stages.base import Stage, StageContext
from coordinator.units import Axis

#: find_peaks property -> (column, dtype, scaled to the physical unit)
PROPERTIES = {
    "left_thresholds": ("left_threshold", "<f8", True),
    "right_thresholds": ("right_threshold", "<f8", True),
    "prominences": ("prominence", "<f8", True),
    "left_bases": ("left_base", "<i4", False),
    "right_bases": ("right_base", "<i4", False),
    "widths": ("width", "<f8", False),
    "width_heights": ("width_height", "<f8", True),
    "left_ips": ("left_ips", "<f8", False),
    "right_ips": ("right_ips", "<f8", False),
    "plateau_sizes": ("plateau_size", "<i4", False),
    "left_edges": ("left_edge", "<i4", False),
    "right_edges": ("right_edge", "<i4", False),
}
#: which properties each parameter makes find_peaks return
MAKES = {
    "threshold": ("left_thresholds", "right_thresholds"),
    "prominence": ("prominences", "left_bases", "right_bases"),
    "width": ("prominences", "left_bases", "right_bases", "widths", "width_heights", "left_ips", "right_ips"),
    "plateau_size": ("plateau_sizes", "left_edges", "right_edges"),
}
AMPLITUDE_PARAMS = ("height", "threshold", "prominence")
SAMPLE_PARAMS = ("distance", "width", "wlen", "plateau_size")
BASE_COLUMNS = [("seq", "<u8"), ("module", "<u2"), ("channel", "<u2"), ("position", "<i4"),
                ("time", "<f8"), ("height", "<f8")]


def table_dtype(params: dict) -> np.dtype:
    props = [p for key, made in MAKES.items() if params.get(key) is not None for p in made]
    props = list(dict.fromkeys(props))
    return np.dtype(BASE_COLUMNS + [(PROPERTIES[p][0], PROPERTIES[p][1]) for p in PROPERTIES if p in props])


def _scaled(value: Any, scale: float) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(None if v is None else v / scale for v in value)
    return value / scale


class PhaStage(Stage):
    kind = "pha"

    def __init__(self, params: dict, ctx: StageContext) -> None:
        self.channel = params["channel"]
        self.name = params.get("name", "pulses")
        self.method = params.get("method", "auto")
        self.negative = params.get("polarity") == "negative"
        self.params = {k: params.get(k) for k in (*AMPLITUDE_PARAMS, *SAMPLE_PARAMS, "rel_height")}
        self.params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.params.items() if v is not None}
        self.dtype = table_dtype(self.params)
        self.channel_index = {s.name: {c: i for i, c in enumerate(s.channels)} for s in ctx.streams}
        self._converted: dict[tuple[float, str], dict] = {}
        self.pulses = 0

    def _for_axis(self, axis: Axis) -> dict:
        """find_peaks parameters in the stored unit of a channel (converted once per scale)."""
        key = (axis.scale, axis.unit)
        p = self._converted.get(key)
        if p is None:
            p = {k: (_scaled(v, axis.scale) if k in AMPLITUDE_PARAMS else v) for k, v in self.params.items()}
            self._converted[key] = p
        return p

    def process(self, batch: EventBatch) -> EventBatch | None:
        rows = [self._analyse(batch, ref) for ref in batch.channels(self.channel)]
        rows = [r for r in rows if len(r)]
        table = np.concatenate(rows) if len(rows) > 1 else (rows[0] if rows else np.empty(0, self.dtype))
        if len(rows) > 1:
            table = table[np.lexsort((table["position"], table["channel"], table["module"], table["seq"]))]
        batch.add_table(self.name, table)
        self.pulses += len(table)
        return batch

    def _analyse(self, batch: EventBatch, ref: str) -> np.ndarray:
        module, ch = ref.split(".", 1)
        axis = batch.axis(ref)
        x = batch.waveforms(ref)
        present = batch.present(module)
        which = None
        if not present.all():
            which = np.flatnonzero(present)
            x = x[which]
        if self.negative:
            x = -x.astype(np.int32 if x.dtype.kind in "iu" else x.dtype)
        peaks = find_peaks_batch(x, method=self.method, **self._for_axis(axis))
        n = len(peaks)
        out = np.empty(n, self.dtype)
        if n == 0:
            return out
        event = peaks.row if which is None else which[peaks.row]
        out["seq"] = batch.seq[event]
        out["module"] = batch.modules.index(module)
        out["channel"] = self.channel_index[batch.stream][ch]
        out["position"] = peaks.position
        out["time"] = axis.time_of(peaks.position)
        heights = peaks.properties.get("peak_heights")
        if heights is None:
            heights = x[peaks.row, peaks.position]
        out["height"] = np.asarray(heights, np.float64) * axis.scale
        for prop, (col, _, scaled) in PROPERTIES.items():
            if col in out.dtype.names:
                values = peaks.properties[prop]
                out[col] = values * axis.scale if scaled else values
        return out

    def report(self) -> dict:
        return {"pulses": self.pulses}
