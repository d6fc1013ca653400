"""Topology loader and validator: one YAML file -> checked, frozen model objects.

The topology is checked once, before anything starts, so a mistake costs a
second at the terminal instead of a half-started distributed run.  Every
problem names file, line, dotted key path and what was expected, and all
problems of a file are reported together.

How it works, in three passes:

1. Schema: tables of `Field`s (one per key) are walked against the data.
   Each field has a check (`integer(...)`, `number(...)`, `one_of(...)`,
   `Section`, `Named`, `ListOf`, `Variant` ...) that reports problems and
   returns the converted value.  A mapping becomes a `Record`: a dict of its
   valid keys that knows which model class it builds.  Unknown keys are
   problems.  Adding a stage or a source kind is adding a table entry.
2. Cross-checks on the records: references between sections (streams, hosts,
   modules), node name clashes, nodes that send to or receive from nobody,
   pretrigger vs samples, and the defaults that depend on other sections.
3. If there was no problem, the records are turned into the dataclasses.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from coordinator.frames import HEADER_NAMES, channel_dtype
from coordinator.launcher import render_template
from coordinator.topology import yamlpos
from coordinator.topology.checks import (
    INVALID, Check, Field, Leaf, ListOf, Named, OneOrMany, Problem, Record, Reject, Schema, Section,
    TopologyError, Variant, _Context, _check_fields, _did_you_mean, _is_int, _join, among, boolean,
    describe, format_path, integer, number, one_of, power_of_two, text,
)
from coordinator.topology.stagecheck import check_pipelines, forward_targets
from coordinator.topology.stageschema import STAGES
from coordinator.topology.waveshape import check_waves
from coordinator.topology.yamlpos import Index, KeyPath
from coordinator.topology.model import (
    COMPONENT_PARAMS,
    LOCALHOST,
    SCHEMA_VERSION,
    EMULATOR,
    chain_order,
    AcquisitionConfig,
    BoardLink,
    Component,
    EmulatorSettings,
    EventBuilding,
    McphaSource,
    ReplaySource,
    McphaTrigger,
    RedPitayaSource,
    ScpiTrigger,
    ControlConfig,
    HostConfig,
    PatternSource,
    ProcessingConfig,
    RingConfig,
    RunConfig,
    StreamConfig,
    SyntheticSource,
    Topology,
)

__all__ = ["Problem", "TopologyError", "load_topology", "topology_from_dict"]

NAME_PATTERN = r"[A-Za-z0-9_.-]+"          # topology and host names (used in folder names)
NODE_PATTERN = r"[A-Za-z][A-Za-z0-9_-]*"   # node and stream names (ZeroMQ identities, file names)
LAUNCH_MODES = ("local", "ssh", "manual")


def _version(value: Any) -> int:
    if value == SCHEMA_VERSION and _is_int(value):
        return value
    if _is_int(value):
        raise Reject(f"unsupported schema version {value}, this software reads {SCHEMA_VERSION}")
    raise Reject()


def _dtype(value: Any) -> str:
    if not isinstance(value, str):
        raise Reject()
    try:
        channel_dtype(value)
    except ValueError as exc:
        raise Reject(str(exc)) from None
    return value


def _channel_name(value: Any) -> str:
    if not (isinstance(value, str) and value.isidentifier()):
        raise Reject()
    if value in HEADER_NAMES:
        raise Reject(f"channel name {value!r} is taken by the frame header "
                      f"({', '.join(HEADER_NAMES)} are reserved)")
    return value


def _launch(value: Any) -> str:
    if isinstance(value, str) and value in LAUNCH_MODES:
        return value
    if isinstance(value, str) and "{command}" in value:
        try:
            render_template(value, "h", "a", "c")
        except (KeyError, IndexError, ValueError) as exc:
            raise Reject(hint=f"; the template's fields are {{host}}, {{address}} and {{command}} "
                              f"(braces doubled for a literal brace), not {exc}") from None
        return value
    raise Reject(hint=_did_you_mean(value, list(LAUNCH_MODES)) if isinstance(value, str) else "")


# ---- the schema -------------------------------------------------------------------------

def _model(cls: type) -> Callable[[dict], Any]:
    return lambda values: cls(**values)


def _topology(values: dict) -> Topology:
    rest = {k: v for k, v in values.items() if k != "topology"}
    return Topology(version=values["topology"], **rest)


_COMPONENT_DEFAULTS = Component("uniform")


def _high_above_low(record: Record) -> list[tuple[str, str]]:
    low = record.get("low", _COMPONENT_DEFAULTS.low)
    high = record.get("high", _COMPONENT_DEFAULTS.high)
    return [] if high > low else [("high", f"expected high > low ({low}), got {high}")]


POSITIVE = number(gt=0)
NON_NEGATIVE = number(ge=0)
PORT = integer(0, 65535)
NAME = text(NAME_PATTERN, "a name")
NODE_NAME = text(NODE_PATTERN, "a node name")
STREAM_NAME = text(NODE_PATTERN, "a stream name")
HOST_NAME = text(NAME_PATTERN, "a host name")
HOST_REF = text(noun="a host name")
STREAM_REF = text(noun="a stream name")
NODE_REF = text(noun="an acquisition node name")

RUN = Schema({
    "directory": Field(text(noun="a folder path"), default="runs"),
    "frames": Field(integer(1, null=True)),
    "duration": Field(number(gt=0, null=True)),
    "on_node_loss": Field(one_of("continue", "abort")),
    "heartbeat_timeout": Field(POSITIVE),
    "drain_timeout": Field(POSITIVE),
    "start_timeout": Field(POSITIVE),
    "plots": Field(boolean()),
    "process": Field(one_of("online", "later")),
}, _model(RunConfig))

CONTROL = Schema({
    "address": Field(text(noun="an address")),
    "port": Field(PORT),
}, _model(ControlConfig))

HOST = Schema({
    "address": Field(text(noun="an address"), required=True),
    "launch": Field(Leaf("local, ssh, manual or a command template containing {command}", _launch)),
    "python": Field(text(noun="the path of a Python interpreter on that host", null=True)),
}, _model(HostConfig))

STREAM = Schema({
    "samples": Field(integer(1, 16777216), required=True),
    "channels": Field(Named(Leaf("a dtype name such as int16", _dtype),
                            Leaf("a channel name (a Python identifier)", _channel_name),
                            want="a non-empty mapping of channel name to dtype"), required=True),
    "modules": Field(ListOf(NODE_REF, "a non-empty list of acquisition node names")),
    "dispatch": Field(one_of("full", "partial")),
    "dispatch_block": Field(integer(1, 1 << 20)),
}, _model(StreamConfig))

RING = Schema({
    "slots": Field(integer(2, 1048576)),
    "policy": Field(one_of("block", "drop")),
    "capture": Field(one_of("continuous", "one-shot")),
}, _model(RingConfig))

_COMPONENT_KEY_CHECKS: dict[str, Check] = {
    "scale": POSITIVE, "mean": number(), "sigma": POSITIVE, "low": number(), "high": number(),
}
_COMPONENT_RULES = {"uniform": _high_above_low}
COMPONENTS = {
    distribution: Schema({"weight": Field(POSITIVE),
                          **{key: Field(_COMPONENT_KEY_CHECKS[key]) for key in keys}},
                         _model(Component), _COMPONENT_RULES.get(distribution))
    for distribution, keys in COMPONENT_PARAMS.items()
}

AMPLITUDE = OneOrMany(Variant("distribution", COMPONENTS, "distribution"),
                      "a component mapping or a non-empty list of them")

SYNTHETIC = Schema({
    "rate": Field(number(gt=0, words={"max": None})),
    "seed": Field(integer(0)),
    "pretrigger": Field(integer(0, null=True)),      # < samples: a cross-check
    "sample_ns": Field(POSITIVE),
    "rise_ns": Field(NON_NEGATIVE),
    "decay_ns": Field(POSITIVE),
    "noise": Field(NON_NEGATIVE),
    "baseline": Field(number()),
    "polarity": Field(one_of("positive", "negative")),
    "counts_per_volt": Field(POSITIVE),
    "amplitude": Field(AMPLITUDE),
}, _model(SyntheticSource))

PATTERN = Schema({
    "rate": Field(number(gt=0, words={"max": None})),
    "sample_ns": Field(POSITIVE),
    "pretrigger": Field(integer(0, null=True)),      # < samples: a cross-check
    "payload": Field(one_of("ramp", "none")),
}, _model(PatternSource))

BOARD_ADDRESS = text(noun=f"a host name or IP address, or {EMULATOR!r}")
LINK = Schema({
    "timeout": Field(POSITIVE),
    "retry_interval": Field(POSITIVE),
    "give_up_after": Field(POSITIVE),
}, _model(BoardLink))

REDPITAYA = Schema({
    "address": Field(BOARD_ADDRESS, required=True),
    "port": Field(integer(1, 65535)),
    "decimation": Field(power_of_two(1, 65536)),
    "gain": Field(one_of("LV", "HV")),
    "trigger": Field(Section(Schema({
        "source": Field(one_of("IN1", "IN2", "EXT", "NOW")),
        "slope": Field(one_of("rising", "falling")),
        "level": Field(number()),
    }, _model(ScpiTrigger)))),
    "pretrigger": Field(integer(0, null=True)),      # fits the capture buffer: a cross-check
    "units": Field(one_of("raw", "volts")),
    "byte_order": Field(one_of("big", "little")),
    "data_format": Field(one_of("bin", "ascii")),
    "link": Field(Section(LINK)),
}, _model(RedPitayaSource))

MCPHA = Schema({
    "address": Field(BOARD_ADDRESS, required=True),
    "port": Field(integer(1, 65535)),
    "decimation": Field(among(1, 4, 8, 16, 32, 64, 128, 256)),
    "trigger": Field(Section(Schema({
        "source": Field(one_of("IN1", "IN2")),
        "slope": Field(one_of("rising", "falling")),
        "mode": Field(one_of("normal", "auto")),
        "level": Field(integer(-4096, 4095)),
    }, _model(McphaTrigger)))),
    "pretrigger": Field(integer(0, null=True)),
    "waveforms": Field(integer(1, 4096)),
    "invert": Field(ListOf(one_of("IN1", "IN2"), "a list of inputs (IN1, IN2)", nonempty=False)),
    "link": Field(Section(LINK)),
}, _model(McphaSource))

#: Source kinds: kind -> schema (replay joins here).
SOURCES: dict[str, Schema] = {"synthetic": SYNTHETIC, "pattern": PATTERN,
                              "redpitaya": REDPITAYA, "mcpha": MCPHA}

REPLAY = Schema({
    "run": Field(text(noun="the run directory to replay"), required=True),
    "original": Field(Variant("kind", SOURCES, "source kind"), required=True),
}, _model(ReplaySource))
SOURCES["replay"] = REPLAY

EMULATOR_SETTINGS = Schema({
    "rate": Field(POSITIVE),
    "seed": Field(integer(0)),
    "shared": Field(boolean()),
    "common_trigger": Field(boolean()),
    "rise_ns": Field(NON_NEGATIVE),
    "decay_ns": Field(POSITIVE),
    "noise": Field(NON_NEGATIVE),
    "baseline": Field(number()),
    "polarity": Field(one_of("positive", "negative")),
    "amplitude": Field(AMPLITUDE),
    "bandwidth": Field(number(gt=0, null=True)),
    "latency": Field(NON_NEGATIVE),
}, _model(EmulatorSettings))

ACQUISITION = Schema({
    "host": Field(HOST_REF),
    "stream": Field(STREAM_REF, required=True),
    "source": Field(Variant("kind", SOURCES, "source kind"), required=True),
    "ring": Field(Section(RING)),
    "batch": Field(integer(1, null=True)),
    "data_port": Field(PORT),
}, _model(AcquisitionConfig))

EVENTS = Schema({
    "timeout": Field(POSITIVE),
    "incomplete": Field(one_of("process", "save", "discard")),
    "time_tolerance_ns": Field(NON_NEGATIVE),
}, _model(EventBuilding))

PROCESSING = Schema({
    "host": Field(HOST_REF),
    "streams": Field(ListOf(STREAM_REF, "a list of stream names", nonempty=False)),
    "credits": Field(integer(1, 65536)),
    "modules": Field(ListOf(NODE_REF, "a non-empty list of acquisition node names")),
    "events": Field(Section(EVENTS)),
    "on_stage_error": Field(one_of("continue", "stop")),
    "pipeline": Field(ListOf(Variant("stage", STAGES, "stage"), "a non-empty list of stages"),
                      default=[{"stage": "save"}]),
}, _model(ProcessingConfig))

VERSION = Leaf(f"{SCHEMA_VERSION} (the schema version)", _version)

TOPOLOGY = Schema({
    "topology": Field(VERSION, required=True),
    "name": Field(NAME, required=True),
    "run": Field(Section(RUN), default={}),
    "control": Field(Section(CONTROL)),
    "hosts": Field(Named(Section(HOST), HOST_NAME, "a mapping of host name to host", nonempty=False)),
    "emulator": Field(Section(EMULATOR_SETTINGS)),
    "security": Field(one_of("none", "curve")),
    "keys": Field(text(noun="a folder path")),
    "streams": Field(Named(Section(STREAM), STREAM_NAME, "a non-empty mapping of stream name to stream"),
                     required=True),
    "acquisition": Field(Named(Section(ACQUISITION), NODE_NAME,
                               "a non-empty mapping of node name to acquisition node"), required=True),
    "processing": Field(Named(Section(PROCESSING), NODE_NAME,
                              "a non-empty mapping of node name to processing node"), required=True),
}, _topology)


# ---- cross-checks -----------------------------------------------------------------------

def _section(top: Record, key: str) -> dict[str, Any] | None:
    """A named section for cross-checks, or None if it is missing or not a mapping."""
    value = top.get(key)
    return value if isinstance(value, dict) else None


def _records(section: dict[str, Any] | None) -> dict[str, Record]:
    return {n: r for n, r in (section or {}).items() if isinstance(r, Record)}


def _cross_check(ctx: _Context, top: Record, base_dir: Path) -> None:
    """Rules between sections, and the defaults that depend on other sections."""
    streams, acq, proc = (_section(top, k) for k in ("streams", "acquisition", "processing"))
    _check_node_names(ctx, acq, proc)
    _check_hosts(ctx, top, acq, proc)
    if streams is not None:
        _check_acquisition_streams(ctx, streams, acq)
        _resolve_modules(ctx, streams, acq)
        _check_capture(ctx, streams, acq)
        _resolve_receivers(ctx, streams, acq, proc)
    if isinstance(top.get("run"), Record) and top["run"].ok("directory"):
        top["run"]["directory"] = _absolute(top["run"]["directory"], base_dir)
    if top.get("security") == "curve" and "keys" not in top.invalid:
        top["keys"] = _absolute(top.get("keys", "keys"), base_dir)
    elif top.ok("keys"):
        ctx.report(("keys",), "keys is only read with security: curve")
    if streams is not None and not ctx.problems:
        check_pipelines(ctx, top, base_dir)


def _check_node_names(ctx: _Context, acq: dict | None, proc: dict | None) -> None:
    for name in set(acq or ()) & set(proc or ()):
        first, second = ("acquisition", name), ("processing", name)
        ctx.report(second, f"node name {name!r} is used twice: {format_path(first)} "
                           f"(line {ctx.line(first)}) and {format_path(second)} (line {ctx.line(second)}); "
                           f"node names must be unique across acquisition and processing")


def _check_hosts(ctx: _Context, top: Record, acq: dict | None, proc: dict | None) -> None:
    if top.get("hosts", {}) is INVALID:
        return
    hosts = top.get("hosts", {})
    known = f"hosts: {_join(hosts)}" if hosts else f"without hosts every node runs on {LOCALHOST!r}"
    for section, nodes in (("acquisition", acq), ("processing", proc)):
        for name, node in _records(nodes).items():
            host = node.get("host", LOCALHOST)
            if node.ok("host") and host != LOCALHOST and host not in hosts:
                ctx.report((section, name, "host"),
                           f"host {host!r} is not defined{_did_you_mean(host, list(hosts))}; {known}")
    control = top.get("control")
    port = control.get("port", 0) if isinstance(control, Record) else 0
    for name, h in _records(hosts).items():
        if h.get("launch") == "manual" and port == 0:
            ctx.report(("hosts", name, "launch"), "an operator who starts nodes by hand needs to know the "
                                                  "coordinator's port: set control.port (and control.address)")


def _check_acquisition_streams(ctx: _Context, streams: dict, acq: dict | None) -> None:
    """Each node's stream exists; its source's pretrigger fits in the stream's samples."""
    for name, node in _records(acq).items():
        if not node.ok("stream"):
            continue
        stream = node["stream"]
        if stream not in streams:
            ctx.report(("acquisition", name, "stream"),
                       f"stream {stream!r} is not defined; streams: {_join(streams)}")
            continue
        source, spec = node.get("source"), streams[stream]
        if not (isinstance(source, Record) and isinstance(spec, Record) and spec.ok("samples")):
            continue
        samples, pretrigger = spec["samples"], source.get("pretrigger")
        if source.ok("pretrigger") and pretrigger is not None and pretrigger >= samples:
            ctx.report(("acquisition", name, "source", "pretrigger"),
                       f"expected an integer 0..{samples - 1} (stream {stream!r} has {samples} samples), "
                       f"got {pretrigger}")
        rule = BOARD_STREAM_RULES.get(source.get("kind"))
        if rule is not None and spec.ok("channels"):
            for key, message in rule(source, spec):
                path = ("acquisition", name, "source", key) if key else ("acquisition", name, "stream")
                ctx.report(path, message)


