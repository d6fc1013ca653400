"""Tests of the shared-memory frame ring (acqnode.ring)."""
from __future__ import annotations

import itertools
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from acqnode import shm
from acqnode.ring import BUSY, LAYOUT_VERSION, Ring, RingStatus, cleanup_stale, segment_names
from coordinator.frames import frame_dtype

REPO = Path(__file__).resolve().parents[1]
DT = frame_dtype({"IN1": "int16", "IN2": "int16"}, 4096)   # 16408-byte records
SMALL = frame_dtype({"IN1": "int16", "IN2": "int16"}, 16)   # for cheap single-process tests
OUR_PREFIX = f"daqring-{os.getpid()}-"

# The payload of record `seq` is derived from seq, so a torn or misplaced record is detected.
PATTERN_SRC = '''
import numpy as np
def fill(f, seqs):
    seqs = np.asarray(seqs, dtype=np.uint64)
    f["seq"] = seqs
    f["timestamp"] = seqs * np.uint64(1000) + np.uint64(7)
    f["flags"] = (seqs % np.uint64(5)).astype(np.uint32)
    f["reserved"] = 0
    j = np.arange(f.dtype["IN1"].shape[0], dtype=np.int64)
    base = (seqs.astype(np.int64)[:, None] * 7 + j[None, :]) & 0x7FFF
    f["IN1"] = base
    f["IN2"] = -base - 1
    return f
'''
_ns: dict = {}
exec(PATTERN_SRC, _ns)
fill = _ns["fill"]


def make_frames(seqs, dtype=DT) -> np.ndarray:
    seqs = np.asarray(seqs, dtype=np.uint64)
    return fill(np.zeros(len(seqs), dtype), seqs)


def assert_intact(recs) -> None:
    """Every record's bytes equal the pattern for its own seq."""
    recs = np.ascontiguousarray(np.asarray(recs).reshape(-1))
    expected = make_frames(recs["seq"], recs.dtype)
    assert np.array_equal(recs.view(np.uint8), expected.view(np.uint8)), "torn or corrupted record"


def readable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


# -- child processes ------------------------------------------------------------------------------

WRITER_CODE = PATTERN_SRC + r'''
import json, sys, time
from acqnode.ring import Ring
name, ffd, rfd, n, policy, batch, out, seconds = sys.argv[1:9]
ring = Ring.attach(name, int(ffd), int(rfd))
n, batch, seconds = int(n), int(batch), float(seconds)
t_end = time.monotonic() + seconds
dropped, written, s0 = [], 0, 0
while s0 < n and time.monotonic() < t_end:
    seqs = np.arange(s0, min(n, s0 + batch), dtype=np.uint64)
    frames = fill(np.zeros(len(seqs), ring.dtype), seqs)
    k = ring.put(frames, policy, stop=lambda: time.monotonic() > t_end, poll=0.05)
    written += k
    if policy == "drop":
        dropped.extend(seqs[k:].tolist())
    elif k < len(seqs):
        sys.exit("writer timed out under block")
    s0 += len(seqs)
ring.close_writer()
with open(out, "w") as f:
    json.dump({"dropped": dropped, "written": written, "last": s0}, f)
ring.close()
'''

CONSUMER_CODE = r'''
import sys, time
from acqnode.ring import Ring
name, ffd, rfd, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ring = Ring.attach(name, ffd, rfd)
t_end = time.monotonic() + seconds
got = 0
while time.monotonic() < t_end:
    ring.wait_available(0.2)
    views = ring.peek(4)
    if not views:
        if ring.writer_closed and ring.available() == 0:
            break
        continue
    k = sum(len(v) for v in views)
    ring.release(k)
    got += k
print(got)
ring.close()
'''

CREATE_AND_HANG_CODE = r'''
import sys, time
from acqnode.ring import Ring
from coordinator.frames import frame_dtype
ring = Ring.create(sys.argv[1], frame_dtype({"IN1": "int16"}, 8), 4)
print(ring.name, flush=True)
time.sleep(60)
'''

