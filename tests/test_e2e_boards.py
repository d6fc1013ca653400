"""`daq-coordinator run` on emulated Red Pitaya boards: the default topology end to end, and
boards that are not there."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import (child_process, run_cli, run_disturbed, run_json, small_topology, wait_for_frames,
                      write_topology)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("clean_system")


def frames_by_module(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, list]] = {}
    for f in sorted(run_dir.glob("proc*.h5")):
        with h5py.File(f, "r") as h:
            g = h["entry/pulses"]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g["module"].attrs["names"]]
            module = g["module"][()]
            for i, name in enumerate(names):
                sel = module == i
                for field in ("seq", "timestamp", "IN1", "IN2"):
                    out.setdefault(name, {}).setdefault(field, []).append(g[field][()][sel])
    return {m: {k: np.concatenate(v) for k, v in d.items()} for m, d in out.items()}


def test_default_topology_runs_on_two_emulated_boards(tmp_path):
    topo = tmp_path / "loopback.yaml"
    shutil.copy(ROOT / "topologies" / "loopback.yaml", topo)
    res, summary = run_json(topo, "--frames", "150", timeout=120)
    assert res.returncode == 0, res.stderr
    assert summary["result"] == "completed"
    books = summary["books"]
    assert books["produced"] == 300 and books["saved"] == 300 and books["balanced"], books
    run_dir = Path(summary["run_dir"])
    record = json.loads((run_dir / "run.json").read_text())
    for board in ("rp1", "rp2"):
        hw = record["parameters"]["hardware"][board]
        assert hw["decimation"] == 8 and hw["trigger_delay"] == 0 and hw["idn"]
        assert abs(hw["trigger_level"] - 0.05) < 1e-6
    frames = frames_by_module(run_dir)
    assert sorted(frames) == ["rp1", "rp2"]
    level = 0.05 * 8192
    noise = 0.002 * 8192
    for board, f in frames.items():
        assert sorted(f["seq"].tolist()) == list(range(150)), board
        order = np.argsort(f["seq"])
        wave = f["IN1"][order].astype(np.int32)
        # every frame holds the trigger's pulse at the trigger index (pretrigger 512): rp1 triggers,
        # rp2 is triggered with it (common trigger) and sees the same pulse with its own noise
        margin = 0 if board == "rp1" else 6 * noise
        assert (wave.max(axis=1) >= level - margin).all(), board
        crossing = np.argmax(wave >= level - margin, axis=1)
        assert np.isin(crossing, np.arange(506, 516)).mean() > 0.95, np.unique(crossing)[:10]
    a, b = (frames[m]["IN1"][np.argsort(frames[m]["seq"])].astype(np.int32) for m in ("rp1", "rp2"))
    assert np.abs(a[:, 512:600] - b[:, 512:600]).max() < 12 * noise     # the same event on both boards


def test_unreachable_board_fails_the_start_naming_it(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        topo = small_topology(**{"acquisition.synth1.source": {
            "kind": "redpitaya", "address": "127.0.0.1", "port": port, "link": {"timeout": 0.5}}})
        res = run_cli("run", str(write_topology(tmp_path, topo)), cwd=tmp_path, timeout=60)
    assert res.returncode != 0
    assert f"127.0.0.1:{port}" in res.stdout + res.stderr


def test_mcpha_board_end_to_end(tmp_path):
    topo = small_topology(**{
        "run.frames": 200,
        "streams.pulses": {"samples": 1024, "channels": {"IN1": "int16", "IN2": "int16"}},
        "acquisition.synth1.source": {"kind": "mcpha", "address": "emulator", "pretrigger": 100,
                                      "waveforms": 16, "trigger": {"level": 400}},
        "emulator": {"rate": 3000, "seed": 2}})
    res, summary = run_json(write_topology(tmp_path, topo), timeout=120)
    assert res.returncode == 0, res.stderr
    assert summary["books"]["saved"] == 200 and summary["books"]["balanced"]
    f = frames_by_module(Path(summary["run_dir"]))["synth1"]
    assert (f["IN1"][:, 100:130].max(axis=1) >= 400).mean() > 0.95


def one_emulated_board(give_up_after: float, **run) -> dict:
    """One emulated Red Pitaya with a fast link (outages noticed within 0.3 s)."""
    return small_topology(**{
        **{f"run.{k}": v for k, v in run.items()},
        "streams.pulses": {"samples": 1024, "channels": {"IN1": "int16"}},
        "acquisition.synth1.source": {"kind": "redpitaya", "address": "emulator", "pretrigger": 100,
                                      "trigger": {"level": 0.05},
                                      "link": {"timeout": 0.3, "retry_interval": 0.2,
                                               "give_up_after": give_up_after}},
        "emulator": {"rate": 1000, "seed": 4}})


def test_board_that_stops_answering_costs_source_error_and_the_run_goes_on(tmp_path):
    topo = one_emulated_board(20, frames=600, drain_timeout=5.0)

    def stall_the_board(proc) -> None:
        emulator = child_process(proc.pid, "coordinator.emulated")
        wait_for_frames(tmp_path / "runs", "synth1", 50)      # frames are flowing
        os.kill(emulator.pid, signal.SIGSTOP)     # the board stops answering
        time.sleep(1.5)
        os.kill(emulator.pid, signal.SIGCONT)

    code, summary, err = run_disturbed(write_topology(tmp_path, topo), stall_the_board)
    assert code == 0, err[-3000:]
    books = summary["books"]
    assert books["missing_by_cause"].get("source_error", 0) > 0, books
    assert books["balanced"] and books["produced"] >= 600
    report = summary["nodes"]["synth1"]["report"]["source"]
    assert report["outages"] and report["outages"][0]["seconds"] > 0.5


def test_a_board_given_up_on_leaves_its_outage_in_the_record(tmp_path):
    """The board stays silent past give_up_after: the node stops reading it, says so, and the
    outage's estimated frames are in the books as source_error (not silently absent)."""
    topo = one_emulated_board(1.0, frames=None, duration=20.0, drain_timeout=3.0)

    def silence_the_board(proc) -> None:
        emulator = child_process(proc.pid, "coordinator.emulated")
        wait_for_frames(tmp_path / "runs", "synth1", 50)
        os.kill(emulator.pid, signal.SIGSTOP)     # silent for good (the coordinator ends it at the end)

    code, summary, err = run_disturbed(write_topology(tmp_path, topo), silence_the_board, timeout=60)
    assert summary["stop_reason"] == "sources ended", err[-3000:]     # it did not wait for the duration
    books = summary["books"]
    assert books["balanced"] and books["missing_by_cause"].get("source_error", 0) > 0, books
    errors = " ".join(summary["nodes"]["synth1"]["errors"])
    assert "has not answered for 1 s" in errors and "giving up" in errors, errors
    outages = summary["nodes"]["synth1"]["report"]["source"]["outages"]
    assert outages and outages[-1]["ongoing_at_end"] and outages[-1]["seconds"] >= 1.0
