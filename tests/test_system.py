"""The Python API: a system opened once serves several runs (real nodes, emulated boards)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (chromium, free_port, needs_chromium, node_processes, ring_segments,
                      wait_for_system_frames, write_topology)
from coordinator.api import System, SystemError

TRACES = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28)]   # the page's first four
from coordinator.topology import TopologyError


def board_topology(**run) -> dict:
    """Two emulated Red Pitayas seeing the same pulses, a spectrum on one processing node."""
    source = {"kind": "redpitaya", "address": "emulator", "decimation": 8, "pretrigger": 128,
              "trigger": {"source": "IN1", "slope": "rising", "level": 0.05}}
    return {
        "topology": 1, "name": "sys",
        "run": {"directory": "runs", "frames": 200, "drain_timeout": 3.0, **run},
        "emulator": {"rate": 1500, "seed": 3, "shared": True, "common_trigger": True},
        "streams": {"pulses": {"samples": 1024, "channels": {"IN1": "int16", "IN2": "int16"}}},
        "acquisition": {"rp1": {"stream": "pulses", "source": source, "ring": {"slots": 64}},
                        "rp2": {"stream": "pulses", "source": source, "ring": {"slots": 64}}},
        "processing": {"proc1": {"pipeline": [
            {"stage": "pha", "channel": "IN1", "height": 0.03, "distance": 8},
            {"stage": "histogram", "name": "spectrum", "field": "height", "bins": [0.0, 1.0, 100]},
            {"stage": "save", "format": "hdf5", "data": "both"}]}},
    }


@pytest.fixture
def topo_path(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)      # node processes work in the test's folder (leak checks)
    return write_topology(tmp_path, board_topology())


def test_runs_in_a_row_reconfigure_only_the_nodes_concerned(topo_path: Path, clean_system) -> None:
    with System(topo_path) as system:
        first = system.run(frames=100)
        pids = {n: v["configured"]["reader_pid"] for n, v in first["nodes"].items() if v["role"] == "acquisition"}
        second = system.run({"acquisition.rp1.source.trigger.level": 0.1}, frames=100)
        third = system.run({"acquisition.rp1.source.trigger.level": 0.1}, frames=100)
        nodes_pids = {n.name: n.pid for n in system._coordinator.nodes.values()}
    runs = [first, second, third]
    assert [r["run"] for r in runs] == [1, 2, 3]
    assert len({r["run_dir"] for r in runs}) == 3
    assert all(r["result"] == "completed" and r["books"]["balanced"] for r in runs), [r["message"] for r in runs]
    for r in runs:     # node processes launched once: the same pids serve every run
        assert {n: v["pid"] for n, v in r["nodes"].items()} == nodes_pids
    # rp1's trigger changed: its reader (board session) was made afresh; rp2 kept its own
    assert second["parameters"]["set_up_afresh"] == ["rp1"]
    assert second["nodes"]["rp2"]["configured"]["reader_pid"] == pids["rp2"]
    assert second["nodes"]["rp1"]["configured"]["reader_pid"] != pids["rp1"]
    assert second["nodes"]["rp1"]["configured"]["hardware"]["trigger_level"] == pytest.approx(0.1, abs=1e-3)
    assert second["nodes"]["rp2"]["configured"]["hardware"]["trigger_level"] == pytest.approx(0.05, abs=1e-3)
    assert third["parameters"]["set_up_afresh"] == []          # same settings as run 2: nothing rebuilt
    assert second["parameters"]["requested"]["overrides"] == {"acquisition.rp1.source.trigger.level": 0.1}
    rec = json.loads((Path(second["run_dir"]) / "run.json").read_text())
    assert rec["parameters"]["requested"]["topology"]["acquisition"]["rp1"]["source"]["trigger"]["level"] == 0.1
    for r in runs:     # each run's files hold that run's events only, seqs from 0
        assert r["books"]["modules"]["rp1"]["produced"] == 100
        assert r["books"]["modules"]["rp1"]["saved"] == 100


class Boom(Exception):
    pass


def test_exception_inside_with_block_shuts_everything_down(topo_path: Path, clean_system) -> None:
    with pytest.raises(Boom):
        with System(topo_path) as system:
            run = system.start(duration=30.0)
            wait_for_system_frames(system, "rp1")
            raise Boom("the user's script failed mid-run")
    summary = run.wait(timeout=1)
    assert summary["stop_reason"] == "stopped" and summary["books"]["balanced"]
    assert summary["books"]["modules"]["rp1"]["produced"] > 0
    assert not [p for p in node_processes() if p.is_running() and p.status() != "zombie"]
    assert not ring_segments(Path.cwd())          # (clean_system checks the same after the test)


def test_bad_override_is_refused_before_the_run(topo_path: Path, clean_system) -> None:
    with System(topo_path) as system:
        with pytest.raises(TopologyError, match=r"acquisition\.rp1\.source\.trigger\.lvl: unknown parameter"):
            system.start({"acquisition.rp1.source.trigger.lvl": 0.1})
        with pytest.raises(TopologyError, match=r"trigger\.level: expected a number"):
            system.start({"acquisition.rp1.source.trigger.level": "high"})
        assert system.runs == []
        assert system.run(frames=20)["result"] == "completed"


def test_a_board_that_refuses_fails_that_run_only(topo_path: Path, clean_system) -> None:
    """A run whose board cannot be set up (here: no board listens at the address given for
    rp2) fails with the board's word; the system carries on with the next run."""
    port = free_port()
    with System(topo_path) as system:
        bad = system.run({"acquisition.rp2.source.address": "127.0.0.1", "acquisition.rp2.source.port": port},
                         frames=50)
        good = system.run(frames=50)
    assert bad["result"] == "failed" and "rp2" in bad["message"] and f"127.0.0.1:{port}" in bad["message"], \
        bad["message"]
    assert good["result"] == "completed" and good["books"]["balanced"], good["message"]
    assert good["books"]["modules"]["rp2"]["saved"] == 50