ATTACH_AND_EXIT_CODE = r'''
import sys
from acqnode.ring import Ring
ring = Ring.attach(sys.argv[1])
s = ring.status()
rec = ring.latest()
print(s.written, int(rec["seq"]) if rec is not None else -1)
if sys.argv[2] == "close":
    ring.close()
'''


def spawn(code: str, *args, pass_fds=(), **kw) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env,
                            pass_fds=pass_fds, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child timed out; stderr: {err}")
    return out, err


# -- fixtures -------------------------------------------------------------------------------------

_labels = itertools.count()


@pytest.fixture
def make_ring():
    rings: list[Ring] = []

    def make(dtype=SMALL, slots=8, label=None) -> Ring:
        r = Ring.create(label or f"t{next(_labels)}-{uuid.uuid4().hex[:8]}", dtype, slots)
        rings.append(r)
        return r

    yield make
    for r in rings:
        r.close()


@pytest.fixture(autouse=True)
def no_leftover_segments():
    before = set(segment_names(OUR_PREFIX))
    extra: list[str] = []  # names of segments made by children, to clean up whatever happens
    yield extra
    for name in extra:
        shm.unlink_segment(name)
    left = set(segment_names(OUR_PREFIX)) - before
    for name in left:
        shm.unlink_segment(name)
    assert not left, f"test left segments behind: {sorted(left)}"


# -- single process -------------------------------------------------------------------------------

def test_create_names_and_layout(make_ring):
    r = make_ring(DT, 8, label="layout")
    assert r.name == f"daqring-{os.getpid()}-layout"
    assert r.name in segment_names()
    assert (r.slots, r.itemsize, r.dtype) == (8, 16408, DT)
    assert r.records.shape == (8,) and r.records.dtype == DT
    assert r.status() == RingStatus(slots=8, written=0, consumed=0, overflow=0, fill=0, head=-1)
    size = os.stat(os.path.join(shm.SHM_DIR, r.name)).st_size
    assert size >= 8 * 16408 and (size - 8 * 16408) % 64 == 0   # data area aligned to 64
    assert r.filled_fd >= 0 and r.freed_fd >= 0 and r.fds == (r.filled_fd, r.freed_fd)


def test_write_peek_release(make_ring):
    r = make_ring(DT, 8)
    frames = make_frames(range(5))
    assert r.write(frames) == 5
    assert (r.available(), r.free_slots()) == (5, 3)
    views = r.peek(3)
    assert len(views) == 1 and views[0]["seq"].tolist() == [0, 1, 2]
    assert np.shares_memory(views[0], r.records)          # zero copy
    assert_intact(views[0])
    assert r.available() == 5                              # peek does not release
    r.release(3)
    assert (r.available(), r.free_slots()) == (2, 6)
    assert r.peek(100)[0]["seq"].tolist() == [3, 4]
    r.release(2)
    assert r.peek(10) == [] and r.available() == 0
    with pytest.raises(ValueError):
        r.release(1)
    s = r.status()
    assert (s.written, s.consumed, s.fill, s.head, s.overflow) == (5, 5, 0, 4, 0)


def test_wrap_around_batch(make_ring):
    r = make_ring(DT, 8)
    assert r.write(make_frames(range(5))) == 5
    r.release(5)
    batch = make_frames(range(5, 11))            # positions 5..10 -> slots 5,6,7,0,1,2
    assert r.write(batch) == 6
    views = r.peek(100)
    assert [len(v) for v in views] == [3, 3]
    assert views[0]["seq"].tolist() == [5, 6, 7] and views[1]["seq"].tolist() == [8, 9, 10]
    got = np.concatenate(views)
    assert np.array_equal(got.view(np.uint8), batch.view(np.uint8))   # every byte, in order
    assert r.records["seq"][[5, 6, 7, 0, 1, 2]].tolist() == list(range(5, 11))
    assert r.stamps[[5, 6, 7, 0, 1, 2]].tolist() == list(range(5, 11))
    # peek limited across the wrap
    views = r.peek(4)
    assert [len(v) for v in views] == [3, 1]
    r.release(4)
    assert r.peek(10)[0]["seq"].tolist() == [9, 10]


