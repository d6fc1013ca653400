"""`decimate`: the mean of every `factor` samples (as the board's own decimation does);
fewer samples, a longer sample period, the same stored type."""
from __future__ import annotations

import numpy as np

from coordinator.topology.waveshape import decimated
from procnode.events import EventBatch
from procnode.stages.base import Stage, StageContext


def decimate(x: np.ndarray, factor: int) -> np.ndarray:
    """(n, samples) -> (n, samples // factor) means, rounded back to an integer type."""
    m = x.shape[1] // factor
    blocks = x[:, :m * factor].reshape(len(x), m, factor)
    if x.dtype.kind == "f":
        return blocks.mean(axis=2, dtype=np.float64).astype(x.dtype)
    return np.rint(blocks.mean(axis=2, dtype=np.float64)).astype(x.dtype)


class DecimateStage(Stage):
    kind = "decimate"

    def __init__(self, params: dict, ctx: StageContext) -> None:
        self.factor = int(params["factor"])

    def process(self, batch: EventBatch) -> EventBatch | None:
        for ref in batch.wave_refs():
            batch.set_waveforms(ref, decimate(batch.waveforms(ref), self.factor),
                                decimated(batch.axis(ref), self.factor))
        return batch
