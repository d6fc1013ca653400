"""Pipeline of a processing node: stages run in order on batches of frames.

Issue 2 has the terminal stages `save` (HDF5) and `drain`; pha, filter,
histogram and user stages (issue 4) plug into the same `Stage` interface.
A stage returns the batch it passes on (possibly reduced) and the seqs it
dropped on purpose (`vetoed`), so the books still balance.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from procnode.hdf5sink import HDF5Sink


@dataclass
class Batch:
    """Frames of one module of one stream, in seq order."""

    stream: str
    module: str
    records: np.ndarray


class Stage(Protocol):
    def process(self, batch: Batch) -> tuple[Batch | None, np.ndarray | None]:
        """Return (batch for the next stage or None, seqs vetoed or None)."""

    def poll(self) -> None:
        """Periodic housekeeping (e.g. time-based flush), called about 4 times a second."""

    def close(self) -> None: ...


class SaveStage:
    def __init__(self, sink: HDF5Sink) -> None:
        self.sink = sink

    def process(self, batch: Batch) -> tuple[Batch | None, np.ndarray | None]:
        self.sink.write(batch.stream, batch.module, batch.records)
        return batch, None

    def poll(self) -> None:
        self.sink.poll()

    def timings(self) -> dict[str, float]:
        return self.sink.timings()

    def close(self) -> None:
        self.sink.close()


class DrainStage:
    """Consume and discard: for tests and transport benchmarks; frames count as vetoed."""

    def process(self, batch: Batch) -> tuple[Batch | None, np.ndarray | None]:
        return None, batch.records["seq"]

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass


def timebase(source: Any, samples: int) -> tuple[float, int]:
    """(sample period in ns, pretrigger samples) of a source configuration."""
    pre = getattr(source, "pretrigger", None)
    return float(getattr(source, "sample_ns", 1.0)), int(samples // 8 if pre is None else pre)


def build_pipeline(topo: Any, node: str, run: int, run_dir: Path) -> tuple[list[Any], list[Path]]:
    """Stages of `node` and the files they write."""
    cfg = topo.processing[node]
    stages: list[Any] = []
    files: list[Path] = []
    for st in cfg.pipeline:
        if st.stage == "save":
            streams = []
            for name in cfg.streams:
                stream = topo.streams[name]
                acq = topo.acquisition[stream.modules[0]]
                streams.append((stream, timebase(acq.source, stream.samples)))
            path = Path(run_dir) / f"{node}.h5"
            p = st.params
            sink = HDF5Sink(path, streams, run, node, topo.to_dict(), compression=p.get("compression"),
                            compression_level=p.get("compression_level"),
                            chunk_frames=p.get("chunk_frames"),
                            flush_interval=p.get("flush_interval", 1.0))
            stages.append(SaveStage(sink))
            files.append(path)
        elif st.stage == "drain":
            stages.append(DrainStage())
        else:
            raise ValueError(f"stage {st.stage!r} is not available in this version")
    return stages, files
