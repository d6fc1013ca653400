"""Balancing a run's books: every produced seq is saved or in the missing-frame record.

Inputs are the end-of-run reports of the nodes (see docs/protocol.md, `eor`);
a node that never reported (lost, crashed) is accounted from what the others
say about it.  Nothing here trusts a single final message: a seq that nobody
claims is still given a cause.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from coordinator.ranges import RangeSet

CAUSES = ("ring_overrun", "source_error", "send_failed", "node_lost", "incomplete_event",
          "corrupt", "vetoed", "stage_error")
#: Causes a processing node books itself (what it did with, or could not do with, a part).
PROC_CAUSES = ("vetoed", "corrupt", "stage_error", "incomplete_event")


@dataclass(frozen=True)
class MissingRange:
    """Seqs first..last (inclusive) of `module` that are not in the output, and why."""

    first: int
    last: int
    module: str
    cause: str
    node: str
    time: float

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass
class Books:
    produced: dict[str, int]                 # module -> frames produced
    saved: dict[str, int]                    # module -> frames saved (distinct seqs)
    duplicates: dict[str, int]               # module -> seqs saved more than once
    missing: list[MissingRange]

    def missing_by_cause(self) -> dict[str, int]:
        out = {c: 0 for c in CAUSES}
        for m in self.missing:
            out[m.cause] = out.get(m.cause, 0) + m.count
        return out

    @property
    def balanced(self) -> bool:
        return all(self.saved[m] + sum(r.count for r in self.missing if r.module == m) == n
                   for m, n in self.produced.items())

    def summary(self) -> dict[str, Any]:
        return {"produced": sum(self.produced.values()), "saved": sum(self.saved.values()),
                "missing": sum(r.count for r in self.missing),
                "missing_by_cause": self.missing_by_cause(), "balanced": self.balanced,
                "duplicates": sum(self.duplicates.values()),
                "modules": {m: {"produced": n, "saved": self.saved[m]} for m, n in self.produced.items()}}


def balance(modules: dict[str, int | None], acq_reports: dict[str, dict | None],
            proc_reports: dict[str, dict | None], lost: set[str],
            seen_produced: dict[str, int] | None = None, now: float | None = None) -> Books:
    """Compute the books of a run.

    modules: module (acquisition node) -> frames produced per its report (None if unknown).
    seen_produced: last live count of frames per module, used when a node never reported.
    """
    now = time.time() if now is None else now
    seen_produced = seen_produced or {}
    missing: list[MissingRange] = []
    produced_out: dict[str, int] = {}
    saved_out: dict[str, int] = {}
    dup_out: dict[str, int] = {}

    def record(rs: RangeSet, module: str, cause: str, node: str) -> None:
        missing.extend(MissingRange(a, b - 1, module, cause, node, now) for a, b in rs)

    for module, produced in modules.items():
        acq = acq_reports.get(module) or {}
        saved, claimed = RangeSet(), 0
        by_cause: dict[str, dict[str, RangeSet]] = {c: {} for c in PROC_CAUSES}
        for proc, rep in proc_reports.items():
            if not rep:
                continue
            s = RangeSet(rep.get("saved", {}).get(module, []))
            claimed += s.count()
            saved.update(s)
            for cause, by in by_cause.items():
                r = RangeSet(rep.get(cause, {}).get(module, []))
                if len(r):
                    by[proc] = r
        if produced is None:   # the acquisition node never reported: use what we saw of it
            top = max([seen_produced.get(module, 0)] + [b for _, b in saved])
            produced = top
        universe = RangeSet([(0, produced)])
        saved = saved.intersection(universe)
        rest = universe.difference(saved)

        def take(ranges: RangeSet, cause: str, node: str) -> None:
            nonlocal rest
            part = rest.intersection(ranges)
            record(part, module, cause, node)
            rest = rest.difference(part)

        # root causes at the source first: a part lost there explains why an event was incomplete
        for cause, ranges in acq.get("gaps", {}).items():
            take(RangeSet(ranges), cause, module)
        take(RangeSet(acq.get("send_failed", [])), "send_failed", module)
        for cause, by in by_cause.items():
            for proc, r in by.items():
                take(r, cause, proc)
        for proc, rep in proc_reports.items():       # handed on by a forward stage, never saved
            if not rep:
                continue
            take(RangeSet(rep.get("forward_failed", {}).get(module, [])), "send_failed", proc)
            for peer, by in rep.get("forwarded", {}).items():
                lost_peer = peer in lost or not proc_reports.get(peer)
                take(RangeSet(by.get(module, [])), "node_lost" if lost_peer else "send_failed", peer)
        for proc, ranges in acq.get("shipped_lost", {}).items():   # sent to an incarnation that was lost
            take(RangeSet(ranges), "node_lost", proc)
        for proc, ranges in acq.get("shipped", {}).items():
            lost_proc = proc in lost or not proc_reports.get(proc)
            take(RangeSet(ranges), "node_lost" if lost_proc else "send_failed", proc)
        # nobody claims these: the acquisition node was lost before saying where they went
        record(rest, module, "node_lost" if (module in lost or not acq) else "send_failed", module)
        produced_out[module] = produced
        saved_out[module] = saved.count()
        dup_out[module] = claimed - saved.count()
    missing.sort(key=lambda r: (r.module, r.first))
    return Books(produced_out, saved_out, dup_out, missing)
