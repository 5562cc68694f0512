"""
The model check of the group lease protocol: seeded schedules of joins,
leaves, crashes, pauses and partitions, with network delays, lost answers
and clocks that run at different rates, run by the real protocol and
coordinator on virtual time (see ``tests/leasesim.py``; ``python -m
tests.leasesim 5000`` runs more).
"""

from __future__ import annotations


from txchanges.group._assign import assign
from txchanges.group._lease import FAILED, Delete, Doc, Member, Start, Stop, Timing, Write, lease_id, member_id

from .leasesim import Scenario, check, run_scenario

#: Schedules run by the suite; each is a different interleaving.
SEEDS = 60


def test_random_schedules_keep_every_invariant():
    """No unit is owned twice at once, no change is handed over outside ownership or lost, takeovers are bounded."""
    failures = {}
    takeovers = []
    for seed in range(SEEDS):
        scenario = Scenario(seed)
        outcome = run_scenario(scenario)
        problems = check(outcome, scenario)
        takeovers += outcome.takeovers
        if problems:
            failures[seed] = problems[:3]
    assert failures == {}
    assert takeovers, "no schedule measured a takeover after a crash"


def test_clean_handovers_repeat_nothing():
    """Joins and leaves only: every change is handled exactly once."""
    for seed in range(10):
        scenario = Scenario(seed, faults=False, events=8)
        outcome = run_scenario(scenario)
        assert check(outcome, scenario) == []
        changes = [(u, c) for u, _, _, c in outcome.handled]
        assert len(changes) == len(set(changes))
        assert len({w for _, w, _, _ in outcome.handled}) >= 3


UNITS = [str(i) for i in range(16)]


def test_assignment_is_even_and_moves_little():
    """Loads differ by one at most; a joining member takes its share and few other units move."""
    members = [f"worker-{i}" for i in range(3)]
    for size in range(1, 8):
        owners = assign(UNITS, members[:size] if size <= 3 else members + [f"x{i}" for i in range(size - 3)])
        loads = [list(owners.values()).count(m) for m in set(owners.values())]
        assert max(loads) - min(loads) <= 1 and sum(loads) == 16
    before = assign(UNITS, members)
    after = assign(UNITS, members + ["worker-new"])
    moved = [u for u in UNITS if before[u] != after[u]]
    taken = [u for u in UNITS if after[u] == "worker-new"]
    assert len(taken) == 4
    assert len(moved) <= len(taken) + 2


def _member(me: str, now: float = 0.0) -> Member:
    return Member("g", me, ["0", "1"], Timing(ttl=10.0, margin=1.0, renew=3.0, poll=1.0), now)


def test_an_observer_waits_ttl_plus_margin_on_its_own_clock():
    """A lease held by another is taken only once its revision has not changed for ttl + margin since first seen."""
    me = _member("b")
    other_beat = Doc("1-a", {"worker": "a"})
    held = Doc("5-x", {"holder": "a", "unit": "0"})
    docs = {lease_id("g", u): held for u in "01"} | {member_id("g", "a"): other_beat}
    me.observe(docs, 100.0)
    me.observe(docs, 110.5)  # a's heartbeat stopped 10.5 s ago: dead; the leases are not yet free
    assert [op for op in me.plan(110.5) if isinstance(op, Write) and op.unit is not None] == []
    me.observe(docs, 111.0)
    takes = [op for op in me.plan(111.0) if isinstance(op, Write) and op.unit is not None]
    assert sorted((op.unit, op.rev, op.purpose) for op in takes) == [("0", "5-x", "acquire"), ("1", "5-x", "acquire")]


def test_a_holder_stops_handing_over_before_ttl_minus_margin_from_the_send():
    """The lease runs from when the winning write was sent, not when its answer came."""
    me = _member("a")
    me.observe({}, 0.0)
    writes = [op for op in me.plan(0.0) if isinstance(op, Write) and op.unit == "0"]
    ops = me.written(writes[0], 0.0, "1-a", 4.0)
    assert ops == [Start("0", None)]
    assert me.valid("0", 8.99) and not me.valid("0", 9.0)
    assert me.expire(9.0) == [Stop("0", lost=True, until=9.0)]
    assert me.held == []


def test_a_heartbeat_silent_for_ten_lifetimes_is_removed():
    """A crashed worker's heartbeat document is deleted once unchanged for 10 ttl, at the revision seen."""
    me = _member("b")
    docs = {member_id("g", "a"): Doc("3-a", {"worker": "a"})}
    me.observe(docs, 0.0)
    me.observe(docs, 100.0)
    assert [op for op in me.plan(100.0) if isinstance(op, Delete)] == []
    me.observe(docs, 100.5)
    assert [op for op in me.plan(100.5) if isinstance(op, Delete)] == [Delete(member_id("g", "a"), "3-a")]


