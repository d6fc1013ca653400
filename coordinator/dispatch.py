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


def rebalance(schedule: DispatchSchedule, stalled: dict[str, float], interval: float,
              frontier: int) -> list[str] | None:
    """A new deal order when one receiver held the senders back while another had spare room.

    stalled: seconds during the last `interval` that senders waited for each receiver's
    credit.  The slow one keeps one share, every other receiver gets two, from the block
    after `frontier` (the highest seq any module may already have sent, with margin).
    None: leave the schedule as it is.
    """
    order = list(schedule.epochs[-1][1])
    receivers = list(dict.fromkeys(order))
    if len(receivers) < 2:
        return None
    slow = max(receivers, key=lambda p: stalled.get(p, 0.0))
    fast = [p for p in receivers if p != slow and stalled.get(p, 0.0) < 0.1 * interval]
    if stalled.get(slow, 0.0) < 0.5 * interval or not fast or order.count(slow) < order.count(fast[0]):
        return None
    new = [p for p in receivers for _ in range(1 if p == slow else 2)]
    schedule.add_epoch(frontier // schedule.block + 1, new)
    return new
