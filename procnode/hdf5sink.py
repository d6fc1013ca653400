"""NeXus HDF5 file of one processing node, written in whole chunks, SWMR so it survives a crash.

Layout::

    /entry                      NXentry   (run, node, start_time, default -> first stream or histogram)
    /entry/<stream>             NXdata    raw waveforms, one row per saved part (frame)
        seq        (N,)         uint64    event number
        timestamp  (N,)         uint64    ns
        flags      (N,)         uint32
        module     (N,)         uint16    index into the attribute `names` (acquisition nodes)
        <channel>  (N, samples) stored values; attrs units (of the stored values), scale
                                      (physical unit per stored unit), physical_units
        time       (samples,)   float64   ns, 0 at the trigger
    /entry/reduced/<table>      NXcollection, one dataset per column (events, pulses, ...)
    /entry/reduced/<table>_windows  NXdata  sparse mode: waveform windows around peaks
    /entry/<histogram>          NXdata    counts (bins,), <field> bin edges (bins + 1,) with units
    /entry/configuration        NXcollection (resolved topology, node name)

Rows are staged per dataset in contiguous buffers and written a whole number of
chunks at a time (measured: strided per-message writes 0.43 GB/s, staged
chunk-aligned writes 1.0 GB/s); uncompressed waveform chunks go straight to the
file with `write_direct_chunk`, bypassing the chunk cache (1.8 -> 3.5 GB/s).
Everything staged is written, and the file flushed, every `flush_interval` seconds,
so a crash loses at most that much.  The file is in SWMR mode: a reader sees tables
and histograms grow.  Datasets must exist before SWMR starts; one made later (a
user stage's table first seen mid-run) reopens the file once to add it.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from coordinator.units import Axis

CHUNK_BYTES = 1 << 20      # per channel dataset chunk
STAGE_BYTES = 4 << 20      # per channel staging buffer (a whole number of chunks)
TABLE_CHUNK = 4096         # rows per chunk of table columns
STR = h5py.string_dtype()


def _names(values: Any) -> np.ndarray:
    return np.array(list(values), dtype=STR)


class _Staged:
    """Datasets appended along axis 0 through staging buffers of `capacity` rows."""

    def __init__(self, group_path: str, capacity: int, chunk: int, direct: set[str]) -> None:
        self.path = group_path
        self.capacity = capacity
        self.chunk = chunk
        self.direct = direct           # datasets written as raw chunks (uncompressed waveforms)
        self.ds: dict[str, h5py.Dataset] = {}
        self.stage: dict[str, np.ndarray] = {}
        self.written = 0
        self.staged = 0
        self.seconds = {"stage_copy": 0.0, "hdf5_write": 0.0}

    def rebind(self, file: h5py.File) -> None:
        group = file[self.path]
        self.ds = {name: group[name] for name in self.ds}

    def append(self, columns: dict[str, Any], n: int) -> None:
        """Rows of every dataset (a column may be a scalar: the same value in each row)."""
        i = 0
        while i < n:
            k = min(self.capacity - self.staged, n - i)
            t0 = time.perf_counter()
            for name, buf in self.stage.items():
                col = columns[name]
                buf[self.staged:self.staged + k] = col if np.isscalar(col) else col[i:i + k]
            self.seconds["stage_copy"] += time.perf_counter() - t0
            self.staged += k
            i += k
            if self.staged == self.capacity:
                self.write_staged()

    def write_staged(self) -> None:
        k = self.staged
        if k == 0:
            return
        a, b = self.written, self.written + k
        t0 = time.perf_counter()
        for name, ds in self.ds.items():
            ds.resize(b, axis=0)
            if name in self.direct:
                self._write_direct(ds, self.stage[name], a, b)
            else:
                ds[a:b] = self.stage[name][:k]
        self.seconds["hdf5_write"] += time.perf_counter() - t0
        self.written, self.staged = b, 0

    def _write_direct(self, ds: h5py.Dataset, buf: np.ndarray, a: int, b: int) -> None:
        """Rows a..b: whole aligned chunks raw, any partial chunk at either end the normal way."""
        c = self.chunk
        lo = min(-(-a // c) * c, b)        # first chunk boundary at or after a
        hi = max(b // c * c, lo)           # last chunk boundary at or before b
        if lo > a:
            ds[a:lo] = buf[:lo - a]
        for row in range(lo, hi, c):
            ds.id.write_direct_chunk((row, 0), buf[row - a:row - a + c])
        if b > hi:
            ds[hi:b] = buf[hi - a:b - a]

    def add(self, group: h5py.Group, name: str, dtype: np.dtype, shape: tuple = (),
            compression: dict | None = None) -> h5py.Dataset:
        ds = group.create_dataset(name, (0, *shape), dtype=dtype, maxshape=(None, *shape),
                                  chunks=(self.chunk if shape else max(self.chunk, TABLE_CHUNK), *shape),
                                  **(compression or {}))
        self.ds[name] = ds
        self.stage[name] = np.empty((self.capacity, *shape), dtype=dtype)
        return ds


class WaveformWriter(_Staged):
    """Waveforms of one stream (raw) or of pulse windows (sparse): NXdata with a time axis."""

    def __init__(self, entry: h5py.Group, name: str, header: dict[str, str], channels: dict[str, np.dtype],
                 samples: int, axes: dict[str, Axis], names: dict[str, list[str]],
                 compression: dict, chunk_frames: int | None, time_axis: np.ndarray) -> None:
        per_row = max(np.dtype(dt).itemsize * samples for dt in channels.values())
        chunk = chunk_frames or max(1, CHUNK_BYTES // per_row)
        super().__init__(f"{entry.name}/{name}", chunk * max(1, STAGE_BYTES // (chunk * per_row)), chunk,
                         set() if compression else set(channels))
        g = entry.create_group(name)
        first = next(iter(channels))
        g.attrs.update({"NX_class": "NXdata", "signal": first,
                        "auxiliary_signals": _names(list(channels)[1:]),
                        "axes": _names(["seq", "time"]), "seq_indices": 0, "time_indices": 1})
        for col, dt in header.items():
            ds = self.add(g, col, np.dtype(dt))
            if col in names:
                ds.attrs["names"] = _names(names[col])
        if "timestamp" in self.ds:
            self.ds["timestamp"].attrs["units"] = "ns"
        for ch, dt in channels.items():
            ds = self.add(g, ch, np.dtype(dt), (samples,), compression)
            ax = axes[ch]
            ds.attrs.update({"units": ax.unit if ax.scale == 1.0 else "counts", "scale": ax.scale,
                             "physical_units": ax.unit})
        t = g.create_dataset("time", data=time_axis)
        t.attrs.update({"units": "ns", "long_name": "time since trigger"})


class TableWriter(_Staged):
    """A table (structured rows) as one dataset per column: appendable, readable column by column."""

    def __init__(self, entry: h5py.Group, name: str, dtype: np.dtype, attrs: dict[str, dict]) -> None:
        super().__init__(f"{entry.name}/{name}", TABLE_CHUNK * 4, TABLE_CHUNK, set())
        g = entry.create_group(name)
        g.attrs["NX_class"] = "NXcollection"
        for col in dtype.names:
            ds = self.add(g, col, dtype.fields[col][0])
            for k, v in attrs.get(col, {}).items():
                ds.attrs[k] = _names(v) if isinstance(v, (list, tuple)) else v

    def write(self, rows: np.ndarray) -> None:
        self.append({c: rows[c] for c in rows.dtype.names}, len(rows))


class HistogramWriter:
    """NXdata with counts and bin edges, rewritten in place at each update (a reader sees it grow)."""

    def __init__(self, entry: h5py.Group, name: str, field: str, edges: np.ndarray, unit: str) -> None:
        self.path = f"{entry.name}/{name}"
        g = entry.create_group(name)
        g.attrs.update({"NX_class": "NXdata", "signal": "counts", "axes": _names([field]),
                        f"{field}_indices": 0})
        c = g.create_dataset("counts", data=np.zeros(len(edges) - 1, np.int64))
        c.attrs.update({"units": "counts", "long_name": f"{field} histogram"})
        e = g.create_dataset(field, data=edges)
        e.attrs.update({"units": unit, "long_name": f"{field} (bin edges)"})
        self.counts = c

    def rebind(self, file: h5py.File) -> None:
        self.counts = file[self.path]["counts"]

    def update(self, counts: np.ndarray, under: int, over: int, entries: int) -> None:
        self.counts[...] = counts
        self.counts.attrs.update({"underflow": under, "overflow": over, "entries": entries})


class HDF5File:
    """The node's one output file; stages add their writers, then `start()` turns on SWMR."""

    def __init__(self, path: Path, run: int, node: str, topology: dict, flush_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.flush_seconds = 0.0
        self.last_flush = time.monotonic()
        self.file: h5py.File | None = self._open("w")
        self.entry = self.file.create_group("entry")
        self.entry.create_group("reduced").attrs["NX_class"] = "NXcollection"
        self.entry.attrs.update({"NX_class": "NXentry", "run": run, "node": node,
                                 "start_time": datetime.now(timezone.utc).isoformat(),
                                 "program_name": "daq-pulses"})
        cfg = self.entry.create_group("configuration")
        cfg.attrs.update({"NX_class": "NXcollection", "topology_json": json.dumps(topology), "node": node})
        self.writers: list[Any] = []

    def _open(self, mode: str) -> h5py.File:
        return h5py.File(self.path, mode, libver="latest", rdcc_nbytes=64 << 20, rdcc_nslots=100003)

    def add(self, writer_factory: Any, *args: Any, **kwargs: Any) -> Any:
        """Create a writer now; if SWMR is on already, reopen the file once to add its datasets."""
        swmr = self.file.swmr_mode
        if swmr:
            self.flush()
            self.file.close()
            self.file = self._open("a")
            self.entry = self.file["entry"]
        w = writer_factory(self.entry, *args, **kwargs)
        if "default" not in self.entry.attrs and isinstance(w, (WaveformWriter, HistogramWriter)) \
                and w.path.count("/") == 2:      # /entry/<group>: what a viewer shows first
            self.entry.attrs["default"] = w.path.rsplit("/", 1)[-1]
        self.writers.append(w)
        if swmr:
            for other in self.writers:
                other.rebind(self.file)
            self.file.swmr_mode = True
        return w

    def start(self) -> None:
        self.file.swmr_mode = True

    def poll(self) -> None:
        """Write what is staged and flush, once per flush interval (called by the node's timer)."""
        if time.monotonic() - self.last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        for w in self.writers:
            if isinstance(w, _Staged):
                w.write_staged()
        t0 = time.perf_counter()
        self.file.flush()
        self.flush_seconds += time.perf_counter() - t0
        self.last_flush = time.monotonic()

    def timings(self) -> dict[str, float]:
        """Seconds spent copying into staging, in HDF5 writes and in flushes (where the time goes)."""
        out = {"hdf5_flush": self.flush_seconds}
        for w in self.writers:
            for k, v in getattr(w, "seconds", {}).items():
                out[k] = out.get(k, 0.0) + v
        return {k: round(v, 6) for k, v in out.items()}

    def close(self) -> None:
        if self.file is not None:
            self.flush()
            self.file.close()
            self.file = None


RAW_HEADER = {"seq": "<u8", "timestamp": "<u8", "flags": "<u4", "module": "<u2"}


def raw_writer(file: HDF5File, stream: Any, axes: dict[str, Axis], compression: dict | None = None,
               chunk_frames: int | None = None, samples: int | None = None) -> WaveformWriter:
    """The NXdata group of a stream's raw frames (one row per saved part)."""
    channels = {ch: stream.dtype.fields[ch][0].base for ch in stream.channels}
    n = samples or stream.samples
    first = axes[next(iter(channels))]
    return file.add(WaveformWriter, stream.name, RAW_HEADER, channels, n, axes,
                    {"module": list(stream.modules)}, compression or {}, chunk_frames, first.times(n))
