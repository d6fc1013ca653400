"""Range sets, the books of a run, and the run state machine."""
from __future__ import annotations

import numpy as np
import pytest

from coordinator.books import balance
from coordinator.ranges import RangeSet, ranges_of
from coordinator.statemachine import InvalidTransition, StateMachine


def as_set(rs: RangeSet) -> set[int]:
    return {x for a, b in rs for x in range(a, b)}


def test_rangeset_against_python_sets():
    rng = np.random.default_rng(3)
    for _ in range(200):
        a, b, ref_a, ref_b = RangeSet(), RangeSet(), set(), set()
        for rs, ref in ((a, ref_a), (b, ref_b)):
            for _ in range(8):
                s = int(rng.integers(0, 80))
                e = s + int(rng.integers(0, 12))
                rs.add(s, e)
                ref |= set(range(s, e))
        assert as_set(a) == ref_a and a.count() == len(ref_a)
        assert as_set(a.difference(b)) == ref_a - ref_b
        assert as_set(a.intersection(b)) == ref_a & ref_b
        ranges = list(a)
        assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1)), "merged and sorted"


def test_ranges_of_unsorted_with_duplicates():
    assert ranges_of(np.array([9, 1, 2, 2, 3, 7])) == [(1, 4), (7, 8), (9, 10)]
    assert ranges_of(np.array([], dtype=np.int64)) == []


def test_books_assign_every_cause():
    acq = {"produced": 100, "gaps": {"ring_overrun": [[10, 20]]}, "send_failed": [[95, 100]],
           "shipped": {"p1": [[0, 10], [20, 60]], "p2": [[60, 95]]}}
    books = balance({"a": 100}, {"a": acq},
                    {"p1": {"saved": {"a": [[0, 10], [20, 50]]}, "vetoed": {"a": [[50, 52]]}}, "p2": None},
                    lost={"p2"}, now=0.0)
    got = {(m.first, m.last, m.cause, m.node) for m in books.missing}
    assert got == {(10, 19, "ring_overrun", "a"), (50, 51, "vetoed", "p1"), (52, 59, "send_failed", "p1"),
                   (60, 94, "node_lost", "p2"), (95, 99, "send_failed", "a")}
    s = books.summary()
    assert s["produced"] == 100 and s["saved"] == 40 and s["missing"] == 60 and s["balanced"]


def test_books_when_acquisition_node_never_reported():
    books = balance({"a": None}, {"a": None}, {"p1": {"saved": {"a": [[0, 30]]}}}, lost={"a"},
                    seen_produced={"a": 50}, now=0.0)
    assert [(m.first, m.last, m.cause) for m in books.missing] == [(30, 49, "node_lost")]
    assert books.balanced


def test_books_count_duplicates():
    books = balance({"a": 10}, {"a": {"produced": 10}},
                    {"p1": {"saved": {"a": [[0, 10]]}}, "p2": {"saved": {"a": [[5, 10]]}}}, lost=set())
    assert books.summary()["duplicates"] == 5 and books.balanced


def test_state_machine_table():
    sm = StateMachine()
    for event, state in (("configure", "configured"), ("start", "running"), ("pause", "paused"),
                         ("resume", "running"), ("stop", "stopping"), ("drained", "stopped")):
        assert sm.fire(event) == state
    assert [h["state"] for h in sm.history][0] == "idle" and len(sm.history) == 7
    with pytest.raises(InvalidTransition, match="'start' is not allowed in state 'stopped'"):
        sm.fire("start")
    sm2 = StateMachine()
    sm2.fire("configure")
    assert sm2.fire("fault", "node lost") == "fault" and sm2.history[-1]["reason"] == "node lost"
    assert not sm2.can("start")


def test_dispatch_schedule_deals_blocks_skips_lost_nodes_and_rebalances():
    from coordinator.dispatch import DispatchSchedule, rebalance
    s = DispatchSchedule.start(10, ["p1", "p2"])
    assert [s.owner(q) for q in (0, 9, 10, 25, 31)] == ["p1", "p1", "p2", "p1", "p2"]
    assert s.owner(10, {"p2"}) == "p1" and s.owner(10, {"p1", "p2"}) is None
    assert rebalance(s, {"p1": 0.1, "p2": 0.1}, 2.0, 100) is None          # nobody held back
    assert rebalance(s, {"p1": 1.5, "p2": 0.0}, 2.0, 100) == ["p1", "p2", "p2"]
    assert [s.owner(q) for q in (90, 100)] == ["p2", "p1"]                 # before the new epoch: unchanged
    assert [s.owner(q * 10) for q in (11, 12, 13, 14)] == ["p1", "p2", "p2", "p1"]
    assert rebalance(s, {"p1": 1.5, "p2": 0.0}, 2.0, 200) is None          # already at its smaller share
    assert DispatchSchedule.from_dict(s.to_dict()) == s
