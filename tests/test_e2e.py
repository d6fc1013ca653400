"""End to end: the real command line, real node processes, real sockets, real HDF5 files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from acqnode.sources.base import make_source
from coordinator.topology import load_topology
from conftest import run_cli, run_json, small_topology, write_topology

pytestmark = pytest.mark.usefixtures("clean_system")


def saved_frames(run_dir: Path, stream: str = "pulses") -> dict[str, np.ndarray]:
    """All frames of all node files of a run, concatenated and sorted by seq."""
    parts: dict[str, list] = {}
    for f in sorted(run_dir.glob("proc*.h5")):
        with h5py.File(f, "r") as h:
            g = h["entry"][stream]
            for name in ("seq", "timestamp", "flags", "IN1", "IN2"):
                if name in g:
                    parts.setdefault(name, []).append(g[name][()])
    out = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(out["seq"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def missing_seqs(run_dir: Path) -> dict[str, np.ndarray]:
    """cause -> seqs listed in missing.csv (ranges expanded)."""
    out: dict[str, list] = {}
    with open(run_dir / "missing.csv") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["cause"], []).append(np.arange(int(row["seq_first"]), int(row["seq_last"]) + 1))
    return {c: np.concatenate(v) for c, v in out.items()}


def assert_books_by_seq(run_dir: Path, produced: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every seq 0..produced-1 is saved exactly once or missing exactly once, nothing else."""
    saved = saved_frames(run_dir)["seq"] if list(run_dir.glob("proc*.h5")) else np.array([], np.uint64)
    missing = missing_seqs(run_dir)
    everything = np.concatenate([saved.astype(np.int64), *[m.astype(np.int64) for m in missing.values()]])
    assert len(everything) == produced, (len(saved), {c: len(m) for c, m in missing.items()}, produced)
    assert np.array_equal(np.sort(everything), np.arange(produced))
    return saved, missing


