"""Topology model (contract): frozen dataclasses, built and validated once by `load.py`.

Every other part of the system receives these objects, never raw YAML, so a
value that reached a node has already been checked.  `to_dict()` gives the
resolved form (defaults filled in) that is written to the run directory and
sent to nodes at configure time; `from_dict()` rebuilds the objects on a node.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Union

import numpy as np

from coordinator.frames import frame_dtype

SCHEMA_VERSION = 1
LOCALHOST = "localhost"


@dataclass(frozen=True)
class Component:
    """One part of an amplitude spectrum (volts); `weight` is relative."""

    distribution: Literal["exponential", "gaussian", "uniform"]
    weight: float = 1.0
    scale: float = 0.1      # exponential: mean amplitude
    mean: float = 0.5       # gaussian
    sigma: float = 0.02     # gaussian
    low: float = 0.0        # uniform
    high: float = 1.0       # uniform


def default_spectrum() -> tuple[Component, ...]:
    """A line on a continuum, as a gamma source on a scintillator looks."""
    return (
        Component("exponential", weight=0.8, scale=0.1),
        Component("gaussian", weight=0.2, mean=0.5, sigma=0.02),
    )


@dataclass(frozen=True)
class SyntheticSource:
    """Detector-like pulses: Poisson arrivals, exponential decay, noise."""

    kind: Literal["synthetic"] = "synthetic"
    rate: float | None = 1000.0        # events (triggers) per second; None means `max`
    seed: int = 0
    pretrigger: int | None = None      # samples before the trigger; None: samples // 8
    sample_ns: float = 8.0             # sample period (125 MS/s)
    rise_ns: float = 16.0
    decay_ns: float = 800.0
    noise: float = 0.002               # volts rms
    baseline: float = 0.0              # volts
    polarity: Literal["positive", "negative"] = "positive"
    counts_per_volt: float = 8192.0    # integer channels: counts = volts * this (STEMlab 125-14, LV)
    amplitude: tuple[Component, ...] = field(default_factory=default_spectrum)


@dataclass(frozen=True)
class PatternSource:
    """Deterministic test pattern (a ramp shifted by seq): costs a memory copy per frame.

    For transport benchmarks and for checking bytes end to end without physics.
    """

    kind: Literal["pattern"] = "pattern"
    rate: float | None = None          # frames per second, evenly spaced; None means `max`
    sample_ns: float = 8.0
    pretrigger: int | None = None
    payload: Literal["ramp", "none"] = "ramp"   # none: headers only (transport benchmarks)


#: `address` of a board that the coordinator emulates itself (one `daq-redpitaya-emulator`
#: process serves every such board of a run).
EMULATOR = "emulator"


@dataclass(frozen=True)
class ScpiTrigger:
    source: Literal["IN1", "IN2", "EXT", "NOW"] = "IN1"
    slope: Literal["rising", "falling"] = "rising"
    level: float = 0.05                # volts


@dataclass(frozen=True)
class BoardLink:
    """How a source treats the network connection to its board."""

    timeout: float = 2.0               # s to wait for one reply before asking the error queue
    retry_interval: float = 1.0        # s between reconnection attempts
    give_up_after: float = 30.0        # s without a working board before the source fails


@dataclass(frozen=True)
class RedPitayaSource:
    """A Red Pitaya STEMlab 125-14 read over SCPI (port 5000), one frame per trigger."""

    kind: Literal["redpitaya"] = "redpitaya"
    address: str = EMULATOR            # host name or IP of the board, or `emulator`
    port: int = 5000
    decimation: int = 8                # power of two 1..65536: sample period 8 ns * decimation
    gain: Literal["LV", "HV"] = "LV"   # input range +-1 V or +-20 V (jumpers on the board)
    trigger: ScpiTrigger = field(default_factory=ScpiTrigger)
    pretrigger: int | None = None      # samples before the trigger; None: samples // 8
    units: Literal["raw", "volts"] = "raw"   # raw: int16 channels; volts: float32 channels
    byte_order: Literal["big", "little"] = "big"
    data_format: Literal["bin", "ascii"] = "bin"
    link: BoardLink = field(default_factory=BoardLink)


@dataclass(frozen=True)
class McphaTrigger:
    source: Literal["IN1", "IN2"] = "IN1"
    slope: Literal["rising", "falling"] = "rising"
    mode: Literal["normal", "auto"] = "normal"
    level: int = 400                   # ADC counts, -4096..4095


@dataclass(frozen=True)
class McphaSource:
    """A Red Pitaya running KIT's MCPHA server (port 1001): waveforms in sets of `waveforms`."""

    kind: Literal["mcpha"] = "mcpha"
    address: str = EMULATOR
    port: int = 1001
    decimation: int = 8                # 1, 4, 8, 16, 32, 64, 128 or 256
    trigger: McphaTrigger = field(default_factory=McphaTrigger)
    pretrigger: int | None = None
    waveforms: int = 32                # waveforms asked for per request
    invert: tuple[str, ...] = ()       # inputs whose sign the server flips (negative pulses)
    link: BoardLink = field(default_factory=BoardLink)


