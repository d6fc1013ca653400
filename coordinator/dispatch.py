"""Dispatch schedule (contract): which processing node gets which block of seqs.

For a stream whose events have parts from several modules (`dispatch: full`), every
module must send event N to the same processing node.  Seqs are cut into blocks of
`block` consecutive seqs; an epoch says, from a first block on, how blocks are dealt
round-robin over a list of processing nodes (a node listed twice gets twice the
share).  The coordinator starts each run with one epoch over every receiver and adds
epochs for future blocks (a node that falls behind gets a smaller share, halved again on
each later look while it still falls behind, down to a floor; never none).  A node
known lost is skipped by the same deterministic rule on every module, so the modules
keep agreeing without asking anyone.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

#: Floor of a slow receiver's share: at least one block for every MAX_CUT blocks that any
#: other receiver gets.  Never zero: a node that gets no blocks at all would look lost.
MAX_CUT = 16
#: Without `sent`: the looks (rebalance calls) right after a cut that never cut again.  The
#: new epoch begins past the frontier (a ring and about one interval of frames ahead of the
#: senders), so those looks still measure the old deal: on loopback, 2 modules with 64-slot
#: rings held back to ~65 frames/s, the epoch came into force 3.5 s after the cut (7 s with
#: 128 slots).  A guess that big rings outgrow; `sent` makes it exact.
SETTLE_LOOKS = 3


@dataclass
class DispatchSchedule:
    block: int
    epochs: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)   # (first block, deal order)
    # coordinator-side bookkeeping of rebalance (never sent, not part of the schedule itself)
    looks: int = field(default=0, compare=False, repr=False)           # rebalance calls since the last cut
    sent_seen: int | None = field(default=None, compare=False, repr=False)   # `sent` at the last call

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


def deal_order(receivers: list[str], weights: dict[str, int]) -> list[str]:
    """A deal order giving each receiver `weights[p]` blocks per round, interleaved (each pass
    takes every receiver that still has blocks left, in `receivers` order) so that
    receivers sharing the load get their blocks alternately, not in runs."""
    g = math.gcd(*(weights[p] for p in receivers))
    w = {p: weights[p] // g for p in receivers}
    return [p for i in range(max(w.values())) for p in receivers if w[p] > i]


def rebalance(schedule: DispatchSchedule, stalled: dict[str, float], interval: float,
              frontier: int, sent: int | None = None) -> list[str] | None:
    """A new deal order when one receiver held the senders back while another had spare room.

    stalled: seconds during the last `interval` that senders waited for each receiver's
    credit.  The slow one's share relative to every other receiver is halved (each other
    receiver's weight doubles; the first cut gives it one block for every two of each
    other one), from the block after `frontier` (the highest seq any module may already
    have sent, with margin).  A receiver that still holds the senders back once its
    smaller share is in force is cut again, down to one block for every MAX_CUT of any other
    receiver, never to none.  A cut is judged only on an interval dealt entirely by the
    latest epoch: `sent` (every module has sent every seq below it) at the previous call
    must be at or past that epoch's first seq; without `sent`, the SETTLE_LOOKS calls after
    a cut never cut.  The deal order is a function of the weights and the receivers'
    order (`deal_order`), so the same calls make the same schedule.
    None: leave the schedule as it is.
    """
    sent_before, schedule.sent_seen = schedule.sent_seen, sent
    schedule.looks += 1
    order = list(schedule.epochs[-1][1])
    receivers = list(dict.fromkeys(order))
    if len(receivers) < 2:
        return None
    if len(schedule.epochs) > 1:          # an earlier cut: is its deal what was measured?
        start = schedule.epochs[-1][0] * schedule.block
        settled = sent_before >= start if sent is not None and sent_before is not None \
            else schedule.looks > SETTLE_LOOKS
        if not settled:
            return None
    slow = max(receivers, key=lambda p: stalled.get(p, 0.0))
    fast = [p for p in receivers if p != slow and stalled.get(p, 0.0) < 0.1 * interval]
    if stalled.get(slow, 0.0) < 0.5 * interval or not fast:
        return None
    weights = {p: order.count(p) for p in receivers}
    floor = MAX_CUT * weights[slow]
    cut = {p: w if p == slow else min(2 * w, max(w, floor)) for p, w in weights.items()}
    if cut == weights:
        return None                       # already at the floor
    new = deal_order(receivers, cut)
    schedule.add_epoch(frontier // schedule.block + 1, new)
    schedule.looks = 0
    return new