def test_run_saves_every_frame_bit_exact(tmp_path):
    topo_path = write_topology(tmp_path, small_topology(**{"run.frames": 3000}))
    res, summary = run_json(topo_path)
    assert res.returncode == 0, res.stderr
    assert summary["result"] == "completed" and summary["stop_reason"] == "frames"
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == tmp_path / "runs" and run_dir.name == "t-00001"
    for name in ("topology.yaml", "run.json", "stats.csv", "log.txt", "missing.csv", "run.h5",
                 "proc1.h5", "proc2.h5", "data_flow.svg"):
        assert (run_dir / name).is_file(), name
    flow = (run_dir / "data_flow.svg").read_text()      # the run's own nodes, drawn
    assert all(f'id="node-{n}"' in flow for n in ("synth1", "proc1", "proc2"))
    assert summary["plots"] == ["plots/waveforms-pulses.png"]      # a few waveforms (no histogram here)
    assert (run_dir / "plots" / "waveforms-pulses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    frames = saved_frames(run_dir)
    assert np.array_equal(frames["seq"], np.arange(3000))
    # the bytes equal what the seeded source produces for those seqs
    topo = load_topology(run_dir / "topology.yaml")
    stream = topo.streams["pulses"]
    expected = make_source(topo.acquisition["synth1"].source, stream).frames(0, 3000)
    for field in ("timestamp", "flags", "IN1", "IN2"):
        assert np.array_equal(frames[field], expected[field]), field
    # both processing nodes took part (credit-based sharing)
    with h5py.File(run_dir / "proc1.h5") as a, h5py.File(run_dir / "proc2.h5") as b:
        assert a["entry/pulses/seq"].shape[0] > 0 and b["entry/pulses/seq"].shape[0] > 0
    assert summary["books"] == {**summary["books"], "produced": 3000, "saved": 3000, "missing": 0,
                                "balanced": True}
    record = json.loads((run_dir / "run.json").read_text())
    assert [s["state"] for s in record["states"]] == ["idle", "configured", "running", "stopping", "stopped"]
    assert record["versions"]["daq"] and record["parameters"]["requested"]["topology"]["name"] == "t"
    assert record["nodes"]["synth1"]["report"]["produced"] == 3000


def test_hdf5_layout_is_nexus(tmp_path):
    topo_path = write_topology(tmp_path, small_topology(**{"run.frames": 200}))
    res, summary = run_json(topo_path)
    assert res.returncode == 0, res.stderr
    run_dir = Path(summary["run_dir"])
    with h5py.File(run_dir / "proc1.h5") as h:
        entry = h["entry"]
        assert entry.attrs["NX_class"] == "NXentry" and entry.attrs["default"] == "pulses"
        data = entry["pulses"]
        assert data.attrs["NX_class"] == "NXdata" and data.attrs["signal"] == "IN1"
        assert list(data.attrs["axes"]) == ["seq", "time"]
        assert data["IN1"].attrs["units"] == "counts" and data["timestamp"].attrs["units"] == "ns"
        t = data["time"][()]
        assert data["time"].attrs["units"] == "ns" and t[0] < 0 < t[-1] and len(t) == 512
        assert "topology_json" in entry["configuration"].attrs
    with h5py.File(run_dir / "run.h5") as m:
        assert set(m["entry/nodes"]) == {"proc1", "proc2"}
        # external links resolve to the node files
        assert m["entry/nodes/proc1/pulses/seq"].shape[0] + m["entry/nodes/proc2/pulses/seq"].shape[0] == 200
        assert m["entry/missing"].shape == (0,)


def test_drop_policy_records_ring_overrun(tmp_path):
    # a tiny ring and a receiver with one frame of credit: the source outruns the shipper
    topo = small_topology(**{"run.frames": 4000, "acquisition.synth1.ring": {"slots": 2, "policy": "drop"},
                             "processing": {"proc1": {"credits": 1}}})
    res, summary = run_json(write_topology(tmp_path, topo))
    assert res.returncode == 0, res.stderr
    run_dir = Path(summary["run_dir"])
    saved, missing = assert_books_by_seq(run_dir, 4000)
    assert set(missing) == {"ring_overrun"} and len(missing["ring_overrun"]) > 0
    assert summary["books"]["missing_by_cause"]["ring_overrun"] == len(missing["ring_overrun"])
    # a dropped frame is never also saved, and saved frames keep their bytes
    assert not np.intersect1d(saved, missing["ring_overrun"]).size
    with h5py.File(run_dir / "run.h5") as m:
        table = m["entry/missing"][()]
        assert int(table["count"].sum()) == len(missing["ring_overrun"])
        assert {c.decode() if isinstance(c, bytes) else c for c in table["cause"]} == {"ring_overrun"}


def test_block_policy_loses_nothing_with_slow_receiver(tmp_path):
    topo = small_topology(**{"run.frames": 1500, "acquisition.synth1.ring": {"slots": 2, "policy": "block"},
                             "processing": {"proc1": {"credits": 1}}})
    res, summary = run_json(write_topology(tmp_path, topo))
    assert res.returncode == 0, res.stderr
    assert summary["books"]["saved"] == 1500 and summary["books"]["missing"] == 0
    assert np.array_equal(saved_frames(Path(summary["run_dir"]))["seq"], np.arange(1500))


def test_duration_stops_a_paced_run(tmp_path):
    topo = small_topology(**{"run.frames": None, "acquisition.synth1.source.rate": 500})
    res, summary = run_json(write_topology(tmp_path, topo), "--duration", "1.5")
    assert res.returncode == 0, res.stderr
    assert summary["stop_reason"] == "duration"
    produced = summary["books"]["produced"]
    assert 100 < produced < 5000       # a paced source at 500/s for ~1.5 s (loose: no timing asserts)
    assert_books_by_seq(Path(summary["run_dir"]), produced)


def test_frames_option_overrides_topology_and_run_numbers_increase(tmp_path):
    topo_path = write_topology(tmp_path, small_topology())
    for expected in (1, 2):
        res, summary = run_json(topo_path, "--frames", "300")
        assert res.returncode == 0, res.stderr
        assert summary["run"] == expected and summary["books"]["saved"] == 300


def test_run_dir_option(tmp_path):
    topo_path = write_topology(tmp_path, small_topology(**{"run.frames": 100}))
    res, summary = run_json(topo_path, "--run-dir", str(tmp_path / "elsewhere"))
    assert res.returncode == 0, res.stderr
    assert Path(summary["run_dir"]).parent == tmp_path / "elsewhere"


def test_drain_pipeline_counts_frames_as_vetoed(tmp_path):
    topo = small_topology(**{"run.frames": 500, "processing": {"proc1": {"pipeline": [{"stage": "drain"}]}}})
    res, summary = run_json(write_topology(tmp_path, topo))
    assert res.returncode == 0, res.stderr
    assert summary["books"]["missing_by_cause"]["vetoed"] == 500 and summary["books"]["balanced"]


def test_validate_prints_the_graph(tmp_path):
    res = run_cli("validate", str(write_topology(tmp_path, small_topology())))
    assert res.returncode == 0, res.stderr
    assert "synth1" in res.stdout and "-> proc1, proc2" in res.stdout and "pulses" in res.stdout


def test_invalid_topology_exits_2_and_leaves_nothing(tmp_path):
    topo = small_topology(**{"acquisition.synth1.ring": {"slots": 0}})
    topo_path = write_topology(tmp_path, topo)
    for cmd in (("validate", str(topo_path)), ("run", str(topo_path))):
        res = run_cli(*cmd, cwd=tmp_path)
        assert res.returncode == 2
        assert "topo.yaml" in res.stderr and "acquisition.synth1.ring.slots" in res.stderr
    assert not (tmp_path / "runs").exists()
