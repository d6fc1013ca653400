"""Burst capture rate: one-shot ring vs continuous, when the consumer is slower than the source.

    python bench/bench_capture.py [--frames N] [--repeats R] [--json]

One system (loopback, real processes, sockets and HDF5 files): a synthetic source at its
maximum rate (16 KiB frames: 4096 samples x 2 int16 inputs), shipped to one processing node
that runs peak finding, a histogram and saves every frame, i.e. slower than the source.  Each
repeat runs a burst of N frames in three ways, in a rotating order:

* continuous, ring of 256 slots (the baseline: a ring sized for a steady flow): frames are
  shipped as they come and under `block` the source waits for free slots, so the capture
  runs at the consumer's pace;
* continuous, ring of N slots: the burst fits, but shipping runs alongside the capture and
  takes CPU from it;
* one-shot, ring of N slots: the ring takes the burst whole, then it is shipped.

Figures per way (median over repeats): capture rate (produced / `acquired_s`, the reader's own
time from start to its last frame), capture seconds, and the run's wall time until the burst
is saved.  Ratios are capture rates against the baseline, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.api import System  # noqa: E402
from coordinator.topology import topology_from_dict  # noqa: E402


def topology(frames: int, run_dir: Path) -> dict:
    return {
        "topology": 1, "name": "capture",
        "run": {"directory": str(run_dir), "drain_timeout": 30.0},
        "streams": {"pulses": {"samples": 4096, "channels": {"IN1": "int16", "IN2": "int16"}}},
        "acquisition": {"synth1": {"stream": "pulses", "ring": {"slots": frames},
                                   "source": {"kind": "synthetic", "rate": "max", "seed": 3}}},
        "processing": {"proc1": {"pipeline": [
            {"stage": "pha", "channel": "IN1", "height": 0.05},
            {"stage": "histogram", "field": "height", "bins": [0.0, 1.0, 512]},
            {"stage": "save", "format": "hdf5", "data": "both"}]}},
    }


WAYS = {"continuous, 256 slots": {"acquisition.synth1.ring.slots": 256},
        "continuous, N slots": {},
        "one-shot, N slots": {"acquisition.synth1.ring.capture": "one-shot"}}


def one_burst(system: System, overrides: dict, frames: int) -> dict:
    t0 = time.monotonic()
    summary = system.run(overrides, frames=frames)
    wall = time.monotonic() - t0
    report = summary["nodes"]["synth1"]["report"]
    assert summary["books"]["balanced"] and summary["books"]["saved"] == frames, summary["books"]
    return {"capture_fps": report["produced"] / report["acquired_s"], "capture_s": report["acquired_s"],
            "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000, help="burst size N (default 20000: 330 MB)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {w: [] for w in WAYS}
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        topo = topology_from_dict(topology(args.frames, Path(tmp)))
        with System(topo, loopback=True) as system:
            one_burst(system, {}, min(args.frames, 200))         # warm-up (imports, files)
            ways = list(WAYS)
            for r in range(args.repeats):
                for way in ways[r % 3:] + ways[:r % 3]:
                    results[way].append(one_burst(system, WAYS[way], args.frames))
    med = {w: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for w, rs in results.items()}
    base = med[ways[0]]["capture_fps"]
    if args.json:
        print(json.dumps({"frames": args.frames, "median": med, "runs": results,
                          "ratio_capture": {w: m["capture_fps"] / base for w, m in med.items()}}))
        return 0
    print(f"burst of {args.frames} frames of 16 KiB ({args.frames * 16384 / 1e6:.0f} MB), synthetic source at "
          f"max rate, pha + histogram + save; median of {args.repeats}")
    print(f"{'way':<22} {'capture frames/s':>17} {'capture s':>10} {'until saved s':>14} {'capture vs baseline':>20}")
    for w, f in med.items():
        print(f"{w:<22} {f['capture_fps']:>17,.0f} {f['capture_s']:>10.2f} {f['wall_s']:>14.2f} "
              f"{f['capture_fps'] / base:>19.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
