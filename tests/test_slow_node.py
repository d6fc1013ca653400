"""A processing node slowed down by a stage that sleeps: back-pressure, re-dispatch, bounded memory.

Each node on a namespace host of its own (tests/testnet.py), the coordinator on `ctl`.
Two acquisition nodes send one event stream (`dispatch: full`, two modules), so blocks of
seqs go to the processing nodes by the dispatch schedule and the coordinator rebalances it.
proc2's pipeline starts with a user stage that sleeps, so proc2 holds the senders back
(its credit runs out; `stalled_s`).  What must hold: the run completes, every seq of
every module is saved exactly once, proc2's share of the blocks is cut (and cut again while
it still holds the senders back), the senders' rings never overflow, and proc2's resident
memory stays bounded: credit, not proc2's speed, bounds what is in flight to it.

Measured (2 cores): the run takes ~25 s; proc2 gets ~740 of the 2400 events, the
senders wait ~18 s for it and never for proc1, the schedule is cut three times (1 block in
3, 5, 9); proc2's RSS grows ~2 MiB after frames flow.  With proc2's credit raised to 65536
(no back-pressure) its RSS grows ~28 MiB within 5 s, and events are lost.
"""
from __future__ import annotations

import itertools
import re
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import books_by_seq, child_process, on_hosts, run_disturbed, wait_for_frames, write_topology

HOSTS = ("ctl", "a1", "a2", "p1", "p2")
pytestmark = [pytest.mark.usefixtures("clean_system"), pytest.mark.hosts(*HOSTS)]

RATE = 300          # events/s of each synthetic module
FRAMES = 2400       # events of the run (8 s of triggers; the slow node makes it last longer)
SAMPLES = 8192      # int16 waveform: 16 KiB frames, so frames piling up would show in RSS
CREDITS = 64        # proc2's credit per upstream node (the default)
BLOCK = 32          # seqs per dispatch block
PER_BATCH_S, PER_EVENT_S = 0.02, 0.012   # proc2's stage: at most ~80 events/s, ~35 with 1-event batches
RING = 64           # slots: the epochs of a rebalance start a ring or so past the senders
RSS_SLACK = 8 << 20    # the save stage's staging rows (up to 4 MiB, touched as used), allocator, HDF5

SLOW_STAGE = '''
import time


def slow(batch, params):
    """Does nothing but take time: a fixed cost per call and a cost per event."""
    time.sleep(params["per_batch_s"] + params["per_event_s"] * len(batch))
'''


def slow_topology(net) -> dict:
    save = {"stage": "save", "chunk_frames": 1}   # whole-chunk writes only: no HDF5 chunk cache growth
    return on_hosts({
        "topology": 1, "name": "slow",
        "run": {"directory": "runs", "frames": FRAMES, "drain_timeout": 10.0, "heartbeat_timeout": 5.0},
        "streams": {"pulses": {"samples": SAMPLES, "channels": {"IN1": "int16"}, "modules": ["a1", "a2"],
                               "dispatch": "full", "dispatch_block": BLOCK}},
        "acquisition": {n: {"stream": "pulses", "ring": {"slots": RING, "policy": "block"},
                            "source": {"kind": "synthetic", "rate": RATE, "seed": 9}} for n in ("a1", "a2")},
        "processing": {
            "proc1": {"events": {"timeout": 5.0}, "pipeline": [save]},
            "proc2": {"credits": CREDITS, "events": {"timeout": 5.0}, "pipeline": [
                {"stage": "user", "file": "slow_stage.py", "function": "slow",
                 "params": {"per_batch_s": PER_BATCH_S, "per_event_s": PER_EVENT_S}},
                save]},
        },
    }, net, {"a1": "a1", "a2": "a2", "proc1": "p1", "proc2": "p2"})


