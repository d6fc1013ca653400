"""Dispatch schedule rebalancing: repeated cuts of a slow receiver's share, its floor, when not to cut."""
from __future__ import annotations

from coordinator.dispatch import MAX_CUT, SETTLE_LOOKS, DispatchSchedule, deal_order, rebalance

SLOW = {"p1": 0.0, "p2": 1.9}      # p2 held the senders back for most of a 2 s interval, p1 never
CALM = {"p1": 0.0, "p2": 0.0}


def blocks_of(s: DispatchSchedule, first_block: int, n: int) -> list[str]:
    return [s.owner(b * s.block) for b in range(first_block, first_block + n)]


def test_no_cut_when_nobody_holds_the_senders_back():
    s = DispatchSchedule.start(32, ["p1", "p2"])
    before = s.to_dict()
    assert rebalance(s, CALM, 2.0, 1000, sent=0) is None
    assert rebalance(s, {"p1": 0.3, "p2": 0.9}, 2.0, 1000, sent=0) is None     # below half the interval
    assert rebalance(s, {"p1": 1.5, "p2": 1.9}, 2.0, 1000, sent=0) is None     # nobody has room to spare
    assert rebalance(s, {}, 2.0, 1000) is None
    assert s.to_dict() == before
    alone = DispatchSchedule.start(32, ["p1"])
    assert rebalance(alone, {"p1": 2.0}, 2.0, 100) is None and alone.epochs == [(0, ("p1",))]


def test_first_cut_one_block_for_every_two_from_past_the_frontier():
    s = DispatchSchedule.start(32, ["p1", "p2"])
    assert rebalance(s, SLOW, 2.0, 1000, sent=300) == ["p1", "p2", "p1"]
    assert s.epochs[-1] == (1000 // 32 + 1, ("p1", "p2", "p1"))
    assert blocks_of(s, 30, 2) == ["p1", "p2"]                  # blocks up to the frontier keep their owner
    assert blocks_of(s, 32, 6) == ["p1", "p2", "p1"] * 2


def test_cut_again_while_it_still_stalls_halving_down_to_the_floor_never_to_none():
    s = DispatchSchedule.start(10, ["p1", "p2"])
    frontier, sent, previous, shares = 100, 0, None, []
    for _ in range(40):                       # p2 stalls on every look; the senders move 50 seqs a look
        in_force = s.epochs[-1][0] * s.block
        new = rebalance(s, SLOW, 2.0, frontier, sent=sent)
        if new is not None:
            shares.append((new.count("p1"), new.count("p2")))
            assert len(shares) == 1 or previous >= in_force     # judged on the last deal only
        frontier, sent, previous = frontier + 50, sent + 50, sent
    assert shares == [(2, 1), (4, 1), (8, 1), (16, 1)]          # halved each time, then the floor
    assert MAX_CUT == 16
    last_first, last_order = s.epochs[-1]
    assert last_order == ("p1", "p2") + ("p1",) * 15
    deal = blocks_of(s, last_first, 17 * 4)
    assert deal.count("p2") == 4 and deal.count("p1") == 64    # one block in 17: never none
    starts = [first for first, _ in s.epochs]
    assert starts == sorted(starts) and len(starts) == 5


def test_a_cut_waits_until_the_previous_one_is_in_force_for_a_whole_interval():
    s = DispatchSchedule.start(10, ["p1", "p2"])
    assert rebalance(s, SLOW, 2.0, 200, sent=50) == ["p1", "p2", "p1"]    # epoch from seq 210
    assert rebalance(s, SLOW, 2.0, 300, sent=150) is None       # the old deal is what stalled
    assert rebalance(s, SLOW, 2.0, 400, sent=250) is None       # at the previous look (150) still the old one
    assert rebalance(s, CALM, 2.0, 500, sent=350) is None       # in force, and p2 now keeps up: no cut
    assert rebalance(s, SLOW, 2.0, 600, sent=450) == ["p1", "p2", "p1", "p1", "p1"]
    assert s.epochs[-1][0] == 61


def test_without_sent_a_cut_waits_a_fixed_number_of_looks():
    s = DispatchSchedule.start(10, ["p1", "p2"])
    assert rebalance(s, SLOW, 2.0, 100) == ["p1", "p2", "p1"]
    for k in range(SETTLE_LOOKS):
        assert rebalance(s, SLOW, 2.0, 200 + k) is None
    assert rebalance(s, SLOW, 2.0, 300) == ["p1", "p2", "p1", "p1", "p1"]


def test_the_other_node_falling_behind_takes_the_share_back_step_by_step():
    s = DispatchSchedule.start(10, ["p1", "p2"])
    assert rebalance(s, SLOW, 2.0, 100, sent=0) == ["p1", "p2", "p1"]
    rebalance(s, CALM, 2.0, 200, sent=150)
    assert rebalance(s, {"p1": 1.5, "p2": 0.0}, 2.0, 300, sent=250) == ["p1", "p2"]    # back to one each
    rebalance(s, CALM, 2.0, 400, sent=350)
    assert rebalance(s, {"p1": 1.5, "p2": 0.0}, 2.0, 500, sent=450) == ["p1", "p2", "p2"]


def test_three_receivers_interleaved_and_the_floor_against_each_other_one():
    s = DispatchSchedule.start(8, ["p1", "p2", "p3"])
    frontier = sent = 0
    orders = []
    for _ in range(30):
        new = rebalance(s, {"p1": 0.0, "p2": 0.05, "p3": 2.0}, 2.0, frontier, sent=sent)
        if new:
            orders.append(new)
        frontier, sent = frontier + 100, sent + 100
    assert orders[0] == ["p1", "p2", "p3", "p1", "p2"]           # fast nodes alternate, not in runs
    assert [o.count("p1") for o in orders] == [2, 4, 8, 16] and all(o.count("p3") == 1 for o in orders)
    assert orders[-1][:3] == ["p1", "p2", "p3"] and orders[-1][3:] == ["p1", "p2"] * 15
    assert s.owner(10**6, {"p1", "p2"}) == "p3"                   # lost-node rule still applies


def test_same_looks_same_schedule_and_bookkeeping_is_not_part_of_it():
    def play() -> DispatchSchedule:
        s = DispatchSchedule.start(16, ["a", "b", "c"])
        looks = [({"c": 1.8}, 100, 0), ({"c": 1.8}, 200, 90), ({"c": 1.8}, 400, 300),
                 ({"a": 1.2, "b": 0.1}, 600, 500), ({"a": 1.9}, 800, 700)]
        for stalled, frontier, sent in looks:
            rebalance(s, stalled, 2.0, frontier, sent=sent)
        return s
    one, two = play(), play()
    assert one == two and one.to_dict() == two.to_dict()
    copy = DispatchSchedule.from_dict(one.to_dict())
    assert copy == one and set(one.to_dict()) == {"block", "epochs"}
    assert blocks_of(one, 0, 200) == blocks_of(copy, 0, 200)


def test_deal_order_reduces_and_interleaves():
    assert deal_order(["p1", "p2"], {"p1": 4, "p2": 2}) == ["p1", "p2", "p1"]
    assert deal_order(["x", "y", "z"], {"x": 1, "y": 3, "z": 2}) == ["x", "y", "z", "y", "z", "y"]
