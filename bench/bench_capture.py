"""Burst capture rate: one-shot ring vs continuous, when the consumer is slower than the source.

    python bench/bench_capture.py [--frames N] [--repeats R] [--json]

One system (loopback, real processes, sockets and HDF5 files): a synthetic source at its
maximum rate (16 KiB frames: 4096 samples x 2 int16 inputs) into a ring of N slots, shipped to
one processing node that runs peak finding, a histogram and saves every frame, i.e. slower
than the source.  Each repeat runs a burst of N frames twice, alternating the order:

* continuous (the baseline): frames are shipped as they come, and under `block` the source
  waits for the ring's free slots, so the capture runs at the consumer's pace;
* one-shot: the ring takes the burst whole, then it is shipped.

Figures per mode (median over repeats): capture rate (produced / `acquired_s`, the reader's
own time from start to its last frame), capture seconds, and the run's wall time until the
burst is saved.  The ratio is one-shot / continuous capture rate, measured in the same run.
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


def one_burst(system: System, mode: str, frames: int) -> dict:
    t0 = time.monotonic()
    summary = system.run({"acquisition.synth1.ring.capture": mode}, frames=frames)
    wall = time.monotonic() - t0
    report = summary["nodes"]["synth1"]["report"]
    assert summary["books"]["balanced"] and summary["books"]["saved"] == frames, summary["books"]
    return {"capture_fps": report["produced"] / report["acquired_s"], "capture_s": report["acquired_s"],
            "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=4000, help="burst size = ring slots (default 4000: 66 MB)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {"continuous": [], "one-shot": []}
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        topo = topology_from_dict(topology(args.frames, Path(tmp)))
        with System(topo, loopback=True) as system:
            one_burst(system, "continuous", min(args.frames, 200))         # warm-up (imports, files)
            for r in range(args.repeats):
                order = ("continuous", "one-shot") if r % 2 == 0 else ("one-shot", "continuous")
                for mode in order:
                    results[mode].append(one_burst(system, mode, args.frames))
    med = {m: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for m, rs in results.items()}
    ratio = med["one-shot"]["capture_fps"] / med["continuous"]["capture_fps"]
    if args.json:
        print(json.dumps({"frames": args.frames, "median": med, "ratio_capture": ratio, "runs": results}))
        return 0
    print(f"burst of {args.frames} frames of 16 KiB, synthetic source at max rate, pha + histogram + save;"
          f" median of {args.repeats}")
    print(f"{'mode':<11} {'capture frames/s':>17} {'capture s':>10} {'until saved s':>14}")
    for m, f in med.items():
        print(f"{m:<11} {f['capture_fps']:>17,.0f} {f['capture_s']:>10.2f} {f['wall_s']:>14.2f}")
    print(f"one-shot / continuous capture rate: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
