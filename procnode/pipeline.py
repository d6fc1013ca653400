"""Pipeline of a processing node: stages built from the topology, run in order on event batches.

The pipeline keeps the node's books of what happened to each part: vetoed (a filter,
a user stage or `drain` dropped it on purpose), stage_error (a stage raised on its
event), and, through the save and forward stages, saved and forwarded.  A stage that
raises on a batch is run again event by event, so exactly the events it fails on are
named and booked; by the node's `on_stage_error` policy the run goes on or stops.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from coordinator.ranges import RangeSet
from procnode.events import EventBatch
from procnode.hdf5sink import HDF5File
from procnode.stages.base import DrainStage, Stage, StageContext
from procnode.stages.crop import CropStage
from procnode.stages.decimate import DecimateStage
from procnode.stages.forward import ForwardStage
from procnode.stages.histogram import HistogramStage
from procnode.stages.pha import PhaStage, table_dtype
from procnode.stages.save import SaveStage
from procnode.stages.select import FilterStage
from procnode.stages.user import UserStage
from coordinator.topology.waveshape import pipeline_waves

log = logging.getLogger(__name__)

BUILDERS: dict[str, Callable[[dict, StageContext], Stage]] = {
    "pha": PhaStage, "filter": FilterStage, "histogram": HistogramStage, "save": SaveStage,
    "crop": CropStage, "decimate": DecimateStage, "user": UserStage, "drain": lambda p, c: DrainStage(),
    "forward": lambda p, c: ForwardStage(p, c, keep=False),
    "copy": lambda p, c: ForwardStage(p, c, keep=True),
}
#: Stages an incomplete event still goes through with `events.incomplete: save`.
KEEPING = ("save", "forward", "copy", "drain")


class StageFailure(RuntimeError):
    """A stage raised and the node's policy is to stop the run."""


class Pipeline:
    def __init__(self, stages: list[Stage], labels: list[str], policy: str,
                 on_error: Callable[[str], None]) -> None:
        self.stages = stages
        self.labels = labels
        self.policy = policy
        self.on_error = on_error                       # reports a message to the coordinator
        self.vetoed: dict[str, RangeSet] = {}
        self.stage_error: dict[str, RangeSet] = {}
        self.errors: dict[str, int] = {}
        self.seconds = [0.0] * len(stages)
        self.events = 0

    def run(self, batch: EventBatch, keeping_only: bool = False) -> None:
        self.events += len(batch)
        self._run_from(0, batch, keeping_only)

    def _book(self, books: dict[str, RangeSet], batch: EventBatch, rows: np.ndarray | None = None) -> None:
        ev = batch.events if rows is None else batch.events[rows]
        for i, m in enumerate(batch.modules):
            here = ev["seq"][(ev["present"] & (1 << i)) != 0]
            if len(here):
                books.setdefault(m, RangeSet()).add_seqs(here)

    def _run_from(self, first: int, batch: EventBatch, keeping_only: bool) -> None:
        for i in range(first, len(self.stages)):
            stage = self.stages[i]
            if keeping_only and stage.kind not in KEEPING:
                continue
            t0 = time.perf_counter()
            try:
                out = stage.process(batch)
            except StageFailure:
                raise
            except Exception as exc:
                self.seconds[i] += time.perf_counter() - t0
                self._failed(i, batch, exc, keeping_only)
                return
            self.seconds[i] += time.perf_counter() - t0
            if out is None:
                if stage.kind == "drain":
                    self._book(self.vetoed, batch)
                return
            if len(out) < len(batch):
                self._book(self.vetoed, batch, ~np.isin(batch.seq, out.seq))
            batch = out
            if len(batch) == 0:
                return

    def _failed(self, i: int, batch: EventBatch, exc: Exception, keeping_only: bool) -> None:
        label = self.labels[i]
        if len(batch) > 1:          # find the events it fails on: one at a time from here on
            for k in range(len(batch)):
                one = np.zeros(len(batch), bool)
                one[k] = True
                self._run_from(i, batch.select(one), keeping_only)
            return
        seq = int(batch.seq[0])
        message = f"stage {label} raised on event seq {seq}: {type(exc).__name__}: {exc}"
        self.errors[label] = self.errors.get(label, 0) + 1
        if self.policy == "stop":
            raise StageFailure(message) from exc
        if self.errors[label] <= 3:
            log.error("%s (recorded as stage_error; the run goes on)", message)
            self.on_error(message)
        self._book(self.stage_error, batch)

    def poll(self) -> None:
        for s in self.stages:
            s.poll()

    def close(self) -> None:
        for s in self.stages:
            try:
                s.close()
            except Exception:
                log.exception("closing a stage failed")

    def saved(self) -> dict[str, RangeSet]:
        out: dict[str, RangeSet] = {}
        for s in self.stages:
            for m, r in getattr(s, "saved", {}).items():
                out.setdefault(m, RangeSet()).update(r)
        return out

    def csv_files(self) -> list[str]:
        """CSV tables written so far (a table first seen mid-run gets its file then)."""
        return sorted(str(t.path) for s in self.stages for t in getattr(s, "sinks", ()))

    def report(self) -> dict:
        return {"stages": {label: {"seconds": round(t, 6), **s.report()}
                           for label, s, t in zip(self.labels, self.stages, self.seconds)},
                "stage_errors": self.errors}


