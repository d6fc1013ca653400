"""`daq-redpitaya-emulator`: serve emulated boards until SIGTERM or SIGINT.

Board i listens on --scpi-port + i and --mcpha-port + i (port 0: free ports).  Once every
port is bound it prints one JSON line per board and, with --ready-file, writes all of
them as one JSON object {board: {...}} (temporary file + rename, so a reader never sees
half of it).  A port that cannot be bound is a one-line error naming host:port, exit 1.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import click

from emulator.config import EmulatorConfig
from emulator.core import Emulator
from emulator.server import PortInUse


def _ports(first: int, count: int) -> tuple[int, ...]:
    return tuple(0 if first == 0 else first + i for i in range(count))


def write_ready_file(path: Path, content: dict) -> None:
    """Write JSON atomically: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=1) + "\n")
    os.replace(tmp, path)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--board", "boards", multiple=True, default=("rp1",), show_default=True,
              help="Board name (repeat for several boards).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--scpi-port", default=5000, show_default=True, type=click.IntRange(0, 65535),
              help="SCPI port of the first board (0: free ports).")
@click.option("--mcpha-port", default=1001, show_default=True, type=click.IntRange(0, 65535),
              help="MCPHA port of the first board (0: free ports).")
@click.option("--rate", default=1000.0, show_default=True, type=float, help="Pulses per second.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Seed of the timeline.")
@click.option("--independent", is_flag=True, help="One timeline per board instead of a shared one.")
@click.option("--common-trigger", is_flag=True,
              help="Trigger the boards' SCPI acquisitions together, busy-gated, on the first board's trigger.")
@click.option("--noise", default=0.002, show_default=True, type=float, help="Noise, volts rms.")
@click.option("--baseline", default=0.0, show_default=True, type=float, help="Baseline, volts.")
@click.option("--polarity", default="positive", show_default=True, type=click.Choice(["positive", "negative"]))
@click.option("--bandwidth", default=None, type=float, help="Link bandwidth per board, bit/s (default unlimited).")
@click.option("--latency", default=0.0, show_default=True, type=float, help="Seconds added to every command.")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the addresses here (JSON) once serving.")
def main(boards, host, scpi_port, mcpha_port, rate, seed, independent, common_trigger, noise, baseline,
         polarity, bandwidth, latency, ready_file) -> None:
    """Emulate Red Pitaya STEMlab 125-14 boards (SCPI and MCPHA servers)."""
    try:
        cfg = EmulatorConfig(boards=tuple(boards), host=host, scpi_ports=_ports(scpi_port, len(boards)),
                             mcpha_ports=_ports(mcpha_port, len(boards)), rate=rate, seed=seed,
                             shared=not independent, common_trigger=common_trigger, noise=noise,
                             baseline=baseline, polarity=polarity, bandwidth=bandwidth, latency=latency)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    emu = Emulator(cfg)
    try:
        emu.start()
    except PortInUse as exc:
        click.echo(f"daq-redpitaya-emulator: {exc}", err=True)
        sys.exit(1)
    try:
        ready = {}
        for name in emu.boards:
            ready[name] = {"scpi": list(emu.scpi_address(name)), "mcpha": list(emu.mcpha_address(name))}
            click.echo(json.dumps({"board": name, **ready[name]}))
        sys.stdout.flush()
        if ready_file is not None:
            write_ready_file(ready_file, ready)
        while not stop.wait(0.5):
            pass
    finally:
        emu.close()
