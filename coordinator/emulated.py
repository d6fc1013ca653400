"""Boards the coordinator emulates itself (`address: emulator`): one emulator process per run,
on the coordinator's machine, listening on its control address (where every node reaches it).

`python -m coordinator.emulated SETTINGS_JSON READY_FILE` serves every emulated board of
the run with the topology's `emulator` settings until SIGTERM; the coordinator reads the
boards' ports from READY_FILE and hands each acquisition node its board's address.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from coordinator.launcher import Launcher
from coordinator.topology.model import Component, Topology

READY_TIMEOUT = 10.0


class StartupFailure(Exception):
    pass


def emulator_settings(topo: Topology) -> dict:
    """What the emulator process needs, as plain data."""
    e = topo.emulator
    return {"boards": topo.emulated_boards(), "host": topo.control.address, "rate": e.rate, "seed": e.seed, "shared": e.shared,
            "common_trigger": e.common_trigger,
            "rise_ns": e.rise_ns, "decay_ns": e.decay_ns, "noise": e.noise, "baseline": e.baseline,
            "polarity": e.polarity, "bandwidth": e.bandwidth, "latency": e.latency,
            "amplitude": [{k: getattr(c, k) for k in ("distribution", "weight", "scale", "mean", "sigma",
                                                       "low", "high")} for c in e.amplitude]}


def start_emulator(topo: Topology, run_dir: Path, log_path: Path,
                   launcher: Launcher) -> tuple[subprocess.Popen, dict[str, dict]]:
    """Start the run's emulator; returns the process and {board: {"scpi": [h, p], "mcpha": [h, p]}}."""
    ready = run_dir / "emulator.json"
    proc = launcher.spawn([sys.executable, "-m", "coordinator.emulated",
                           json.dumps(emulator_settings(topo)), str(ready)], log_path)
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.exists():
        if proc.poll() is not None:
            raise StartupFailure(f"the board emulator exited with status {proc.returncode} at start "
                                 f"(see {log_path})")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise StartupFailure(f"the board emulator did not start within {READY_TIMEOUT:g} s")
        time.sleep(0.02)
    return proc, json.loads(ready.read_text())


def board_address(topo: Topology, node: str, ports: dict[str, dict]) -> list:
    """[host, port] of an emulated node's board, for its source kind's protocol."""
    kind = topo.acquisition[node].source.kind
    return ports[node]["scpi" if kind == "redpitaya" else "mcpha"]


def main(argv: list[str] | None = None) -> int:
    from emulator import Emulator, EmulatorConfig

    argv = sys.argv[1:] if argv is None else argv
    settings, ready = json.loads(argv[0]), Path(argv[1])
    amplitude = tuple(Component(**c) for c in settings.pop("amplitude"))
    boards = tuple(settings.pop("boards"))
    host = settings.pop("host", "127.0.0.1")
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    with Emulator(EmulatorConfig(boards=boards, host=host, amplitude=amplitude, **settings)) as emu:
        ports = {b: {"scpi": list(emu.scpi_address(b)), "mcpha": list(emu.mcpha_address(b))} for b in boards}
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps(ports))
        tmp.rename(ready)
        while not stop:
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