def test_lock_fence_path_used_on_weakly_ordered_cpus(make_ring, monkeypatch):
    import acqnode.ring as ring_mod
    monkeypatch.setattr(ring_mod, "_fence", ring_mod._lock_fence)
    r = make_ring(DT, 4)
    errors = []

    def worker():
        try:
            for _ in range(50):
                ring_mod._lock_fence()
        except Exception as exc:  # pragma: no cover
            errors.append(exc)
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    assert r.write(make_frames(range(6))) == 4
    assert np.concatenate(r.peek(4))["seq"].tolist() == [0, 1, 2, 3]
    r.release(4)
    assert int(r.latest()["seq"]) == 3 and len(r.history(4)) == 4
    for t in threads:
        t.join()
    assert not errors


def test_free_available_arithmetic_and_partial_write(make_ring):
    r = make_ring(SMALL, 6)
    seq = 0
    consumed = 0
    rng = np.random.default_rng(1)
    for _ in range(200):
        want = int(rng.integers(0, 5))
        free = r.free_slots()
        n = r.write(make_frames(range(seq, seq + want), SMALL))
        assert n == min(want, free)                          # partial when nearly full, never blocks
        seq += n
        assert r.available() + r.free_slots() == 6
        k = int(rng.integers(0, r.available() + 1))
        views = r.peek(k)
        got = np.concatenate(views)["seq"].tolist() if views else []
        assert got == list(range(consumed, consumed + k))
        r.release(k)
        consumed += k
        assert r.status().fill == seq - consumed == r.available()
    full = make_ring(SMALL, 4)
    assert full.write(make_frames(range(3), SMALL)) == 3
    assert full.write(make_frames(range(3, 8), SMALL)) == 1    # only one slot was left
    assert full.write(make_frames([9], SMALL)) == 0
    assert full.free_slots() == 0


def test_reserve_commit_fills_in_place(make_ring):
    r = make_ring(DT, 8)
    r.write(make_frames(range(6)))
    r.release(6)
    views = r.reserve(5)                                   # positions 6..10 -> slots 6,7,0,1,2
    assert [len(v) for v in views] == [2, 3]
    assert all(np.shares_memory(v, r.records) for v in views)
    assert r.stamps[[6, 7, 0, 1, 2]].tolist() == [int(BUSY)] * 5   # hidden from observers meanwhile
    assert r.latest(7) is None
    fill(views[0], [6, 7])
    fill(views[1][:2], [8, 9])
    assert r.available() == 0                              # nothing published yet
    with pytest.raises(ValueError):
        r.commit(6)
    r.commit(4)
    assert r.available() == 4
    got = np.concatenate(r.peek(10))
    assert got["seq"].tolist() == [6, 7, 8, 9]
    assert_intact(got)
    assert int(r.latest()["seq"]) == 9 and readable(r.filled_fd)
    r.release(4)
    assert r.free_slots() == 8
    assert [len(v) for v in r.reserve(100)] == [6, 2] and r.free_slots() == 8
    r.commit(0)
    r.write(make_frames(range(10, 18)))
    assert r.reserve(1) == []


def test_write_accepts_raw_buffers_and_checks_dtype(make_ring):
    r = make_ring(SMALL, 8)
    f = make_frames(range(6), SMALL)
    assert r.write(f[:1].view(np.uint8)) == 1                            # flat uint8
    assert r.write(f[1:2].view(np.uint8).reshape(1, -1)) == 1            # (n, itemsize) uint8
    assert r.write(f[2:3].view(np.dtype((np.void, SMALL.itemsize)))) == 1  # void records
    assert r.write(f[3:4].tobytes()) == 1                                # bytes
    assert r.write(f[4:6][::-1][::-1]) == 2                              # non-owning view
    assert np.concatenate(r.peek(10))["seq"].tolist() == list(range(6))
    assert_intact(np.concatenate(r.peek(10)))
    other = frame_dtype({"IN1": "int16", "IN3": "int16"}, 16)
    with pytest.raises(TypeError):
        r.write(np.zeros(1, other))
    with pytest.raises(ValueError):
        r.write(np.zeros(SMALL.itemsize + 1, np.uint8))
    # a non-contiguous selection is copied, not mangled
    r.release(6)
    g = make_frames(range(10, 16), SMALL)
    assert r.write(g[::2]) == 3
    assert np.concatenate(r.peek(10))["seq"].tolist() == [10, 12, 14]


