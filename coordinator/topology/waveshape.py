"""What a stream's waveforms look like at each point of a processing node's pipeline.

Stages that crop or decimate change the number of samples and the time axis.  The
result is fixed by the topology, so it is worked out here once: `validate` rejects a
crop that keeps nothing or a chain whose senders disagree, the save stage makes its
datasets the right size with the right time axis before the run, a forward stage packs
records of the shape it holds, and the node after it reads them with that shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from coordinator.topology.yamlpos import Index
from coordinator.units import Axis, stream_axes

#: Stages that change the samples of waveforms.
RESHAPING = ("crop", "decimate")


@dataclass(frozen=True)
class Waves:
    """One stream's waveforms at a point of a pipeline."""

    samples: int
    axes: dict[str, Axis]          # "module.CH" -> Axis


class ShapeError(ValueError):
    """A stage leaves no samples, or modules end up with different sample counts."""


def crop_range(axis: Axis, samples: int, start_ns: float | None, stop_ns: float | None) -> tuple[int, int]:
    """Sample indices [a, b) whose times are within [start_ns, stop_ns)."""
    a = 0 if start_ns is None else max(0, math.ceil((start_ns - axis.t0_ns) / axis.sample_ns - 1e-9))
    b = samples if stop_ns is None else min(samples, math.ceil((stop_ns - axis.t0_ns) / axis.sample_ns - 1e-9))
    return a, max(a, b)


def decimated(axis: Axis, factor: int) -> Axis:
    """Axis of the means of `factor` samples: each stands at the centre of its window."""
    return Axis(axis.sample_ns * factor, axis.t0_ns + (factor - 1) * axis.sample_ns / 2, axis.scale, axis.unit)


def after_stage(stage: str, params: dict, waves: Waves) -> Waves:
    """The waveforms a stage passes on (stages other than crop and decimate keep them)."""
    if stage == "crop":
        ranges = {ref: crop_range(ax, waves.samples, params.get("start_ns"), params.get("stop_ns"))
                  for ref, ax in waves.axes.items()}
        counts = {b - a for a, b in ranges.values()}
        if counts == {0}:
            first = next(iter(waves.axes.values()))
            raise ShapeError(f"the crop keeps no samples: the waveforms span "
                             f"{first.t0_ns:g} .. {first.t0_ns + waves.samples * first.sample_ns:g} ns")
        if len(counts) > 1:
            raise ShapeError("the crop keeps different numbers of samples of different modules (their "
                             "decimation or pretrigger differ); crop each module on its own node")
        return Waves(counts.pop(), {ref: ax.cropped(ranges[ref][0]) for ref, ax in waves.axes.items()})
    if stage == "decimate":
        factor = int(params["factor"])
        if waves.samples // factor == 0:
            raise ShapeError(f"decimating {waves.samples} samples by {factor} leaves none")
        return Waves(waves.samples // factor, {ref: decimated(ax, factor) for ref, ax in waves.axes.items()})
    return waves


def pipeline_waves(topo: Any, node: str) -> list[dict[str, Waves]]:
    """stream -> Waves before each stage of `node` (index i), and after the last (index n)."""
    cfg = topo.processing[node]
    here = input_waves(topo, node)
    out = [here]
    for st in cfg.pipeline:
        here = {s: after_stage(st.stage, st.params, w) for s, w in here.items()}
        out.append(here)
    return out


def input_waves(topo: Any, node: str) -> dict[str, Waves]:
    """What arrives at `node`: the streams' own frames, or what the node before it in a chain
    had at its forward/copy stage (every sender must agree)."""
    cfg = topo.processing[node]
    senders = [u for u in topo.upstreams(node) if u in topo.processing] if node in topo.chained() else []
    if not senders:
        return {s: Waves(topo.streams[s].samples, stream_axes(topo, s, topo.streams[s].modules))
                for s in cfg.streams}
    seen: dict[str, Waves] | None = None
    for up in senders:
        stages = topo.processing[up].pipeline
        at = next(i for i, st in enumerate(stages) if st.stage in ("forward", "copy") and st.params["to"] == node)
        sent = pipeline_waves(topo, up)[at]
        if seen is not None and sent != seen:
            raise ShapeError(f"the processing nodes that send to {node!r} send waveforms of different "
                             f"shapes (crop or decimate them the same way)")
        seen = sent
    return {s: seen[s] for s in cfg.streams if s in seen} if seen else {}


def check_waves(topo: Any) -> list[tuple[tuple, str]]:
    """(key path, message) for every pipeline whose waveform shapes cannot work."""
    problems: list[tuple[tuple, str]] = []
    failed: set[str] = set()
    for node in topo.processing_order():
        if failed & set(topo.upstreams(node)):
            failed.add(node)         # its input is already reported at the sender
            continue
        try:
            here = input_waves(topo, node)
        except ShapeError as exc:
            problems.append((("processing", node), str(exc)))
            failed.add(node)
            continue
        for i, st in enumerate(topo.processing[node].pipeline):
            try:
                here = {s: after_stage(st.stage, st.params, w) for s, w in here.items()}
            except ShapeError as exc:
                problems.append((("processing", node, "pipeline", Index(i), "stage"), str(exc)))
                failed.add(node)
                break
    return problems
