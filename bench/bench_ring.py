"""Throughput of the shared-memory frame ring vs. a multiprocessing.Queue slot-token ring.

    python bench/bench_ring.py [--seconds S] [--repeat R] [--touch seq|copy] [--json]

One writer process -> one reader process (fork), for 16 KiB frames (IN1, IN2 int16 x 4096 =
16408 B, 128 slots = 2 MiB) and 1 MiB frames (IN1 int16 x 524288 = 1048600 B, 8 slots = 8 MiB).

* ring: ``acqnode.ring.Ring``; the writer stamps seq numbers into a prepared batch (16 frames at
  16 KiB, 1 at 1 MiB) and ``put(batch, "block")``s it; the reader waits on the doorbell, peeks
  up to slots/4 records, touches them and releases them (releasing in chunks lets the writer
  refill while the reader works).
* baseline (mimoCoRB2's scheme): slot indices travel through two ``multiprocessing.Queue``s.
  The writer ``get``s a free index, copies one frame into that shared-memory slot through uint8
  views, sets its seq and ``put``s the index on the filled queue; the reader ``get``s it, does the
  same touch and ``put``s it back on the free queue.  Same number of slots as the ring.

Touch (same work per frame in both schemes): ``copy`` (default) copies every frame's bytes out of
shared memory into a private buffer and checks the seq of every frame is the next expected one;
this is the data traffic of the real consumer, whose frames end up copied into socket buffers.
``seq`` only reads and checks the seq of every frame.
Frames/s are counted by the reader, from its first frame to the writer's end marker; each
case and scheme is measured ``--repeat`` times (alternating) and the best run is shown, because
other load on the machine only ever makes a run slower.  CPU% = process CPU time / wall time.
"""
from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from acqnode.ring import Ring  # noqa: E402
from coordinator.frames import frame_dtype  # noqa: E402

CASES = [
    # label, channels, samples, writer batch, slots
    ("16 KiB", {"IN1": "int16", "IN2": "int16"}, 4096, 16, 128),
    ("1 MiB", {"IN1": "int16"}, 524288, 1, 8),
]


def _prepared(dtype: np.dtype, n: int) -> np.ndarray:
    src = np.zeros(n, dtype)
    for name in dtype.names[4:]:
        src[name] = (np.arange(src[name].shape[1]) % 1000).astype(src[name].dtype)
    return src


# -- ring ---------------------------------------------------------------------------------------

def ring_writer(name, fds, batch, seconds, go, res):
    ring = Ring.attach(name, *fds)
    src = _prepared(ring.dtype, batch)
    seqcol = src["seq"]
    step = np.arange(batch, dtype=np.uint64)
    go.wait()
    c0, t0 = time.process_time(), time.monotonic()
    t_end = t0 + seconds
    seq = 0
    while time.monotonic() < t_end:
        np.add(step, seq, out=seqcol)
        ring.put(src, "block")
        seq += batch
    ring.close_writer()
    res.put(("writer", seq, time.process_time() - c0, time.monotonic() - t0))
    ring.close()