@dataclass(frozen=True)
class ReplaySource:
    """The frames of a finished run, read back from its files (`daq-coordinator process`)."""

    kind: Literal["replay"] = "replay"
    run: str = ""                      # the run directory
    original: Any = None               # the source that acquired them (their axes and units)


SourceConfig = Union[SyntheticSource, PatternSource, RedPitayaSource, McphaSource, ReplaySource]


@dataclass(frozen=True)
class EmulatorSettings:
    """The signal and link of the boards the coordinator emulates (`address: emulator`)."""

    rate: float = 1000.0               # pulses per second on each board
    seed: int = 0
    shared: bool = True                # all emulated boards see the same events (one detector)
    common_trigger: bool = False       # boards triggered together, busy-gated (event building)
    rise_ns: float = 16.0
    decay_ns: float = 800.0
    noise: float = 0.002               # volts rms
    baseline: float = 0.0
    polarity: Literal["positive", "negative"] = "positive"
    amplitude: tuple[Component, ...] = field(default_factory=default_spectrum)
    bandwidth: float | None = None     # bit/s of the emulated link; None: unlimited
    latency: float = 0.0               # s added to every command


@dataclass(frozen=True)
class RingConfig:
    slots: int = 1024
    policy: Literal["block", "drop"] = "block"
    # one-shot: fill the ring at the source's pace, then ship it (a burst faster than the network)
    capture: Literal["continuous", "one-shot"] = "continuous"


@dataclass(frozen=True)
class HostConfig:
    name: str
    address: str = "127.0.0.1"
    launch: str = "local"              # local | ssh | manual | template containing {command}
    python: str | None = None          # interpreter there (default: ssh/manual the daq-* commands, else this one)


@dataclass(frozen=True)
class StreamConfig:
    name: str
    samples: int
    channels: dict[str, str]           # channel name -> dtype text, in order
    modules: tuple[str, ...]           # acquisition nodes contributing one part of every event
    dispatch: Literal["full", "partial"] = "full"
    dispatch_block: int = 64           # seqs per block of the dispatch schedule (full, several modules)

    @property
    def scheduled(self) -> bool:
        """All parts of an event must meet on one procnode: dispatch by schedule, not by credit."""
        return self.dispatch == "full" and len(self.modules) > 1

    @property
    def dtype(self) -> np.dtype:
        """Record dtype of one frame of this stream (header + channels)."""
        return frame_dtype(self.channels, self.samples)


@dataclass(frozen=True)
class AcquisitionConfig:
    name: str
    stream: str
    source: SourceConfig
    host: str = LOCALHOST
    ring: RingConfig = field(default_factory=RingConfig)
    batch: int | None = None           # max frames per data message; None: about 4 MiB worth (credits also bound it)
    data_port: int = 0                 # 0: any free port


