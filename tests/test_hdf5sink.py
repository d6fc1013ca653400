"""The processing node's HDF5 sink: staged, chunk-aligned writes keep every row, whatever the batching."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from coordinator.nodefiles import clear_write_flags, lookup3, saved_in_file
from coordinator.topology.model import StreamConfig
from procnode.hdf5sink import HDF5File, raw_writer
from coordinator.units import Axis

STREAM = StreamConfig("s", 64, {"IN1": "int16", "IN2": "float32"}, ("a", "b"))


def _frames(first: int, n: int) -> np.ndarray:
    r = np.zeros(n, STREAM.dtype)
    r["seq"] = np.arange(first, first + n)
    r["timestamp"] = r["seq"] * 1000
    r["IN1"] = (r["seq"][:, None] * 3 + np.arange(64)) % 30000
    r["IN2"] = -r["IN1"] / 8.0
    return r


def _sink(path, stream, compression=None, chunk_frames=None):
    """A node file with one stream's raw group; `write(module, records)` appends frames."""
    f = HDF5File(path, 1, "p", {})
    axes = {ch: Axis(8.0, -64.0, 1.0, "V") if "float" in dt else Axis(8.0, -64.0, 1 / 8192, "V")
            for ch, dt in stream.channels.items()}
    w = raw_writer(f, stream, axes, {"compression": compression} if compression else {}, chunk_frames)
    f.start()

    def write(module, r):
        cols = {name: r[name] for name in ("seq", "timestamp", "flags", *stream.channels)}
        w.append({**cols, "module": stream.modules.index(module)}, len(r))
    return f, write


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_random_batches_and_flushes_keep_every_row(tmp_path, compression):
    sink, write = _sink(tmp_path / "x.h5", STREAM, compression, chunk_frames=16)
    rng = np.random.default_rng(0)
    seq, ref, modules = 0, [], []
    for _ in range(150):
        n = int(rng.integers(1, 40))
        module = "ab"[int(rng.integers(0, 2))]
        r = _frames(seq, n)
        seq += n
        ref.append(r)
        modules.append(np.full(n, "ab".index(module)))
        write(module, r)
        if rng.random() < 0.2:
            sink.flush()   # leaves a partial chunk: later whole chunks are no longer aligned to it
    sink.close()
    ref = np.concatenate(ref)
    with h5py.File(tmp_path / "x.h5") as f:
        g = f["entry/s"]
        for name in ("seq", "timestamp", "IN1", "IN2"):
            assert np.array_equal(g[name][()], ref[name]), name
        assert np.array_equal(g["module"][()], np.concatenate(modules))
        assert [m.decode() if isinstance(m, bytes) else m for m in g["module"].attrs["names"]] == ["a", "b"]
        assert g["IN2"].attrs["units"] == "V" and g["IN1"].attrs["units"] == "counts"
        assert g["IN1"].compression == compression
    saved = saved_in_file(tmp_path / "x.h5")
    assert sum(b - a for a, b in saved["a"]) + sum(b - a for a, b in saved["b"]) == len(ref)


def test_crashed_writer_file_is_salvaged_and_repaired(tmp_path):
    path = tmp_path / "crash.h5"
    code = f"""
import os, numpy as np
from coordinator.topology.model import StreamConfig
from test_hdf5sink import _sink
st = StreamConfig("s", 64, {{"IN1": "int16"}}, ("a",))
sink, write = _sink({str(path)!r}, st)
r = np.zeros(100, st.dtype); r["seq"] = np.arange(100)
write("a", r); sink.flush()
r["seq"] += 100; write("a", r)   # staged, never flushed
os._exit(9)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 9
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    assert saved_in_file(path) == {"a": [(0, 100)]}     # readable in SWMR mode as it is
    assert clear_write_flags(path) == "cleared"
    with h5py.File(path, "r") as f:                     # and by anyone once repaired
        assert f["entry/s/seq"].shape == (100,)
    assert clear_write_flags(path) == "clean"


def test_clear_write_flags_refuses_what_it_does_not_recognise(tmp_path):
    other = tmp_path / "not.h5"
    other.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))   # right signature, wrong checksum
    assert clear_write_flags(other) == ""
    assert other.read_bytes() == b"\x89HDF\r\n\x1a\n" + bytes(100)


def test_lookup3_reference_values():
    # published test vectors of Bob Jenkins' hashlittle()
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161
