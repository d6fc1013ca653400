"""NeXus HDF5 file of one processing node, written in whole chunks, SWMR so it survives a crash.

Layout::

    /entry                      NXentry   (run, node, start_time, default -> first stream)
    /entry/<stream>             NXdata    signal=first channel, axes=[seq, time]
        seq        (N,)         uint64    event number
        timestamp  (N,)         uint64    ns
        flags      (N,)         uint32
        module     (N,)         uint16    index into the attribute `names` (acquisition nodes)
        <channel>  (N, samples) dtype of the stream, units counts|V
        time       (samples,)   float64   ns, 0 at the trigger
    /entry/configuration        NXcollection (resolved topology, node name)

Frames are staged per dataset in contiguous buffers and written a whole number
of chunks at a time (measured: strided per-message writes 0.43 GB/s, staged
chunk-aligned writes 1.0 GB/s); uncompressed waveform chunks go straight to the
file with `write_direct_chunk`, bypassing the chunk cache (1.8 -> 3.5 GB/s, half
the CPU per GB in a micro-benchmark).  Staged frames are also written, and the file
flushed, every `flush_interval` seconds, so a crash loses at most that much.
Datasets exist before the file switches to SWMR mode, so a reader (or a crash)
always sees a consistent file up to the last flush.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from coordinator.frames import channel_names

CHUNK_BYTES = 1 << 20      # per channel dataset chunk
STAGE_BYTES = 4 << 20      # per channel staging buffer (a whole number of chunks)
STR = h5py.string_dtype()


class StreamWriter:
    """One stream's NXdata group and its staging buffers."""

    def __init__(self, entry: h5py.Group, stream: Any, timebase: tuple[float, int],
                 compression: dict, chunk_frames: int | None) -> None:
        dtype = stream.dtype
        self.channels = channel_names(dtype)
        per_frame = max(dtype.fields[c][0].itemsize for c in self.channels)
        chunk = chunk_frames or max(1, CHUNK_BYTES // per_frame)
        self.capacity = chunk * max(1, STAGE_BYTES // (chunk * per_frame))
        self.chunk = chunk
        self.direct = not compression   # raw chunks can be written as they are
        g = entry.create_group(stream.name)
        first = self.channels[0]
        g.attrs.update({"NX_class": "NXdata", "signal": first,
                        "auxiliary_signals": np.array(self.channels[1:], dtype=STR),
                        "axes": np.array(["seq", "time"], dtype=STR),
                        "seq_indices": 0, "time_indices": 1})
        self.ds: dict[str, h5py.Dataset] = {}
        self.stage: dict[str, np.ndarray] = {}
        self.module_index = {m: i for i, m in enumerate(stream.modules)}
        self.ds["module"] = g.create_dataset("module", (0,), dtype="<u2", maxshape=(None,),
                                             chunks=(max(chunk, 4096),))
        self.ds["module"].attrs["names"] = np.array(stream.modules, dtype=STR)
        self.stage["module"] = np.empty(self.capacity, dtype="<u2")
        for name in ("seq", "timestamp", "flags", *self.channels):
            sub = dtype.fields[name][0]
            shape = sub.shape
            self.ds[name] = g.create_dataset(
                name, (0, *shape), dtype=sub.base, maxshape=(None, *shape),
                chunks=(chunk if shape else max(chunk, 4096), *shape),
                **(compression if shape else {}))
            self.stage[name] = np.empty((self.capacity, *shape), dtype=sub.base)
            if shape:
                self.ds[name].attrs["units"] = "V" if sub.base.kind == "f" else "counts"
        self.ds["timestamp"].attrs["units"] = "ns"
        sample_ns, pretrigger = timebase
        samples = dtype.fields[first][0].shape[0]
        t = g.create_dataset("time", data=(np.arange(samples) - pretrigger) * sample_ns)
        t.attrs.update({"units": "ns", "long_name": "time since trigger"})
        self.written = 0
        self.staged = 0
        self.seconds = {"stage_copy": 0.0, "hdf5_write": 0.0}

    def append(self, module: str, records: np.ndarray) -> None:
        i, n = 0, len(records)
        index = self.module_index[module]
        while i < n:
            k = min(self.capacity - self.staged, n - i)
            t0 = time.perf_counter()
            for name, buf in self.stage.items():
                buf[self.staged:self.staged + k] = index if name == "module" else records[name][i:i + k]
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
            if self.direct and name in self.channels:
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


class HDF5Sink:
    def __init__(self, path: Path, streams: list[tuple[Any, tuple[float, int]]], run: int, node: str,
                 topology: dict, compression: str | None = None, compression_level: int | None = None,
                 chunk_frames: int | None = None, flush_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.flush_seconds = 0.0
        self.last_flush = time.monotonic()
        self.file = h5py.File(self.path, "w", libver="latest", rdcc_nbytes=64 << 20, rdcc_nslots=100003)
        entry = self.file.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "run": run, "node": node,
                            "start_time": datetime.now(timezone.utc).isoformat(),
                            "default": streams[0][0].name, "program_name": "daq-pulses"})
        comp: dict[str, Any] = {"compression": compression} if compression else {}
        if compression == "gzip" and compression_level is not None:
            comp["compression_opts"] = compression_level
        self.writers = {s.name: StreamWriter(entry, s, tb, comp, chunk_frames) for s, tb in streams}
        cfg = entry.create_group("configuration")
        cfg.attrs.update({"NX_class": "NXcollection", "topology_json": json.dumps(topology), "node": node})
        self.file.swmr_mode = True

    def write(self, stream: str, module: str, records: np.ndarray) -> None:
        self.writers[stream].append(module, records)

    def poll(self) -> None:
        """Write what is staged and flush, once per flush interval (called by the node's timer)."""
        if time.monotonic() - self.last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        for w in self.writers.values():
            w.write_staged()
        t0 = time.perf_counter()
        self.file.flush()
        self.flush_seconds += time.perf_counter() - t0
        self.last_flush = time.monotonic()

    def timings(self) -> dict[str, float]:
        """Seconds spent copying into staging, in HDF5 writes and in flushes (where the time goes)."""
        out = {"hdf5_flush": self.flush_seconds}
        for w in self.writers.values():
            for k, v in w.seconds.items():
                out[k] = out.get(k, 0.0) + v
        return {k: round(v, 6) for k, v in out.items()}

    def close(self) -> None:
        if self.file is not None:
            self.flush()
            self.file.close()
            self.file = None