def test_doorbells(make_ring):
    r = make_ring(SMALL, 4)
    assert not readable(r.filled_fd) and not readable(r.freed_fd)
    r.write(make_frames([0, 1], SMALL))
    assert readable(r.filled_fd)
    assert r.drain_doorbell() >= 1
    assert not readable(r.filled_fd)
    r.release(1)
    assert readable(r.freed_fd)
    assert r.drain_freed() >= 1 and not readable(r.freed_fd)
    assert r.write(np.zeros(0, SMALL)) == 0 and not readable(r.filled_fd)   # nothing published, no ring
    r.close_writer()
    assert readable(r.filled_fd)


def test_filled_fd_in_zmq_poller(make_ring):
    zmq = pytest.importorskip("zmq")
    r = make_ring(SMALL, 4)
    poller = zmq.Poller()
    poller.register(r.filled_fd, zmq.POLLIN)
    assert dict(poller.poll(0)) == {}
    r.write(make_frames([0], SMALL))
    assert dict(poller.poll(1000)) == {r.filled_fd: zmq.POLLIN}
    r.drain_doorbell()
    assert dict(poller.poll(0)) == {}


def test_writer_closed(make_ring):
    r = make_ring(SMALL, 4)
    assert not r.writer_closed
    assert r.wait_available(0.01) is False
    r.write(make_frames([0], SMALL))
    r.close_writer()
    assert r.writer_closed
    with pytest.raises(RuntimeError):
        r.write(make_frames([1], SMALL))
    assert r.wait_available(0) is True and r.available() == 1
    r.release(1)
    assert r.wait_available(5) is True and r.available() == 0   # closed: returns at once


def test_wait_free_blocks_without_spinning_and_wakes(make_ring):
    r = make_ring(SMALL, 2)
    r.write(make_frames([0, 1], SMALL))
    assert r.free_slots() == 0
    c0, t0 = time.process_time(), time.monotonic()
    assert r.wait_free(0.3) is False
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    assert wall >= 0.29
    assert cpu < 0.5 * wall, f"wait_free burnt {cpu:.3f} s CPU in {wall:.3f} s"
    timer = threading.Timer(0.05, r.release, args=(1,))
    timer.start()
    try:
        assert r.wait_free(10) is True
        assert r.free_slots() == 1
    finally:
        timer.join()


def test_wait_available_wakes_on_write(make_ring):
    r = make_ring(SMALL, 4)
    frames = make_frames([0], SMALL)
    timer = threading.Timer(0.05, r.write, args=(frames,))
    timer.start()
    try:
        assert r.wait_available(10) is True and r.available() == 1
    finally:
        timer.join()


def test_put_policies(make_ring):
    r = make_ring(SMALL, 4)
    assert r.put(make_frames(range(3), SMALL), "drop") == 3
    assert r.put(make_frames(range(3, 6), SMALL), "drop") == 1    # trailing 2 dropped
    assert r.status().overflow == 2
    r.note_dropped(3)
    assert r.status().overflow == 5
    with pytest.raises(ValueError):
        r.put(make_frames([7], SMALL), "wait")
    # block: returns early once stop() is true, with what it stored
    calls = []
    stored = r.put(make_frames(range(6, 9), SMALL), "block", stop=lambda: calls.append(1) or len(calls) >= 3,
                   poll=0.01)
    assert stored == 0 and len(calls) == 3
    # block: completes as the consumer frees space
    r.release(2)

    def consume():
        for _ in range(200):
            if r.available():
                r.release(r.available())
            if r.status().written >= 9:
                return
            time.sleep(0.005)

    t = threading.Thread(target=consume)
    t.start()
    try:
        assert r.put(make_frames(range(4, 9), SMALL), "block", poll=0.05) == 5
    finally:
        t.join()
    assert r.status().written == 9