def test_a_leaver_writes_a_failed_last_checkpoint_again_and_forgets_it_once_the_lease_ends():
    """While leaving, a last checkpoint whose write failed is written again; once the lease ends the unit is let go."""
    me = _member("a")
    me.observe({}, 0.0)
    [write] = [op for op in me.plan(0.0) if isinstance(op, Write) and op.unit == "0"]
    me.written(write, 0.0, "1-a", 0.1)
    assert me.leave()[0] == Stop("0", lost=False, until=9.0)
    me.save("0", 42)
    [flush] = me.flush("0", 1.0)
    assert me.written(flush, 1.0, FAILED, 1.2) == []
    [again] = [op for op in me.plan(2.0) if isinstance(op, Write)]
    assert (again.unit, again.body["checkpoint"], again.rev) == ("0", 42, "1-a")
    me.written(again, 2.0, FAILED, 2.1)
    assert me.plan(9.0) == []
    assert me.valid_until("0") is None and me.held == []


def _holding(me: str, *units: str) -> Member:
    # A member that won the leases on *units* at time 0 (revision "1-<unit>").
    member = _member(me)
    member.observe({}, 0.0)
    for op in member.plan(0.0):
        if isinstance(op, Write) and op.unit in units:
            member.written(op, 0.0, f"1-{op.unit}", 0.1)
    return member


def _lease_writes(ops: list, unit: str) -> list[Write]:
    return [op for op in ops if isinstance(op, Write) and op.unit == unit]


def test_a_failed_renewal_is_sent_again_at_the_next_poll():
    """A renewal that found no server is retried a poll later, not a whole renewal period later."""
    me = _holding("a", "0", "1")
    [renew] = _lease_writes(me.plan(3.0), "0")
    assert renew.purpose == "renew"
    assert me.written(renew, 3.0, FAILED, 3.2) == []
    [again] = _lease_writes(me.plan(4.0), "0")
    assert (again.purpose, again.rev) == ("renew", "1-0")
    me.written(again, 4.0, "2-0", 4.1)
    assert me.valid("0", 12.9) and not me.valid("0", 13.0)


def test_a_failed_release_is_sent_again_until_the_lease_would_end():
    """A unit given up whose release found no server is released at the next poll; after the lease, forgotten."""
    me = _holding("a", "0", "1")
    me.observe({member_id("g", "b"): Doc("1-b", {"worker": "b"})}, 1.0)
    [stop] = [op for op in me.plan(1.0) if isinstance(op, Stop)]
    assert stop.lost is False
    [release] = me.stopped(stop.unit, 1.5)
    assert (release.unit, release.purpose, release.body["holder"]) == (stop.unit, "release", None)
    me.written(release, 1.5, FAILED, 1.7)
    [again] = _lease_writes(me.plan(2.0), stop.unit)
    assert (again.purpose, again.rev, again.body["holder"]) == ("release", f"1-{stop.unit}", None)
    me.written(again, 2.0, FAILED, 2.2)
    assert me.valid_until(stop.unit) == 9.0
    assert _lease_writes(me.plan(9.0), stop.unit) == []
    assert me.valid_until(stop.unit) is None


def test_a_worker_that_cannot_read_the_group_keeps_the_view_of_its_last_read():
    """Reads failing for longer than ttl make no member dead and no lease free in its eyes."""
    me = _member("b")
    docs = {lease_id("g", u): Doc("5-x", {"holder": "a", "unit": u}) for u in "01"}
    docs[member_id("g", "a")] = Doc("1-a", {"worker": "a"})
    me.observe(docs, 0.0)
    me.observe(docs, 5.0)
    me.plan(5.0)
    rebalances = me.counts["rebalances"]
    assert [op for op in me.plan(30.0) if isinstance(op, Write) and op.unit is not None] == []
    assert me.live_members() == ["a", "b"] and me.counts["rebalances"] == rebalances
    # Nor is a heartbeat silent for ten lifetimes by its clock alone removed.
    assert [op for op in me.plan(200.0) if isinstance(op, Delete)] == []
    me.observe(docs, 30.0)  # read again: a's heartbeat has not changed for 30 s, nor its leases
    assert me.live_members() == ["b"]
    assert sorted(op.unit for op in me.plan(30.0) if isinstance(op, Write) and op.unit is not None) == ["0", "1"]