#: The capture buffer of a STEMlab 125-14 input, and the samples it keeps after a trigger
#: when ACQ:TRig:DLY is 0.
BOARD_BUFFER = 16384
POST_TRIGGER_AT_DLY_0 = 8192


def _board_channels(source: Record, spec: Record, dtypes: tuple[str, ...]) -> list[tuple[str, str]]:
    """A board's stream names its inputs (IN1, IN2) as channels, in a dtype the board sends."""
    out = []
    for channel, dtype in spec["channels"].items():
        if channel not in ("IN1", "IN2"):
            out.append(("", f"stream {spec['name']!r} has channel {channel!r}; a {source['kind']} "
                            f"board has inputs IN1 and IN2 (name the stream's channels after them)"))
        elif dtype not in dtypes:
            out.append(("", f"stream {spec['name']!r} channel {channel} is {dtype}; a {source['kind']} "
                            f"source with these settings gives {' or '.join(dtypes)}"))
    return out


def _redpitaya_stream(source: Record, spec: Record) -> list[tuple[str, str]]:
    units = RedPitayaSource.units if "units" not in source else source["units"] if source.ok("units") else None
    out = _board_channels(source, spec, ("int16",) if units == "raw" else ("float32",)) if units else []
    samples = spec["samples"]
    if samples > BOARD_BUFFER:
        out.append(("", f"stream {spec['name']!r} has {samples} samples; a Red Pitaya captures "
                        f"at most {BOARD_BUFFER} per trigger"))
    elif source.ok("pretrigger") and source.get("pretrigger") is not None:
        pre = source["pretrigger"]
        # the board keeps 8192 + DLY samples after the trigger, DLY >= 0
        most = BOARD_BUFFER - max(POST_TRIGGER_AT_DLY_0, samples - pre)
        if pre > most:
            out.append(("pretrigger", f"expected at most {most} samples before the trigger (the board "
                                      f"keeps at least {POST_TRIGGER_AT_DLY_0} after it), got {pre}"))
    return out


