"""`save`: HDF5 (raw waveforms, reduced tables or both; sparse pulse windows) and CSV tables.

What a save stage writes is what the books count as saved: every part of every event
it receives.  The events table (seq, timestamp, flags, which parts are present) is
always written, so an event with no pulse is still in a reduced-only output.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.ranges import RangeSet
from procnode.events import EVENT_DTYPE, EventBatch
from procnode.hdf5sink import TableWriter, WaveformWriter, raw_writer
from procnode.stages.base import Stage, StageContext


class SaveStage(Stage):
    kind = "save"

    def __init__(self, params: dict, ctx: StageContext) -> None:
        self.ctx = ctx
        self.format = params.get("format", "hdf5")
        data = params.get("data") or ("reduced" if self.format == "csv" else "both")
        self.raw = data in ("raw", "both")
        self.reduced = data in ("reduced", "both")
        self.sparse = params.get("mode") == "sparse"
        self.table = params.get("table", "pulses")
        self.window = tuple(params.get("window", (16, 48)))
        self.saved: dict[str, RangeSet] = {m: RangeSet() for mods in ctx.modules.values() for m in mods}
        self.tables: dict[tuple[str, str], Any] = {}     # (stream, table) -> writer
        self.sinks: list[Any] = []
        self.windows: dict[str, WaveformWriter] = {}
        self.waves: dict[str, WaveformWriter] = {}
        if self.format == "hdf5":
            self.file = ctx.open_file()
            compression: dict[str, Any] = {"compression": params["compression"]} if params.get("compression") else {}
            if params.get("compression") == "gzip" and params.get("compression_level") is not None:
                compression["compression_opts"] = params["compression_level"]
            self.compression = compression
            if self.raw and not self.sparse:
                for st in ctx.streams:
                    axes = {ch: ctx.axes[st.name][f"{ctx.modules[st.name][0]}.{ch}"] for ch in st.channels}
                    self.waves[st.name] = raw_writer(self.file, st, axes, compression, params.get("chunk_frames"),
                                                     ctx.samples[st.name])
        else:
            self.file = None
            self.folder = Path(ctx.run_dir)
        for st in ctx.streams:       # the tables known now get their datasets before SWMR starts
            self._table_writer(st.name, "events", EVENT_DTYPE)
            for name, dtype in ctx.extra.get("tables", {}).items() if self.reduced else ():
                self._table_writer(st.name, name, dtype)

    # ---- writers ------------------------------------------------------------------------
    def _table_name(self, stream: str, name: str) -> str:
        return name if len(self.ctx.streams) == 1 else f"{name}_{stream}"

    def _table_path(self, stream: str, name: str) -> str:
        """Tables live in /entry/reduced (NXcollection): the stream's raw group may share a name."""
        return f"reduced/{self._table_name(stream, name)}"

    def _names(self, stream: str) -> dict[str, list[str]]:
        st = next(s for s in self.ctx.streams if s.name == stream)
        return {"module": list(self.ctx.modules[stream]), "channel": list(st.channels),
                "present": list(self.ctx.modules[stream])}

    def _table_writer(self, stream: str, name: str, dtype: np.dtype) -> Any:
        key = (stream, name)
        w = self.tables.get(key)
        if w is None:
            names = self._names(stream)
            if self.format == "hdf5":
                attrs = {c: {"names": names[c]} for c in dtype.names if c in names}
                w = self.file.add(TableWriter, self._table_path(stream, name), dtype, attrs)
            else:
                w = CsvTable(self.folder / f"{self.ctx.node}-{self._table_name(stream, name)}.csv", dtype, names)
                self.sinks.append(w)
            self.tables[key] = w
        return w

    def _window_writer(self, batch: EventBatch) -> WaveformWriter:
        w = self.windows.get(batch.stream)
        if w is None:
            pre, post = self.window
            ref = batch.wave_refs()[0]
            axis = batch.axis(ref)
            header = {"seq": "<u8", "module": "<u2", "channel": "<u2", "position": "<i4"}
            w = self.file.add(WaveformWriter, self._table_path(batch.stream, f"{self.table}_windows"), header,
                              {"window": batch.waveforms(ref).dtype}, pre + post, {"window": axis},
                              {k: v for k, v in self._names(batch.stream).items() if k in header},
                              self.compression, None, np.arange(-pre, post) * axis.sample_ns)
            self.windows[batch.stream] = w
        return w

    # ---- processing ------------------------------------------------------------------------
    def process(self, batch: EventBatch) -> EventBatch | None:
        if len(batch) == 0:
            return batch
        self._table_writer(batch.stream, "events", EVENT_DTYPE).write(batch.events)
        if self.reduced:
            for name, table in batch.tables.items():
                self._table_writer(batch.stream, name, table.dtype).write(table)
        if self.raw and self.format == "hdf5":
            if self.sparse:
                self._write_windows(batch)
            else:
                self._write_raw(batch)
        for i, m in enumerate(batch.modules):
            here = (batch.events["present"] & (1 << i)) != 0
            if here.any():
                self.saved[m].add_seqs(batch.seq[here])
        return batch

    def _write_raw(self, batch: EventBatch) -> None:
        writer = self.waves[batch.stream]
        for mi, module in enumerate(batch.modules):
            if module not in batch.parts:
                continue
            present = batch.present(module)
            rows = None if present.all() else np.flatnonzero(present)
            part = batch.parts[module]
            cols: dict[str, Any] = {"seq": part["seq"], "timestamp": part["timestamp"], "flags": part["flags"],
                                    "module": mi}
            for ref in batch.wave_refs():
                if ref.startswith(module + "."):
                    cols[ref.split(".", 1)[1]] = batch.waveforms(ref)
            if rows is not None:
                cols = {k: (v if np.isscalar(v) else v[rows]) for k, v in cols.items()}
            writer.append(cols, len(part) if rows is None else len(rows))

    def _write_windows(self, batch: EventBatch) -> None:
        table = batch.tables.get(self.table)
        if table is None or len(table) == 0:
            return
        pre, post = self.window
        writer = self._window_writer(batch)
        st = next(s for s in self.ctx.streams if s.name == batch.stream)
        channels = list(st.channels)
        event = np.searchsorted(batch.seq, table["seq"])
        for (mi, ci) in {(int(m), int(c)) for m, c in zip(table["module"], table["channel"])}:
            sel = (table["module"] == mi) & (table["channel"] == ci)
            x = batch.waveforms(f"{batch.modules[mi]}.{channels[ci]}")
            idx = np.clip(table["position"][sel][:, None] + np.arange(-pre, post), 0, x.shape[1] - 1)
            windows = x[event[sel][:, None], idx]
            writer.append({"seq": table["seq"][sel], "module": mi, "channel": ci,
                           "position": table["position"][sel], "window": windows}, int(sel.sum()))

    def poll(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()

    def report(self) -> dict:
        return {"format": self.format, "saved": sum(r.count() for r in self.saved.values())}


class CsvTable:
    """One reduced table as CSV: a header line, module and channel as names, numbers as numbers."""

    def __init__(self, path: Path, dtype: np.dtype, names: dict[str, list[str]]) -> None:
        self.path = path
        self.f = open(path, "w", newline="")
        self.w = csv.writer(self.f)
        self.columns = list(dtype.names)
        self.names = {c: names[c] for c in self.columns if c in names and c != "present"}
        self.w.writerow(self.columns)

    def write(self, rows: np.ndarray) -> None:
        cols = []
        for c in self.columns:
            v = rows[c]
            cols.append(np.asarray(self.names[c], dtype=object)[v] if c in self.names else v.tolist())
        self.w.writerows(zip(*cols))

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()