def ring_reader(name, fds, touch, ready, res):
    ring = Ring.attach(name, *fds)
    isz = ring.itemsize
    chunk = max(1, ring.slots // 4)  # release in chunks so the writer can refill meanwhile
    priv = np.empty(chunk * isz, np.uint8)
    expect = 0
    t_first = None
    ready.set()
    c0 = time.process_time()
    while True:
        if not ring.wait_available(1.0):
            continue
        views = ring.peek(chunk)
        if not views:
            if ring.writer_closed and ring.available() == 0:
                break
            continue
        if t_first is None:
            t_first = time.monotonic()
        n = 0
        for v in views:
            k = len(v)
            if touch == "copy":
                priv[:k * isz] = v.view(np.uint8).reshape(-1)
                s = priv[:k * isz].view(ring.dtype)["seq"]
            else:
                s = v["seq"]
            if not np.array_equal(s, np.arange(expect, expect + k, dtype=np.uint64)):
                raise RuntimeError(f"ring: seqs from {s[0]} != expected from {expect}")
            expect += k
            n += k
        ring.release(n)
    t_last = time.monotonic()
    res.put(("reader", expect, time.process_time() - c0, t_last - (t_first or t_last)))
    ring.close()


def _race(reader, writer, ready, go, res, seconds: float) -> dict:
    """Start both processes, let them go together, collect one result from each."""
    reader.start()
    writer.start()
    ready.wait(10)
    go.set()
    out = {}
    for _ in range(2):
        role, *vals = res.get(timeout=seconds + 60)
        out[role] = vals
    writer.join(10)
    reader.join(10)
    return out


def run_ring(dtype, batch, slots, seconds, touch, ctx):
    ring = Ring.create(f"bench{os.getpid()}", dtype, slots)
    try:
        res, go, ready = ctx.Queue(), ctx.Event(), ctx.Event()
        fds = (ring.filled_fd, ring.freed_fd)
        r = ctx.Process(target=ring_reader, args=(ring.name, fds, touch, ready, res), daemon=True)
        w = ctx.Process(target=ring_writer, args=(ring.name, fds, batch, seconds, go, res), daemon=True)
        return _race(r, w, ready, go, res, seconds)
    finally:
        ring.close()


# -- baseline: slot tokens through multiprocessing.Queue -----------------------------------------

def q_writer(buf, dtype, slots, free_q, filled_q, batch, seconds, go, res):
    isz = dtype.itemsize
    data = np.frombuffer(buf, np.uint8, slots * isz)
    records = np.frombuffer(buf, dtype, slots)
    src = _prepared(dtype, batch).view(np.uint8).reshape(batch, isz)
    go.wait()
    c0, t0 = time.process_time(), time.monotonic()
    t_end = t0 + seconds
    seq = 0
    while time.monotonic() < t_end:
        for j in range(batch):
            idx = free_q.get()
            data[idx * isz:(idx + 1) * isz] = src[j]
            records["seq"][idx] = seq
            filled_q.put(idx)
            seq += 1
    filled_q.put(None)
    res.put(("writer", seq, time.process_time() - c0, time.monotonic() - t0))


def q_reader(buf, dtype, slots, free_q, filled_q, touch, ready, res):
    isz = dtype.itemsize
    data = np.frombuffer(buf, np.uint8, slots * isz)
    seqs = np.frombuffer(buf, dtype, slots)["seq"]
    priv = np.empty(isz, np.uint8)
    privseq = priv.view(dtype)["seq"]
    expect = 0
    t_first = None
    ready.set()
    c0 = time.process_time()
    while True:
        idx = filled_q.get()
        if idx is None:
            break
        if t_first is None:
            t_first = time.monotonic()
        if touch == "copy":
            priv[:] = data[idx * isz:(idx + 1) * isz]
            s = privseq[0]
        else:
            s = seqs[idx]
        if s != expect:
            raise RuntimeError(f"queue: seq {s} != expected {expect}")
        expect += 1
        free_q.put(idx)
    t_last = time.monotonic()
    res.put(("reader", expect, time.process_time() - c0, t_last - (t_first or t_last)))


def run_queue(dtype, batch, slots, seconds, touch, ctx):
    buf = mmap.mmap(-1, slots * dtype.itemsize)  # MAP_SHARED|MAP_ANONYMOUS, inherited through fork
    res, go, ready = ctx.Queue(), ctx.Event(), ctx.Event()
    free_q, filled_q = ctx.Queue(), ctx.Queue()
    for i in range(slots):
        free_q.put(i)
    r = ctx.Process(target=q_reader, args=(buf, dtype, slots, free_q, filled_q, touch, ready, res),
                    daemon=True)
    w = ctx.Process(target=q_writer, args=(buf, dtype, slots, free_q, filled_q, batch, seconds, go, res),
                    daemon=True)
    return _race(r, w, ready, go, res, seconds)


# -- main ---------------------------------------------------------------------------------------

def _summary(out, isz):
    frames, rcpu, rwall = out["reader"]
    _, wcpu, wwall = out["writer"]
    fps = frames / rwall if rwall > 0 else float("nan")
    return {"frames": frames, "frames_per_s": fps, "MB_per_s": fps * isz / 1e6,
            "writer_cpu_pct": 100 * wcpu / wwall, "reader_cpu_pct": 100 * rcpu / max(rwall, 1e-9)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5,
                    help="writer run time of one measurement (default 1.5)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="measurements per case and scheme, alternating ring/queue; the best is shown "
                         "(default 2, i.e. about 3 s per case and scheme)")
    ap.add_argument("--touch", choices=("copy", "seq"), default="copy",
                    help="reader work per frame: copy the frame out and check its seq (default), "
                         "or only read and check the seq")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = ap.parse_args(argv)
    ctx = mp.get_context("fork")
    results = []
    for label, channels, samples, batch, slots in CASES:
        dtype = frame_dtype(channels, samples)
        runs = {"ring": [], "queue": []}
        for _ in range(max(1, args.repeat)):
            runs["ring"].append(_summary(run_ring(dtype, batch, slots, args.seconds, args.touch, ctx),
                                         dtype.itemsize))
            runs["queue"].append(_summary(run_queue(dtype, batch, slots, args.seconds, args.touch, ctx),
                                          dtype.itemsize))
        best = {k: max(v, key=lambda s: s["frames_per_s"]) for k, v in runs.items()}
        results.append({"case": label, "itemsize": dtype.itemsize, "writer_batch": batch, "slots": slots,
                        "touch": args.touch, "ring": best["ring"], "queue": best["queue"],
                        "ratio": best["ring"]["frames_per_s"] / best["queue"]["frames_per_s"],
                        "all_frames_per_s": {k: [round(s["frames_per_s"]) for s in v] for k, v in runs.items()}})
    if args.json:
        print(json.dumps({"seconds": args.seconds, "repeat": args.repeat, "cpus": os.cpu_count(),
                          "results": results}, indent=2))
        return 0
    print(f"ring vs multiprocessing.Queue slot tokens; touch={args.touch}; best of {args.repeat} x "
          f"{args.seconds:g} s per case and scheme; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.2f}")
    hdr = (f"{'frame':>7} {'scheme':>6} {'batch':>5} {'slots':>5} {'frames/s':>10} {'MB/s':>8} "
           f"{'wCPU%':>6} {'rCPU%':>6}  all runs (frames/s)")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        for scheme, batch in (("ring", r["writer_batch"]), ("queue", 1)):
            s = r[scheme]
            print(f"{r['case']:>7} {scheme:>6} {batch:>5} {r['slots']:>5} {s['frames_per_s']:>10.0f} "
                  f"{s['MB_per_s']:>8.0f} {s['writer_cpu_pct']:>6.0f} {s['reader_cpu_pct']:>6.0f}  "
                  f"{r['all_frames_per_s'][scheme]}")
        print(f"{r['case']:>7} {'ratio':>6} {'':>5} {'':>5} {r['ratio']:>9.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
