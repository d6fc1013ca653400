"""Acquire now, process later: `run.process: later` saves raw frames only; `daq-coordinator
process RUN_DIR` gives the outputs on-line processing gives (same seeded frames)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

from conftest import coordinator_cmd, run_cli, run_json, small_topology, write_topology

PIPELINE = [{"stage": "pha", "channel": "IN1", "height": 0.03, "distance": 8},
            {"stage": "histogram", "name": "spectrum", "field": "height", "bins": [0.0, 1.0, 100]},
            {"stage": "save", "format": "hdf5", "data": "both"}]


def topology(**run) -> dict:
    t = small_topology()
    t["run"].update({"frames": 3000, **run})
    t["acquisition"]["synth1"]["source"]["rate"] = 20000
    t["processing"] = {"proc1": {"pipeline": PIPELINE}, "proc2": {"pipeline": PIPELINE}}
    return t


def datasets(run_dir: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(Path(run_dir) / "run.h5") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def by_seq(data: dict[str, np.ndarray], group: str) -> dict[str, np.ndarray]:
    """A table's columns in (seq, position/module) order: two nodes shared the events in
    whatever order they came."""
    cols = {k.rsplit("/", 1)[1]: v for k, v in data.items() if k.startswith(group + "/")}
    keys = [cols[k] for k in ("position", "module") if k in cols][::-1] + [cols["seq"]]
    order = np.lexsort(keys)
    return {k: v[order] for k, v in cols.items() if len(v) == len(order)}


def test_process_later_equals_online(tmp_path: Path, clean_system) -> None:
    res, online = run_json(write_topology(tmp_path, topology(), "online.yaml"))
    assert online and online["result"] == "completed", res.stderr[-2000:]
    res, raw = run_json(write_topology(tmp_path, topology(process="later"), "later.yaml"))
    assert raw and raw["result"] == "completed", res.stderr[-2000:]
    assert raw["parameters"]["pipeline"] == {"proc1": ["save"], "proc2": ["save"]}
    assert [s["stage"] for s in raw["parameters"]["requested"]["topology"]["processing"]["proc1"]["pipeline"]] == \
        ["pha", "histogram", "save"]
    assert "spectrum" not in datasets(raw["run_dir"])         # raw frames only

    res = run_cli("process", raw["run_dir"], "--json", cwd=tmp_path, timeout=120)   # the pipelines asked for
    assert res.returncode == 0, res.stderr[-3000:]
    later = json.loads(res.stdout)
    assert later["result"] == "completed" and later["run"] == 3
    assert later["books"]["saved"] == online["books"]["saved"] == 3000
    a, b = datasets(online["run_dir"]), datasets(later["run_dir"])
    assert np.array_equal(a["entry/spectrum/counts"], b["entry/spectrum/counts"])
    assert a["entry/spectrum/counts"].sum() > 1000
    for group in ("entry/reduced/pulses", "entry/reduced/events", "entry/pulses"):
        ta, tb = by_seq(a, group), by_seq(b, group)
        assert set(ta) == set(tb) and len(ta["seq"]) > 0
        for col in ta:
            assert np.array_equal(ta[col], tb[col]), (group, col)

    # another pipeline over the same run, from a file: one histogram with other bins
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"pipeline": [PIPELINE[0], {**PIPELINE[1], "bins": [0.0, 1.0, 10]},
                                                 {"stage": "save", "format": "hdf5", "data": "reduced"}]}))
    res = run_cli("process", raw["run_dir"], "--pipeline", str(pipe), "--json", cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    coarse = datasets(json.loads(res.stdout)["run_dir"])["entry/spectrum/counts"]
    assert len(coarse) == 10 and coarse.sum() == a["entry/spectrum/counts"].sum()


def test_a_new_acquisition_runs_while_an_earlier_run_is_processed(tmp_path: Path, clean_system) -> None:
    """`process` is a run of its own (its own control port, its own run number): an
    acquisition into the same runs folder goes on meanwhile, and both end whole."""
    res, raw = run_json(write_topology(tmp_path, topology(process="later"), "later.yaml"))
    assert raw and raw["result"] == "completed", res.stderr[-2000:]
    acq_topo = write_topology(tmp_path, topology(frames=None, duration=8.0), "online.yaml")
    acquiring = subprocess.Popen(coordinator_cmd("run", str(acq_topo), "--json"), cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list((tmp_path / "runs").glob("*/live.json")):
            assert acquiring.poll() is None, acquiring.stderr.read()[-2000:]
            time.sleep(0.1)
        res = run_cli("process", raw["run_dir"], "--json", cwd=tmp_path, timeout=120)
        still_acquiring = acquiring.poll() is None
        out, err = acquiring.communicate(timeout=60)
    finally:
        if acquiring.poll() is None:
            acquiring.kill()
            acquiring.communicate()
    assert res.returncode == 0, res.stderr[-3000:]
    later, online = json.loads(res.stdout), json.loads(out)
    assert still_acquiring, "the processing did not overlap the acquisition"
    assert later["result"] == "completed" and later["books"]["saved"] == 3000 and later["books"]["balanced"]
    assert online["result"] == "completed" and online["stop_reason"] == "duration", err[-2000:]
    assert online["books"]["balanced"] and online["books"]["saved"] > 0
    assert sorted([raw["run"], online["run"], later["run"]]) == [1, 2, 3]


def test_process_refuses_what_it_cannot_replay(tmp_path: Path) -> None:
    res = run_cli("process", str(tmp_path), cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "no run.json" in res.stderr