def test_attach_same_process_shares_memory(make_ring):
    r = make_ring(DT, 4)
    a = Ring.attach(r.name, r.filled_fd, r.freed_fd)
    try:
        assert (a.dtype, a.slots, a.itemsize) == (DT, 4, DT.itemsize)
        assert not a.is_owner and r.is_owner
        assert a.filled_fd != r.filled_fd                 # attach keeps its own duplicate
        a.write(make_frames([0, 1]))
        assert readable(r.filled_fd)                      # same eventfd underneath
        assert r.peek(5)[0]["seq"].tolist() == [0, 1]
        r.release(2)
        assert a.status().consumed == 2
    finally:
        a.close()
    assert r.name in segment_names()                      # an attached close never unlinks
    assert r.filled_fd is not None and readable(r.filled_fd)   # owner's fd still open


def test_attach_rejects_non_eventfd(make_ring):
    r = make_ring(SMALL, 4)
    rfd, wfd = os.pipe()
    try:
        with pytest.raises(ValueError):
            Ring.attach(r.name, rfd, None)
    finally:
        os.close(rfd)
        os.close(wfd)


def test_dtype_round_trip_for_other_layouts(make_ring):
    dt = np.dtype({"names": ["seq", "timestamp", "flags", "reserved", "energy", "wave", "pos"],
                   "formats": ["<u8", "<u8", "<u4", "<u4", "<f8", ("<f4", (3, 5)),
                               np.dtype([("x", "<i4"), ("y", "<i4")])],
                   "offsets": [0, 8, 16, 20, 24, 32, 96], "itemsize": 112})
    r = make_ring(dt, 3)
    a = Ring.attach(r.name)
    try:
        assert a.dtype == dt and a.itemsize == 112
    finally:
        a.close()
    with pytest.raises(ValueError):
        make_ring(np.dtype("<i2"), 4)                          # not structured
    with pytest.raises(ValueError):
        make_ring(np.dtype([("a", "<u8"), ("b", "<i2", (4,))]), 4)   # no frame header
    with pytest.raises(ValueError):
        make_ring(SMALL, 0)
    with pytest.raises(ValueError):
        make_ring(SMALL, 4, label="bad/label")
    with pytest.raises(ValueError):
        Ring.create(f"daqring-{os.getpid() + 1}-x", SMALL, 4)  # full name with someone else's pid


def test_latest_and_history_single_process(make_ring):
    r = make_ring(DT, 8)
    assert r.latest() is None and len(r.history(5)) == 0
    r.write(make_frames(range(3)))
    rec = r.latest()
    assert rec.shape == () and rec.dtype == DT and int(rec["seq"]) == 2
    assert not np.shares_memory(rec, r.records)            # a copy
    assert int(r.latest(2)["seq"]) == 0
    assert r.latest(3) is None and r.latest(-1) is None    # beyond what exists
    r.release(3)                                           # consumed records stay observable
    assert int(r.latest(2)["seq"]) == 0
    r.write(make_frames(range(3, 11)))                     # 11 written, slots hold 3..10 (wrapping)
    assert r.latest(7) is not None and int(r.latest(7)["seq"]) == 3
    assert r.latest(8) is None
    h = r.history(100)
    assert h["seq"].tolist() == list(range(3, 11))
    assert_intact(h)
    assert r.history(3)["seq"].tolist() == [8, 9, 10]
    assert r.history(0).shape == (0,)


