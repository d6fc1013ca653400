"""A processing node killed mid-run and started again by hand on its host rejoins as a new
incarnation: its earlier losses stay in the record, and the blocks dealt to it after it is
back are saved.  Every node on a namespace host of its own (tests/testnet.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from conftest import books_by_seq, free_port, on_hosts, run_cli, run_disturbed, wait_for_frames, write_topology
from test_e2e_events import two_modules
from test_faults import _node_pid

pytestmark = [pytest.mark.usefixtures("clean_system"), pytest.mark.hosts("ctl", "a1", "a2", "p1", "p2")]


def log_has(run_root: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = next(run_root.glob("*/log.txt"), None)
        if log is not None and text in log.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


def test_a_restarted_processing_node_rejoins_as_a_new_incarnation(tmp_path, testnet):
    port = free_port()
    topo = two_modules(frames=None)
    topo["run"].update(duration=9.0, heartbeat_timeout=1.0)
    topo["control"] = {"port": port}
    topo["processing"] = {"p1": {"events": {"timeout": 0.5}}, "p2": {"events": {"timeout": 0.5}}}
    on_hosts(topo, testnet, {n: n for n in ("a1", "a2", "p1", "p2")})
    runs = tmp_path / "runs"
    again: list[subprocess.Popen] = []

    def restart(proc: subprocess.Popen) -> None:
        wait_for_frames(runs, "a1", 2000, timeout=30)
        os.kill(_node_pid("p1", tmp_path), signal.SIGKILL)
        assert log_has(runs, "node 'p1' exited", 10)
        again.append(subprocess.Popen([*testnet.exec_prefix("p1"), sys.executable, "-m", "procnode", "--coordinator",
                                       f"tcp://{testnet.addresses['ctl']}:{port}", "--name", "p1"], cwd=tmp_path))
        assert log_has(runs, "p1 rejoined the run", 15)

    try:
        code, summary, err = run_disturbed(write_topology(tmp_path, topo), restart, wrap=testnet.exec_prefix("ctl"),
                                           timeout=60)
        assert again[0].wait(timeout=10) == 0          # it left with the run
    finally:
        for p in again:
            if p.poll() is None:
                p.kill()
    assert code == 3, err[-3000:]
    p1 = summary["nodes"]["p1"]
    assert summary["result"] == "degraded" and "it rejoined" in summary["message"]
    assert not p1["lost"] and len(p1["past_incarnations"]) == 1
    assert p1["incarnation"] != p1["past_incarnations"][0]["incarnation"] and p1["pid"] == again[0].pid
    run_dir = Path(summary["run_dir"])
    with h5py.File(run_dir / "p1-2" / "p1.h5") as f:   # the new incarnation's own file
        after = f["entry/pulses/seq"][()]
    with h5py.File(run_dir / "p1.h5") as f:            # the lost one's, kept up to its last flush
        before = f["entry/pulses/seq"][()]
    assert len(after) > 0 and len(before) > 0 and after.min() > before.max()
    books = books_by_seq(summary)                      # each seq saved once or booked, both modules
    for m in ("a1", "a2"):
        assert set(books[m]) <= {"saved", "node_lost", "incomplete_event"}, set(books[m])
        assert len(books[m].get("node_lost", [])) > 0  # the earlier loss stays recorded
    # the blocks dealt to p1 after it came back were whole events (but at the very end, where
    # one source stopped before the other)
    with h5py.File(run_dir / "p1-2" / "p1.h5") as f:
        seq, present = f["entry/reduced/events/seq"][()], f["entry/reduced/events/present"][()]
    both = min(m["produced"] for m in summary["books"]["modules"].values())
    assert (present[seq < both] == 3).all() and (seq < both).sum() > 100
    assert json.loads((run_dir / "run.json").read_text())["files"]
    # recover, run on the finished run, rebuilds the same books from what is on disk
    res = run_cli("recover", str(run_dir), "--json")
    assert res.returncode == 0, res.stderr
    again_books = json.loads(res.stdout)["books"]
    assert {k: again_books[k] for k in ("produced", "saved", "missing_by_cause")} == \
        {k: summary["books"][k] for k in ("produced", "saved", "missing_by_cause")}