def _mcpha_stream(source: Record, spec: Record) -> list[tuple[str, str]]:
    return _board_channels(source, spec, ("int16",))


BOARD_STREAM_RULES: dict[str, Callable[[Record, Record], list[tuple[str, str]]]] = {
    "redpitaya": _redpitaya_stream, "mcpha": _mcpha_stream}


def _members(streams: dict, acq: dict | None) -> dict[str, list[str]] | None:
    """Acquisition nodes of each stream in file order.

    None if some node's stream is invalid or undefined: that is reported already,
    and rules built on membership would only repeat it in other words.
    """
    if acq is None:
        return None
    members: dict[str, list[str]] = {s: [] for s in streams}
    for name, node in acq.items():
        if not (isinstance(node, Record) and node.ok("stream") and node["stream"] in streams):
            return None
        members[node["stream"]].append(name)
    return members


def _resolve_modules(ctx: _Context, streams: dict, acq: dict | None) -> None:
    """Check `modules` lists against the nodes' streams; default: every node of the stream."""
    members = _members(streams, acq)
    for stream, spec in _records(streams).items():
        mine = (members or {}).get(stream, [])
        path = ("streams", stream, "modules")
        if "modules" not in spec:
            spec["modules"] = mine
            if members is not None and not mine:
                ctx.report(("streams", stream), f"stream {stream!r} has no module: "
                                                f"no acquisition node has stream: {stream}")
            continue
        if not spec.ok("modules"):
            continue
        _check_module_list(ctx, path, stream, spec["modules"], _records(acq))
        for name in mine if members is not None else ():
            if name not in spec["modules"]:
                ctx.report(path, f"acquisition node {name!r} has stream: {stream} but is not listed")


