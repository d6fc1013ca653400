"""Replaying a finished run's raw frames (acqnode/sources/replay.py) over real runs' files."""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from acqnode.sources.base import make_source
from acqnode.sources.replay import NOT_RECORDED, ReplayError, ReplaySource, RunFrames
from coordinator.frames import frame_dtype
from coordinator.topology import load_topology
from conftest import orphan_nodes, ring_segments, run_json, small_topology, write_topology

RAW = [{"stage": "save", "data": "raw"}]


def make_run(folder: Path, topo: dict) -> Path:
    """Run `topo` in `folder` with the real command line; its run directory.  Fails if it
    leaves a node process or ring segment behind (what clean_system checks per test)."""
    folder.mkdir(parents=True, exist_ok=True)
    before, t0 = ring_segments(), time.time()
    topo.setdefault("run", {})["plots"] = False
    res, summary = run_json(write_topology(folder, topo))
    assert res.returncode == 0, res.stderr[-3000:]
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and (orphan_nodes(t0, folder) or ring_segments(folder) - before):
        time.sleep(0.1)
    assert not orphan_nodes(t0, folder) and not ring_segments(folder) - before
    return Path(summary["run_dir"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("replay")
    single = small_topology(**{"run.frames": 600, "streams.pulses.samples": 64,
                               "processing": {"proc1": {"pipeline": RAW}, "proc2": {"pipeline": RAW}}})
    events = {
        "topology": 1, "name": "ev",
        "run": {"directory": "runs", "frames": 400, "drain_timeout": 5.0},
        "streams": {"pulses": {"samples": 32, "channels": {"IN1": "int16", "IN2": "float32"},
                               "modules": ["a1", "a2"], "dispatch": "full", "dispatch_block": 16}},
        "acquisition": {n: {"stream": "pulses", "ring": {"slots": 64},
                            "source": {"kind": "synthetic", "rate": "max", "seed": seed}}
                        for n, seed in (("a1", 7), ("a2", 8))},
        "processing": {"p1": {"pipeline": [{"stage": "save", "data": "both"}]},
                       "p2": {"pipeline": [{"stage": "save", "data": "both"}]}},
    }
    # a tiny ring, policy drop, a receiver with one frame of credit: the source outruns the shipper
    lossy = small_topology(**{"run.frames": 3000, "acquisition.synth1.ring": {"slots": 2, "policy": "drop"},
                              "processing": {"proc1": {"credits": 1, "pipeline": RAW}}})
    reduced = small_topology(**{"run.frames": 100, "streams.pulses.samples": 32,
                                "processing": {"proc1": {"pipeline": [{"stage": "save", "data": "reduced"}]}}})
    return {name: make_run(root / name, topo) for name, topo in
            (("single", single), ("events", events), ("lossy", lossy), ("reduced", reduced))}


# ---- what the run holds, read independently ----------------------------------------------------
def stream_of(run_dir: Path, stream: str = "pulses"):
    return load_topology(run_dir / "topology.yaml").streams[stream]


def saved_parts(run_dir: Path, module: str, dtype: np.dtype) -> np.ndarray:
    """Every raw part of `module` in the node files, as frame records sorted by seq."""
    parts = []
    for f in sorted(p for p in run_dir.glob("*.h5") if p.name != "run.h5"):
        with h5py.File(f, "r") as h:
            g = h["entry/pulses"]
            names = [n.decode() if isinstance(n, bytes) else n for n in g["module"].attrs["names"]]
            mine = g["module"][()] == names.index(module)
            rec = np.zeros(int(mine.sum()), dtype)
            for name in dtype.names:
                if name != "reserved":
                    rec[name] = g[name][()][mine]
            parts.append(rec)
    out = np.concatenate(parts)
    return out[np.argsort(out["seq"], kind="stable")]


def recorded_gaps(run_dir: Path, module: str) -> list[tuple[int, int, str]]:
    with open(run_dir / "missing.csv") as fh:
        rows = [(int(r["seq_first"]), int(r["seq_last"]) + 1, r["cause"])
                for r in csv.DictReader(fh) if r["module"] == module]
    return sorted(rows)


def replay_like_reader(src: ReplaySource, batches=(5, 1, 17, 64)) -> tuple[np.ndarray, list]:
    """What the reader's triggered loop does with a source up to its frames limit (total_seqs):
    the frames it stores and the gaps it reports (adjacent gaps of one cause merged)."""
    limit = src.total_seqs
    frames, gaps, seq = [], [], 0
    for i in range(limit + 1):          # every call advances seq by at least 1
        if seq >= limit:
            break
        out = np.zeros(min(batches[i % len(batches)], limit - seq), src.dtype)
        got = src.read(seq, out, 0.01)
        assert got.frames <= len(out)
        frames.append(out[:got.frames].copy())
        seq += got.frames
        if got.lost:
            if gaps and gaps[-1][1] == seq and gaps[-1][2] == got.cause:
                gaps[-1][1] = seq + got.lost
            else:
                gaps.append([seq, seq + got.lost, got.cause])
            seq += got.lost
    assert seq == limit
    return np.concatenate(frames), [tuple(g) for g in gaps]


# ---- replayed frames --------------------------------------------------------------------------
def test_single_module_frames_are_the_saved_bytes_in_seq_order(runs):
    run_dir = runs["single"]
    st = stream_of(run_dir)
    with RunFrames(run_dir, "pulses", "synth1", st.dtype, chunk=7) as rf:
        assert np.array_equal(rf.seqs, np.arange(600)) and rf.total_seqs == 600 and rf.missing() == []
        every = np.concatenate(list(rf.chunks()))
        assert every.dtype == st.dtype and len(every) == 600
        assert every.tobytes() == saved_parts(run_dir, "synth1", st.dtype).tobytes()
        # the run's source makes the same records (header, reserved and channels), seq for seq
        topo = load_topology(run_dir / "topology.yaml")
        original = make_source(topo.acquisition["synth1"].source, st).frames(0, 600)
        assert every.tobytes() == original.tobytes()
        # reads at any position, across chunk boundaries, both node files mixed
        out = np.zeros(30, st.dtype)
        assert rf.read_into(5, out) == 30 and out.tobytes() == original[5:35].tobytes()
        assert rf.read_into(590, out) == 10 and out[:10].tobytes() == original[590:].tobytes()
        assert len(rf.read(600, 5)) == 0
    with h5py.File(run_dir / "proc1.h5") as a, h5py.File(run_dir / "proc2.h5") as b:
        assert a["entry/pulses/seq"].shape[0] > 0 and b["entry/pulses/seq"].shape[0] > 0   # both files used


def test_replay_source_gives_the_run_as_the_reader_asks(runs):
    run_dir = runs["single"]
    st = stream_of(run_dir)
    src = ReplaySource(run_dir, st, "synth1", chunk=11)
    try:
        assert src.triggered and src.pace(0) == 0.0 and src.hardware == {} and src.dtype == st.dtype
        frames, gaps = replay_like_reader(src)
        assert gaps == []
        assert frames.tobytes() == saved_parts(run_dir, "synth1", st.dtype).tobytes()
        for _ in range(3):                  # exhausted: nothing more, however often asked
            got = src.read(600, np.zeros(4, st.dtype), 0.01)
            assert (got.frames, got.lost) == (0, 0)
        assert src.report() == {**src.report(), "replayed_from": str(run_dir), "frames": 600, "gaps": {}}
        src.new_run()                       # the reader armed for another run: the same frames again
        again, _ = replay_like_reader(src, batches=(64,))
        assert again.tobytes() == frames.tobytes() and src.report()["frames"] == 600
    finally:
        src.close()


def test_two_modules_full_dispatch_each_module_replays_its_own_parts(runs):
    run_dir = runs["events"]
    st = stream_of(run_dir)
    topo = load_topology(run_dir / "topology.yaml")
    with h5py.File(run_dir / "p1.h5") as h:            # one file holds both modules' parts of an event
        assert set(np.unique(h["entry/pulses/module"][()])) == {0, 1}
    for module in ("a1", "a2"):
        saved = saved_parts(run_dir, module, st.dtype)
        assert len(saved) == 400
        src = ReplaySource(run_dir, st, module, chunk=13)
        try:
            assert src.total_seqs == 400
            frames, gaps = replay_like_reader(src, batches=(3, 64, 1))
            assert gaps == []
            assert frames.tobytes() == saved.tobytes()
            original = make_source(topo.acquisition[module].source, st).frames(0, 400)
            assert frames.tobytes() == original.tobytes()      # a1's bytes are not a2's (other seeds)
        finally:
            src.close()


def test_losses_are_replayed_as_the_same_gaps_with_the_same_causes(runs, tmp_path):
    run_dir = runs["lossy"]
    st = stream_of(run_dir)
    record = recorded_gaps(run_dir, "synth1")
    assert record and {c for _, _, c in record} == {"ring_overrun"}
    src = ReplaySource(run_dir, st, "synth1", chunk=5)
    try:
        assert src.total_seqs == 3000 and src.run.missing() == record
        frames, gaps = replay_like_reader(src)
        assert gaps == record
        assert frames.tobytes() == saved_parts(run_dir, "synth1", st.dtype).tobytes()
        lost = sum(b - a for a, b, _ in record)
        assert len(frames) + lost == 3000
        assert src.report()["gaps"] == {"ring_overrun": lost} and src.report()["frames"] == len(frames)
    finally:
        src.close()
    # without missing.csv the master file's /entry/missing is the record
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "missing.csv").unlink()
    with RunFrames(copy, "pulses", "synth1", st.dtype) as rf:
        assert rf.missing() == record
    # a gap the record does not explain is replayed as not_recorded
    (copy / "run.h5").unlink()
    first, *rest = record
    with open(copy / "missing.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seq_first", "seq_last", "count", "module", "cause", "node", "time"])
        for a, b, c in rest:
            w.writerow([a, b - 1, b - a, "synth1", c, "synth1", "0.000"])
    src = ReplaySource(copy, st, "synth1", chunk=5)
    try:
        _, gaps = replay_like_reader(src)
        assert gaps == [(first[0], first[1], NOT_RECORDED), *rest]
    finally:
        src.close()


