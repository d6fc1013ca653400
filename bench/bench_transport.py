"""Acquisition node -> processing node over tcp loopback, against plain pyzmq PUSH->PULL.

Run:  python bench/bench_transport.py [--seconds S] [--json]

Cases, each at 16 KiB and 1 MiB frames:
  baseline   plain pyzmq PUSH -> PULL between two processes, one frame per message
  transport  the real system (daq-coordinator run): pattern source -> reader process ->
             ring -> shipper (batched, credit) -> procnode with a `drain` pipeline
  hdf5       the same with a `save` pipeline (HDF5 on this machine's disk)
The system's rate is frames / (time from `running` to `stopped` in run.json), so node
start-up is excluded but the stop and drain handshake is included (conservative).
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
def system(size_name: str, pipeline: list, frames: int, workdir: Path) -> dict:
    topo = {
        "topology": 1, "name": f"bench-{size_name}",
        "run": {"directory": str(workdir / "runs"), "frames": frames, "drain_timeout": 30.0},
        "streams": {"s": SIZES[size_name]},
        "acquisition": {"acq": {"stream": "s", "source": {"kind": "pattern", "rate": "max"},
                                "ring": {"slots": 256 if size_name == "16KiB" else 32}}},
        "processing": {"proc": {"pipeline": pipeline,
                                "credits": 512 if size_name == "16KiB" else 16}},
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
    t = {h["state"]: h["time"] for h in summary["states"]}
    dt = t["stopped"] - t["running"]
    itemsize = summary["nodes"]["acq"]["configured"]["itemsize"]
    n = summary["books"]["produced"]
    proc_report = summary["nodes"]["proc"]["report"]
    out = {"frames_per_s": n / dt, "MB_per_s": n * itemsize / dt / 1e6, "frames": n, "seconds": dt,
           "messages": summary["nodes"]["acq"]["report"]["messages"],
           "stage_seconds": proc_report.get("stage_seconds", {}),
           "balanced": summary["books"]["balanced"]}
    for run_dir in (workdir / "runs").glob("*"):
        for f in run_dir.glob("*.h5"):
            f.unlink()   # keep the disk free between cases
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="approximate time per case")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--workdir", help="where runs are written (default: system temp)")
    ap.add_argument("--no-hdf5", action="store_true", help="skip the HDF5 cases")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="daq-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        for size_name, size in FRAME_BYTES.items():
            base = baseline(size, args.seconds)
            frames = int(base["frames_per_s"] * args.seconds)
            trans = system(size_name, [{"stage": "drain"}], frames, work)
            row = {"baseline": base, "transport": trans,
                   "ratio_frames": trans["frames_per_s"] / base["frames_per_s"],
                   "ratio_MB": trans["MB_per_s"] / base["MB_per_s"]}
            if not args.no_hdf5:
                h5 = system(size_name, [{"stage": "save", "format": "hdf5"}], min(frames, int(4e9 / size)), work)
                row["hdf5"] = h5
                save_s = sum(v for k, v in h5["stage_seconds"].items() if k.endswith("save"))
                row["hdf5_save_fraction"] = save_s / h5["seconds"]
            results[size_name] = row
    if args.json:
        print(json.dumps(results, indent=2))
        return
    targets = {"16KiB": ("frames/s", 1.0), "1MiB": ("MB/s", 0.7)}
    print(f"{'frame':>6} {'case':>10} {'frames/s':>10} {'MB/s':>8} {'ratio':>7}  target")
    for size_name, row in results.items():
        what, target = targets[size_name]
        ratio = row["ratio_frames"] if what == "frames/s" else row["ratio_MB"]
        print(f"{size_name:>6} {'PUSH/PULL':>10} {row['baseline']['frames_per_s']:>10,.0f} "
              f"{row['baseline']['MB_per_s']:>8,.0f} {'1.00':>7}")
        print(f"{size_name:>6} {'acq->proc':>10} {row['transport']['frames_per_s']:>10,.0f} "
              f"{row['transport']['MB_per_s']:>8,.0f} {ratio:>7.2f}  >= {target} x {what} "
              f"({'met' if ratio >= target else 'NOT met'}; {row['transport']['messages']} messages)")
        if "hdf5" in row:
            h = row["hdf5"]
            print(f"{size_name:>6} {'+ hdf5':>10} {h['frames_per_s']:>10,.0f} {h['MB_per_s']:>8,.0f} "
                  f"{h['MB_per_s'] / row['baseline']['MB_per_s']:>7.2f}  "
                  f"(save stage busy {100 * row['hdf5_save_fraction']:.0f}% of the run)")


if __name__ == "__main__":
    main()