@dataclass(frozen=True)
class StageConfig:
    stage: str                         # pha | filter | histogram | save | forward | copy | crop | user | drain
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EventBuilding:
    """How a processing node assembles the parts of one event sent by several modules."""

    timeout: float = 1.0               # s to wait for every part after the first arrived
    incomplete: Literal["process", "save", "discard"] = "process"
    time_tolerance_ns: float = 5e6     # parts whose timestamps differ more are flagged


@dataclass(frozen=True)
class ProcessingConfig:
    name: str
    streams: tuple[str, ...]           # streams this node receives
    host: str = LOCALHOST
    credits: int = 64                  # frames (or events) in flight per upstream node
    modules: tuple[str, ...] | None = None   # partial dispatch: the modules it receives (None: all)
    events: EventBuilding = field(default_factory=EventBuilding)
    on_stage_error: Literal["continue", "stop"] = "continue"
    pipeline: tuple[StageConfig, ...] = (StageConfig("save", {"format": "hdf5"}),)

    def forwards_to(self) -> list[str]:
        """Processing nodes this one sends events or results on to (forward/copy stages)."""
        return [st.params["to"] for st in self.pipeline if st.stage in ("forward", "copy")]


@dataclass(frozen=True)
class RunConfig:
    directory: Path = Path("runs")     # absolute after loading (relative to the topology file)
    frames: int | None = None          # stop after this many events per stream
    duration: float | None = None      # stop after this many seconds
    on_node_loss: Literal["continue", "abort"] = "continue"
    heartbeat_timeout: float = 2.0     # a node silent this long is lost
    drain_timeout: float = 5.0         # time allowed after stop for frames in flight
    start_timeout: float = 20.0        # time allowed for nodes to register and configure
    plots: bool = True                 # PNG plots of the histograms and a few waveforms at the end
    process: Literal["online", "later"] = "online"   # later: save raw frames only (daq-coordinator process)


@dataclass(frozen=True)
class ControlConfig:
    address: str = "127.0.0.1"
    port: int = 0                      # 0: any free port


def chain_order(nodes: Iterable[str], senders: Mapping[str, Iterable[str]]) -> list[str]:
    """`nodes`, each after the nodes that send to it (`senders`: node -> its senders)."""
    done: list[str] = []
    pending = list(nodes)
    while pending:
        ready = [p for p in pending if all(u in done for u in senders.get(p, ()))]
        done.extend(ready or pending)    # a cycle is rejected by validation; never loop
        pending = [p for p in pending if p not in done]
    return done


