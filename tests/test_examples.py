"""The ready-to-run examples in topologies/ run as users run them (emulated boards) and give
what they promise."""
from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_cli

pytestmark = pytest.mark.usefixtures("clean_system")
TOPOLOGIES = Path(__file__).parent.parent / "topologies"


def run_example(tmp_path: Path, name: str, frames: int) -> dict:
    import json
    res = run_cli("run", str(TOPOLOGIES / f"{name}.yaml"), "--frames", str(frames),
                  "--run-dir", str(tmp_path / "runs"), "--json", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["books"]["balanced"] and summary["result"] == "completed"
    return summary


def test_gamma_spectrum(tmp_path):
    s = run_example(tmp_path, "gamma-spectrum", 300)
    run_dir = Path(s["run_dir"])
    assert s["books"]["saved"] == s["books"]["produced"] == 300
    with h5py.File(run_dir / "spectrum.h5") as h:
        spec = h["entry/spectrum"]
        counts, edges = spec["counts"][()], spec["height"][()]
        assert spec["height"].attrs["units"] == "V" and len(edges) == len(counts) + 1
        pulses = h["entry/reduced/pulses"]
        heights = pulses["height"][()]
        assert counts.sum() == np.count_nonzero((heights >= 0) & (heights <= 1.0))
        assert np.array_equal(counts, np.histogram(heights, bins=500, range=(0, 1))[0])
        line = heights[(heights > 0.4) & (heights < 0.6)]       # the emulated 0.5 V line
        assert len(line) > 20 and abs(np.median(line) - 0.5) < 0.02
        windows = h["entry/reduced/pulses_windows"]
        assert windows["window"].shape == (len(heights), 80)      # sparse: a window per pulse
        assert np.array_equal(windows["seq"][()], pulses["seq"][()])
    with open(run_dir / "spectrum-pulses.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(heights) and rows[0]["module"] == "rp1" and rows[0]["channel"] == "IN1"


def test_muon_coincidence(tmp_path):
    s = run_example(tmp_path, "muon-coincidence", 300)
    books = s["books"]
    assert books["produced"] == 600
    reports = [s["nodes"][n]["report"] for n in ("coinc1", "coinc2")]
    assert sum(r["events"]["complete"] for r in reports) == 300          # common trigger: all complete
    assert all(r["events"]["incomplete"] == 0 for r in reports)
    assert books["saved"] + books["missing_by_cause"]["vetoed"] == 600
    kept = 0
    for n in ("coinc1", "coinc2"):
        with h5py.File(Path(s["run_dir"]) / f"{n}.h5") as h:
            ev = h["entry/reduced/events"]
            assert (ev["present"][()] == 3).all()
            kept += len(ev["seq"])
            p = h["entry/reduced/pulses"]
            seq, module, t = p["seq"][()], p["module"][()], p["time"][()]
            for e in ev["seq"][()][:50]:     # kept events have a pulse on each board within 100 ns
                t1, t2 = t[(seq == e) & (module == 0)], t[(seq == e) & (module == 1)]
                assert (np.abs(t1[:, None] - t2[None, :]) <= 100).any()
    assert kept * 2 == books["saved"] and kept > 250


def test_two_stage_chain(tmp_path):
    s = run_example(tmp_path, "two-stage", 300)
    front, back = s["nodes"]["front"]["report"], s["nodes"]["back"]["report"]
    books = s["books"]
    assert back["received"]["front"] == front["forward_counts"]["back"] == books["saved"]
    assert books["saved"] + books["missing_by_cause"]["vetoed"] == 300
    with h5py.File(Path(s["run_dir"]) / "back.h5") as h:
        heights = h["entry/reduced/pulses/height"][()]
        seqs = h["entry/reduced/pulses/seq"][()]
        assert len(h["entry/reduced/events/seq"]) == books["saved"]
        assert all(heights[seqs == e].max() >= 0.1 for e in np.unique(seqs))   # the front's filter
        assert h["entry/spectrum/counts"][()].sum() == np.count_nonzero(heights <= 1.0)
