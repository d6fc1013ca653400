"""What an emulator serves: its boards, ports, signal and link, checked once, up front."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from coordinator.topology.model import Component, default_spectrum

DISTRIBUTIONS = ("exponential", "gaussian", "uniform")
MAX_RATE = 1e8
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class EmulatorConfig:
    """Boards of one emulator and what their inputs see (volts, as SyntheticSource).

    scpi_ports / mcpha_ports: None lets the OS pick free ports, else one port per board.
    rate: pulses per second on the timeline; shared: one timeline for all boards (the
    modules of one detector) or one each.  common_trigger: the boards' SCPI acquisitions
    trigger together, busy-gated, on the first board's trigger (`emulator.triggergroup`),
    so their n-th captures are one event.  bandwidth: link bit/s per board (None:
    unlimited); latency: seconds added before each command is executed.
    """

    boards: tuple[str, ...] = ("rp1",)
    host: str = "127.0.0.1"
    scpi_ports: tuple[int, ...] | None = None
    mcpha_ports: tuple[int, ...] | None = None
    rate: float = 1000.0
    seed: int = 0
    shared: bool = True
    common_trigger: bool = False
    amplitude: tuple[Component, ...] = field(default_factory=default_spectrum)
    rise_ns: float = 16.0
    decay_ns: float = 800.0
    noise: float = 0.002
    baseline: float = 0.0
    polarity: str = "positive"
    bandwidth: float | None = None
    latency: float = 0.0

    def __post_init__(self) -> None:
        for name in ("boards", "scpi_ports", "mcpha_ports", "amplitude"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        problems = []
        _check_boards(self.boards, problems)
        if not isinstance(self.host, str) or not self.host:
            problems.append(f"host: expected a host name or address, got {self.host!r}")
        for name in ("scpi_ports", "mcpha_ports"):
            _check_ports(name, getattr(self, name), len(self.boards) if isinstance(self.boards, tuple) else 0,
                         problems)
        _check_number("rate", self.rate, problems, low=0.0, high=MAX_RATE)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            problems.append(f"seed: expected an integer >= 0, got {self.seed!r}")
        for name in ("shared", "common_trigger"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}: expected True or False, got {getattr(self, name)!r}")
        _check_spectrum(self.amplitude, problems)
        _check_number("rise_ns", self.rise_ns, problems, low=0.0)
        _check_number("decay_ns", self.decay_ns, problems, low=0.0, open_low=True)
        _check_number("noise", self.noise, problems, low=0.0)
        _check_number("baseline", self.baseline, problems, low=-20.0, high=20.0)
        if self.polarity not in ("positive", "negative"):
            problems.append(f"polarity: expected 'positive' or 'negative', got {self.polarity!r}")
        if self.bandwidth is not None:
            _check_number("bandwidth", self.bandwidth, problems, low=0.0, open_low=True)
        _check_number("latency", self.latency, problems, low=0.0, high=60.0)
        if problems:
            raise ValueError("EmulatorConfig: " + "; ".join(problems))


def _check_boards(boards, problems: list[str]) -> None:
    if not isinstance(boards, tuple) or not boards:
        problems.append(f"boards: expected a non-empty tuple of names, got {boards!r}")
        return
    for b in boards:
        if not isinstance(b, str) or not _NAME.fullmatch(b):
            problems.append(f"boards: {b!r} is not a name (letters, digits, _ . -)")
    if len(set(boards)) != len(boards):
        problems.append(f"boards: names must be unique, got {boards!r}")


def _check_ports(name: str, ports, count: int, problems: list[str]) -> None:
    if ports is None:
        return
    if not isinstance(ports, tuple) or len(ports) != count:
        problems.append(f"{name}: expected None or {count} port(s), one per board, got {ports!r}")
        return
    for p in ports:
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 65535:
            problems.append(f"{name}: {p!r} is not a port number (0..65535, 0 = any free port)")


def _check_number(name: str, value, problems: list[str], low: float | None = None,
                  high: float | None = None, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(f"{name}: expected a finite number, got {value!r}")
        return
    if low is not None and (value < low or (open_low and value == low)):
        problems.append(f"{name}: must be {'>' if open_low else '>='} {low:g}, got {value!r}")
    if high is not None and value > high:
        problems.append(f"{name}: must be <= {high:g}, got {value!r}")


def _check_spectrum(spectrum, problems: list[str]) -> None:
    if not isinstance(spectrum, tuple) or not spectrum or not all(isinstance(c, Component) for c in spectrum):
        problems.append(f"amplitude: expected a non-empty tuple of Component, got {spectrum!r}")
        return
    weights = [c.weight for c in spectrum]
    if min(weights) < 0 or sum(weights) <= 0:
        problems.append("amplitude: component weights must be >= 0 with a positive sum")
    for c in spectrum:
        if c.distribution not in DISTRIBUTIONS:
            problems.append(f"amplitude: unknown distribution {c.distribution!r}")