class RssSampler:
    """Samples a process's resident memory every `period` s on a thread, at most `limit` times,
    until the process ends."""

    def __init__(self, proc: psutil.Process, period: float = 0.25, limit: int = 480) -> None:
        self.proc, self.period, self.limit = proc, period, limit
        self.samples: list[tuple[float, int]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(self.limit):
            try:
                if self.proc.status() == psutil.STATUS_ZOMBIE:
                    return
                self.samples.append((time.monotonic(), self.proc.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(self.period)


def test_slow_node_is_held_by_credit_loses_share_and_memory_stays_bounded(tmp_path, testnet):
    (tmp_path / "slow_stage.py").write_text(SLOW_STAGE)
    topo_path = write_topology(tmp_path, slow_topology(testnet))
    samplers: list[RssSampler] = []
    flowing: list[float] = []

    def watch_proc2(proc) -> None:
        node = child_process(proc.pid, "procnode", "--name proc2")
        wait_for_frames(tmp_path / "runs", "proc2", 2 * CREDITS)   # frames flow; its credit was used up
        flowing.append(time.monotonic())
        sampler = RssSampler(node)
        sampler.thread.start()
        samplers.append(sampler)

    t0 = time.monotonic()
    code, summary, err = run_disturbed(topo_path, watch_proc2, wrap=testnet.exec_prefix("ctl"), timeout=60)
    took = time.monotonic() - t0
    for s in samplers:
        s.thread.join(timeout=5)
    assert code == 0, err[-3000:]
    assert summary["result"] == "completed" and summary["stop_reason"] == "frames"

    # the books, seq by seq: every seq of every module saved exactly once, nothing missing
    books = summary["books"]
    assert books["balanced"] and books["missing"] == 0, books
    by_seq = books_by_seq(summary)
    assert sorted(by_seq) == ["a1", "a2"]
    for m, causes in by_seq.items():
        assert set(causes) == {"saved"}, (m, {c: len(v) for c, v in causes.items()})
        assert np.array_equal(np.sort(causes["saved"]), np.arange(FRAMES)), m   # once each

    # back-pressure: the senders waited for proc2's credit, never for proc1's; no ring overflowed
    nodes = summary["nodes"]
    for a in ("a1", "a2"):
        rep = nodes[a]["report"]
        assert rep["ring_overflow"] == 0, (a, rep["ring_overflow"])
        assert rep["send_failed"] == []
        assert rep["stalled_s"]["proc2"] > 2.0 and rep["stalled_s"]["proc1"] < 0.25 * rep["stalled_s"]["proc2"], \
            rep["stalled_s"]

    # the figures, printed (pytest -s) and shown with any failure below
    log = (Path(summary["run_dir"]) / "log.txt").read_text()
    cuts = re.findall(r"stream pulses: (\w+) falls behind; from block (\d+) blocks are dealt \[(.*)\]", log)
    received = {p: sum(nodes[p]["report"]["received"].values()) for p in ("proc1", "proc2")}
    rss = samplers[0].samples if samplers else []
    # a process that is exiting reads as (almost) no memory: keep the samples before that
    rss = list(itertools.takewhile(lambda s: s[1] >= rss[0][1] // 2, rss))
    frame = nodes["a1"]["configured"]["itemsize"]
    bound = 4 * CREDITS * 2 * frame + RSS_SLACK
    growth = rss[-1][1] - rss[0][1] if rss else 0
    peak = max(r for _, r in rss) - rss[0][1] if rss else 0
    figures = (f"took {took:.1f} s; received {received}; stalled_s a1 {nodes['a1']['report']['stalled_s']} "
               f"a2 {nodes['a2']['report']['stalled_s']}; cuts {[(int(b), o) for _, b, o in cuts]}; "
               f"proc2 RSS MiB (s after frames flowed): "
               f"{[(round(t - flowing[0], 1), round(r / 2**20, 1)) for t, r in rss[::4]]}; "
               f"growth {growth / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB")
    print(figures)

    # re-dispatch: proc2's share was cut, and cut again while it still held the senders back
    assert cuts and {who for who, _, _ in cuts} == {"proc2"}, figures
    shares = [o.count("proc2") / len(o.split(",")) for _, _, o in cuts]
    assert shares == sorted(shares, reverse=True) and len(set(shares)) == len(shares), figures   # smaller each time
    assert [int(b) for _, b, _ in cuts] == sorted(int(b) for _, b, _ in cuts), figures
    assert len(cuts) >= 2, figures             # one cut (1 block in 3) is not enough for this node
    assert min(shares) >= 1 / 17, figures      # the floor: never less than 1 block for 16 of proc1's
    assert received["proc1"] + received["proc2"] == 2 * FRAMES, figures
    assert 0 < received["proc2"] < 0.6 * received["proc1"], figures     # clearly fewer

    # bounded memory: once frames flow, proc2's RSS grows by no more than what credit lets be in
    # flight to it (CREDITS frames per upstream node: 2 MiB), counted four times (ZeroMQ
    # message, the event builder's block buffer, the batch the stages see, the save stage's
    # staging rows), plus RSS_SLACK: 16 MiB.  Were credit not respected, proc2 would hold every
    # frame dealt to it and not yet processed: ~5 MB/s here (measured: +28 MiB in 5 s).
    assert len(rss) >= 8, figures
    assert growth < bound and peak < bound, figures
