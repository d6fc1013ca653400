"""Bad input and faults on a real system: each ends with a clear message and nothing left behind."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from coordinator import PROTOCOL_VERSION
from conftest import free_port, run_disturbed, run_json, small_topology, write_topology
from test_e2e import assert_books_by_seq

pytestmark = pytest.mark.usefixtures("clean_system")


@pytest.mark.parametrize("point", ["start", "configure"])
def test_node_process_that_exits_during_startup(tmp_path, point):
    res, summary = run_json(write_topology(tmp_path, small_topology()), env={"DAQ_FAULT": f"{point}:proc2"})
    assert res.returncode == 1
    assert summary["result"] == "failed"
    assert "proc2" in summary["message"] and "exited with status 3" in summary["message"]
    run_dir = Path(summary["run_dir"])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["states"][-1]["state"] == "fault"
    assert "injected fault" in (run_dir / "log.txt").read_text()


def test_control_port_in_use(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        res, summary = run_json(write_topology(tmp_path, small_topology(**{"control.port": port})))
    assert res.returncode == 1
    assert f"127.0.0.1:{port}" in summary["message"] and "in use" in summary["message"]


def test_data_port_in_use(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        topo = small_topology(**{"acquisition.synth1.data_port": port})
        res, summary = run_json(write_topology(tmp_path, topo))
    assert res.returncode == 1
    assert "synth1" in summary["message"] and "cannot bind data socket" in summary["message"]
    assert str(port) in summary["message"]


def _wait_for_frames(run_dir_parent: Path, proc: subprocess.Popen, minimum: int, timeout: float = 30) -> Path:
    """Wait (bounded) until the running system has produced `minimum` frames, per stats.csv."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for stats in run_dir_parent.glob("*/stats.csv"):
            rows = stats.read_text().splitlines()[1:]
            if any(r.split(",")[1] == "synth1" and int(r.split(",")[4]) >= minimum for r in rows):
                return stats.parent
        time.sleep(0.1)
    raise AssertionError("the run produced no frames in time")


def disturbed_run(tmp_path: Path, topo: dict, extra: tuple, after_frames: int, action,
                  timeout: float = 60) -> tuple[int, dict | None, str]:
    """Run the coordinator, do `action(proc)` once `after_frames` frames exist, collect the result."""
    def act(proc: subprocess.Popen) -> None:
        _wait_for_frames(tmp_path / "runs", proc, after_frames)
        action(proc)

    return run_disturbed(write_topology(tmp_path, topo), act, *extra, timeout=timeout)


def test_ctrl_c_keeps_data_and_records_interrupted(tmp_path):
    topo = small_topology(**{"run.frames": None, "acquisition.synth1.source.rate": 2000})
    code, summary, err = disturbed_run(tmp_path, topo, (), 200, lambda p: p.send_signal(signal.SIGINT))
    assert code == 130, err
    assert summary["result"] == "interrupted" and summary["stop_reason"] == "interrupted"
    run_dir = Path(summary["run_dir"])
    assert json.loads((run_dir / "run.json").read_text())["result"] == "interrupted"
    produced = summary["books"]["produced"]
    saved, missing = assert_books_by_seq(run_dir, produced)
    assert produced >= 200 and len(saved) == produced    # an orderly stop drains everything


def test_garbage_on_control_and_data_sockets(tmp_path):
    control_port, data_port = free_port(), free_port()
    topo = small_topology(**{"run.frames": None, "acquisition.synth1.source.rate": 2000,
                             "control.port": control_port, "acquisition.synth1.data_port": data_port})
    rng = np.random.default_rng(1)
    v = PROTOCOL_VERSION
    garbage = [b"", b"\x00" * 10, rng.bytes(100), msgpack.packb([1, 2, 3]), msgpack.packb({"v": 99, "t": "stats"}),
               msgpack.packb({"v": v, "t": "nonsense"}), msgpack.packb({"v": v, "t": "stats", "state": 5}),
               msgpack.packb({"v": v, "t": "credit", "n": 10**6, "run": 1}),
               msgpack.packb({"v": v, "t": "frames", "run": 1, "stream": "pulses", "module": "synth1",
                              "n": 1, "first": 0, "last": 0, "itemsize": 3})]

    def fire(proc: subprocess.Popen) -> None:
        """Connect as strangers (and as a node that is already connected) and send garbage."""
        with zmq.Context() as ctx:
            socks = []
            for ident, port in ((b"intruder-0", control_port), (b"synth1", control_port),
                                (b"intruder-2", data_port), (b"mallory", data_port)):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.IDENTITY, ident)
                s.setsockopt(zmq.LINGER, 0)
                s.connect(f"tcp://127.0.0.1:{port}")
                socks.append(s)
            time.sleep(0.3)
            for s in socks:
                for g in garbage:
                    s.send(g)
                s.send_multipart([b"a", b"b", b"c"])
            time.sleep(0.3)
            for s in socks:
                s.close()

    code, summary, err = disturbed_run(tmp_path, topo, ("--duration", "4"), 100, fire)
    assert code == 0, err
    assert summary["control"]["rejected"] >= len(garbage)
    assert summary["nodes"]["synth1"]["report"]["rejected"] >= len(garbage)
    assert summary["nodes"]["synth1"]["errors"] == [] and summary["result"] == "completed"
    produced = summary["books"]["produced"]
    saved, _ = assert_books_by_seq(Path(summary["run_dir"]), produced)
    assert len(saved) == produced


