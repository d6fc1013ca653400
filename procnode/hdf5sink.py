"""NeXus HDF5 file of one processing node, written in whole batches, SWMR so it survives a crash.

Layout::

    /entry                      NXentry   (run, node, start_time, default -> stream)
    /entry/<stream>             NXdata    signal=first channel, axes=[seq, time]
        seq        (N,)         uint64    event number
        timestamp  (N,)         uint64    ns
        flags      (N,)         uint32
        <channel>  (N, samples) dtype of the stream, units counts|V
        time       (samples,)   float64   ns, 0 at the trigger
    /entry/configuration        NXcollection (resolved topology, node configuration)

Datasets are created up front and the file switched to SWMR mode, so a
reader (or a crash) always sees a consistent file up to the last flush.
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

CHUNK_BYTES = 1 << 20


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class HDF5Sink:
    def __init__(self, path: Path, stream: Any, timebase: tuple[float, int], run: int, node: str,
                 topology: dict, compression: str | None = None, compression_level: int | None = None,
                 chunk_frames: int | None = None, flush_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.last_flush = time.monotonic()
        dtype = stream.dtype
        self.channels = channel_names(dtype)
        per_frame = max(dtype.fields[c][0].itemsize for c in self.channels)
        chunk = chunk_frames or max(1, CHUNK_BYTES // per_frame)
        self.file = h5py.File(self.path, "w", libver="latest", rdcc_nbytes=64 << 20,
                              rdcc_nslots=100003)
        f = self.file
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "run": run, "node": node,
                            "start_time": _now_iso(), "default": stream.name,
                            "program_name": "daq-pulses"})
        data = entry.create_group(stream.name)
        sample_ns, pretrigger = timebase
        first = self.channels[0]
        data.attrs.update({"NX_class": "NXdata", "signal": first,
                           "auxiliary_signals": np.array(self.channels[1:], dtype=h5py.string_dtype()),
                           "axes": np.array(["seq", "time"], dtype=h5py.string_dtype()),
                           "seq_indices": 0, "time_indices": 1})
        comp = {"compression": compression} if compression else {}
        if compression == "gzip" and compression_level is not None:
            comp["compression_opts"] = compression_level
        self.ds: dict[str, h5py.Dataset] = {}
        for name, dt, units in (("seq", "<u8", None), ("timestamp", "<u8", "ns"), ("flags", "<u4", None)):
            self.ds[name] = data.create_dataset(name, (0,), dtype=dt, maxshape=(None,),
                                                chunks=(max(chunk, 4096),))
            if units:
                self.ds[name].attrs["units"] = units
        for c in self.channels:
            sub = dtype.fields[c][0]
            self.ds[c] = data.create_dataset(c, (0, *sub.shape), dtype=sub.base,
                                             maxshape=(None, *sub.shape), chunks=(chunk, *sub.shape), **comp)
            self.ds[c].attrs["units"] = "V" if sub.base.kind == "f" else "counts"
        samples = dtype.fields[first][0].shape[0]
        t = data.create_dataset("time", data=(np.arange(samples) - pretrigger) * sample_ns)
        t.attrs.update({"units": "ns", "long_name": "time since trigger"})
        cfg = entry.create_group("configuration")
        cfg.attrs["NX_class"] = "NXcollection"
        cfg.attrs["topology_json"] = json.dumps(topology)
        cfg.attrs["node"] = node
        self.n = 0
        f.swmr_mode = True

    def write(self, records: np.ndarray) -> None:
        """Append a batch of frame records (one resize + one write per dataset)."""
        k = len(records)
        if k == 0:
            return
        a, b = self.n, self.n + k
        for name, ds in self.ds.items():
            ds.resize(b, axis=0)
            ds[a:b] = records[name]
        self.n = b
        if time.monotonic() - self.last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        self.file.flush()
        self.last_flush = time.monotonic()

    def close(self) -> None:
        if self.file:
            self.file.flush()
            self.file.close()
            self.file = None