def test_torn_or_overwritten_records_are_never_returned(make_ring):
    r = make_ring(DT, 8)
    r.write(make_frames(range(6)))
    newest_slot = 5
    r.stamps[newest_slot] = BUSY                      # writer "in the middle" of slot 5
    r.records["IN1"][newest_slot][:100] = 12345       # with half-written payload
    assert r.latest() is None
    assert int(r.latest(1)["seq"]) == 4
    h = r.history(6)
    assert h["seq"].tolist() == [0, 1, 2, 3, 4]       # left out, not returned torn
    assert_intact(h)
    r.stamps[2] = 2 + 8                               # slot 2 now holds a later position
    assert r.latest(3) is None
    assert r.history(6)["seq"].tolist() == [0, 1, 3, 4]
    r.stamps[newest_slot] = 5
    r.records[newest_slot] = make_frames([5])[0]
    assert int(r.latest()["seq"]) == 5


def test_close_is_idempotent_and_views_survive(make_ring):
    r = make_ring(DT, 4)
    r.write(make_frames([0]))
    a = Ring.attach(r.name)
    view = a.peek(1)[0]
    a.close()
    a.close()
    assert int(view["seq"][0]) == 0                   # mapping kept alive by the view
    assert a.closed and "closed" in repr(a)
    name = r.name
    r.close()
    r.close()
    assert name not in segment_names()
    del view


def test_owner_context_manager_unlinks_and_unlink_explicit():
    with Ring.create(f"ctx-{uuid.uuid4().hex[:8]}", SMALL, 4) as r:
        name = r.name
        assert name in segment_names()
    assert name not in segment_names()
    r2 = Ring.create(f"unl-{uuid.uuid4().hex[:8]}", SMALL, 4)
    try:
        r2.unlink()
        assert r2.name not in segment_names()
        r2.write(make_frames([0], SMALL))             # still mapped, still works
        assert r2.available() == 1
    finally:
        r2.close()
    with pytest.raises(FileExistsError):
        with Ring.create("dup-x", SMALL, 2):
            Ring.create("dup-x", SMALL, 2)


def _forked_child_uses_and_closes(ring: Ring, q) -> None:
    ring.write(make_frames([0], SMALL))
    ring.close()                               # the inherited owner object must not unlink here
    q.put(ring.name in segment_names())


def test_forked_child_closing_inherited_owner_object_does_not_unlink(make_ring):
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    r = make_ring(SMALL, 4)
    q = ctx.Queue()
    p = ctx.Process(target=_forked_child_uses_and_closes, args=(r, q))
    p.start()
    try:
        assert q.get(timeout=30) is True
    finally:
        p.join(30)
    assert p.exitcode == 0
    assert r.name in segment_names()
    assert r.read(10)["seq"].tolist() == [0]  # copy-and-release convenience
    assert r.available() == 0 and r.read(10).shape == (0,)


# -- two real processes ---------------------------------------------------------------------------

def _consume_all(ring: Ring, proc: subprocess.Popen, *, seconds: float, stall=None, max_batch=5):
    """Consumer loop in the test process: returns the received seqs (and checks every byte)."""
    rng = np.random.default_rng(3)
    received: list[np.ndarray] = []
    n_got = 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        ring.wait_available(0.2)
        views = ring.peek(int(rng.integers(1, max_batch + 1)))
        if not views:
            if ring.writer_closed and ring.available() == 0:
                return np.concatenate(received) if received else np.empty(0, np.uint64)
            if proc.poll() not in (None, 0):
                pytest.fail(f"writer died: {proc.stderr.read()}")
            continue
        for v in views:
            assert_intact(v)
            received.append(v["seq"].copy())
            n_got += len(v)
        ring.release(sum(len(v) for v in views))
        if stall is not None:
            stall(n_got)
    pytest.fail("consumer did not see the writer finish in time")


