"""One topology on several hosts: network-namespace hosts made by the test (tests/testnet.py),
nodes launched there by a command template, sockets bound on each host's own address."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import psutil
import pytest

from conftest import coordinator_cmd, free_port, on_hosts, run_json, write_topology
from testnet import Sshd, TestNetError, ssh_client

pytestmark = pytest.mark.usefixtures("clean_system")

HOSTS = ("ctl", "acq1", "acq2", "proc1", "proc2")


def cluster(net, frames: int = 600, **run) -> dict:
    """Two boards on two acquisition hosts, two processing hosts; the coordinator (and the
    emulated boards) on `ctl`."""
    return on_hosts({
        "topology": 1, "name": "cluster",
        "run": {"directory": "runs", "frames": frames, **run},
        "emulator": {"rate": 2000, "seed": 4, "common_trigger": True},
        "streams": {"pulses": {"samples": 1024, "channels": {"IN1": "int16"}, "modules": ["rp1", "rp2"]}},
        "acquisition": {rp: {"stream": "pulses",
                             "source": {"kind": "redpitaya", "address": "emulator", "decimation": 8,
                                        "trigger": {"source": "IN1", "slope": "rising", "level": 0.05}}}
                        for rp in ("rp1", "rp2")},
        "processing": {p: {"events": {"time_tolerance_ns": 2e7},
                           "pipeline": [{"stage": "pha", "channel": "IN1", "height": 0.05},
                                        {"stage": "save", "data": "both"}]} for p in ("proc1", "proc2")},
    }, net, {"rp1": "acq1", "rp2": "acq2", "proc1": "proc1", "proc2": "proc2"})


@pytest.mark.hosts(*HOSTS)
def test_two_acquisition_and_two_processing_hosts(tmp_path, testnet):
    res, summary = run_json(write_topology(tmp_path, cluster(testnet)), wrap=testnet.exec_prefix("ctl"))
    assert res.returncode == 0, res.stderr[-3000:]
    books = summary["books"]
    assert books["balanced"] and books["saved"] == 1200 and books["missing"] == 0
    for name in ("rp1", "rp2"):
        # a node can bind only an address of its own namespace: it ran on its host
        node = summary["nodes"][name]
        assert node["configured"]["endpoint"].startswith(f"tcp://{testnet.addresses[node['host']]}:"), name
    assert {summary["nodes"][n]["host"] for n in summary["nodes"]} == set(HOSTS) - {"ctl"}
    events = 0
    for p in ("proc1", "proc2"):
        with h5py.File(Path(summary["run_dir"]) / f"{p}.h5") as f:
            ev = f["entry/reduced/events"]
            assert set(ev["present"][()].tolist()) == {3}     # both boards' parts met on this host
            events += len(ev["seq"])
    assert events == 600
    # the processing hosts share this file system here: their files are used where they are
    assert {p["where"] for p in summary["files"].values()} == {"in place"} and len(summary["files"]) == 2


@pytest.mark.hosts(*HOSTS)
def test_nodes_started_over_ssh_and_their_files_fetched(tmp_path, testnet):
    """`launch: ssh` for real: an OpenSSH server on acq2 and on proc2 (logins by key, the
    client's configuration given to plain `ssh` as a user's ~/.ssh/config would be).  proc2's
    server sees its own empty folder where the run directory is, as a separate computer
    would, so proc2's file reaches the run directory only by `ssh proc2 cat`; the run's
    master file then shows all 600 events."""
    (tmp_path / "runs").mkdir()
    servers: dict[str, Sshd] = {}
    try:
        for h in ("acq2", "proc2"):
            servers[h] = Sshd(testnet, h, tmp_path / f"ssh-{h}", private=(tmp_path / "runs",) if h == "proc2" else ())
            servers[h].start()
        topo = cluster(testnet)
        for h in servers:       # the client finds its key and the server's host key in ssh_config
            topo["hosts"][h] = {"address": testnet.addresses[h], "launch": "ssh", "python": sys.executable}
            assert servers[h].ssh_config.read_text().startswith(f"Host {testnet.addresses[h]}")
        client = ssh_client(tmp_path / "ssh-client", list(servers.values()))
        res, summary = run_json(write_topology(tmp_path, topo), wrap=testnet.exec_prefix("ctl"),
                                env={"PATH": f"{client}:{os.environ['PATH']}"})
        assert res.returncode == 0, res.stderr[-3000:]
        books = summary["books"]
        assert books["balanced"] and books["saved"] == 1200 and books["missing"] == 0
        for name, host in (("rp2", "acq2"), ("proc2", "proc2")):     # started through ssh
            node = summary["nodes"][name]
            assert node["host"] == host and node["exit_code"] == 0, node
        # rp2 bound its data socket on acq2's address, so it ran there (proc2's file shows it of proc2)
        assert summary["nodes"]["rp2"]["configured"]["endpoint"].startswith(f"tcp://{testnet.addresses['acq2']}:")
        run_dir = Path(summary["run_dir"])
        files = summary["files"]
        assert files[str(run_dir / "proc1.h5")]["where"] == "in place"
        fetched = files[str(run_dir / "proc2.h5")]
        assert fetched == {"host": "proc2", "where": "fetched", "from": str(run_dir / "proc2.h5")}, files
        with h5py.File(run_dir / "run.h5") as f:       # the master file reads both nodes' events
            assert len(f["entry/reduced/events/seq"]) == 600
            assert sorted(f["entry/reduced/events/seq"][()].tolist()) == list(range(600))
        for s in servers.values():   # nothing of the run left on the ssh hosts
            assert [p.cmdline() for p in psutil.Process(s.proc.pid).children(recursive=True)] == []
    except TestNetError as exc:         # no sshd here (.ci/run installs openssh-server)
        pytest.skip(str(exc))
    finally:
        for s in servers.values():
            s.stop()


def test_hosts_that_cannot_reach_a_loopback_coordinator_are_refused(tmp_path):
    topo = {"topology": 1, "name": "far", "run": {"directory": "runs", "frames": 10},
            "hosts": {"far": {"address": "10.250.0.9", "launch": "ip netns exec nowhere {command}"}},
            "streams": {"s": {"samples": 64, "channels": {"IN1": "int16"}}},
            "acquisition": {"a": {"host": "far", "stream": "s", "source": {"kind": "synthetic"}}},
            "processing": {"p": {"pipeline": [{"stage": "drain"}]}}}
    res, summary = run_json(write_topology(tmp_path, topo))
    assert res.returncode == 1
    assert "cannot reach the coordinator at 127.0.0.1" in summary["message"] and "control.address" in summary["message"]
    assert all(n["pid"] is None for n in summary["nodes"].values())


def test_a_node_started_by_hand_joins_the_run(tmp_path):
    """`launch: manual`: the coordinator says what to start where and waits; the operator's
    node joins, the run completes, and the node leaves when the run ends."""
    port = free_port()
    topo = {"topology": 1, "name": "manual", "run": {"directory": "runs", "frames": 300},
            "control": {"address": "127.0.0.1", "port": port},
            "hosts": {"bench": {"address": "127.0.0.1", "launch": "manual"}},
            "streams": {"s": {"samples": 256, "channels": {"IN1": "int16"}}},
            "acquisition": {"a": {"host": "bench", "stream": "s", "source": {"kind": "synthetic", "rate": 3000}}},
            "processing": {"p": {"pipeline": [{"stage": "save"}]}}}
    path = write_topology(tmp_path, topo)
    coord = subprocess.Popen(coordinator_cmd("run", str(path), "--json"), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    node = None
    try:
        deadline = time.monotonic() + 20
        log = None
        while log is None and time.monotonic() < deadline:
            log = next((tmp_path / "runs").glob("*/log.txt"), None) if (tmp_path / "runs").exists() else None
            time.sleep(0.05)
        command = f"--coordinator tcp://127.0.0.1:{port} --name a"
        while command not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert command in log.read_text()          # the operator is told what to start
        node = subprocess.Popen([sys.executable, "-m", "acqnode", *command.split()], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out, err = coord.communicate(timeout=60)
        assert coord.returncode == 0, err[-3000:]
        assert node.wait(timeout=10) == 0          # it left with the run
    finally:
        for p in (coord, node):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    summary = json.loads(out)
    assert summary["books"]["saved"] == 300 and summary["nodes"]["a"]["pid"] == node.pid


def test_a_node_nobody_starts_by_hand_is_named(tmp_path):
    topo = {"topology": 1, "name": "manual", "run": {"directory": "runs", "frames": 10, "start_timeout": 2.0},
            "control": {"address": "127.0.0.1", "port": free_port()},
            "hosts": {"bench": {"address": "127.0.0.1", "launch": "manual"}},
            "streams": {"s": {"samples": 64, "channels": {"IN1": "int16"}}},
            "acquisition": {"a": {"host": "bench", "stream": "s", "source": {"kind": "synthetic"}}},
            "processing": {"p": {"pipeline": [{"stage": "drain"}]}}}
    res, summary = run_json(write_topology(tmp_path, topo))
    assert res.returncode == 1
    assert summary["message"].endswith("registration did not complete within 2 s (waiting for: a)")
