"""Waveforms/s read from the in-process Red Pitaya emulator through the project's two sources.

    python bench/bench_boards.py [--seconds S] [--quick] [--json]

* SCPI: ``acqnode.sources.redpitaya.RedPitayaFrames`` (port 5000 protocol, one waveform per
  START / trigger / poll / TPOS? / one DATA query per input).
* MCPHA: ``acqnode.sources.mcpha.McphaFrames`` (KIT's MCPHA protocol, 32 waveforms per request).

Matrix: decimation 8, 64 x samples 16384, 4096 x link bandwidth unlimited, 1e9 bit/s; two int16
inputs (IN1, IN2).  The emulator's pulse rate is high (default 20000 pulses/s) so that triggers
are not the limit.  Each case reads for ``--seconds`` s of wall time after the source is set up.

Everything is measured from the outside: wall time per case, the sources' ``report()`` counters
(commands, bytes in) taken after set-up and at the end, and arithmetic from the settings:

* capture  = the physical minimum per waveform: the pretrigger fill before arming plus
  (8192 + DLY) = samples - pretrigger samples after the trigger, i.e. samples x 8 ns x decimation
  (the trigger wait itself, ~1/rate for a Poisson timeline, is extra);
* transfer = bytes in per waveform x 8 / link bandwidth (0 when unlimited);
* rest     = measured time per waveform - capture - transfer: trigger wait, round trips, polling,
  parsing, and the emulator's own CPU (it runs in this process, on the same 2 cores and GIL).

SCPI round trips per waveform = commands per waveform - 2 (ACQ:START and ACQ:TRig are writes
without a reply; everything else the source sends in the read loop is a query).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from acqnode.sources.mcpha import McphaFrames  # noqa: E402
from acqnode.sources.redpitaya import RedPitayaFrames  # noqa: E402
from coordinator.topology.model import (BoardLink, McphaSource, McphaTrigger, RedPitayaSource,  # noqa: E402
                                        ScpiTrigger, StreamConfig)
from emulator import Emulator, EmulatorConfig  # noqa: E402

SAMPLE_NS = 8.0
CHANNELS = {"IN1": "int16", "IN2": "int16"}
WRITES_PER_WAVEFORM = 2          # ACQ:START, ACQ:TRig <source>


def make_source(protocol: str, emu: Emulator, decimation: int, samples: int, pretrigger: int):
    stream = StreamConfig("pulses", samples, CHANNELS, ("rp1",))
    if protocol == "scpi":
        cfg = RedPitayaSource(address="emulator", decimation=decimation, pretrigger=pretrigger,
                              trigger=ScpiTrigger("IN1", "rising", 0.05), link=BoardLink(timeout=2.0))
        return RedPitayaFrames(cfg, stream, "rp1", board=emu.scpi_address("rp1")), stream
    cfg = McphaSource(address="emulator", decimation=decimation, pretrigger=pretrigger, waveforms=32,
                      trigger=McphaTrigger("IN1", "rising", "normal", 200))
    return McphaFrames(cfg, stream, "rp1", board=emu.mcpha_address("rp1")), stream


def run_case(protocol: str, decimation: int, samples: int, bandwidth: float | None,
             rate: float, seconds: float, pretrigger: int) -> dict:
    with Emulator(EmulatorConfig(boards=("rp1",), rate=rate, seed=1, bandwidth=bandwidth)) as emu:
        src, stream = make_source(protocol, emu, decimation, samples, pretrigger)
        try:
            before = src.report()
            out = np.zeros(32, stream.dtype)
            got = lost = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                r = src.read(got, out, 0.2)
                got += r.frames
                lost += r.lost
            wall = time.monotonic() - t0
            after = src.report()
        finally:
            src.close()
    n = max(got, 1)
    commands = (after["commands"] - before["commands"]) / n
    bytes_in = (after["bytes_in"] - before["bytes_in"]) / n
    per_wf = wall / n
    capture = samples * SAMPLE_NS * decimation * 1e-9
    transfer = bytes_in * 8 / bandwidth if bandwidth else 0.0
    sample_bytes = samples * len(CHANNELS) * 2
    return {
        "protocol": protocol, "decimation": decimation, "samples": samples, "pretrigger": pretrigger,
        "bandwidth": bandwidth, "rate": rate, "seconds": wall, "waveforms": got, "lost": lost,
        "waveforms_per_s": got / wall, "sample_MB_per_s": got * sample_bytes / wall / 1e6,
        "commands_per_wf": commands,
        "round_trips_per_wf": commands - WRITES_PER_WAVEFORM if protocol == "scpi" else commands,
        "bytes_in_per_wf": bytes_in,
        "ms_per_wf": per_wf * 1e3, "capture_ms": capture * 1e3, "transfer_ms": transfer * 1e3,
        "rest_ms": (per_wf - capture - transfer) * 1e3,
        "max_waveforms_per_s_capture": 1.0 / capture,
    }


def bw_label(bw: float | None) -> str:
    return "unlim" if bw is None else f"{bw / 1e9:g}G"


def print_table(rows: list[dict], rate: float, seconds: float) -> None:
    print(f"Red Pitaya emulator, in process, 1 board, {rate:g} pulses/s (so triggers are not the limit), "
          f"{seconds:g} s per case, 2 x int16 inputs")
    print("capture = physical minimum per waveform (pretrigger fill + samples after trigger = "
          "samples x 8 ns x dec); transfer = bytes at link bandwidth; rest = measured - capture - transfer")
    head = (f"{'proto':5} {'dec':>3} {'samples':>7} {'link':>5} | {'wf/s':>7} {'MB/s':>6} | "
            f"{'cmd/wf':>6} {'rt/wf':>6} {'kB/wf':>6} | {'ms/wf':>6} {'capture':>7} {'transfer':>8} "
            f"{'rest':>6} | {'MCPHA/SCPI':>10}")
    print(head)
    print("-" * len(head))
    scpi = {(r["decimation"], r["samples"], r["bandwidth"]): r for r in rows if r["protocol"] == "scpi"}
    for r in rows:
        ratio = ""
        if r["protocol"] == "mcpha":
            s = scpi.get((r["decimation"], r["samples"], r["bandwidth"]))
            if s and s["waveforms_per_s"] > 0:
                ratio = f"{r['waveforms_per_s'] / s['waveforms_per_s']:.2f}"
        print(f"{r['protocol']:5} {r['decimation']:>3} {r['samples']:>7} {bw_label(r['bandwidth']):>5} | "
              f"{r['waveforms_per_s']:7.1f} {r['sample_MB_per_s']:6.2f} | "
              f"{r['commands_per_wf']:6.2f} {r['round_trips_per_wf']:6.2f} {r['bytes_in_per_wf'] / 1e3:6.1f} | "
              f"{r['ms_per_wf']:6.3f} {r['capture_ms']:7.3f} {r['transfer_ms']:8.3f} {r['rest_ms']:6.3f} | "
              f"{ratio:>10}")
        if r["lost"]:
            print(f"      ^ {r['lost']} waveforms lost")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="wall time per case (default 2)")
    ap.add_argument("--rate", type=float, default=20000.0, help="emulator pulses/s (default 20000)")
    ap.add_argument("--quick", action="store_true", help="0.3 s per case")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args()
    seconds = 0.3 if args.quick else args.seconds
    rows = []
    for decimation in (8, 64):
        for samples in (16384, 4096):
            pretrigger = samples // 8
            for bandwidth in (None, 1e9):
                for protocol in ("scpi", "mcpha"):
                    rows.append(run_case(protocol, decimation, samples, bandwidth, args.rate, seconds,
                                         pretrigger))
    if args.json:
        print(json.dumps({"rate": args.rate, "seconds": seconds, "cases": rows}, indent=1))
    else:
        print_table(rows, args.rate, seconds)


if __name__ == "__main__":
    main()
