"""Dispatch schedule (contract): which processing node gets which block of seqs.

For a stream whose events have parts from several modules (`dispatch: full`), every
module must send event N to the same processing node.  Seqs are cut into blocks of
`block` consecutive seqs; an epoch says, from a first block on, how blocks are dealt
round-robin over a list of processing nodes (a node listed twice gets twice the
share).  The coordinator starts each run with one epoch over every receiver and adds
epochs for future blocks (a node that falls behind gets a smaller share).  A node
known lost is skipped by the same deterministic rule on every module, so the modules
keep agreeing without asking anyone.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class DispatchSchedule:
    block: int
    epochs: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)   # (first block, deal order)

    @classmethod
    def start(cls, block: int, procs: list[str]) -> "DispatchSchedule":
        return cls(block, [(0, tuple(procs))])

    def owner(self, seq: int, lost: set[str] | frozenset = frozenset()) -> str | None:
        b = seq // self.block
        i = bisect.bisect_right([e[0] for e in self.epochs], b) - 1
        first, order = self.epochs[max(i, 0)]
        p = order[(b - first) % len(order)]
        if p in lost:
            alive = [q for q in order if q not in lost] or \
                    [q for e in self.epochs for q in e[1] if q not in lost]
            if not alive:
                return None
            p = alive[(b - first) % len(alive)]
        return p

    def block_end(self, seq: int) -> int:
        """First seq of the next block."""
        return (seq // self.block + 1) * self.block

    def add_epoch(self, first_block: int, order: list[str]) -> None:
        self.epochs = [e for e in self.epochs if e[0] < first_block] + [(first_block, tuple(order))]

    def to_dict(self) -> dict:
        return {"block": self.block, "epochs": [[f, list(o)] for f, o in self.epochs]}

    @classmethod
    def from_dict(cls, d: dict) -> "DispatchSchedule":
        return cls(int(d["block"]), [(int(f), tuple(o)) for f, o in d["epochs"]])