def _node_pid(name: str, folder: Path, timeout: float = 10) -> int:
    """pid of the node process `name` running in `folder` (bounded wait)."""
    import psutil
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline", "cwd", "pid"]):
            cmd = p.info["cmdline"] or []
            if "--name" in cmd and cmd[cmd.index("--name") + 1] == name \
                    and str(p.info["cwd"] or "").startswith(str(folder)):
                return p.info["pid"]
        time.sleep(0.1)
    raise AssertionError(f"no process for node {name}")


@pytest.mark.parametrize("policy, code, result", [("continue", 3, "degraded"), ("abort", 1, "failed")])
def test_processing_node_killed_mid_run(tmp_path, policy, code, result):
    topo = small_topology(**{"run.frames": None, "run.on_node_loss": policy,
                             "acquisition.synth1.source.rate": 3000})
    code_, summary, err = disturbed_run(tmp_path, topo, ("--duration", "4"), 1500,
                                        lambda p: os.kill(_node_pid("proc1", tmp_path), signal.SIGKILL))
    assert code_ == code, err
    assert summary["result"] == result and "proc1" in summary["message"]
    assert summary["nodes"]["proc1"]["lost"] and not summary["nodes"]["proc2"]["lost"]
    produced = summary["books"]["produced"]
    saved, missing = assert_books_by_seq(Path(summary["run_dir"]), produced)
    assert set(missing) <= {"node_lost"}
    # what proc1 had flushed before it died is kept, and proc2 carried on
    assert summary["books"]["saved"] == len(saved) > 0
    if policy == "continue":
        assert summary["stop_reason"] == "duration"
        assert summary["nodes"]["proc2"]["report"]["received"]["synth1"] > 0


def test_acquisition_node_killed_mid_run(tmp_path):
    topo = small_topology(**{"run.frames": None, "acquisition.synth1.source.rate": 3000})
    code, summary, err = disturbed_run(tmp_path, topo, ("--duration", "20"), 1000,
                                       lambda p: os.kill(_node_pid("synth1", tmp_path), signal.SIGKILL))
    assert code == 3, err
    assert summary["result"] == "degraded" and summary["nodes"]["synth1"]["lost"]
    assert summary["stop_reason"] == "sources ended"   # no source left: the run ends, it does not hang
    produced = summary["books"]["produced"]
    saved, missing = assert_books_by_seq(Path(summary["run_dir"]), produced)
    assert len(saved) > 0 and set(missing) <= {"node_lost"}
    # the clean_system fixture checks that the reader died with its node and the ring segment is gone


def test_coordinator_killed_leaves_no_node_and_no_segment(tmp_path):
    topo = small_topology(**{"run.frames": None, "acquisition.synth1.source.rate": 2000})
    disturbed_run(tmp_path, topo, (), 200, lambda p: p.kill(), timeout=10)
    # Nodes get SIGUSR1 from the kernel (parent-death signal), end the run alone and clean up; the fixture checks
    # that no process or segment is left. Their files were closed properly: a plain (non-SWMR)
    # open works only when the writer cleared its flags, and the frames acquired so far are there.
    import h5py
    from conftest import orphan_nodes
    deadline = time.monotonic() + 10
    while orphan_nodes(0, tmp_path) and time.monotonic() < deadline:   # nodes finish their cleanup
        time.sleep(0.05)
    assert not orphan_nodes(0, tmp_path)
    run_dir = next((tmp_path / "runs").iterdir())
    saved = 0
    for name in ("proc1.h5", "proc2.h5"):
        with h5py.File(run_dir / name, "r") as f:
            saved += f["entry/pulses/seq"].shape[0]
    assert saved >= 100


def test_remote_hosts_without_loopback_are_refused_before_start(tmp_path):
    topo = small_topology(**{"run.frames": 200,
                             "hosts": {"daq1": {"address": "192.0.2.11", "launch": "ssh"}},
                             "acquisition.synth1.host": "daq1"})
    topo_path = write_topology(tmp_path, topo)
    res, summary = run_json(topo_path)
    assert res.returncode == 1
    assert "daq1" in summary["message"] and "--loopback" in summary["message"]
    assert all(n["pid"] is None for n in summary["nodes"].values())   # nothing was started
    # the same topology runs on this machine with --loopback
    res, summary = run_json(topo_path, "--loopback")
    assert res.returncode == 0, res.stderr
    assert summary["books"]["saved"] == 200
