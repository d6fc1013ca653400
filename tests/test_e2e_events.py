"""Event building, chains and user stages end to end: real processes, sockets and files."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from coordinator.frames import FLAG_INCOMPLETE
from conftest import child_process, run_disturbed, run_json, wait_for_frames, write_topology

pytestmark = pytest.mark.usefixtures("clean_system")


def two_modules(frames: int = 1500, **procs) -> dict:
    """Two synthetic acquisition nodes on one event timeline (same seed) -> two event builders."""
    return {
        "topology": 1, "name": "ev",
        "run": {"directory": "runs", "frames": frames, "drain_timeout": 5.0, "heartbeat_timeout": 5.0},
        "streams": {"pulses": {"samples": 512, "channels": {"IN1": "int16"}, "modules": ["a1", "a2"],
                               "dispatch_block": 32}},
        "acquisition": {n: {"stream": "pulses", "ring": {"slots": 64},
                            "source": {"kind": "synthetic", "rate": 2000, "seed": 9}} for n in ("a1", "a2")},
        "processing": procs or {"p1": {}, "p2": {}},
    }


def events_of(run_dir: Path) -> dict[int, int]:
    """seq -> present mask of every event saved by any processing node."""
    out: dict[int, int] = {}
    for f in sorted(run_dir.glob("p*.h5")):
        with h5py.File(f, "r") as h:
            ev = h["entry/reduced/events"]
            for s, p, fl in zip(ev["seq"][()], ev["present"][()], ev["flags"][()]):
                assert int(s) not in out, f"event {s} saved twice"
                assert bool(fl & FLAG_INCOMPLETE) == (p != 3)
                out[int(s)] = int(p)
    return out


def test_every_event_is_complete_and_meets_on_one_node(tmp_path):
    res, summary = run_json(write_topology(tmp_path, two_modules()))
    assert res.returncode == 0, res.stderr
    books = summary["books"]
    assert books["balanced"] and books["missing"] == 0 and books["saved"] == 3000
    events = events_of(Path(summary["run_dir"]))
    assert sorted(events) == list(range(1500)) and set(events.values()) == {3}
    reports = [summary["nodes"][p]["report"]["events"] for p in ("p1", "p2")]
    assert sum(r["complete"] for r in reports) == 1500 and all(r["incomplete"] == 0 for r in reports)
    assert all(r["time_mismatch"] == [] for r in reports)     # same timeline: same timestamps
    assert all(r["complete"] > 0 for r in reports)            # the schedule used both nodes
    with h5py.File(Path(summary["run_dir"]) / "p1.h5") as h:  # the two parts of an event side by side
        raw = h["entry/pulses"]
        seq, module = raw["seq"][()], raw["module"][()]
        assert np.array_equal(np.sort(seq[module == 0]), np.sort(seq[module == 1]))


def test_delayed_and_dropped_parts_make_exactly_recorded_incomplete_events(tmp_path):
    topo = two_modules(frames=6000, p1={"events": {"timeout": 0.3}}, p2={"events": {"timeout": 0.3}})
    topo["acquisition"]["a2"]["ring"] = {"slots": 32, "policy": "drop"}

    def stall_a2(proc) -> None:
        node = child_process(proc.pid, "acqnode", "--name a2")
        wait_for_frames(tmp_path / "runs", "a2", 200)      # events are flowing
        os.kill(node.pid, signal.SIGSTOP)      # a2 ships nothing: its parts are delayed, its ring overflows
        time.sleep(1.2)
        os.kill(node.pid, signal.SIGCONT)

    code, summary, err = run_disturbed(write_topology(tmp_path, topo), stall_a2)
    assert code == 0, err[-3000:]
    books = summary["books"]
    assert books["balanced"], books
    events = events_of(Path(summary["run_dir"]))
    incomplete = {s for s, p in events.items() if p != 3}
    assert incomplete and all(events[s] == 1 for s in incomplete)     # always a2's part that is missing
    missing_a2 = {}
    assert sum(summary["nodes"][p]["report"]["events"]["incomplete"] for p in ("p1", "p2")) == len(incomplete)
    for line in (Path(summary["run_dir"]) / "missing.csv").read_text().splitlines()[1:]:
        first, last, _, module, cause = line.split(",")[:5]
        for s in range(int(first), int(last) + 1):
            missing_a2.setdefault(module, {})[s] = cause
    # every incomplete event is exactly an event whose a2 part is in the record, with its cause
    assert set(missing_a2.get("a2", {})) == incomplete
    assert "a1" not in missing_a2
    causes = set(missing_a2["a2"].values())
    assert causes <= {"ring_overrun", "incomplete_event"} and "ring_overrun" in causes
    late = sum(summary["nodes"][p]["report"]["events"]["late_parts"] for p in ("p1", "p2"))
    timed_out = [s for s, c in missing_a2["a2"].items() if c == "incomplete_event"]
    assert late == len(timed_out)          # parts that came after their event left: counted, not mixed in


STAGE_FILE = '''
import numpy as np

def energy(batch, params):
    """Sum of each waveform above a baseline: a table with one row per event."""
    x = batch.volts("a1.IN1")
    total = np.clip(x - params["baseline"], 0, None).sum(axis=1)
    if params.get("fail_every") and (batch.seq % params["fail_every"] == 3).any():
        raise RuntimeError("cannot handle this event")
    batch.add_table("energy", seq=batch.seq, total=total)
'''


def test_two_stage_chain_with_a_user_stage_from_a_file(tmp_path):
    (tmp_path / "mystage.py").write_text(STAGE_FILE)
    topo = two_modules(frames=800, front={
        "pipeline": [{"stage": "user", "file": "mystage.py", "function": "energy", "name": "energy",
                      "params": {"baseline": 0.0, "fail_every": 50}},
                     {"stage": "pha", "channel": "a1.IN1", "height": 0.05},
                     {"stage": "filter", "pulses": {"min_count": 1}},
                     {"stage": "forward", "to": "back", "data": "both"}]},
        back={"pipeline": [{"stage": "histogram", "field": "total", "table": "energy", "bins": [0, 50, 50]},
                           {"stage": "save", "data": "reduced"}]})
    res, summary = run_json(write_topology(tmp_path, topo))
    assert res.returncode == 0, res.stderr
    books = summary["books"]
    causes = books["missing_by_cause"]
    assert books["balanced"] and books["saved"] > 0
    failed = {s for s in range(800) if s % 50 == 3}
    assert causes["stage_error"] == 2 * len(failed)                   # both parts of each such event
    assert books["saved"] + causes["vetoed"] + causes["stage_error"] == 1600
    front, back = summary["nodes"]["front"]["report"], summary["nodes"]["back"]["report"]
    assert front["forward_counts"]["back"] == back["received"]["front"]
    with h5py.File(Path(summary["run_dir"]) / "back.h5") as h:
        energy, ev = h["entry/reduced/energy"], h["entry/reduced/events"]
        assert len(ev["seq"]) == front["forward_counts"]["back"]
        assert not set(ev["seq"][()].tolist()) & failed
        assert np.array_equal(np.sort(energy["seq"][()]), np.sort(ev["seq"][()]))
        assert h["entry/total/counts"][()].sum() + h["entry/total/counts"].attrs["overflow"] \
            + h["entry/total/counts"].attrs["underflow"] == len(ev["seq"])
    errors = summary["nodes"]["front"]["errors"]
    assert errors and "stage 0:user raised on event seq 3" in errors[0]


def test_a_stage_that_raises_stops_the_run_when_told_to(tmp_path):
    (tmp_path / "mystage.py").write_text(STAGE_FILE)
    topo = two_modules(frames=400, p1={"on_stage_error": "stop", "pipeline": [
        {"stage": "user", "file": "mystage.py", "function": "energy", "params": {"baseline": 0.0, "fail_every": 7}},
        {"stage": "save"}]})
    res, summary = run_json(write_topology(tmp_path, topo))
    assert res.returncode == 1
    assert "stage 0:user raised on event seq 3" in summary["message"] and "on_stage_error: stop" in summary["message"]
    assert summary["books"]["balanced"]


def test_three_stage_chain_carries_cropped_and_decimated_waveforms_with_their_axes(tmp_path):
    """front saves full waveforms, crops and decimates, forwards raw only; mid finds pulses on
    what it got and forwards both; back saves: its waveforms are front's, cropped and
    decimated, its time axis says so, and front's table never reached it."""
    topo = two_modules(frames=600, front={"pipeline": [
        {"stage": "pha", "channel": "IN1", "height": 0.05},
        {"stage": "save", "data": "raw"},
        {"stage": "crop", "start_ns": -100, "stop_ns": 1000},
        {"stage": "decimate", "factor": 4},
        {"stage": "forward", "to": "mid", "data": "raw"}]},
        mid={"pipeline": [{"stage": "pha", "channel": "IN1", "height": 0.05},
                          {"stage": "forward", "to": "back"}]},
        back={"pipeline": [{"stage": "save", "data": "both"}]})
    topo["streams"]["pulses"].update(modules=["a1"])
    del topo["acquisition"]["a2"]
    topo["processing"] = {k: topo["processing"][k] for k in ("back", "mid", "front")}   # any order
    res, summary = run_json(write_topology(tmp_path, topo))
    assert res.returncode == 0, res.stderr
    books = summary["books"]
    assert books["balanced"] and books["saved"] == 600 and books["missing"] == 0
    # 512 samples of 8 ns, 64 before the trigger: t0 = -512 ns; crop keeps [-96, 1000) ns = 137
    # samples; 4 -> 1 keeps 34 samples of 32 ns, each at the centre of its 4: t0 = -96 + 12 ns
    run_dir = Path(summary["run_dir"])
    with h5py.File(run_dir / "front.h5") as f, h5py.File(run_dir / "back.h5") as b:
        raw = b["entry/pulses"]
        assert raw["IN1"].shape == (600, 34)
        assert np.allclose(raw["time"][()], -84.0 + 32.0 * np.arange(34))
        full = f["entry/pulses"]
        order_f, order_b = np.argsort(full["seq"][()]), np.argsort(raw["seq"][()])
        assert np.array_equal(full["seq"][()][order_f], raw["seq"][()][order_b])
        cropped = full["IN1"][()][order_f][:, 52:52 + 136].reshape(600, 34, 4).astype(np.float64)
        assert np.array_equal(np.rint(cropped.mean(axis=2)).astype(np.int16), raw["IN1"][()][order_b])
        pulses = b["entry/reduced/pulses"]
        assert len(pulses["seq"]) > 0 and pulses["position"][()].max() < 34    # found on the 34 samples
        assert "pulses" not in f["entry/reduced"]        # front saved raw only
        rows = list(zip(pulses["seq"][()].tolist(), pulses["position"][()].tolist()))
        assert len(rows) == len(set(rows))       # front's pulses (data: raw) were not sent as well