def _check_capture(ctx: _Context, streams: dict, acq: dict | None) -> None:
    """The modules of a stream capture the same way: a one-shot module and a continuous one
    would not make the same events."""
    nodes = _records(acq)
    for stream, spec in _records(streams).items():
        modules = [m for m in (spec["modules"] if spec.ok("modules") else []) if m in nodes]
        rings = [r if isinstance(r := nodes[m].get("ring"), Record) else {} for m in modules]
        if any("capture" in getattr(r, "invalid", ()) for r in rings):
            continue        # reported already
        modes = [r.get("capture", "continuous") for r in rings]
        for m, mode in zip(modules[1:], modes[1:]):
            if mode != modes[0]:
                ctx.report(("acquisition", m, "ring", "capture"),
                           f"the modules of stream {stream!r} must capture the same way: {m} is {mode}, "
                           f"{modules[0]} is {modes[0]}")


def _check_module_list(ctx: _Context, path: KeyPath, stream: str, modules: list,
                       acq: dict[str, Record]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(modules):
        item = path + (Index(i),)
        if name is INVALID:
            continue
        if name in seen:
            ctx.report(item, f"{name!r} is listed twice")
        elif name not in acq:
            ctx.report(item, f"{name!r} is not an acquisition node; acquisition nodes: {_join(acq)}")
        elif acq[name].ok("stream") and acq[name]["stream"] != stream:
            ctx.report(item, f"acquisition node {name!r} belongs to stream {acq[name]['stream']!r}, "
                             f"not {stream!r}")
        seen.add(name)


def _resolve_receivers(ctx: _Context, streams: dict, acq: dict | None, proc: dict | None) -> None:
    """Processing streams exist (default: all; for the second stage of a chain, what its
    upstream nodes receive); `modules` only with partial dispatch; nobody receives nothing,
    nobody sends to nobody."""
    members = _members(streams, acq)
    targets = forward_targets(ctx, _records(proc))
    complete = bool(proc)   # every processing node's stream list is known and fine
    for name in chain_order(proc or {}, targets):     # a chain's next stage after its senders
        node = proc[name]
        if not isinstance(node, Record) or "streams" in node.invalid or "modules" in node.invalid:
            complete = False
            continue
        given = "streams" in node
        if not given:
            node["streams"] = list(streams) if name not in targets else \
                list(dict.fromkeys(s for src in targets[name] for s in proc[src].get("streams", [])))
        if not _check_stream_list(ctx, ("processing", name, "streams"), node["streams"], streams):
            complete = False
            continue
        if name in targets or members is None:
            continue     # fed by processing nodes, not by acquisition nodes
        if "modules" in node and not _check_node_modules(ctx, name, node, streams, members):
            complete = False
            continue
        if not _received_modules(node, members):
            why = "its streams list is empty" if not node["streams"] else \
                "no acquisition node has any of its streams"
            ctx.report(("processing", name) + (("streams",) if given else ()),
                       f"processing node {name!r} receives nothing ({why})")
    if not complete or members is None:
        return
    received = {m for name, node in proc.items() if name not in targets for m in _received_modules(node, members)}
    for stream, names in members.items():
        for acq_name in names:
            if acq_name not in received:
                ctx.report(("acquisition", acq_name), f"acquisition node {acq_name!r} sends to nobody: "
                                                      f"no processing node receives its frames of stream {stream!r}")


def _received_modules(node: Record, members: dict[str, list[str]]) -> list[str]:
    mods = [m for s in node["streams"] for m in members.get(s, [])]
    return [m for m in mods if m in node["modules"]] if node.get("modules") else mods


def _check_node_modules(ctx: _Context, name: str, node: Record, streams: dict,
                        members: dict[str, list[str]]) -> bool:
    """`modules` of a processing node: modules of its streams, each of a partial-dispatch stream."""
    ok = True
    for i, module in enumerate(node["modules"]):
        path = ("processing", name, "modules", Index(i))
        stream = next((s for s in node["streams"] if module in members.get(s, [])), None)
        if stream is None:
            ctx.report(path, f"{module!r} is not a module of its streams ({_join(node['streams'])}); "
                             f"modules: {_join(m for s in node['streams'] for m in members.get(s, []))}")
            ok = False
        elif isinstance(streams.get(stream), Record) and streams[stream].get("dispatch", "full") == "full" \
                and len(members[stream]) > 1:
            ctx.report(path, f"stream {stream!r} has dispatch: full, so every part of an event goes to one "
                             f"processing node; choosing modules needs dispatch: partial")
            ok = False
    return ok


def _check_stream_list(ctx: _Context, path: KeyPath, names: list, streams: dict) -> bool:
    """Each listed stream exists, once; False if any item is wrong."""
    seen: set[str] = set()
    ok = True
    for i, stream in enumerate(names):
        if stream is INVALID:
            ok = False
        elif stream in seen:
            ctx.report(path + (Index(i),), f"{stream!r} is listed twice")
        elif stream not in streams:
            ctx.report(path + (Index(i),), f"stream {stream!r} is not defined; streams: {_join(streams)}")
            ok = False
        seen.add(stream)
    return ok


def _absolute(directory: str, base_dir: Path) -> Path:
    """Relative run directories are relative to the topology file, not to wherever we were started."""
    path = Path(directory).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base_dir.absolute() / path))