def build_pipeline(topo: Any, node: str, run: int, run_dir: Path, outbox: Callable[[str], Any] | None,
                   on_error: Callable[[str], None]) -> tuple[Pipeline, StageContext, list[Path]]:
    """Stages of `node`, the context they share and the files they write."""
    cfg = topo.processing[node]
    Path(run_dir).mkdir(parents=True, exist_ok=True)   # a host without the coordinator's file system
    streams = [topo.streams[s] for s in cfg.streams]
    modules = {s.name: tuple(s.modules) for s in streams}
    waves = pipeline_waves(topo, node)      # shape and axes before each stage
    files: list[Path] = []
    holder: dict[str, HDF5File] = {}

    def open_file() -> HDF5File:
        if "file" not in holder:
            save = next((st.params for st in cfg.pipeline if st.stage == "save"
                         and st.params.get("format", "hdf5") == "hdf5"), {})
            path = Path(run_dir) / f"{node}.h5"
            holder["file"] = HDF5File(path, run, node, topo.to_dict(), flush_interval=save.get("flush_interval", 1.0))
            files.append(path)
        return holder["file"]

    def at(i: int) -> dict[str, Any]:
        return {"axes": {s: w.axes for s, w in waves[i].items()},
                "samples": {s: w.samples for s, w in waves[i].items()}}

    ctx = StageContext(topo, node, run, Path(run_dir), streams, modules, **at(0), open_file=open_file,
                       outbox=outbox)
    ctx.extra["tables"] = {st.params.get("name", "pulses"): table_dtype(st.params)
                           for st in cfg.pipeline if st.stage == "pha"}
    stages, labels = [], []
    for i, st in enumerate(cfg.pipeline):
        stages.append(BUILDERS[st.stage](dict(st.params), dataclasses.replace(ctx, **at(i))))
        labels.append(f"{i}:{st.stage}")
    if "file" in holder:
        holder["file"].start()
        stages.append(_FileKeeper(holder["file"]))
        labels.append(f"{len(cfg.pipeline)}:file")
    return Pipeline(stages, labels, cfg.on_stage_error, on_error), ctx, files


class _FileKeeper(Stage):
    """Flushes the node's HDF5 file on the node's timer and closes it last."""

    kind = "file"

    def __init__(self, file: HDF5File) -> None:
        self.file = file

    def process(self, batch: EventBatch) -> EventBatch | None:
        return batch

    def poll(self) -> None:
        self.file.poll()

    def close(self) -> None:
        self.file.close()

    def report(self) -> dict:
        return self.file.timings()
