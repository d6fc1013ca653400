"""`security: curve`: every control and data socket of a run on namespace hosts is
authenticated; intruders from another host, with no keys or with a key of their own,
can neither send the coordinator node messages nor pull or push frames, and each
refusal is counted and logged."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, run_cli, run_disturbed, wait_for_frames, write_topology
from test_hosts import HOSTS, cluster

pytestmark = pytest.mark.usefixtures("clean_system")

INTRUDER = r'''
import json, sys, time
import numpy as np
import zmq
from coordinator.frames import frame_dtype
from coordinator.wire import pack_control, pack_credit, pack_frames_header
cfg = json.loads(sys.argv[1])
ctx = zmq.Context()
socks = []
for with_key in (False, True):
    for endpoint, ident in ((cfg["control"], b"rp9"), (cfg["data"], b"proc1")):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IDENTITY, ident)
        if with_key:                      # a key pair of its own, and the servers' public key
            public, secret = zmq.curve_keypair()
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = cfg["server_key"].encode(), public, secret
        s.connect(endpoint)
        socks.append(s)
records = np.zeros(4, frame_dtype({"IN1": "int16"}, 1024))
records["seq"] = np.arange(4)
for s in socks:
    for msg in ([pack_control("error", message="intruder", fatal=True)],
                [pack_control("source_done", produced=0)],
                [pack_credit(100, 1)],
                [pack_frames_header(1, "pulses", "rp1", records), records.tobytes()]):
        try:
            s.send_multipart(msg, zmq.NOBLOCK)
        except zmq.Again:
            pass                          # nothing gets through: the queue never drains
time.sleep(2.0)                           # handshakes are tried (and refused) meanwhile
'''


@pytest.mark.hosts(*HOSTS, "evil")
def test_peers_without_an_authorised_key_are_refused(tmp_path, testnet):
    res = run_cli("keys", "generate", str(tmp_path / "keys"))
    assert res.returncode == 0, res.stderr
    control, data = free_port(), free_port()
    topo = cluster(testnet, frames=None, duration=5.0)
    topo.update(security="curve", keys="keys")
    topo["control"]["port"] = control
    topo["acquisition"]["rp1"]["data_port"] = data
    server_key = (tmp_path / "keys" / "cluster.key").read_text().split('public-key = "')[1].split('"')[0]
    script = tmp_path / "intruder.py"
    script.write_text(INTRUDER)
    cfg = {"control": f"tcp://{testnet.addresses['ctl']}:{control}",
           "data": f"tcp://{testnet.addresses['acq1']}:{data}", "server_key": server_key}

    def intrude(proc: subprocess.Popen) -> None:
        wait_for_frames(tmp_path / "runs", "rp1", 100, timeout=30)
        subprocess.run([*testnet.exec_prefix("evil"), sys.executable, str(script), json.dumps(cfg)],
                       check=True, timeout=20, cwd=Path(__file__).parent.parent)

    code, summary, err = run_disturbed(write_topology(tmp_path, topo), intrude,
                                       wrap=testnet.exec_prefix("ctl"), timeout=90)
    assert code == 0, err[-3000:]
    assert summary["result"] == "completed" and not summary["message"]
    books = summary["books"]
    assert books["balanced"] and books["missing"] == 0 and books["saved"] > 200
    # nothing reached the coordinator's message handling; every try was refused at the door
    assert summary["control"] == {**summary["control"], "security": "curve", "rejected": 0}
    assert summary["control"]["refused"] >= 2
    assert summary["nodes"]["rp1"]["counters"]["refused"] >= 2
    assert summary["nodes"]["rp1"]["report"]["rejected"] == 0 and summary["nodes"]["rp1"]["errors"] == []
    log = (Path(summary["run_dir"]) / "log.txt").read_text()
    evil = testnet.addresses["evil"]
    assert "coordinator WARNING rejected #1: connection (CURVE)" in log
    assert f"peer {evil}: key not authorised" in log             # ZAP names the peer
    for where in (f"tcp://{testnet.addresses['ctl']}:{control}", f"tcp://{testnet.addresses['acq1']}:{data}"):
        # keyless: the peer from the kernel (tcptable: libzmq's monitor names only our endpoint)
        assert re.search(rf"peer {re.escape(evil)}(:\d+)? on {re.escape(where)}: no CURVE", log), where
    assert "without authentication" not in log


def test_a_curve_run_without_keys_says_how_to_make_them(tmp_path):
    from conftest import run_json, small_topology
    topo = small_topology(**{"security": "curve", "keys": "nokeys"})
    res, summary = run_json(write_topology(tmp_path, topo))
    assert res.returncode == 1
    assert "daq-coordinator keys generate" in summary["message"] and "nokeys" in summary["message"]
