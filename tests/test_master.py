"""The master file run.h5: one file that shows every saved part of every processing node
ordered by seq (virtual datasets), the pulses, the summed histograms and the missing table."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_json, write_topology
from test_e2e_events import two_modules

pytestmark = pytest.mark.usefixtures("clean_system")

PIPELINE = [{"stage": "pha", "channel": "IN1", "height": 0.05},
            {"stage": "histogram", "name": "spectrum", "field": "height", "bins": [0.0, 1.0, 100]},
            {"stage": "histogram", "field": "seq", "bins": [0, 900, 9]},
            {"stage": "save", "data": "both"}]


def node_rows(run_dir: Path, group: str, column: str) -> list[np.ndarray]:
    out = []
    for f in sorted(run_dir.glob("p*.h5")):
        with h5py.File(f, "r") as h:
            out.append(h[f"entry/{group}/{column}"][()])
    return out


def test_master_file_orders_every_node_s_rows_by_seq(tmp_path):
    topo = two_modules(frames=900, p1={"pipeline": PIPELINE}, p2={"pipeline": PIPELINE})
    res, summary = run_json(write_topology(tmp_path, topo))
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = Path(summary["run_dir"])
    # the master still reads after the run directory moved: sources are named relative to it
    moved = tmp_path / "elsewhere"
    shutil.move(run_dir, moved)
    with h5py.File(moved / "run.h5", "r") as m:
        raw = m["entry/pulses"]
        seq, module = raw["seq"][()], raw["module"][()]
        # module by module, each in seq order
        assert np.array_equal(seq, np.tile(np.arange(900), 2)) and np.array_equal(module, np.repeat([0, 1], 900))
        assert list(raw.attrs["module_rows"]) == [0, 900]
        assert 1 < raw.attrs["mappings"] < 1800 // 2 and "order" not in raw   # per batch of rows, not per row
        # the waveforms are the node files' own rows, put in seq order
        node_seq = np.concatenate(node_rows(moved, "pulses", "seq"))
        node_mod = np.concatenate(node_rows(moved, "pulses", "module"))
        node_wave = np.concatenate(node_rows(moved, "pulses", "IN1"))
        order = np.lexsort((node_seq, node_mod))
        assert np.array_equal(raw["IN1"][()], node_wave[order])
        assert raw["IN1"].attrs["units"] == "counts" and raw["time"].shape == (512,)
        # pulses of both nodes, in seq order; events once each
        pulses = m["entry/reduced/pulses/seq"][()]
        assert len(pulses) == sum(len(s) for s in node_rows(moved, "reduced/pulses", "seq"))
        assert np.all(np.diff(pulses.astype(np.int64)) >= 0)
        assert np.array_equal(m["entry/reduced/events/seq"][()], np.arange(900))
        # the spectrum is the sum of the nodes' spectra
        assert np.array_equal(m["entry/spectrum/counts"][()], sum(node_rows(moved, "spectrum", "counts")))
        assert m["entry/spectrum/counts"][()].sum() > 0
        counts = m["entry/spectrum/counts"]      # and so are its entries, underflow and overflow
        for key in ("entries", "underflow", "overflow"):
            assert counts.attrs[key] == sum(h5py.File(f)["entry/spectrum/counts"].attrs[key]
                                            for f in sorted(moved.glob("p*.h5"))), key
        assert counts.attrs["entries"] == len(pulses)
        # a histogram of the pulses' seq (its bin edges are a dataset named seq): summed too
        assert np.array_equal(m["entry/seq/counts"][()], np.histogram(pulses, bins=9, range=(0, 900))[0])
        # a table column named time (the pulses' time from the trigger) is a column, not an axis
        ptime = m["entry/reduced/pulses/time"]
        assert ptime.shape == (len(pulses),) and np.isfinite(ptime[()]).all()
        assert len(m["entry/missing"]) == 0 and m["entry"].attrs["frames_saved"] == 1800
        assert set(m["entry/nodes"]) == {"p1", "p2"} and "pulses" in m["entry/nodes/p1"]
