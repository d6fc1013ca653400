"""End-to-end events/s: two acquisition nodes (one event = a part from each), two processing
nodes building events and running pha + histogram + save, against the same system with a
drain-only pipeline (event building and transport alone), measured in the same run.

    python bench/bench_events.py [--frames 20000] [--samples 4096] [--repeat 3]

Sources are synthetic at full speed on one event timeline (the emulated boards would only
measure the emulator's SCPI rate, see bench_boards.py).  Events/s is taken between the first
and the last event arriving at the processing nodes (start-up and the end-of-run handshake
excluded), summed over both nodes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

PIPELINES = {
    "drain": [{"stage": "drain"}],
    "pha+histogram+save": [{"stage": "pha", "channel": "IN1", "height": 0.05},
                           {"stage": "histogram", "field": "height", "bins": [0.0, 1.0, 512]},
                           {"stage": "save", "format": "hdf5", "data": "both"}],
}


def topology(frames: int, samples: int, pipeline: list, directory: str) -> dict:
    return {
        "topology": 1, "name": "bench-events",
        "run": {"directory": directory, "frames": frames, "drain_timeout": 10.0},
        "streams": {"pulses": {"samples": samples, "channels": {"IN1": "int16"}, "modules": ["a1", "a2"]}},
        "acquisition": {n: {"stream": "pulses", "ring": {"slots": 256},
                            "source": {"kind": "synthetic", "rate": "max", "seed": 3}} for n in ("a1", "a2")},
        "processing": {p: {"credits": 128, "pipeline": pipeline} for p in ("p1", "p2")},
    }


def run_once(frames: int, samples: int, pipeline: list) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.yaml"
        path.write_text(yaml.safe_dump(topology(frames, samples, pipeline, tmp)))
        res = subprocess.run([sys.executable, "-m", "coordinator.cli", "run", str(path), "--json"],
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])
        s = json.loads(res.stdout)
        assert s["books"]["balanced"]
        flows = [s["nodes"][p]["report"]["flow"] for p in ("p1", "p2")]
        t0 = min(f["t_first"] for f in flows)
        t1 = max(f["t_last"] for f in flows)
        return frames / max(t1 - t0, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    results: dict[str, list[float]] = {k: [] for k in PIPELINES}
    for _ in range(a.repeat):                  # alternate, so drifts of a noisy machine hit both
        for name, pipe in PIPELINES.items():
            results[name].append(run_once(a.frames, a.samples, pipe))
    base = statistics.median(results["drain"])
    print(f"{a.frames} events of 2 x {a.samples} int16 samples, 2 acquisition + 2 processing nodes")
    print(f"{'pipeline':<22}{'events/s (median)':>18}{'range':>22}{'vs drain':>10}")
    for name, v in results.items():
        m = statistics.median(v)
        print(f"{name:<22}{m:>18,.0f}{f'{min(v):,.0f}..{max(v):,.0f}':>22}{m / base:>10.2f}")


if __name__ == "__main__":
    main()