@pytest.mark.parametrize("batch", [3, 8])
def test_two_processes_block_policy_loses_nothing(make_ring, tmp_path, batch):
    n = 5000
    r = make_ring(DT, 8)
    out = tmp_path / "writer.json"
    proc = spawn(WRITER_CODE, r.name, r.filled_fd, r.freed_fd, n, "block", batch, out, 60, pass_fds=r.fds)
    try:
        def slow(n_got):                        # slow consumer: the writer must wait, not drop
            if n_got % 7 == 0:
                time.sleep(0.001)
        seqs = _consume_all(r, proc, seconds=90, stall=slow)
    finally:
        _, err = finish(proc)
    assert proc.returncode == 0, err
    assert seqs.tolist() == list(range(n))
    report = json.loads(out.read_text())
    assert report == {"dropped": [], "written": n, "last": n}
    s = r.status()
    assert (s.written, s.consumed, s.overflow, s.fill) == (n, n, 0, 0)


def test_two_processes_drop_policy_accounts_for_every_seq(make_ring, tmp_path):
    n = 5000
    r = make_ring(DT, 8)
    out = tmp_path / "writer.json"
    proc = spawn(WRITER_CODE, r.name, r.filled_fd, r.freed_fd, n, "drop", 4, out, 60, pass_fds=r.fds)
    try:
        # stall at the start until the writer has certainly dropped something, then now and then
        t_end = time.monotonic() + 30
        while r.status().overflow == 0 and time.monotonic() < t_end and proc.poll() is None:
            time.sleep(0.005)

        def stalls(n_got):
            if n_got % 1000 < 3:
                time.sleep(0.01)
        seqs = _consume_all(r, proc, seconds=90, stall=stalls)
    finally:
        _, err = finish(proc)
    assert proc.returncode == 0, err
    report = json.loads(out.read_text())
    dropped = report["dropped"]
    s = r.status()
    assert s.overflow > 0
    assert s.overflow == len(dropped) == n - report["written"]
    assert len(seqs) == report["written"] == s.written
    assert np.all(np.diff(seqs.astype(np.int64)) > 0)           # in order, no duplicates
    together = np.sort(np.concatenate([seqs, np.asarray(dropped, np.uint64)]))
    assert together.tolist() == list(range(n))                   # every seq exactly once


def test_observers_racing_writer(make_ring, tmp_path):
    slots = 16
    r = make_ring(DT, slots)
    out = tmp_path / "writer.json"
    writer = spawn(WRITER_CODE, r.name, r.filled_fd, r.freed_fd, 10**9, "block", 5, out, 3.0, pass_fds=r.fds)
    consumer = spawn(CONSUMER_CODE, r.name, r.filled_fd, r.freed_fd, 30, pass_fds=r.fds)
    seen = nones = 0
    last_latest = -1
    try:
        t_start = time.monotonic() + 20                  # let the writer get going (bounded)
        while r.status().written < 2 * slots and time.monotonic() < t_start and writer.poll() is None:
            time.sleep(0.01)
        t_end = time.monotonic() + 2.0
        for i in range(20000):
            if time.monotonic() > t_end or writer.poll() is not None:
                break
            rec = r.latest(i % 4)
            if rec is None:
                nones += 1
            else:
                assert_intact(rec)
                if i % 4 == 0:
                    assert int(rec["seq"]) >= last_latest           # newest never goes back
                    last_latest = int(rec["seq"])
                seen += 1
            h = r.history(slots)
            if len(h):
                assert_intact(h)
                s = h["seq"].astype(np.int64)
                assert np.all(np.diff(s) > 0)                      # oldest first, no duplicates
                seen += len(h)
            assert r.latest(slots) is None and r.latest(slots + 3) is None
    finally:
        _, werr = finish(writer)
        cout, cerr = finish(consumer)
    assert writer.returncode == 0, werr
    assert consumer.returncode == 0, cerr
    report = json.loads(out.read_text())
    assert int(cout) == report["written"] == r.status().written
    assert seen > 0
    # after the run the newest records are all intact and consecutive
    h = r.history(slots)
    assert h["seq"].tolist() == list(range(report["written"] - slots, report["written"]))
    assert r.latest(report["written"]) is None


# -- ownership, stale segments, resource tracker --------------------------------------------------

