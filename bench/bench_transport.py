"""Acquisition node -> processing node over tcp loopback, against plain pyzmq PUSH->PULL.

Run:  python bench/bench_transport.py [--seconds S] [--json]

Cases, each at 16 KiB and 1 MiB frames:
  baseline   plain pyzmq PUSH -> PULL between two processes, one frame per message; the
             sender resends one ready buffer
  transport  the real system (daq-coordinator run): pattern source -> reader process ->
             ring -> shipper (batched, credit) -> procnode with a `drain` pipeline.  Like the
             baseline, the source produces no sample bytes (`payload: none`: it writes each
             frame's header into its ring slot and the slot's bytes are shipped as they are)
  + payload  the same with a source that writes every sample byte (`payload: ramp`): the
             transport plus the cost of producing the data, which the baseline does not pay
  hdf5       the `+ payload` case with a `save` pipeline (HDF5 on this machine's disk)
Both rates are timed the same way, at the receiver from its first message to its last (the
processing node reports these times in its end-of-run `flow`), so neither node start-up nor
the end-of-run handshake counts.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SIZES = {"16KiB": {"samples": 4096, "channels": {"IN1": "int16", "IN2": "int16"}},
         "1MiB": {"samples": 524288, "channels": {"IN1": "int16"}}}
FRAME_BYTES = {"16KiB": 16384, "1MiB": 1 << 20}


# ---------------------------------------------------------------------------- baseline
def _push(port: int, size: int, n: int) -> None:
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(f"tcp://127.0.0.1:{port}")
    buf = os.urandom(size)
    big = size >= 65536
    for _ in range(n):
        s.send(buf, copy=not big)
    s.close(linger=-1)
    ctx.term()


def baseline(size: int, seconds: float) -> dict:
    import zmq
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, 30000)   # a sender that died must not hang the benchmark
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    n = max(200, int(seconds * (60000 if size < 65536 else 4000)))
    proc = mp.get_context("spawn").Process(target=_push, args=(port, size, n))
    proc.start()
    pull.recv(copy=size < 65536)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        pull.recv(copy=size < 65536)
    dt = time.perf_counter() - t0
    proc.join()
    pull.close()
    ctx.term()
    return {"frames_per_s": (n - 1) / dt, "MB_per_s": (n - 1) * size / dt / 1e6, "frames": n}


# ---------------------------------------------------------------------------- the system
def system(size_name: str, pipeline: list, frames: int, workdir: Path, batch: int | None = None,
           payload: str = "ramp") -> dict:
    topo = {
        "topology": 1, "name": f"bench-{size_name}",
        "run": {"directory": str(workdir / "runs"), "frames": frames, "drain_timeout": 30.0},
        "streams": {"s": SIZES[size_name]},
        "acquisition": {"acq": {"stream": "s", "source": {"kind": "pattern", "rate": "max", "payload": payload},
                                "ring": {"slots": 256 if size_name == "16KiB" else 64},
                                **({"batch": batch} if batch else {})}},
        "processing": {"proc": {"pipeline": pipeline,
                                "credits": 512 if size_name == "16KiB" else 32}},
    }
    path = workdir / f"{size_name}.yaml"
    path.write_text(yaml.safe_dump(topo))
    res = subprocess.run([sys.executable, "-m", "coordinator.cli", "run", str(path), "--json"],
                         capture_output=True, text=True, timeout=600)
    summary = json.loads(res.stdout)
    if res.returncode != 0:
        raise RuntimeError(f"run failed: {summary.get('message')}\n{res.stderr[-2000:]}")
    if summary["nodes"]["acq"]["report"] is None or summary["nodes"]["proc"]["report"] is None:
        raise RuntimeError(f"a node sent no end-of-run report; see {summary['run_dir']}/log.txt\n"
                           + json.dumps(summary["nodes"], default=str)[:3000])
    itemsize = summary["nodes"]["acq"]["configured"]["itemsize"]
    n = summary["books"]["produced"]
    proc_report = summary["nodes"]["proc"]["report"]
    # timed like the baseline: at the receiver, from the first message to the last
    flow = proc_report["flow"]
    stages = proc_report["pipeline"]["stages"]
    dt = flow["t_last"] - flow["t_first"]
    moved = flow["frames_after_first"]
    states = {h["state"]: h["time"] for h in summary["states"]}
    out = {"frames_per_s": moved / dt, "MB_per_s": moved * itemsize / dt / 1e6, "frames": n, "seconds": dt,
           "seconds_running_to_stopped": states["stopped"] - states["running"],
           "messages": summary["nodes"]["acq"]["report"]["messages"],
           "stage_seconds": {label: st["seconds"] for label, st in stages.items()},
           "file_detail": next((st for label, st in stages.items() if label.endswith(":file")), {}),
           "cpu_s_per_GB": {name: round((v["counters"].get("cpu_s", 0) + (v["counters"].get("reader_cpu_s") or 0))
                                        / (n * itemsize / 1e9), 3) for name, v in summary["nodes"].items()},
           "balanced": summary["books"]["balanced"]}
    for run_dir in (workdir / "runs").glob("*"):
        for f in run_dir.glob("*.h5"):
            f.unlink()   # keep the disk free between cases
    return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="approximate time per case")
    ap.add_argument("--repeat", type=int, default=3, help="alternating baseline/system pairs per size")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--workdir", help="where runs are written (default: system temp)")
    ap.add_argument("--no-hdf5", action="store_true", help="skip the HDF5 cases")
    ap.add_argument("--sizes", default=",".join(FRAME_BYTES), help="frame sizes to run, e.g. 1MiB")
    ap.add_argument("--batch", type=int, help="frames per data message (default: the node's, ~4 MiB)")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="daq-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        for size_name in args.sizes.split(","):
            size = FRAME_BYTES[size_name]
            pairs = []
            for _ in range(args.repeat):   # alternate, so machine noise hits both alike
                base = baseline(size, args.seconds)
                frames = int(base["frames_per_s"] * args.seconds)
                trans = system(size_name, [{"stage": "drain"}], frames, work, args.batch, payload="none")
                full = system(size_name, [{"stage": "drain"}], frames, work, args.batch, payload="ramp")
                pairs.append((base, trans, full))
            row = {"pairs": pairs,
                   "baseline_frames_per_s": _median([b["frames_per_s"] for b, _, _ in pairs]),
                   "baseline_MB_per_s": _median([b["MB_per_s"] for b, _, _ in pairs]),
                   "transport_frames_per_s": _median([t["frames_per_s"] for _, t, _ in pairs]),
                   "transport_MB_per_s": _median([t["MB_per_s"] for _, t, _ in pairs]),
                   "ratios": [t["frames_per_s"] / b["frames_per_s"] for b, t, _ in pairs],
                   "payload_frames_per_s": _median([f["frames_per_s"] for _, _, f in pairs]),
                   "payload_MB_per_s": _median([f["MB_per_s"] for _, _, f in pairs]),
                   "payload_ratios": [f["frames_per_s"] / b["frames_per_s"] for b, _, f in pairs]}
            row["ratio"] = _median(row["ratios"])
            row["payload_ratio"] = _median(row["payload_ratios"])
            if not args.no_hdf5:
                frames = min(int(row["transport_frames_per_s"] * args.seconds), int(3e9 / size))
                h5 = system(size_name, [{"stage": "save", "format": "hdf5"}], frames, work)
                save_s = sum(v for k, v in h5["stage_seconds"].items() if k.endswith("save"))
                row["hdf5"] = {**h5, "save_fraction": save_s / h5["seconds"]}
            results[size_name] = row
    if args.json:
        print(json.dumps(results, indent=2))
        return
    targets = {"16KiB": ("frames/s", 1.0), "1MiB": ("MB/s", 0.7)}
    print(f"medians of {args.repeat} alternating runs; ratio = system / PUSH-PULL in the same pair")
    print(f"{'frame':>6} {'case':>10} {'frames/s':>10} {'MB/s':>8} {'ratio':>6} {'(min..max)':>12}  target")
    for size_name, row in results.items():
        what, target = targets[size_name]
        lo, hi = min(row["ratios"]), max(row["ratios"])
        print(f"{size_name:>6} {'PUSH/PULL':>10} {row['baseline_frames_per_s']:>10,.0f} "
              f"{row['baseline_MB_per_s']:>8,.0f} {'1.00':>6}")
        print(f"{size_name:>6} {'acq->proc':>10} {row['transport_frames_per_s']:>10,.0f} "
              f"{row['transport_MB_per_s']:>8,.0f} {row['ratio']:>6.2f} {f'({lo:.2f}..{hi:.2f})':>12}  "
              f">= {target} x {what}: {'met' if row['ratio'] >= target else 'NOT met'}")
        lo, hi = min(row["payload_ratios"]), max(row["payload_ratios"])
        print(f"{size_name:>6} {'+ payload':>10} {row['payload_frames_per_s']:>10,.0f} "
              f"{row['payload_MB_per_s']:>8,.0f} {row['payload_ratio']:>6.2f} {f'({lo:.2f}..{hi:.2f})':>12}  "
              f"(the source also writes every sample byte)")
        if "hdf5" in row:
            h = row["hdf5"]
            print(f"{size_name:>6} {'+ hdf5':>10} {h['frames_per_s']:>10,.0f} {h['MB_per_s']:>8,.0f} "
                  f"{h['MB_per_s'] / row['baseline_MB_per_s']:>6.2f} {'':>12}  "
                  f"save stage busy {100 * h['save_fraction']:.0f}% of the run")
            detail = {k: v for k, v in h["file_detail"].items() if k != "seconds"}
            print(f"{'':>18} where the save stage's time goes (s): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in detail.items())
                  + f"; run {h['seconds']:.2f} s; CPU s/GB {h['cpu_s_per_GB']}")


if __name__ == "__main__":
    main()