# ---- building ---------------------------------------------------------------------------

def _materialize(value: Any) -> Any:
    """Checked records -> model objects (lists become tuples, as the model wants)."""
    if isinstance(value, Record):
        return value.build({k: _materialize(v) for k, v in value.items()})
    if isinstance(value, dict):
        return {k: _materialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_materialize(v) for v in value)
    return value


def _validate(ctx: _Context, data: Any, base_dir: Path) -> Topology:
    if data is None:
        ctx.report((), "the file is empty; expected a topology (topology: 1, name, streams, "
                       "acquisition, processing)")
        raise ctx.error()
    if not isinstance(data, dict):
        ctx.report((), f"expected a mapping at the top level, got {describe(data)}")
        raise ctx.error()
    if "topology" in data:   # a file of another schema version cannot be read any further
        before = len(ctx.problems)
        VERSION(ctx, data["topology"], ("topology",))
        if len(ctx.problems) > before:
            raise ctx.error()
    top = _check_fields(ctx, data, (), TOPOLOGY)
    _cross_check(ctx, top, base_dir)
    if ctx.problems:
        raise ctx.error()
    topology = _materialize(top)
    for path, message in check_waves(topology):
        ctx.report(path, message)
    if ctx.problems:
        raise ctx.error()
    return topology


# ---- public API -------------------------------------------------------------------------