def test_abort_cuts_the_run_short_and_the_next_one_is_whole(topo_path: Path, clean_system) -> None:
    """An abort is asked for: the run ends `interrupted` with balanced books and without
    error lines; its nodes are launched afresh and the next run completes."""
    with System(topo_path) as system:
        run = system.start(frames=0, duration=60.0)
        wait_for_system_frames(system, "rp1")
        run.abort()
        aborted = run.wait(timeout=30)
        after = system.run(frames=50)
    assert aborted["result"] == "interrupted" and aborted["stop_reason"] == "abort", aborted["message"]
    assert aborted["books"]["balanced"] and aborted["books"]["modules"]["rp1"]["produced"] > 0
    errors = [ln for ln in (run.directory / "log.txt").read_text().splitlines() if " ERROR " in ln]
    assert not errors, errors
    assert after["result"] == "completed" and after["books"]["modules"]["rp1"]["saved"] == 50


def test_pause_resume_and_stop_on_histogram(topo_path: Path, clean_system) -> None:
    with System(topo_path) as system:
        run = system.start(frames=0, duration=60.0)
        wait_for_system_frames(system, "rp1")
        run.pause()
        # changes asked for during the run touch neither the run nor its record
        with pytest.raises(SystemError, match="still in progress"):
            system.start({"acquisition.rp1.source.trigger.level": 0.3})
        topo_path.write_text(topo_path.read_text().replace("level: 0.05", "level: 0.3"))
        time.sleep(0.5)                   # the pause reaches the readers
        during = system.counters()["rp1"]["counters"]["frames"]
        time.sleep(1.5)
        after = system.counters()["rp1"]["counters"]["frames"]
        run.resume()
        time.sleep(1.0)
        run.stop()
        paused = run.wait(timeout=30)
        hist = system.run(frames=0, duration=60.0, until={"histogram": "spectrum", "entries": 300})
    assert after - during <= 1, "frames were acquired during the pause"
    assert paused["pauses"]["count"] == 1 and paused["pauses"]["seconds"] >= 1.5
    assert paused["stop_reason"] == "stopped" and paused["books"]["balanced"]
    assert [s["state"] for s in paused["states"]][-5:] == ["running", "paused", "running", "stopping", "stopped"]
    assert paused["nodes"]["rp1"]["report"]["paused_s"] >= 1.5
    params = paused["parameters"]            # the three sets: asked for, accepted, used
    assert params["requested"]["topology"]["acquisition"]["rp1"]["source"]["trigger"]["level"] == 0.05
    assert params["hardware"]["rp1"]["trigger_level"] == pytest.approx(0.05, abs=1e-3)
    assert params["pipeline"]["proc1"] == ["pha", "histogram", "save"]
    assert hist["parameters"]["requested"]["topology"]["acquisition"]["rp1"]["source"]["trigger"]["level"] == 0.05
    assert hist["stop_reason"] == "histogram spectrum reached 300 entries", hist["stop_reason"]
    assert hist["result"] == "completed" and hist["live_s"] < 60


@needs_chromium
def test_live_view_shows_a_waveform(topo_path: Path, tmp_path: Path, clean_system) -> None:
    """`daq-coordinator view RUN_DIR` on a run in progress: the page in headless Chromium draws
    the boards' waveforms (the first trace's colour) and the spectrum's canvas."""
    from test_view import trace_pixels
    with System(topo_path) as system:
        run = system.start(frames=0, duration=60.0)
        live = run.directory / "live.json"
        deadline = time.monotonic() + 20       # written once every node is configured
        while time.monotonic() < deadline and not live.exists():
            time.sleep(0.1)
        taps = json.loads(live.read_text())["taps"]
        assert set(taps) == {"rp1", "rp2", "proc1"}
        view = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "view", str(run.directory), "--port", "0"],
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            line = view.stderr.readline()
            url = line.split(": ", 1)[1].split()[0]
            png = tmp_path / "view.png"
            chromium(url, tmp_path / "profile", f"--screenshot={png}")
            dom = chromium(url, tmp_path / "profile2", "--dump-dom").decode()
        finally:
            view.send_signal(signal.SIGTERM)
            view.wait(timeout=10)
        run.stop()
        summary = run.wait(timeout=30)
    # the boards see the same pulses, so the traces lie on one another: count every trace colour
    assert sum(trace_pixels(png, rgb) for rgb in TRACES) > 300
    assert 'id="scope-pulses"' in dom and 'id="hist-spectrum"' in dom
    assert not live.exists(), "live.json outlived its run"
    assert summary["books"]["balanced"]
