"""`forward` and `copy`: send events (raw parts, reduced tables, or both) on to another
processing node; `forward` hands them over, `copy` also passes them on here."""
from __future__ import annotations

from procnode.events import EventBatch
from procnode.stages.base import Stage, StageContext


class ForwardStage(Stage):
    def __init__(self, params: dict, ctx: StageContext, keep: bool) -> None:
        self.kind = "copy" if keep else "forward"
        self.to = params["to"]
        self.raw = params.get("data", "both") in ("raw", "both")
        self.reduced = params.get("data", "both") in ("reduced", "both")
        self.outbox = ctx.outbox(self.to)
        self.keep = keep
        self.step = min(256, ctx.topo.processing[self.to].credits)   # what the receiver can ever grant

    def process(self, batch: EventBatch) -> EventBatch | None:
        if len(batch):
            self.outbox.put(self.to, batch, self.raw and bool(batch.parts), self.reduced, self.step)
        return batch if self.keep else None
