"""Pulse-height analysis: find_peaks_batch vs. a Python loop of scipy.signal.find_peaks.

    python bench/bench_pha.py [--batch 256] [--repeat 5] [--samples 4096] [--pulses 5]
                              [--decay-ns 80] [--seconds 0.5] [--waveforms N]
                              [--cases height,...] [--malloc node|default] [--json]

Waveforms: `acqnode.sources.synthetic.SyntheticPulses` frames with two int16 channels
(IN1, IN2; the analysis reads ``records["IN1"]``, a strided view, as a processing node
would), `--samples` samples each, 8 ns per sample, gaussian noise of 0.002 V rms (16.4
ADC counts), the default amplitude spectrum (80 % exponential with mean 0.1 V, 20 % a
line at 0.5 V), 16 ns rise, `--decay-ns` decay.  The trigger pulse plus pile-up at the
rate that makes `--pulses` pulses per frame on average.  `--waveforms` frames are made
once (default: 32 batches); each timed run goes through them batch by batch, repeatedly
until `--seconds` have passed, so neither side runs on cache-warm data.

Cases (height h = 0.02 V = 164 counts, 10 noise sigmas; the same parameters in both schemes):
  height              find_peaks(row, height=h)                         (target: >= 10x)
  distance            find_peaks(row, height=h, distance=50)
  prominence+width    find_peaks(row, height=h, prominence=50, width=0)
  prom+width+wlen     find_peaks(row, height=h, prominence=50, width=0, wlen=201)
  no-height           find_peaks(row, prominence=50)   (not run unless named in --cases)
Schemes: `loop` (mimoCoRB2's way: ``for row in batch: find_peaks(row, ...)``) and
`batched` (``find_peaks_batch(batch, ..., method="auto")``).  Both run in this process
on one core and are timed by the process's CPU time (waveforms/s per core; other load on
this shared 2-core machine then disturbs less than with wall time).  The runs alternate
(loop, batched, loop, ...) `--repeat` times; the table shows medians, and the ratio
batched/loop of each pair with its range.  The results of both schemes are compared on
the first batch of every case (peaks and properties).

`--malloc node` (default) tunes glibc's malloc as every processing node does at start
(`coordinator.noderuntime.tune_malloc`: freed memory is kept, so the batch's MB-sized
temporaries do not page-fault); `--malloc default` leaves glibc's defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# one core: no BLAS worker threads (they would spin on the other core and count as CPU time)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy.signal import find_peaks  # noqa: E402

from acqnode.sources.synthetic import SyntheticPulses  # noqa: E402
from coordinator.topology.model import StreamConfig, SyntheticSource  # noqa: E402
from procnode.peaks import find_peaks_batch  # noqa: E402

SAMPLE_NS = 8.0
COUNTS_PER_VOLT = 8192.0
HEIGHT = 164          # counts: 0.02 V, 10 x the 0.002 V rms noise

CASES = [
    ("height", {"height": HEIGHT}),
    ("distance", {"height": HEIGHT, "distance": 50}),
    ("prominence+width", {"height": HEIGHT, "prominence": 50, "width": 0}),
    ("prom+width+wlen", {"height": HEIGHT, "prominence": 50, "width": 0, "wlen": 201}),
    ("no-height", {"prominence": 50}),     # only with --cases: every noise wiggle is a peak
]
DEFAULT_CASES = "height,distance,prominence+width,prom+width+wlen"


def make_waveforms(n: int, samples: int, pulses: float, decay_ns: float, seed: int = 1) -> np.ndarray:
    """n frame records (IN1, IN2 int16) with `pulses` pulses per frame on average."""
    pileup_rate = max(pulses - 1.0, 0.0) / (samples * SAMPLE_NS * 1e-9)
    stream = StreamConfig(name="s", samples=samples, channels={"IN1": "int16", "IN2": "int16"},
                          modules=("bench",))
    config = SyntheticSource(rate=pileup_rate or 1.0, seed=seed, sample_ns=SAMPLE_NS,
                             decay_ns=decay_ns, counts_per_volt=COUNTS_PER_VOLT)
    return SyntheticPulses(config, stream).frames(0, n)


def run_loop(batches: list[np.ndarray], kw: dict, seconds: float) -> tuple[float, int]:
    """mimoCoRB2's way: find_peaks once per waveform.  Returns (waveforms per CPU second, peaks)."""
    done = peaks = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while True:
        for b in batches:
            for row in b:
                p, _ = find_peaks(row, **kw)
                peaks += p.size
            done += len(b)
        if time.perf_counter() - t0 >= seconds:
            return done / (time.process_time() - c0), peaks