def load_topology(path: str | Path) -> Topology:
    """Read, check and build a topology file; raise TopologyError with every problem found."""
    path = Path(path)
    ctx = _Context(str(path))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        ctx.report((), "file not found")
        raise ctx.error() from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        ctx.report((), f"cannot read the file: {reason}")
        raise ctx.error() from None
    try:
        doc = yamlpos.parse(text)
    except yamlpos.YamlSyntaxError as exc:
        ctx.problems.append(Problem(ctx.source, exc.line, "", f"YAML syntax error: {exc.message}"))
        raise ctx.error() from None
    ctx.positions = doc.positions
    for dup in doc.duplicates:
        ctx.problems.append(Problem(ctx.source, dup.mark.line, format_path(dup.path),
                                    f"duplicate key {dup.path[-1]!r} (first given at line {dup.first.line})"))
    topology = _validate(ctx, doc.data, path.absolute().parent)
    return replace(topology, path=path.absolute())


def topology_from_dict(data: dict, source: str = "<dict>", base_dir: Path | None = None) -> Topology:
    """Same checks on plain data (e.g. `to_dict()` output received over the network); no lines.

    Relative run directories are resolved against `base_dir` (default: the current folder).
    """
    return _validate(_Context(source), data, Path(base_dir) if base_dir is not None else Path.cwd())