@dataclass(frozen=True)
class Topology:
    name: str
    streams: dict[str, StreamConfig]
    acquisition: dict[str, AcquisitionConfig]
    processing: dict[str, ProcessingConfig]
    run: RunConfig = field(default_factory=RunConfig)
    hosts: dict[str, HostConfig] = field(default_factory=dict)
    control: ControlConfig = field(default_factory=ControlConfig)
    emulator: EmulatorSettings = field(default_factory=EmulatorSettings)
    security: str = "none"             # none | curve (coordinator/security.py)
    keys: Path | None = None           # the key folder (absolute after loading) with security: curve
    version: int = SCHEMA_VERSION
    path: Path | None = None           # the file it was loaded from

    # ---- derived views used by the coordinator and nodes -------------------------
    def nodes(self) -> list[str]:
        return [*self.acquisition, *self.processing]

    def chained(self) -> set[str]:
        """Processing nodes fed by other processing nodes (second stage of a chain)."""
        return {t for p in self.processing.values() for t in p.forwards_to()}

    def upstreams(self, proc: str) -> list[str]:
        """Nodes that send to processing node `proc`: acquisition nodes, or for the second
        stage of a chain, the processing nodes that forward to it."""
        if proc in self.chained():
            return [p.name for p in self.processing.values() if proc in p.forwards_to()]
        cfg = self.processing[proc]
        return [a.name for a in self.acquisition.values() if a.stream in cfg.streams
                and (cfg.modules is None or a.name in cfg.modules)]

    def downstreams(self, acq: str) -> list[str]:
        """Processing nodes that receive from acquisition node `acq`."""
        return [p for p in self.processing if acq in self.upstreams(p)]

    def processing_order(self) -> list[str]:
        """Processing nodes, every one after those that forward to it (end-of-run order)."""
        return chain_order(self.processing, {p: [u for u in self.upstreams(p) if u in self.processing]
                                              for p in self.processing})

    def processing_levels(self) -> list[list[str]]:
        """Processing nodes by depth in the chains: level 0 is fed by acquisition nodes, level
        n+1 by level n.  A level needs the level before it bound (configure) and finished (end)."""
        depth: dict[str, int] = {}
        for name in self.processing_order():
            depth[name] = max([depth[u] + 1 for u in self.upstreams(name) if u in depth], default=0)
        return [[p for p, d in depth.items() if d == level] for level in sorted(set(depth.values()))]

    def frames_limit(self, acq: str) -> int | None:
        """Frames node `acq`'s source produces in a run: `run.frames`, and for a one-shot
        capture at most what the smallest ring of its stream holds (the modules of one stream
        make the same events)."""
        cfg = self.acquisition[acq]
        if cfg.ring.capture != "one-shot":
            return self.run.frames
        burst = min(self.acquisition[m].ring.slots for m in self.streams[cfg.stream].modules)
        return burst if self.run.frames is None else min(burst, self.run.frames)

    def emulated_boards(self) -> list[str]:
        """Acquisition nodes whose board the coordinator emulates."""
        return [a.name for a in self.acquisition.values()
                if getattr(a.source, "address", None) == EMULATOR]

    def host_address(self, host: str) -> str:
        """Where a node on `host` binds its sockets; a node without a host runs on the
        coordinator's machine and binds its control address (reachable from the other hosts)."""
        return self.hosts[host].address if host in self.hosts else self.control.address

    def replace_run(self, **changes: Any) -> "Topology":
        return dataclasses.replace(self, run=dataclasses.replace(self.run, **changes))

    def to_dict(self) -> dict[str, Any]:
        """Resolved form (every default filled in), plain YAML/msgpack types.

        It is itself a valid topology file (`topology: 1` first, `rate: max`,
        no `path`), so it can be written to the run directory and loaded again.
        """
        out: dict[str, Any] = {"topology": self.version, "name": self.name,
                               "run": _plain(self.run), "control": _plain(self.control)}
        if self.hosts:
            out["hosts"] = _plain(self.hosts)
        if self.emulated_boards():
            out["emulator"] = _plain(self.emulator)
        if self.security != "none":
            out["security"], out["keys"] = self.security, str(self.keys)
        for section in ("streams", "acquisition", "processing"):
            out[section] = _plain(getattr(self, section))
        return out


#: The Component fields each distribution reads; only these are written out.
COMPONENT_PARAMS: dict[str, tuple[str, ...]] = {
    "exponential": ("scale",),
    "gaussian": ("mean", "sigma"),
    "uniform": ("low", "high"),
}


def _plain(obj: Any) -> Any:
    """Dataclasses -> dicts of YAML/msgpack types, in the shape the topology schema reads."""
    if isinstance(obj, StageConfig):
        return {"stage": obj.stage, **_plain(obj.params)}
    if isinstance(obj, Component):
        keys = ("distribution", "weight", *COMPONENT_PARAMS.get(obj.distribution, ()))
        return {k: getattr(obj, k) for k in keys}
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.name == "name":             # names are the mapping keys
                continue
            if f.name == "modules" and isinstance(obj, ProcessingConfig) and obj.modules is None:
                continue                     # absent means every module
            out[f.name] = _plain(getattr(obj, f.name))
        if "kind" in out and "rate" in out and out["rate"] is None:   # a source: rate None is `max`
            out["rate"] = "max"
        return out
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
