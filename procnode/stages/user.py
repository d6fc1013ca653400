"""`user`: a function from the user's file (or an entry point) called as fn(batch, params).

It may return None (the batch, maybe with tables added, goes on), a bool array with
one value per event (keep these; the others are vetoed), or an EventBatch.
"""
from __future__ import annotations

import numpy as np

from coordinator.topology.userstage import load_user_stage
from procnode.events import EventBatch
from procnode.stages.base import Stage, StageContext


class UserStage(Stage):
    kind = "user"

    def __init__(self, params: dict, ctx: StageContext) -> None:
        self.fn = load_user_stage(params)
        self.params = dict(params.get("params") or {})
        self.label = params.get("function") or params.get("entry_point")

    def process(self, batch: EventBatch) -> EventBatch | None:
        out = self.fn(batch, self.params)
        if out is None:
            return batch
        if isinstance(out, EventBatch):
            return out
        keep = np.asarray(out)
        if keep.dtype != bool or keep.shape != (len(batch),):
            raise TypeError(f"user stage {self.label!r} returned {type(out).__name__} "
                            f"{getattr(keep, 'dtype', '')}{getattr(keep, 'shape', '')}; expected None, "
                            f"an EventBatch or a bool array of shape ({len(batch)},)")
        return batch.select(keep)
