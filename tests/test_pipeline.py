"""Event builder and pipeline stages on real batches (no processes): what each promises."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import find_peaks

from coordinator.frames import FLAG_INCOMPLETE, FLAG_TIME_MISMATCH, frame_dtype
from coordinator.ranges import RangeSet
from procnode.builder import EventBuilder
from procnode.events import EventBatch
from procnode.pipeline import Pipeline, StageFailure
from procnode.stages.base import StageContext
from procnode.stages.crop import CropStage
from procnode.stages.histogram import HistogramStage
from procnode.stages.pha import PhaStage
from procnode.stages.select import FilterStage
from coordinator.units import Axis

MODULES = ("a", "b")
DTYPE = frame_dtype({"IN1": "int16"}, 256)
AXES = {f"{m}.IN1": Axis(8.0, -256.0, 1 / 8192, "V") for m in MODULES}


class _Stream:
    name = "s"
    channels = {"IN1": "int16"}
    samples = 256
    dtype = DTYPE
    modules = MODULES


def _frames(seqs, ts=None, pulse_at=None, amp=4000):
    r = np.zeros(len(seqs), DTYPE)
    r["seq"] = seqs
    r["timestamp"] = np.asarray(seqs) * 1000 if ts is None else ts
    if pulse_at is not None:
        r["IN1"][:, pulse_at:pulse_at + 20] = (amp * np.exp(-np.arange(20) / 5.0)).astype(np.int16)
    return r


def _builder(timeout=1.0, tolerance=100.0, block=16):
    return EventBuilder("s", MODULES, DTYPE, AXES, block, timeout, tolerance)


def _ctx(tmp_path=None, files=None):
    return StageContext(None, "p", 1, tmp_path, [_Stream()], {"s": MODULES}, {"s": AXES}, {"s": 256},
                        files or (lambda: None))


def _seqs(batches):
    return sorted(int(s) for b in batches for s in b.seq)


# ---- event builder --------------------------------------------------------------------------

def test_events_leave_when_every_part_is_here_and_carry_both_parts():
    b = _builder()
    assert b.add("a", _frames(range(0, 40), pulse_at=50), now=0.0) == []   # nothing complete yet
    out = b.add("b", _frames(range(0, 40), pulse_at=60), now=0.1)
    assert _seqs(out) == list(range(40))
    for batch in out:
        assert (batch.events["present"] == 3).all() and not (batch.events["flags"] & FLAG_INCOMPLETE).any()
        assert (batch.waveforms("a.IN1")[:, 50] > 0).all() and (batch.waveforms("b.IN1")[:, 60] > 0).all()
        assert np.array_equal(batch.parts["a"]["seq"], batch.seq)
    assert b.stats.complete == 40 and b.stats.incomplete == 0 and b.pending() == 0
    assert b.consumed == {"a": 40, "b": 40}


def test_gap_notice_lets_waiting_events_leave_incomplete_naming_the_module():
    b = _builder()
    b.add("a", _frames(range(0, 10)), now=0.0)
    b.add("b", _frames([0, 1, 2, 7, 8, 9]), now=0.0)
    out = b.gap("b", 3, 6)
    assert _seqs(out) == [3, 4, 5, 6]
    ev = out[0].events
    assert (ev["flags"] & FLAG_INCOMPLETE).all() and (ev["present"] == 1).all()
    assert b.stats.missing["b"] == RangeSet([(3, 7)]) and not len(b.stats.missing["a"])


def test_timeout_then_late_parts_are_counted_not_mixed_in():
    b = _builder(timeout=0.5)
    b.add("a", _frames(range(0, 8)), now=0.0)
    assert b.expire(0.4) == []
    out = b.expire(0.6)
    assert _seqs(out) == list(range(8)) and b.stats.incomplete == 8
    late = b.add("b", _frames(range(0, 8)), now=0.7)
    assert late == [] and b.stats.late["b"] == RangeSet([(0, 8)])
    assert b.consumed["b"] == 8          # the late parts' credit goes back
    assert b.stats.missing["b"] == RangeSet([(0, 8)])


def test_duplicate_part_is_counted_and_the_first_kept():
    b = _builder()
    b.add("a", _frames([5], pulse_at=10), now=0.0)
    b.add("a", _frames([5], pulse_at=100), now=0.0)
    out = b.add("b", _frames([5]), now=0.0)
    assert out[0].waveforms("a.IN1")[0, 10] > 0 and out[0].waveforms("a.IN1")[0, 100] == 0
    assert b.stats.late["a"] == RangeSet([(5, 6)])


def test_parts_with_disagreeing_timestamps_are_flagged():
    b = _builder(tolerance=100.0)
    b.add("a", _frames([0, 1, 2], ts=[1000, 2000, 3000]), now=0.0)
    out = b.add("b", _frames([0, 1, 2], ts=[1050, 2500, 3000]), now=0.0)
    flags = {int(s): int(f) for batch in out for s, f in zip(batch.seq, batch.events["flags"])}
    assert [s for s, f in flags.items() if f & FLAG_TIME_MISMATCH] == [1]
    assert b.stats.mismatch == RangeSet([(1, 2)])


def test_flush_sends_everything_pending_as_incomplete():
    b = _builder()
    b.add("a", _frames(range(30, 35)), now=0.0)
    out = b.flush()
    assert _seqs(out) == list(range(30, 35)) and b.pending() == 0


# ---- stages -----------------------------------------------------------------------------------

def _batch(n=20, seed=0, modules=MODULES):
    rng = np.random.default_rng(seed)
    events = []
    parts = {}
    for m in modules:
        r = _frames(range(n))
        r["IN1"] = rng.normal(0, 8, (n, 256)).astype(np.int16)
        for i in range(n):
            for pos in rng.choice(np.arange(20, 230, 30), size=rng.integers(0, 4), replace=False):
                r["IN1"][i, pos:pos + 20] += (rng.uniform(400, 6000) * np.exp(-np.arange(20) / 4.0)).astype(np.int16)
        parts[m] = r
    b = EventBuilder("s", modules, DTYPE, AXES, 64, 1.0, 1e9)
    for m in modules:
        events = b.add(m, parts[m], now=0.0) or events
    assert len(events) == 1
    return events[0]


def test_pha_stage_finds_what_find_peaks_finds_on_every_channel_in_volts():
    batch = _batch()
    PhaStage({"channel": "IN1", "height": 0.03, "distance": 5}, _ctx()).process(batch)
    table = batch.tables["pulses"]
    for mi, m in enumerate(MODULES):
        x = batch.waveforms(f"{m}.IN1")
        for i, seq in enumerate(batch.seq):
            ref, props = find_peaks(x[i] / 8192, height=0.03, distance=5)
            rows = table[(table["seq"] == seq) & (table["module"] == mi)]
            assert list(rows["position"]) == list(ref)
            assert np.allclose(rows["height"], props["peak_heights"])
            assert np.allclose(rows["time"], -256.0 + ref * 8.0)


def test_histogram_stage_equals_numpy_histogram(tmp_path):
    from procnode.hdf5sink import HDF5File
    f = HDF5File(tmp_path / "h.h5", 1, "p", {})
    ctx = _ctx(tmp_path, lambda: f)
    batches = [_batch(seed=s) for s in range(3)]
    uniform = HistogramStage({"field": "height", "bins": [0.0, 0.5, 37]}, ctx)
    edges = HistogramStage({"field": "height", "name": "h2", "edges": [0.0, 0.05, 0.1, 0.3, 0.31]}, ctx)
    pha = PhaStage({"channel": "IN1", "height": 0.02}, ctx)
    values = []
    for b in batches:
        pha.process(b)
        uniform.process(b)
        edges.process(b)
        values.append(b.tables["pulses"]["height"])
    v = np.concatenate(values)
    assert np.array_equal(uniform.counts, np.histogram(v, bins=37, range=(0.0, 0.5))[0])
    assert np.array_equal(edges.counts, np.histogram(v, bins=[0.0, 0.05, 0.1, 0.3, 0.31])[0])
    assert uniform.under + uniform.over + uniform.counts.sum() == len(v)
    uniform.close()
    f.close()
    import h5py
    with h5py.File(tmp_path / "h.h5") as h:
        g = h["entry/height"]
        assert g.attrs["NX_class"] == "NXdata" and g.attrs["signal"] == "counts"
        assert np.array_equal(g["counts"][()], uniform.counts) and g["height"].attrs["units"] == "V"


def test_coincidence_filter_keeps_events_with_close_pulses_on_both_channels():
    batch = _batch(n=1)
    t = np.array([(0, 0, 0, 10, 100.0, 0.1), (0, 1, 0, 12, 140.0, 0.1)],
                 dtype=[("seq", "<u8"), ("module", "<u2"), ("channel", "<u2"), ("position", "<i4"),
                        ("time", "<f8"), ("height", "<f8")])
    batch.tables["pulses"] = t
    keep = FilterStage({"coincidence": {"table": "pulses", "channels": ["a.IN1", "b.IN1"], "window_ns": 50}},
                       _ctx()).process(batch)
    assert len(keep) == 1
    drop = FilterStage({"coincidence": {"table": "pulses", "channels": ["a.IN1", "b.IN1"], "window_ns": 30}},
                       _ctx()).process(batch)
    assert len(drop) == 0


def test_pipeline_books_vetoes_and_isolates_the_events_a_stage_fails_on():
    batch = _batch(n=30)

    class Flaky:
        kind = "user"

        def process(self, b):
            if (b.seq % 7 == 3).any():
                raise ValueError("bad event")
            return b.select(b.seq % 2 == 0)

        def poll(self): ...
        def close(self): ...
        def report(self): return {}

    reports = []
    p = Pipeline([Flaky()], ["0:user"], "continue", reports.append)
    p.run(batch)
    failed = {s for s in range(30) if s % 7 == 3}
    assert p.stage_error["a"] == RangeSet([(s, s + 1) for s in sorted(failed)])
    vetoed = {s for s in range(30) if s % 2 == 1 and s not in failed}
    assert set(int(x) for a, b in p.vetoed["b"] for x in range(a, b)) == vetoed
    assert reports and "stage 0:user raised on event seq 3" in reports[0]
    with pytest.raises(StageFailure, match="seq 3"):
        Pipeline([Flaky()], ["0:user"], "stop", reports.append).run(_batch(n=30))


def test_crop_moves_the_time_axis():
    batch = _batch(n=2)
    CropStage({"start_ns": -80.0, "stop_ns": 400.0}, _ctx()).process(batch)
    ax = batch.axis("a.IN1")
    assert batch.waveforms("a.IN1").shape == (2, 60) and ax.t0_ns == -80.0
    assert np.array_equal(batch.waveforms("a.IN1"), batch.parts["a"]["IN1"][:, 22:82])


def test_a_batch_of_one_module_needs_no_copy():
    r = _frames(range(5))
    b = EventBatch.from_frames("s", MODULES, "b", r, AXES)
    assert np.shares_memory(b.waveforms("b.IN1"), r) and (b.events["present"] == 2).all()
    assert b.channels("IN1") == ["b.IN1"]


def test_procnode_rejects_parts_of_a_module_it_was_not_told_about(tmp_path):
    """Real sockets: frames claiming a module outside the stream, or another node's module,
    are counted as rejected and never reach an event."""
    import time

    import zmq

    from coordinator.topology import topology_from_dict
    from coordinator.wire import pack_frames_header
    from procnode.node import ProcNode

    topo = topology_from_dict({
        "topology": 1, "name": "t", "run": {"directory": str(tmp_path)},
        "streams": {"s": {"samples": 256, "channels": {"IN1": "int16"}, "modules": ["a", "b"]}},
        "acquisition": {m: {"stream": "s", "source": {"kind": "synthetic"}} for m in ("a", "b")},
        "processing": {"p": {"pipeline": [{"stage": "drain"}]}}})
    ctx = zmq.Context()
    routers, endpoints = {}, {}
    for m in ("a", "b"):
        routers[m] = ctx.socket(zmq.ROUTER)
        routers[m].setsockopt(zmq.ROUTER_MANDATORY, 1)   # a send before the node connected raises
        endpoints[m] = f"tcp://127.0.0.1:{routers[m].bind_to_random_port('tcp://127.0.0.1')}"
    node = ProcNode("p", "tcp://127.0.0.1:9")    # no coordinator: control messages just queue
    try:
        node.on_configure({"topology": topo.to_dict(), "run": 1, "run_dir": str(tmp_path),
                           "params": {"endpoints": endpoints}})
        sock_a = next(s for s, up in node.upstream.items() if up == "a")
        deadline = time.monotonic() + 5
        for module, seqs in (("x", [0, 1]), ("b", [2, 3]), ("a", [4, 5])):
            recs = _frames(seqs)
            while True:                                  # until the node's DEALER has connected
                try:
                    routers["a"].send_multipart([b"p", pack_frames_header(1, "s", module, recs), recs.tobytes()])
                    break
                except zmq.ZMQError:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
        got = 0
        while got < 3 and time.monotonic() < deadline:
            if sock_a.poll(50):
                before = node.rejected + sum(node.received.values())
                node._on_data(sock_a)
                got += node.rejected + sum(node.received.values()) - before
        assert node.rejected == 2                         # "x" is no module of s; "b" not on a's socket
        assert node.received["a"] == 2 and node.builders["s"].stats.complete == 0
        assert node.builders["s"].pending() == 2          # only a's real parts wait for b's
    finally:
        node.close()
        node.control.close(linger=0)
        node.ctx.term()
        for r in routers.values():
            r.close(linger=0)
        ctx.term()


def test_a_rejected_events_message_is_booked_as_corrupt_and_its_credit_comes_back(tmp_path):
    """Real sockets: the second node of a chain gets one good and two bad `events` messages
    from the first; the bad ones are counted, their seqs booked as corrupt (exactly, when the
    events table is readable), and their credit given back so the sender is not starved."""
    import time

    import msgpack
    import zmq

    from coordinator.topology import topology_from_dict
    from coordinator.wire import pack_events, unpack_data_header
    from procnode.events import EVENT_DTYPE
    from procnode.node import ProcNode

    topo = topology_from_dict({
        "topology": 1, "name": "t", "run": {"directory": str(tmp_path)},
        "streams": {"s": {"samples": 256, "channels": {"IN1": "int16"}}},
        "acquisition": {"a": {"stream": "s", "source": {"kind": "synthetic"}}},
        "processing": {"f": {"pipeline": [{"stage": "forward", "to": "back"}]},
                       "back": {"pipeline": [{"stage": "drain"}]}}})
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"

    def message(seqs, cut_part=False, cut_events=False):
        ev = np.zeros(len(seqs), EVENT_DTYPE)
        ev["seq"], ev["present"] = seqs, 1
        recs = _frames(seqs)
        frames = pack_events(1, "s", ev, {"a": recs}, {}, recs.dtype.itemsize)
        if cut_part:
            frames[2] = recs.tobytes()[:-10]
        if cut_events:
            head = msgpack.unpackb(frames[0])
            head.update(first=20, last=23)
            frames[0], frames[1] = msgpack.packb(head), b"garbage"
        return frames

    node = ProcNode("back", "tcp://127.0.0.1:9")
    try:
        node.on_configure({"topology": topo.to_dict(), "run": 1, "run_dir": str(tmp_path),
                           "params": {"endpoints": {"f": endpoint}}})
        sock = next(iter(node.upstream))
        deadline = time.monotonic() + 5
        for frames in (message([0, 1, 2]), message([10, 12], cut_part=True), message([20, 21], cut_events=True)):
            while True:
                try:
                    router.send_multipart([b"back", *frames])
                    break
                except zmq.ZMQError:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
        while node.received["f"] < 7 and time.monotonic() < deadline:
            if sock.poll(50):
                node._on_data(sock)
        assert node.rejected == 2 and node.received["f"] == 7
        assert node.corrupt["a"].to_list() == [[10, 11], [12, 13], [20, 24]]
        assert node.pipeline.vetoed["a"].to_list() == [[0, 3]]
        credit = 0
        while credit < 7 and time.monotonic() < deadline:
            if router.poll(50):
                credit += unpack_data_header(router.recv_multipart()[1])["n"]
        assert credit == 7
    finally:
        node.close()
        node.control.close(linger=0)
        node.ctx.term()
        router.close(linger=0)
        ctx.term()


def test_a_reduced_only_file_tells_what_it_saved_part_by_part(tmp_path):
    """What the coordinator salvages from a node that died: a reduced-only save keeps no
    waveform, but its events table says which parts of which events it saved."""
    from coordinator.nodefiles import saved_in_file
    from procnode.hdf5sink import HDF5File
    from procnode.stages.save import SaveStage

    f = HDF5File(tmp_path / "r.h5", 1, "p", {})
    save = SaveStage({"data": "reduced"}, _ctx(tmp_path, lambda: f))
    f.start()
    batch = _batch(n=40)
    batch.events["present"][5] = 1         # event 5 came without b's part
    save.process(batch)
    f.flush()                              # still open, as in a crash after a flush
    assert "s" not in f.file["entry"]      # no raw group: only the events table tells
    expected = {"a": [(0, 40)], "b": [(0, 5), (6, 40)]}
    assert saved_in_file(tmp_path / "r.h5") == expected
    assert {m: [tuple(r) for r in rs.to_list()] for m, rs in save.saved.items()} == expected
    f.close()
