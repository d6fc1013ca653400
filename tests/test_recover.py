"""The coordinator dies mid-run: nodes end the run by themselves, leave report files, and
`daq-coordinator recover` rebuilds the record, seq by seq, from what they left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (books_by_seq, on_hosts, orphan_nodes, run_cli, run_disturbed, small_topology,
                      wait_for_frames, write_topology)

pytestmark = pytest.mark.usefixtures("clean_system")


def wait_until_nodes_gone(folder: Path, timeout: float) -> float:
    """Seconds until no node process of the test is left (bounded)."""
    t0 = time.monotonic()
    while orphan_nodes(0, folder) and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    assert not orphan_nodes(0, folder), orphan_nodes(0, folder)
    return time.monotonic() - t0


def dead_coordinator_run(tmp_path: Path, harm, net=None) -> Path:
    """A run whose coordinator `harm(proc)` disables after 300 frames; returns its run directory
    once every node has ended by itself.  With `net`, each node on a namespace host of its own,
    started through the launch template (`sh -c 'ip netns exec ...'`), the coordinator on ctl."""
    topo = small_topology(**{"run.frames": None, "run.heartbeat_timeout": 1.0,
                             "acquisition.synth1.source.rate": 2000})
    if net is not None:
        on_hosts(topo, net, {"synth1": "a1", "proc1": "p1", "proc2": "p2"})

    def act(proc: subprocess.Popen) -> None:
        wait_for_frames(tmp_path / "runs", "synth1", 300)
        harm(proc)
        wait_until_nodes_gone(tmp_path, 30)
        proc.kill()

    run_disturbed(write_topology(tmp_path, topo), act, wrap=net.exec_prefix("ctl") if net else (), timeout=10)
    return next((tmp_path / "runs").iterdir())


ON_HOSTS = pytest.mark.hosts("ctl", "a1", "p1", "p2")


@pytest.mark.parametrize("harm", ["kill", pytest.param("kill-on-hosts", marks=ON_HOSTS),
                                  pytest.param("freeze-on-hosts", marks=ON_HOSTS)])
def test_nodes_end_alone_and_recover_rebuilds_the_record(tmp_path, harm, request):
    """kill -9: the nodes get the parent-death signal (also behind the launch template's shell
    on namespace hosts); frozen (SIGSTOP): they hear nothing for coordinator_timeout.  Either
    way every frame acquired is saved or booked."""
    def disable(proc: subprocess.Popen) -> None:
        os.kill(proc.pid, signal.SIGSTOP if harm.startswith("freeze") else signal.SIGKILL)

    net = request.getfixturevalue("testnet") if harm.endswith("on-hosts") else None
    run_dir = dead_coordinator_run(tmp_path, disable, net)
    log = (run_dir / "log.txt").read_text()
    for node in ("synth1", "proc1", "proc2"):
        why = "coordinator silent" if harm.startswith("freeze") else "the coordinator process died"
        assert f"{node} ERROR coordinator.noderuntime: {why}" in log, node
    assert not (run_dir / "run.json").exists()
    reports = {p.name for p in run_dir.glob("*.report.json")}
    assert reports == {"synth1.report.json", "proc1.report.json", "proc2.report.json"}
    acq = json.loads((run_dir / "synth1.report.json").read_text())
    assert acq["complete"] and acq["report"]["produced"] >= 300

    res = run_cli("recover", str(run_dir), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary == json.loads((run_dir / "run.json").read_text())
    assert summary["books"]["balanced"] and summary["books"]["produced"] == acq["report"]["produced"]
    assert summary["recovered"]["reports_from"] == {n: "report file" for n in ("synth1", "proc1", "proc2")}
    books = books_by_seq(summary)
    # the ring was drained to the processing nodes, which saved it all before ending
    assert set(books["synth1"]) == {"saved"}, {c: len(s) for c, s in books["synth1"].items()}
    assert (run_dir / "run.h5").is_file() and (run_dir / "missing.csv").is_file()


def test_recover_without_reports_salvages_the_files(tmp_path):
    """Nodes that could not write a report (here: reports deleted) are counted from the files
    they left and the coordinator's last live counts: the gap is booked, not hidden."""
    run_dir = dead_coordinator_run(tmp_path, lambda proc: os.kill(proc.pid, signal.SIGKILL))
    for p in run_dir.glob("*.report.json"):
        p.unlink()
    res = run_cli("recover", str(run_dir), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["recovered"]["reports_from"]["proc1"] == "its file, up to the last flush"
    assert summary["recovered"]["reports_from"]["synth1"].startswith("nothing")
    books = books_by_seq(summary)
    assert len(books["synth1"]["saved"]) >= 300
    assert set(books["synth1"]) <= {"saved", "node_lost"}


def test_recover_refuses_a_folder_that_is_not_a_run(tmp_path):
    res = run_cli("recover", str(tmp_path))
    assert res.returncode == 1 and "not a run directory" in res.stderr
