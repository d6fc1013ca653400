"""`EventBatch`: the batch of events every pipeline stage receives and returns.

An event is what one trigger produced: one part (frame) from each module of the
stream.  A batch keeps the parts as the frame records they arrived in (no copy for
a single module), a small events table (seq, timestamp, flags, which parts are
present), per-channel waveform views with their axes (`coordinator.units.Axis`), and
the tables stages add (one row per pulse, per event, ...; every table has a `seq`
column, so dropping events drops their rows).  Stages work on whole columns.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from coordinator.frames import HEADER_NAMES, channel_names, frame_dtype
from coordinator.units import Axis

EVENT_DTYPE = np.dtype([("seq", "<u8"), ("timestamp", "<u8"), ("flags", "<u4"), ("present", "<u4")])


class EventBatch:
    """n events of one stream, in increasing seq.

    modules: every module of the stream received here; bit i of `present` is modules[i].
    parts:   module -> its frame records, one row per event (rows of absent parts hold no data).
    axes:    "module.CH" -> Axis of that channel.
    """

    def __init__(self, stream: str, modules: tuple[str, ...], events: np.ndarray,
                 parts: dict[str, np.ndarray], axes: dict[str, Axis],
                 tables: dict[str, np.ndarray] | None = None,
                 waves: dict[str, np.ndarray] | None = None) -> None:
        self.stream = stream
        self.modules = modules
        self.events = events
        self.parts = parts
        self.axes = axes
        self.tables: dict[str, np.ndarray] = tables if tables is not None else {}
        self._waves: dict[str, np.ndarray] = waves if waves is not None else {}

    @classmethod
    def from_frames(cls, stream: str, modules: tuple[str, ...], module: str, records: np.ndarray,
                    axes: dict[str, Axis]) -> "EventBatch":
        """A batch of one module's frames (one module per event, or partial dispatch): no copy."""
        ev = np.empty(len(records), EVENT_DTYPE)
        ev["seq"] = records["seq"]
        ev["timestamp"] = records["timestamp"]
        ev["flags"] = records["flags"]
        ev["present"] = 1 << modules.index(module)
        return cls(stream, modules, ev, {module: records}, axes)

    # ---- what stages read ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.events)

    @property
    def seq(self) -> np.ndarray:
        return self.events["seq"]

    @property
    def timestamp(self) -> np.ndarray:
        return self.events["timestamp"]

    def present(self, module: str) -> np.ndarray:
        """Bool per event: its part from `module` is here."""
        return (self.events["present"] & (1 << self.modules.index(module))) != 0

    def channels(self, ref: str | Iterable[str]) -> list[str]:
        """Channel references -> "module.CH" names present in this batch (CH alone: every module)."""
        refs = [ref] if isinstance(ref, str) else list(ref)
        out: list[str] = []
        for r in refs:
            if "." in r:
                if r.split(".", 1)[0] in self.parts:
                    out.append(r)
            else:
                out.extend(f"{m}.{r}" for m in self.modules if m in self.parts)
        return list(dict.fromkeys(out))

    def waveforms(self, ref: str) -> np.ndarray:
        """(n, samples) stored values of one channel ("module.CH"): a view, not a copy."""
        w = self._waves.get(ref)
        if w is None:
            module, ch = ref.split(".", 1)
            w = self.parts[module][ch]
        return w

    def volts(self, ref: str) -> np.ndarray:
        """(n, samples) float32 values in the channel's physical unit (a new array)."""
        axis = self.axes[ref]
        w = self.waveforms(ref)
        if axis.scale == 1.0:
            return w.astype(np.float32)
        return w.astype(np.float32) * np.float32(axis.scale)

    def records(self, module: str) -> np.ndarray:
        """`module`'s parts as frame records of the waveforms as they are now: the received
        records, or new ones holding cropped/decimated waveforms (what `forward` sends on)."""
        part = self.parts[module]
        if not any(ref.split(".", 1)[0] == module for ref in self._waves):
            return part
        waves = {ch: self.waveforms(f"{module}.{ch}") for ch in channel_names(part.dtype)}
        out = np.empty(len(part), frame_dtype({ch: w.dtype for ch, w in waves.items()},
                                              next(iter(waves.values())).shape[1]))
        for name in HEADER_NAMES:
            out[name] = part[name]
        for ch, w in waves.items():
            out[ch] = w
        return out

    def axis(self, ref: str) -> Axis:
        return self.axes[ref]

    def wave_refs(self) -> list[str]:
        """Every "module.CH" with waveforms in this batch."""
        return [f"{m}.{c}" for m in self.modules if m in self.parts
                for c in channel_names(self.parts[m].dtype)]

    # ---- what stages change ---------------------------------------------------------------
    def set_waveforms(self, ref: str, values: np.ndarray, axis: Axis) -> None:
        """Replace a channel's waveforms (a crop, a filter) and its axis."""
        if values.shape[0] != len(self):
            raise ValueError(f"{ref}: {values.shape[0]} rows for {len(self)} events")
        self._waves[ref] = values
        self.axes = {**self.axes, ref: axis}

    def add_table(self, name: str, table: np.ndarray | None = None, **columns: Any) -> np.ndarray:
        """Attach a table (a structured array with a `seq` column, or columns as keywords)."""
        if table is None:
            arrays = {k: np.asarray(v) for k, v in columns.items()}
            n = len(next(iter(arrays.values()))) if arrays else 0
            table = np.empty(n, np.dtype([(k, v.dtype) for k, v in arrays.items()]))
            for k, v in arrays.items():
                table[k] = v
        if table.dtype.names is None or "seq" not in table.dtype.names:
            raise ValueError(f"table {name!r} needs a 'seq' column (the event each row belongs to)")
        if name in self.tables:     # several stages (or channels) add rows: keep seq order
            merged = np.concatenate([self.tables[name], table])
            table = merged[np.argsort(merged["seq"], kind="stable")]
        self.tables[name] = table
        return table

    def select(self, keep: np.ndarray) -> "EventBatch":
        """The events where `keep` is true, with their waveforms and table rows."""
        keep = np.asarray(keep, dtype=bool)
        if keep.all():
            return self
        kept_seq = self.events["seq"][keep]
        tables = {name: t[np.isin(t["seq"], kept_seq)] for name, t in self.tables.items()}
        return EventBatch(self.stream, self.modules, self.events[keep],
                          {m: r[keep] for m, r in self.parts.items()}, self.axes, tables,
                          {ref: w[keep] for ref, w in self._waves.items()})

    def without_waveforms(self) -> "EventBatch":
        """Events and tables only (a user stage that passes on results, not waveforms)."""
        return EventBatch(self.stream, self.modules, self.events, {}, self.axes, self.tables)
