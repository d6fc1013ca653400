"""Faults of a cluster on network-namespace hosts (tests/testnet.py): nodes killed, links cut.

Each run ends by its policy, and the books are checked seq by seq and module by module:
every part a board produced is saved exactly once or in the missing-frame record."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import books_by_seq, child_process, run_disturbed, wait_for_frames, write_topology
from test_hosts import HOSTS, cluster

pytestmark = [pytest.mark.usefixtures("clean_system"), pytest.mark.hosts(*HOSTS)]


def node_pid(name: str, folder: Path, timeout: float = 20) -> int:
    """pid of the run's process started with `--name name` (nodes run with the test's folder as cwd)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline", "cwd", "pid"]):
            cmd = p.info["cmdline"] or []
            if "--name" in cmd and cmd[cmd.index("--name") + 1] == name and "-m" in cmd \
                    and str(p.info["cwd"] or "").startswith(str(folder)):
                return p.info["pid"]
        time.sleep(0.1)
    raise AssertionError(f"no process for node {name}")


def faulty_run(tmp_path: Path, net, topo: dict, action, after: tuple[str, int] = ("rp1", 150),
               timeout: float = 90, pass_proc: bool = False) -> tuple[int, dict, str]:
    """Run the cluster from the `ctl` host; `action()` (`action(coordinator process)` with
    `pass_proc`) once `after` = (node, frames) is passed."""
    def act(proc: subprocess.Popen) -> None:
        wait_for_frames(tmp_path / "runs", *after, timeout=30)
        action(proc) if pass_proc else action()

    return run_disturbed(write_topology(tmp_path, topo), act, wrap=net.exec_prefix("ctl"), timeout=timeout)


def test_a_processing_host_killed(tmp_path, testnet):
    topo = cluster(testnet, frames=None, duration=6.0)
    code, summary, err = faulty_run(tmp_path, testnet, topo,
                                    lambda: os.kill(node_pid("proc1", tmp_path), signal.SIGKILL))
    assert code == 3, err[-3000:]
    assert summary["result"] == "degraded" and summary["nodes"]["proc1"]["lost"]
    assert summary["stop_reason"] == "duration"
    books = books_by_seq(summary)
    for m in ("rp1", "rp2"):
        assert set(books[m]) <= {"saved", "node_lost", "incomplete_event"}
        assert len(books[m]["saved"]) > 0
    # proc2 took every block after the loss: the run went on
    assert summary["nodes"]["proc2"]["report"]["events"]["complete"] > 0


def test_an_acquisition_host_killed(tmp_path, testnet):
    topo = cluster(testnet, frames=None, duration=6.0)
    code, summary, err = faulty_run(tmp_path, testnet, topo,
                                    lambda: os.kill(node_pid("rp2", tmp_path), signal.SIGKILL))
    assert code == 3, err[-3000:]
    assert summary["result"] == "degraded" and summary["nodes"]["rp2"]["lost"]
    books = books_by_seq(summary)
    assert set(books["rp1"]) <= {"saved"} and set(books["rp2"]) <= {"saved", "node_lost"}
    # rp1 went on alone: events after the loss are incomplete, rp1's parts saved
    assert len(books["rp1"]["saved"]) > len(books["rp2"]["saved"])


@pytest.mark.parametrize("seconds, lost", [(1.0, False), (10.0, True)])
def test_a_link_cut(tmp_path, testnet, seconds, lost):
    topo = cluster(testnet, frames=None, duration=4.0 + seconds)
    for p in topo["processing"].values():
        p["events"]["timeout"] = 3.0      # longer than a short cut: its parts come late, not never

    def cut() -> None:
        testnet.set_link("acq2", False)
        time.sleep(seconds)
        testnet.set_link("acq2", True)

    code, summary, err = faulty_run(tmp_path, testnet, topo, cut)
    assert code == (3 if lost else 0), err[-3000:]
    assert summary["nodes"]["rp2"]["lost"] == lost
    books = books_by_seq(summary)
    if not lost:     # TCP carried everything across the 1 s gap, and the events waited for it
        assert set(books["rp1"]) == {"saved"} and set(books["rp2"]) == {"saved"}
    else:
        assert set(books["rp2"]) <= {"saved", "node_lost"}


def test_the_board_emulator_killed(tmp_path, testnet):
    """Both boards stop answering at once: each acquisition node says which board, at which
    address; the run ends and keeps every frame it had."""
    topo = cluster(testnet, frames=None, duration=5.0)

    def kill_boards(proc: subprocess.Popen) -> None:
        child_process(proc.pid, "coordinator.emulated").kill()     # this run's emulator, no other

    code, summary, err = faulty_run(tmp_path, testnet, topo, kill_boards, pass_proc=True)
    assert code == 0 and summary["stop_reason"] == "duration", err[-3000:]
    for rp in ("rp1", "rp2"):      # the record names the board and where it was
        errors = summary["nodes"][rp]["errors"]
        assert errors and f"the Red Pitaya at {testnet.addresses['ctl']}:" in errors[0], errors
        outages = summary["nodes"][rp]["report"]["source"]["outages"]
        assert len(outages) == 1 and outages[0]["ongoing_at_end"]
    books = books_by_seq(summary)
    for rp in ("rp1", "rp2"):      # what came before is kept; the dead time is in the record
        assert set(books[rp]) <= {"saved", "source_error", "incomplete_event"}
        assert len(books[rp]["saved"]) > 0 and len(books[rp]["source_error"]) > 0
