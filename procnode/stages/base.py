"""What every stage gets at build time, and the smallest stages.

A stage has `process(batch) -> batch | None`: it returns the events it passes on
(possibly fewer: the others are vetoed, and the pipeline books them), or None when
it consumed them (drain, forward).  `poll()` runs about four times a second (time-based
flushes, histogram updates), `close()` at the end of the run, `report()` goes into the
node's end-of-run report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from procnode.events import EventBatch
from coordinator.units import Axis


@dataclass
class StageContext:
    """The node a stage runs in: its topology, streams, output file, and the waveforms' shape
    and axes where the stage sits (after any crop or decimate before it)."""

    topo: Any
    node: str
    run: int
    run_dir: Path
    streams: list[Any]                               # StreamConfig of each stream received
    modules: dict[str, tuple[str, ...]]              # stream -> modules (bit order of `present`)
    axes: dict[str, dict[str, Axis]]                 # stream -> "module.CH" -> Axis, at this stage
    samples: dict[str, int]                          # stream -> samples per waveform, at this stage
    open_file: Callable[[], Any]                     # the node's HDF5File, made on first use
    outbox: Callable[[str], Any] | None = None       # processing node name -> Outbox (forward/copy)
    extra: dict[str, Any] = field(default_factory=dict)


class Stage:
    kind = "stage"

    def process(self, batch: EventBatch) -> EventBatch | None:
        return batch

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass

    def report(self) -> dict:
        return {}


class DrainStage(Stage):
    """Consume and discard (tests and benchmarks): events count as vetoed."""

    kind = "drain"

    def process(self, batch: EventBatch) -> EventBatch | None:
        return None
