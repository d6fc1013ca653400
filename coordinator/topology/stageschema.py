"""Schemas of the pipeline stages a processing node runs (`processing.<node>.pipeline`).

Each stage is a mapping with `stage: <name>` and its parameters; the parameters are
checked here, key by key, like the rest of the topology.  What depends on other parts
of the topology (channels of the stream, tables made by earlier stages, the node a
`forward` stage sends to, a user stage's file) is checked in `stagecheck.py`.

Units: amplitudes (height, threshold, prominence, histogram edges on heights) are in
the channel's physical unit, volts for calibrated channels, counts otherwise; sample
counts (distance, width, wlen, plateau_size, windows) are samples, as in
`scipy.signal.find_peaks`; times carry `_ns` in their key.
"""
from __future__ import annotations

from typing import Any

from coordinator.topology.checks import (
    Field, Leaf, ListOf, Named, Record, Reject, Schema, Section, _is_int, _is_number, boolean,
    describe, integer, number, one_of, text,
)
from coordinator.topology.model import StageConfig

#: Event flags a filter can reject by name (bits in coordinator.frames).
FLAG_NAMES = ("saturated", "source_warning", "time_approx", "incomplete", "time_mismatch")
#: Columns of every pulse table a pha stage makes; the others depend on its parameters.
PHA_COLUMNS = ("seq", "module", "channel", "position", "time", "height")
#: find_peaks parameter -> the extra columns it adds (scipy's property names, singular).
PHA_PROPERTY_COLUMNS = {
    "threshold": ("left_threshold", "right_threshold"),
    "prominence": ("prominence", "left_base", "right_base"),
    "width": ("prominence", "left_base", "right_base", "width", "width_height", "left_ips", "right_ips"),
    "plateau_size": ("plateau_size", "left_edge", "right_edge"),
}
TABLE_NAME = r"[A-Za-z][A-Za-z0-9_]*"


def _stage(values: dict) -> StageConfig:
    params = {k: v for k, v in values.items() if k != "stage"}
    return StageConfig(values["stage"], params)


def _plain_dict(values: dict) -> dict:
    return dict(values)


