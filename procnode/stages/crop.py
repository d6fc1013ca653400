"""`crop`: keep the samples between two times (ns from the trigger); axes follow."""
from __future__ import annotations

import math

from procnode.events import EventBatch
from procnode.stages.base import Stage, StageContext
from procnode.units import Axis


def crop_range(axis: Axis, samples: int, start_ns: float | None, stop_ns: float | None) -> tuple[int, int]:
    """Sample indices [a, b) whose times are within [start_ns, stop_ns)."""
    a = 0 if start_ns is None else max(0, math.ceil((start_ns - axis.t0_ns) / axis.sample_ns - 1e-9))
    b = samples if stop_ns is None else min(samples, math.ceil((stop_ns - axis.t0_ns) / axis.sample_ns - 1e-9))
    return a, max(a, b)


class CropStage(Stage):
    kind = "crop"

    def __init__(self, params: dict, ctx: StageContext) -> None:
        self.start_ns = params.get("start_ns")
        self.stop_ns = params.get("stop_ns")

    def process(self, batch: EventBatch) -> EventBatch | None:
        for ref in batch.wave_refs():
            x, axis = batch.waveforms(ref), batch.axis(ref)
            a, b = crop_range(axis, x.shape[1], self.start_ns, self.stop_ns)
            batch.set_waveforms(ref, x[:, a:b], axis.cropped(a))
        return batch
