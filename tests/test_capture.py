"""Capture modes of the ring: one-shot fills the ring at the source's pace, keeps it, and ships
it once full; the run ends when the burst is saved."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import small_topology, wait_for_system_frames, write_topology

from coordinator.api import System

SLOTS = 600


def _one_shot_topology(tmp_path: Path, **extra) -> Path:
    topo = small_topology(**{"run.frames": None, "run.duration": 60.0,
                             "acquisition.synth1.ring.slots": SLOTS,
                             "acquisition.synth1.ring.capture": "one-shot",
                             "acquisition.synth1.source.rate": 400.0, **extra})
    return write_topology(tmp_path, topo)


def test_one_shot_fills_the_ring_before_anything_is_shipped(tmp_path: Path, clean_system) -> None:
    """The burst (1.5 s at 400 Hz) is watched through the live counters: while the ring is
    filling, nothing leaves the node; then the whole ring is shipped and saved, and the run
    ends on its own, well before its 60 s."""
    samples = []
    with System(_one_shot_topology(tmp_path)) as system:
        run = system.start()
        deadline = time.monotonic() + 30
        while not run.done and time.monotonic() < deadline:
            c = run.counters().get("synth1", {}).get("counters", {})
            if c:
                samples.append((c["frames"], c["sent_frames"]))
            time.sleep(0.05)
        summary = run.wait(timeout=30)
    filling = [s for s in samples if 0 < s[0] < SLOTS]
    assert filling, f"the capture was not seen while it went on: {samples}"
    assert all(sent == 0 for _, sent in filling), filling
    assert summary["stop_reason"] == "one-shot capture" and summary["result"] == "completed"
    books = summary["books"]["modules"]["synth1"]
    assert books["produced"] == SLOTS and books["saved"] == SLOTS and summary["books"]["balanced"]
    report = summary["nodes"]["synth1"]["report"]
    assert report["ring_overflow"] == 0 and report["acquired_s"] > 0


def test_one_shot_burst_is_the_smaller_of_frames_and_ring(tmp_path: Path, clean_system) -> None:
    """`run.frames` below the ring's size: the burst is that many frames; a second run of the
    same system captures again (the ring was emptied by the shipping)."""
    with System(_one_shot_topology(tmp_path, **{"acquisition.synth1.source.rate": "max"})) as system:
        first = system.run(frames=250)
        second = system.run()
    assert first["stop_reason"] == "one-shot capture"
    assert first["books"]["modules"]["synth1"]["saved"] == 250
    assert second["books"]["modules"]["synth1"]["saved"] == SLOTS and second["books"]["balanced"]


@pytest.mark.parametrize("capture", ["one-shot", "continuous"])
def test_reader_killed_mid_run_keeps_what_it_captured(tmp_path: Path, clean_system, capture: str) -> None:
    """The reader dies without its last word: the run fails with that cause; the frames already
    in the ring are still shipped and saved (not written off as send_failed), and the books
    count them as produced (the ring's counters stand in for the reader's `done`)."""
    extra = {"acquisition.synth1.source.rate": 200.0, "acquisition.synth1.ring.capture": capture}
    with System(_one_shot_topology(tmp_path, **extra)) as system:
        run = system.start()
        wait_for_system_frames(system, "synth1", 50)
        os.kill(system._coordinator.nodes["synth1"].info["reader_pid"], signal.SIGKILL)
        summary = run.wait(timeout=60)
    assert summary["result"] == "failed" and "reader process exited" in summary["message"], summary["message"]
    books = summary["books"]
    assert books["balanced"] and books["modules"]["synth1"]["saved"] >= 50, books
    assert books["produced"] == books["saved"] and books["duplicates"] == 0, books
    assert not summary["nodes"]["synth1"]["report"]["send_failed"], summary["nodes"]["synth1"]["report"]