def run_batched(batches: list[np.ndarray], kw: dict, seconds: float) -> tuple[float, int]:
    """find_peaks_batch once per batch.  Returns (waveforms per CPU second, peaks)."""
    done = peaks = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while True:
        for b in batches:
            peaks += len(find_peaks_batch(b, method="auto", **kw))
            done += len(b)
        if time.perf_counter() - t0 >= seconds:
            return done / (time.process_time() - c0), peaks


def identical(batch: np.ndarray, kw: dict) -> bool:
    """Does find_peaks_batch give exactly the loop's peaks and properties on this batch?"""
    got = find_peaks_batch(batch, method="auto", **kw)
    for i, row in enumerate(batch):
        p, props = find_peaks(row, **kw)
        sel = got.row == i
        if not np.array_equal(got.position[sel], p) or list(props) != list(got.properties):
            return False
        for k, v in props.items():
            g = got.properties[k][sel]
            if g.dtype != v.dtype or g.tobytes() != v.tobytes():
                return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256, help="waveforms per find_peaks_batch call")
    ap.add_argument("--repeat", type=int, default=5, help="alternating loop/batched pairs per case")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--pulses", type=float, default=5.0, help="mean pulses per waveform")
    ap.add_argument("--decay-ns", type=float, default=80.0, help="pulse decay time (8 ns samples)")
    ap.add_argument("--seconds", type=float, default=0.5, help="minimum duration of each timed run")
    ap.add_argument("--waveforms", type=int, default=None,
                    help="waveforms generated (default 32 batches); a run goes through all of them")
    ap.add_argument("--cases", default=DEFAULT_CASES,
                    help="comma-separated subset of: " + ", ".join(c for c, _ in CASES))
    ap.add_argument("--malloc", choices=("node", "default"), default="node",
                    help="node: glibc malloc tuned as in a processing node (default)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args(argv)
    if args.malloc == "node":
        from coordinator.noderuntime import tune_malloc
        tune_malloc()

    n = args.waveforms or 32 * args.batch
    records = make_waveforms(n, args.samples, args.pulses, args.decay_ns)
    wave = records["IN1"]
    batches = [wave[i: i + args.batch] for i in range(0, n, args.batch)]
    above = float(np.mean(wave >= HEIGHT))
    print(f"{n} waveforms of {args.samples} int16 samples (records['IN1'], row stride "
          f"{wave.strides[0]} B), {args.pulses:g} pulses/waveform, decay {args.decay_ns:g} ns, "
          f"{100 * above:.1f} % of samples >= height {HEIGHT}; batch {args.batch}; "
          f"malloc {args.malloc}")
    print(f"medians of {args.repeat} alternating runs of >= {args.seconds:g} s; "
          "ratio = batched / loop in the same pair")
    print(f"{'case':>17} {'scheme':>8} {'wf/s/core':>11} {'us/wf':>7} {'peaks/wf':>9} "
          f"{'ratio':>6} {'(min..max)':>13}  identical")
    results = []
    wanted = {c.strip() for c in args.cases.split(",")}
    for name, kw in CASES:
        if name not in wanted:
            continue
        same = identical(batches[0], kw)
        loop, batched, ratios = [], [], []
        for _ in range(args.repeat):
            lr, lp = run_loop(batches, kw, args.seconds)
            br, bp = run_batched(batches, kw, args.seconds)
            loop.append(lr)
            batched.append(br)
            ratios.append(br / lr)
        # peaks per waveform, counted on one pass over the data
        ppw = sum(len(find_peaks_batch(b, **kw)) for b in batches) / n
        lm, bm, rm = statistics.median(loop), statistics.median(batched), statistics.median(ratios)
        print(f"{name:>17} {'loop':>8} {lm:>11,.0f} {1e6 / lm:>7.1f} {ppw:>9.1f} {1.0:>6.2f}")
        target = ""
        if name == "height":
            target = "  target >= 10x: " + ("met" if rm >= 10 else "NOT met")
        print(f"{name:>17} {'batched':>8} {bm:>11,.0f} {1e6 / bm:>7.1f} {ppw:>9.1f} {rm:>6.2f} "
              f"({min(ratios):.2f}..{max(ratios):.2f})  {'yes' if same else 'NO'}{target}")
        results.append({"case": name, "params": kw, "loop_wf_per_s": loop, "batched_wf_per_s": batched,
                        "ratios": ratios, "median_ratio": rm, "peaks_per_waveform": ppw,
                        "identical": same})
    if args.json:
        print(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
