"""Fault figures: how fast a dead or hung processing node is noticed and the run goes on,
how many frames a fault costs, and how long an orderly stop takes until every file is flushed.

    python bench/bench_faults.py [--repeat 3] [--rate 2000]

Each case is a real loopback run (two synthetic modules at `rate` Hz building events, two
processing nodes with pha + save) through `daq-coordinator run`:

* stop     : no fault; stop-to-flushed = time from the `stop` transition to `drained` (every
             node's end-of-run report, sent after its files are closed), from run.json.
* kill -9  : processing node p1 killed 1.5 s after frames reach it; detection = first coordinator log line
             about it minus the kill time; continuing = the later of the two acquisition
             nodes' "receiver p1 lost" lines (from then on they deal p1's blocks to p2).
* SIGSTOP  : p1 frozen the same way (a hung host): noticed only by its silence, so detection
             is bounded by run.heartbeat_timeout (default 2 s) counted from its last message.

Frames lost = what the books put down to node_lost (both modules), next to what p1 could
hold unsaved: its credits per module plus one flush interval of its share.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
import yaml

KILL_AT = 1.5      # s after frames reach p1


def topology(directory: str, rate: float, duration: float) -> dict:
    return {
        "topology": 1, "name": "bench-faults",
        "run": {"directory": directory, "duration": duration},
        "streams": {"pulses": {"samples": 1024, "channels": {"IN1": "int16"}, "modules": ["a1", "a2"]}},
        "acquisition": {n: {"stream": "pulses", "ring": {"slots": 256},
                            "source": {"kind": "synthetic", "rate": rate, "seed": 3}} for n in ("a1", "a2")},
        "processing": {p: {"pipeline": [{"stage": "pha", "channel": "IN1", "height": 0.05},
                                         {"stage": "save", "data": "both"}]} for p in ("p1", "p2")},
    }


def node_process(name: str, folder: str, timeout: float = 20.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline", "cwd"]):
            cmd = p.info["cmdline"] or []
            if "--name" in cmd and cmd[cmd.index("--name") + 1] == name and p.info["cwd"] == folder:
                return p
        time.sleep(0.05)
    raise SystemExit(f"no process for {name}")


def wait_for_frames(folder: Path, node: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stats in folder.glob("*/stats.csv"):
            if any(r.split(",")[1] == node and int(r.split(",")[4]) > 0
                   for r in stats.read_text().splitlines()[1:]):
                return
        time.sleep(0.05)
    raise SystemExit(f"no frames reached {node}")


def log_times(log: Path, pattern: str) -> list[float]:
    """Unix times of the log lines matching `pattern` (log lines start with asctime, ms)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if re.search(pattern, line):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            out.append(stamp.timestamp())
    return out


def run_case(case: str, rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.yaml"
        path.write_text(yaml.safe_dump(topology(tmp, rate, 8.0)))
        proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "run", str(path), "--json"],
                                cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t_fault = None
        if case != "stop":
            victim = node_process("p1", tmp)
            wait_for_frames(Path(tmp), "p1")
            time.sleep(KILL_AT)
            t_fault = time.time()
            victim.send_signal(signal.SIGKILL if case == "kill -9" else signal.SIGSTOP)
        out, err = proc.communicate(timeout=120)
        if case == "SIGSTOP":
            try:
                victim.kill()       # normally gone already: the coordinator ends its nodes
            except psutil.NoSuchProcess:
                pass
        s = json.loads(out)
        assert s["books"]["balanced"], s["books"]
        states = {h["event"]: h["time"] for h in s["states"] if h["event"]}
        res = {"stop_to_flushed_s": states["drained"] - states["stop"],
               "node_lost": s["books"]["missing_by_cause"]["node_lost"],
               "incomplete_event": s["books"]["missing_by_cause"]["incomplete_event"],
               "saved": s["books"]["saved"]}
        if t_fault is not None:
            log = Path(s["run_dir"]) / "log.txt"
            detected = min(log_times(log, r"coordinator ERROR node 'p1' (exited|silent)"))
            goes_on = max(log_times(log, r"(a1|a2) WARNING acqnode.shipper: receiver p1 lost"))
            res.update(detection_s=detected - t_fault, continuing_s=max(goes_on, detected) - t_fault)
            credits = s["parameters"]["requested"]["topology"]["processing"]["p1"]["credits"]
            res["p1_could_hold"] = 2 * credits + int(rate)     # credits per module + 1 s flush of its share
        return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rate", type=float, default=2000.0)
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores; two modules at {args.rate:g} Hz, two processing nodes, 8 s runs")
    for case in ("stop", "kill -9", "SIGSTOP"):
        runs = [run_case(case, args.rate) for _ in range(args.repeat)]
        keys = [k for k in runs[0] if k != "p1_could_hold"]
        line = "  ".join(f"{k} {statistics.median(r[k] for r in runs):.3g} (max {max(r[k] for r in runs):.3g})"
                         for k in keys)
        print(f"{case:8s} {line}")
        if "p1_could_hold" in runs[0]:
            print(f"{'':8s} node_lost per fault vs what p1 could hold unsaved ({runs[0]['p1_could_hold']}): "
                  f"{statistics.median(r['node_lost'] / r['p1_could_hold'] for r in runs):.2f}")


if __name__ == "__main__":
    main()
