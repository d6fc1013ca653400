"""`crop`: keep the samples between two times (ns from the trigger); axes follow."""
from __future__ import annotations

from coordinator.topology.waveshape import crop_range
from procnode.events import EventBatch
from procnode.stages.base import Stage, StageContext


class CropStage(Stage):
    kind = "crop"

    def __init__(self, params: dict, ctx: StageContext) -> None:
        self.start_ns = params.get("start_ns")
        self.stop_ns = params.get("stop_ns")

    def process(self, batch: EventBatch) -> EventBatch | None:
        for ref in batch.wave_refs():
            x, axis = batch.waveforms(ref), batch.axis(ref)
            a, b = crop_range(axis, x.shape[1], self.start_ns, self.stop_ns)
            batch.set_waveforms(ref, x[:, a:b], axis.cropped(a))     # a view: no copy
        return batch