def test_attach_missing_raises_file_not_found():
    name = f"daqring-{os.getpid()}-missing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(FileNotFoundError) as ei:
        Ring.attach(name)
    assert name in str(ei.value)


def test_attach_bad_magic_or_version(make_ring):
    junk = f"daqring-{os.getpid()}-junk-{uuid.uuid4().hex[:6]}"
    with open(os.path.join(shm.SHM_DIR, junk), "wb") as f:
        f.write(b"NOTARING" + bytes(8000))
    try:
        with pytest.raises(ValueError, match=junk):
            Ring.attach(junk)
        assert junk not in cleanup_stale()                # owner (us) is alive: left alone
    finally:
        shm.unlink_segment(junk)
    r = make_ring(SMALL, 4)
    with open(os.path.join(shm.SHM_DIR, r.name), "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", LAYOUT_VERSION + 41))
    with pytest.raises(ValueError, match=r.name):
        Ring.attach(r.name)


def test_child_attach_and_exit_leaves_segment_and_prints_no_warnings(make_ring):
    r = make_ring(DT, 4)
    r.write(make_frames([0, 1, 2]))
    for mode in ("close", "just-exit"):
        proc = spawn(ATTACH_AND_EXIT_CODE, r.name, mode)
        out, err = finish(proc)
        assert proc.returncode == 0, err
        assert out.split() == ["3", "2"]
        assert "leaked" not in err and "resource_tracker" not in err and err.strip() == ""
        assert r.name in segment_names()                  # the attaching child did not unlink it
    assert int(r.latest()["seq"]) == 2


def test_killed_owner_leaves_segment_and_cleanup_stale_removes_it(no_leftover_segments):
    label = f"kill-{uuid.uuid4().hex[:8]}"
    proc = spawn(CREATE_AND_HANG_CODE, label)
    try:
        line = proc.stdout.readline().strip()
        assert line, proc.stderr.read() if proc.poll() is not None else "no name from child"
        name = line
        no_leftover_segments.append(name)
        assert name == f"daqring-{proc.pid}-{label}" and name in segment_names()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert name in segment_names()                        # nobody cleaned up after SIGKILL
    removed = cleanup_stale()
    assert name in removed
    assert name not in segment_names()


def test_create_removes_stale_segments(no_leftover_segments, make_ring):
    label = f"stale-{uuid.uuid4().hex[:8]}"
    proc = spawn(CREATE_AND_HANG_CODE, label)
    try:
        name = proc.stdout.readline().strip()
        no_leftover_segments.append(name)
        assert name in segment_names()
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    make_ring(SMALL, 2)
    assert name not in segment_names()


def test_cleanup_stale_decisions(make_ring, no_leftover_segments):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    # a live ring of ours stays; one whose control block says our pid but another start time
    # (= the pid was reused by an unrelated process) goes
    keep = make_ring(SMALL, 2)
    reused = make_ring(SMALL, 2)
    with open(os.path.join(shm.SHM_DIR, reused.name), "r+b") as f:
        f.seek(24)
        f.write(struct.pack("<Q", 12345))
    # a garbage segment named after a dead pid goes; one of a live pid stays; foreign names stay
    garbage = f"daqring-{dead_pid}-garbage-{uuid.uuid4().hex[:6]}"
    live_garbage = f"daqring-{os.getpid()}-busy-{uuid.uuid4().hex[:6]}"
    foreign = f"daqring-notapid-{uuid.uuid4().hex[:6]}"
    for n in (garbage, live_garbage, foreign):
        no_leftover_segments.append(n)
        with open(os.path.join(shm.SHM_DIR, n), "wb") as f:
            f.write(bytes(64))
    removed = cleanup_stale()
    assert garbage in removed and reused.name in removed
    assert live_garbage not in removed and foreign not in removed and keep.name not in removed
    present = segment_names()
    assert live_garbage in present and foreign in present and keep.name in present
    assert garbage not in present and reused.name not in present
    assert cleanup_stale(prefix="daqring-nothing-matches-") == []