def test_a_moved_run_directory_still_replays(runs, tmp_path):
    run_dir = runs["single"]
    moved = tmp_path / "elsewhere" / run_dir.name
    shutil.copytree(run_dir, moved)
    record = json.loads((moved / "run.json").read_text())        # as if the original were gone
    old = "/no/such/place/" + run_dir.name
    record["files"] = {p.replace(str(run_dir), old): v for p, v in record["files"].items()}
    record["run_dir"] = old
    (moved / "run.json").write_text(json.dumps(record))
    st = stream_of(run_dir)
    with RunFrames(moved, "pulses", "synth1", st.dtype) as rf:
        assert len(rf) == 600
        assert np.concatenate(list(rf.chunks())).tobytes() == saved_parts(run_dir, "synth1", st.dtype).tobytes()


# ---- what cannot be replayed ------------------------------------------------------------------
def test_errors_name_the_run_and_what_to_do(runs, tmp_path):
    single, st = runs["single"], stream_of(runs["single"])

    def error(run_dir, stream="pulses", module="synth1", dtype=st.dtype) -> str:
        with pytest.raises(ReplayError) as exc:
            RunFrames(run_dir, stream, module, dtype)
        assert str(run_dir) in str(exc.value)
        assert isinstance(exc.value, ValueError)
        return str(exc.value)

    (tmp_path / "empty").mkdir()
    assert "no run.json" in error(tmp_path / "empty")
    assert "no such run directory" in error(tmp_path / "absent")
    msg = error(single, stream="gamma")
    assert "no stream 'gamma'" in msg and "pulses" in msg
    msg = error(single, module="a9")
    assert "no module 'a9'" in msg and "synth1" in msg
    msg = error(runs["reduced"], dtype=stream_of(runs["reduced"]).dtype)
    assert "no raw waveforms" in msg and "{stage: save, data: raw}" in msg
    msg = error(single, dtype=frame_dtype({"IN1": "int16", "IN2": "int16"}, 32))
    assert "IN1" in msg and "samples" in msg
    with pytest.raises(ReplayError, match="no module"):                       # the source too
        ReplaySource(single, st, "a9")
    gone = tmp_path / "gone" / single.name                                    # a node file not here
    shutil.copytree(single, gone)
    record = json.loads((gone / "run.json").read_text())
    record["files"] = {str(gone / "proc1.h5"): {"where": "in place"},
                       "/no/such/proc9.h5": {"where": "on host b, not fetched: ssh refused"}}
    (gone / "run.json").write_text(json.dumps(record))
    msg = error(gone)
    assert "proc9.h5" in msg and "not fetched" in msg and "copy" in msg


def test_row_reads_slice_or_select_as_the_rows_lie(tmp_path):
    from acqnode.sources.replay import MAX_SLICES, ROW_GAP, _read_rows
    data = np.arange(200_000 * 3, dtype=np.int32).reshape(-1, 3)
    with h5py.File(tmp_path / "x.h5", "w") as h:
        ds = h.create_dataset("d", data=data, chunks=(1000, 3))
        rng = np.random.default_rng(1)
        cases = [np.arange(10, 60),                                               # one slice
                 np.sort(rng.choice(200_000, 50, replace=False)),                # scattered: points
                 np.concatenate([np.arange(k * 5000, k * 5000 + 20) for k in range(MAX_SLICES - 1)]),
                 np.array([0, ROW_GAP * 10], np.int64), np.zeros(0, np.int64)]
        for rows in cases:
            assert np.array_equal(_read_rows(ds, rows), data[rows])