def _bound(value: Any) -> Any:
    """A find_peaks bound: a number (minimum) or [min, max] with either null."""
    if _is_number(value):
        return float(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and \
            all(v is None or _is_number(v) for v in value) and any(v is not None for v in value):
        lo, hi = (None if v is None else float(v) for v in value)
        if lo is not None and hi is not None and hi < lo:
            raise Reject(f"expected [min, max] with max >= min, got {describe(list(value))}")
        return [lo, hi]
    raise Reject()


BOUND = Leaf("a number (the minimum) or [min, max] (either may be null)", _bound)


def _range(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) == 2 and \
            all(v is None or _is_number(v) for v in value):
        return [None if v is None else float(v) for v in value]
    raise Reject()


RANGE = Leaf("[min, max] (either may be null)", _range)
CHANNEL_REF = text(r"([A-Za-z][A-Za-z0-9_-]*\.)?[A-Za-z_][A-Za-z0-9_]*",
                   "a channel name (IN1) or module.channel (rp1.IN1)")


def _one_or_more(value: Any) -> Any:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise Reject()
    return [CHANNEL_REF.convert(item) for item in items]


CHANNELS = Leaf("a channel (IN1, rp1.IN1) or a non-empty list of them", _one_or_more)
TABLE = text(TABLE_NAME, "a table name")
WHERE = Named(RANGE, text(r"[A-Za-z_][A-Za-z0-9_]*", "a column name"),
              "a mapping of column name to [min, max]", nonempty=False)


def _edges(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) >= 2 and all(_is_number(v) for v in value):
        edges = [float(v) for v in value]
        if all(b > a for a, b in zip(edges, edges[1:])):
            return edges
    raise Reject()


def _bins(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) == 3 and _is_number(value[0]) and \
            _is_number(value[1]) and _is_int(value[2]) and value[1] > value[0] and 1 <= value[2] <= 1 << 24:
        return [float(value[0]), float(value[1]), int(value[2])]
    raise Reject()


def _window(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v >= 0 for v in value) \
            and sum(value) >= 1:
        return [int(value[0]), int(value[1])]
    raise Reject()


def _exactly_one(*keys: str):
    def rule(record: Record) -> list[tuple[str, str]]:
        given = [k for k in keys if k in record]
        if len(given) == 1:
            return []
        return [("stage", f"give exactly one of {', '.join(keys)}"
                 + (f" (got {', '.join(given)})" if given else ""))]
    return rule


def _filter_rule(record: Record) -> list[tuple[str, str]]:
    if any(k in record for k in ("pulses", "coincidence", "reject_flags")):
        return []
    return [("stage", "a filter needs a condition: pulses, coincidence or reject_flags")]


def _save_rule(record: Record) -> list[tuple[str, str]]:
    out = []
    if record.get("format") == "csv":
        if record.get("data") in ("raw", "both") and "data" in record:
            out.append(("data", "CSV holds reduced tables only; use data: reduced (or format: hdf5)"))
        for key in ("compression", "compression_level", "chunk_frames", "mode"):
            if record.get(key) not in (None, "full"):
                out.append((key, f"{key} applies to format: hdf5 only"))
    if record.get("compression_level") is not None and record.get("compression") != "gzip":
        out.append(("compression_level", "compression_level applies to compression: gzip only"))
    if record.get("mode") == "sparse" and record.get("data") == "reduced":
        out.append(("mode", "sparse keeps waveform windows: it needs data: raw or both"))
    return out


def _user_rule(record: Record) -> list[tuple[str, str]]:
    if ("file" in record) == ("entry_point" in record):
        return [("stage", "a user stage needs exactly one of file (with function) or entry_point")]
    if "file" in record and "function" not in record:
        return [("function", "required with file: the name of the function to call")]
    if "entry_point" in record and "function" in record:
        return [("function", "function goes with file; an entry point names its function itself")]
    return []


PHA = Schema({
    "channel": Field(CHANNELS, required=True),
    "name": Field(TABLE, default="pulses"),
    "height": Field(BOUND),
    "threshold": Field(BOUND),
    "distance": Field(number(ge=1)),
    "prominence": Field(BOUND),
    "width": Field(BOUND),
    "wlen": Field(number(gt=1)),
    "rel_height": Field(number(ge=0), default=0.5),
    "plateau_size": Field(BOUND),
    "polarity": Field(one_of("positive", "negative"), default="positive"),
    "method": Field(one_of("auto", "vector", "scipy"), default="auto"),
}, _stage)

PULSE_CONDITION = Schema({
    "table": Field(TABLE, default="pulses"),
    "channel": Field(CHANNELS),
    "where": Field(WHERE, default={}),
    "min_count": Field(integer(0), default=1),
    "max_count": Field(integer(0, null=True), default=None),
}, _plain_dict)

COINCIDENCE = Schema({
    "table": Field(TABLE, default="pulses"),
    "channels": Field(ListOf(CHANNEL_REF, "a list of at least two channels"), required=True),
    "window_ns": Field(number(gt=0), required=True),
    "where": Field(WHERE, default={}),
}, _plain_dict,
    lambda r: [] if len(r.get("channels") or []) >= 2 else [("channels", "a coincidence needs two or more channels")])

FILTER = Schema({
    "pulses": Field(Section(PULSE_CONDITION)),
    "coincidence": Field(Section(COINCIDENCE)),
    "reject_flags": Field(ListOf(one_of(*FLAG_NAMES), "a list of flag names")),
    "invert": Field(boolean(), default=False),
}, _stage, _filter_rule)

HISTOGRAM = Schema({
    "field": Field(text(r"[A-Za-z_][A-Za-z0-9_]*", "a column name"), required=True),
    "name": Field(TABLE),
    "table": Field(TABLE, default="pulses"),
    "channel": Field(CHANNELS),
    "bins": Field(Leaf("[min, max, count] with max > min and count >= 1", _bins)),
    "edges": Field(Leaf("a list of at least two increasing numbers", _edges)),
    "update_interval": Field(number(gt=0), default=1.0),
}, _stage, _exactly_one("bins", "edges"))

SAVE = Schema({
    "format": Field(one_of("hdf5", "csv"), default="hdf5"),
    "data": Field(one_of("raw", "reduced", "both")),
    "mode": Field(one_of("full", "sparse"), default="full"),
    "table": Field(TABLE, default="pulses"),
    "window": Field(Leaf("[before, after] samples around the peak (integers >= 0)", _window),
                    default=[16, 48]),
    "compression": Field(one_of("gzip", "lzf", null=True), default=None),
    "compression_level": Field(integer(0, 9, null=True), default=None),
    "chunk_frames": Field(integer(1, null=True), default=None),
    "flush_interval": Field(number(gt=0), default=1.0),
}, _stage, _save_rule)

FORWARD = Schema({
    "to": Field(text(noun="a processing node name"), required=True),
    "data": Field(one_of("raw", "reduced", "both"), default="both"),
}, _stage)

CROP = Schema({
    "start_ns": Field(number(null=True), default=None),
    "stop_ns": Field(number(null=True), default=None),
}, _stage, lambda r: [] if r.get("start_ns") is None or r.get("stop_ns") is None
    or r["stop_ns"] > r["start_ns"] else [("stop_ns", "expected stop_ns > start_ns")])

DECIMATE = Schema({
    "factor": Field(integer(2), required=True),
}, _stage)


def _mapping(value: Any) -> Any:
    if isinstance(value, dict):
        return value
    raise Reject()


USER = Schema({
    "file": Field(text(noun="a Python file path")),
    "function": Field(text(r"[A-Za-z_][A-Za-z0-9_]*", "a function name")),
    "entry_point": Field(text(noun="an entry point name (group daq_pulses.stages)")),
    "name": Field(TABLE),
    "params": Field(Leaf("a mapping (passed to the function as it is)", _mapping), default={}),
}, _stage, _user_rule)

#: Pipeline stages: stage -> schema of its parameters.
STAGES: dict[str, Schema] = {
    "pha": PHA, "filter": FILTER, "histogram": HISTOGRAM, "save": SAVE,
    "forward": FORWARD, "copy": FORWARD, "crop": CROP, "decimate": DECIMATE, "user": USER,
    "drain": Schema({}, _stage),
}
