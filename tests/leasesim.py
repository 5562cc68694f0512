"""
A deterministic simulation of a worker group, for the model check of the
lease protocol: the workers run the real
:class:`~txchanges.group._lease.Member` and
:class:`~txchanges.group._coordinator.Coordinator` against a simulated store,
on virtual time, each with its own clock (its own rate and origin), and a
seeded random schedule of joins, leaves, crashes, pauses, partitions,
delays and lost answers.

Run many seeds from the command line: ``python -m tests.leasesim 5000``.
"""

from __future__ import annotations

import heapq
import random
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import AlreadyCalled

from txchanges.errors import Conflict, NotFound
from txchanges.group._coordinator import Coordinator
from txchanges.group._lease import Doc, Member, Timing

__all__ = ["Scenario", "run_scenario", "check", "Outcome"]


class World:
    """Virtual time for the whole simulation: a heap of calls, run in order (ties in the order made)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, "_WorldCall"]] = []
        self._made = 0

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, f: Callable[..., Any], *a: Any, **kw: Any) -> "_WorldCall":
        call = _WorldCall(self.now + max(0.0, delay), f, a, kw)
        self._made += 1
        heapq.heappush(self._heap, (call.when, self._made, call))
        return call

    def run_until(self, end: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= end:
            when, _, call = heapq.heappop(heap)
            if call.state != "pending":
                continue
            self.now = when
            call.state = "called"
            call.f(*call.a, **call.kw)
        self.now = end


class _WorldCall:
    def __init__(self, when: float, f: Callable[..., Any], a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        self.when, self.f, self.a, self.kw = when, f, a, kw
        self.state = "pending"

    def active(self) -> bool:
        return self.state == "pending"

    def getTime(self) -> float:
        return self.when

    def cancel(self) -> None:
        if self.state != "pending":
            raise AlreadyCalled(self)
        self.state = "cancelled"


class _Call:
    """A call on a worker's clock: still active while its worker is paused."""

    def __init__(self, clock: "LocalClock", when: float, f: Callable[..., Any], a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        self.clock, self.when, self.f, self.a, self.kw = clock, when, f, a, kw
        self.state = "pending"
        self.world_call: Any = None

    def active(self) -> bool:
        return self.state == "pending"

    def getTime(self) -> float:
        return self.when

    def cancel(self) -> None:
        if self.state != "pending":
            raise AlreadyCalled(self)
        self.state = "cancelled"
        if self.world_call is not None and self.world_call.active():
            self.world_call.cancel()

    def fire(self) -> None:
        if self.state != "pending" or self.clock.dead:
            return
        if self.clock.paused:
            self.clock.queue.append(self)
            return
        self.state = "called"
        self.f(*self.a, **self.kw)


class LocalClock:
    """
    One worker's time: runs at *rate* from *origin*, on the world's clock.
    A paused worker runs nothing (its clock goes on, as a stopped process's
    does); a crashed one never runs again.
    """

    def __init__(self, world: World, rate: float, origin: float) -> None:
        self.world = world
        self.rate = rate
        self.origin = origin
        self.paused = False
        self.dead = False
        self.queue: list[_Call] = []

    def seconds(self) -> float:
        return self.origin + self.rate * self.world.seconds()

    def to_world(self, local: float) -> float:
        return (local - self.origin) / self.rate

    def callLater(self, delay: float, f: Callable[..., Any], *a: Any, **kw: Any) -> _Call:
        call = _Call(self, self.seconds() + delay, f, a, kw)
        # A nanosecond late, so that the local time it fires at is never
        # rounded below the time it was due.
        call.world_call = self.world.callLater(max(0.0, delay) / self.rate + 1e-9, call.fire)
        return call

    def run(self, f: Callable[..., Any], a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        _Call(self, self.seconds(), f, a, kw).fire()

    def resume(self) -> None:
        self.paused = False
        queue, self.queue = self.queue, []
        for call in queue:
            call.fire()


class Store:
    """The coordination database: documents with revisions, compare-and-set writes."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[str, dict[str, Any]]] = {}
        self._revs = 0

    def read(self) -> dict[str, Doc]:
        return {k: Doc(rev, dict(body)) for k, (rev, body) in self.docs.items()}

    def write(self, doc: str, body: dict[str, Any], rev: Optional[str]) -> str:
        current = self.docs.get(doc)
        if (current[0] if current else None) != rev:
            raise Conflict(409, "conflict", "Document update conflict.")
        self._revs += 1
        new = f"{self._revs}-x"
        self.docs[doc] = (new, dict(body))
        return new

    def delete(self, doc: str, rev: str) -> None:
        current = self.docs.get(doc)
        if current is None:
            raise NotFound(404, "not_found", "deleted")
        if current[0] != rev:
            raise Conflict(409, "conflict", "Document update conflict.")
        del self.docs[doc]


class Link:
    """
    A worker's connection to the store: each request takes a random delay
    to arrive and its answer another; a partitioned link loses both, an
    answer is sometimes lost after the request was applied, and a request is
    sometimes refused at once (a server restarting, a proxy cutting).
    """

    def __init__(self, world: World, store: Store, clock: LocalClock, rng: random.Random, faults: "Faults") -> None:
        self._world = world
        self._store = store
        self._clock = clock
        self._rng = rng
        self._faults = faults
        self.partitioned = False

    def _call(self, apply: Callable[[], Any]) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        there = self._rng.uniform(0.0, self._faults.max_delay)
        back = self._rng.uniform(0.0, self._faults.max_delay)

        if self._rng.random() < self._faults.refused:
            self._world.callLater(there, self._clock.run, d.errback, (ConnectionRefusedError("refused"),), {})
            return d

        def arrive() -> None:
            if self.partitioned:
                return  # lost on the way: the caller's timeout ends it
            try:
                result: Any = apply()
                ok = True
            except Exception as e:
                result, ok = e, False
            if self._rng.random() < self._faults.lost_answers:
                return
            self._world.callLater(back, answer, result, ok)

        def answer(result: Any, ok: bool) -> None:
            if self.partitioned:
                return
            self._clock.run(d.callback if ok else d.errback, (result,), {})

        self._world.callLater(there, arrive)
        return d

    def read(self) -> "Deferred[dict[str, Doc]]":
        return self._call(self._store.read)

    def write(self, doc: str, body: dict[str, Any], rev: Optional[str]) -> "Deferred[str]":
        return self._call(lambda: self._store.write(doc, body, rev))

    def delete(self, doc: str, rev: str) -> "Deferred[None]":
        return self._call(lambda: self._store.delete(doc, rev))


@dataclass
class Faults:
    max_delay: float = 0.05
    lost_answers: float = 0.0
    refused: float = 0.0


@dataclass
class Outcome:
    """What a run recorded, in world time."""

    #: (unit, worker, start, end) of each ownership interval.
    intervals: list[tuple[str, str, float, float]] = field(default_factory=list)
    #: (unit, worker, time, change) of each change handed over.
    handled: list[tuple[str, str, float, int]] = field(default_factory=list)
    #: (unit, worker) pairs granted, with the world time.
    grants: list[tuple[str, str, float]] = field(default_factory=list)
    #: The store at the end.
    store: Optional[Store] = None
    #: Every live worker's units at the end, and those that were lost or given up.
    final: dict[str, list[str]] = field(default_factory=dict)
    graceful_only: bool = True
    events: list[str] = field(default_factory=list)
    #: (start, end) of each event (a join, leave or crash lasts an instant),
    #: and (time, units held) of each crash.
    faults: list[tuple[float, float]] = field(default_factory=list)
    crashes: list[tuple[float, list[str]]] = field(default_factory=list)
    #: The longest a request or an answer took, and how many answers were lost.
    max_delay: float = 0.0
    lost_answers: float = 0.0
    #: The share of requests refused at once.
    refused: float = 0.0
    #: How long after a crash each of its units was granted to another worker.
    takeovers: list[float] = field(default_factory=list)


class FakeUnits:
    """
    A worker's units: each hands over its next change every few tenths of a
    second while its lease is valid, and saves its checkpoint every third
    change and when it stops.
    """

    def __init__(self, name: str, clock: LocalClock, rng: random.Random, outcome: Outcome, open_spans: dict[Any, float]) -> None:
        self.name = name
        self.clock = clock
        self.rng = rng
        self.outcome = outcome
        self.coordinator: Optional[Coordinator] = None
        self.position: dict[str, int] = {}
        self.running: dict[str, Any] = {}
        self._spans = open_spans

    def start(self, unit: str, checkpoint: Any) -> None:
        self.position[unit] = int(checkpoint or 0)
        self._schedule(unit)

    def _schedule(self, unit: str) -> None:
        self.running[unit] = self.clock.callLater(self.rng.uniform(0.05, 0.3), self._tick, unit)

    def _tick(self, unit: str) -> None:
        assert self.coordinator is not None
        if unit not in self.running:
            return
        if not self.coordinator.valid(unit):
            return  # valid() stopped it
        self.position[unit] += 1
        self.outcome.handled.append((unit, self.name, self.clock.world.seconds(), self.position[unit]))
        if self.position[unit] % 3 == 0:
            self.coordinator.save(unit, self.position[unit]).addErrback(lambda f: None)
        self._schedule(unit)

    def stop(self, unit: str, lost: bool) -> "Deferred[None]":
        call = self.running.pop(unit, None)
        if call is not None and call.active():
            call.cancel()
        assert self.coordinator is not None
        done: Deferred[None] = Deferred()

        def save() -> None:
            assert self.coordinator is not None
            self.coordinator.save(unit, self.position.get(unit, 0)).addBoth(lambda _: done.callback(None))

        # In-flight calls take a moment to end, then the checkpoint is saved.
        self.clock.callLater(self.rng.uniform(0.0, 0.2), save)
        return done


class Worker:
    def __init__(self, name: str, world: World, store: Store, rng: random.Random, timing: Timing,
                 units: list[str], outcome: Outcome, drift: float, faults: Faults) -> None:
        self.name = name
        rate = 1.0 + rng.uniform(-drift, drift)
        self.clock = LocalClock(world, rate, rng.uniform(-1000, 1000))
        self.link = Link(world, store, self.clock, rng, faults)
        self.outcome = outcome
        self._open: dict[str, float] = {}
        self.units = FakeUnits(name, self.clock, rng, outcome, {})
        member = Member("g", name, units, timing, self.clock.seconds())
        self.coordinator = Coordinator(member, self.link, self.units, self.clock, self.clock.seconds, self._ownership)
        self.units.coordinator = self.coordinator
        self.left: Optional[Deferred[None]] = None

    def _ownership(self, unit: str, what: str, local: float) -> None:
        world = self.clock.to_world(local)
        if what == "granted":
            self._open[unit] = world
            self.outcome.grants.append((unit, self.name, world))
        elif what == "ended":
            start = self._open.pop(unit)
            self.outcome.intervals.append((unit, self.name, start, world))

    def close_open(self, end: float) -> None:
        # Open until now, or until its lease ended if that came first (a
        # paused worker hands nothing over past it).
        for unit, start in self._open.items():
            until = self.coordinator.member.valid_until(unit)
            last = end if until is None else min(end, self.clock.to_world(until))
            self.outcome.intervals.append((unit, self.name, start, last))
        self._open = {}

    def crash(self) -> None:
        # A dead process hands nothing over from now on.
        self.clock.dead = True
        self.close_open(self.clock.world.seconds())


@dataclass
class Scenario:
    seed: int
    workers: int = 3
    units: int = 8
    ttl: float = 3.0
    duration: float = 40.0
    events: int = 6
    drift: float = 0.02
    faults: bool = True


def run_scenario(s: Scenario) -> Outcome:
    """Run one seeded schedule and return what happened (checked by :func:`check`)."""
    rng = random.Random(s.seed)
    world = World()
    store = Store()
    timing = Timing.for_ttl(s.ttl)
    units = [str(i) for i in range(s.units)]
    outcome = Outcome()
    faults = Faults(
        max_delay=rng.choice([0.01, 0.05, 0.2]),
        lost_answers=rng.choice([0.0, 0.0, 0.02, 0.05]) if s.faults else 0.0,
        refused=rng.choice([0.0, 0.0, 0.05, 0.2]) if s.faults else 0.0,
    )
    if faults.lost_answers or faults.refused:
        outcome.graceful_only = False
    outcome.max_delay = faults.max_delay
    outcome.lost_answers = faults.lost_answers
    outcome.refused = faults.refused
    workers: dict[str, Worker] = {}
    counter = [0]

    def join() -> None:
        counter[0] += 1
        w = Worker(f"w{counter[0]}", world, store, rng, timing, units, outcome, s.drift, faults)
        workers[w.name] = w
        w.clock.callLater(0, w.coordinator.start)
        outcome.events.append(f"{world.seconds():.2f} join {w.name}")

    def alive() -> list[Worker]:
        return [w for w in workers.values() if not w.clock.dead and w.left is None]

    for _ in range(s.workers):
        join()
    kinds = ["join", "leave"] + (["crash", "pause", "partition"] if s.faults else [])
    heal_by = s.duration - 3 * s.ttl
    for _ in range(s.events):
        at = rng.uniform(1.0, heal_by - 2 * s.ttl)
        kind = rng.choice(kinds)
        world.callLater(at, event, kind, rng, world, workers, alive, join, outcome, s)
    world.callLater(heal_by, heal, workers, faults)
    world.run_until(s.duration)
    for w in workers.values():
        if not w.clock.dead and w.left is None:
            w.close_open(world.seconds())
    outcome.store = store
    outcome.final = {w.name: w.coordinator.member.held for w in alive()}
    return outcome


def event(kind: str, rng: random.Random, world: World, workers: dict[str, Worker], alive: Callable[[], list[Worker]],
          join: Callable[[], None], outcome: Outcome, s: Scenario) -> None:
    candidates = alive()
    now = world.seconds()
    lasts = rng.uniform(0.5, 2.5) * s.ttl if kind in ("pause", "partition") else 0.0
    outcome.faults.append((now, now + lasts))
    if kind == "join" or not candidates:
        join()
        return
    w = rng.choice(candidates)
    outcome.events.append(f"{now:.2f} {kind} {w.name}")
    if kind == "leave":
        w.left = Deferred()
        # As the worker's own code would: once it runs again, if paused.
        w.clock.run(lambda: w.coordinator.leave().chainDeferred(w.left), (), {})
    elif kind == "crash":
        outcome.graceful_only = False
        outcome.crashes.append((now, w.coordinator.member.held))
        w.crash()
        if len(candidates) == 1:
            join()
    elif kind == "pause":
        outcome.graceful_only = False
        w.clock.paused = True
        world.callLater(lasts, w.clock.resume)
    elif kind == "partition":
        outcome.graceful_only = False
        w.link.partitioned = True
        world.callLater(lasts, setattr, w.link, "partitioned", False)


def heal(workers: dict[str, Worker], faults: Faults) -> None:
    faults.lost_answers = faults.refused = 0.0
    for w in workers.values():
        w.link.partitioned = False
        if w.clock.paused:
            w.clock.resume()


def check(outcome: Outcome, s: Scenario) -> list[str]:
    """
    The invariants: no unit is owned by two workers at once; every change
    is handed over inside its worker's ownership; the stored checkpoint
    never passes a change nobody handled; without crashes, pauses,
    partitions or lost answers, no change is handled twice; and once the
    faults are healed, every unit is held by one live worker, evenly.
    """
    problems: list[str] = []
    by_unit: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for unit, worker, start, end in outcome.intervals:
        by_unit[unit].append((start, end, worker))
    for unit, spans in by_unit.items():
        spans.sort()
        for (s1, e1, w1), (s2, e2, w2) in zip(spans, spans[1:]):
            if s2 < e1:
                problems.append(f"unit {unit}: {w1} owned it until {e1:.3f}, {w2} from {s2:.3f}")
    for unit, worker, t, change in outcome.handled:
        # A microsecond's slack: local times are turned into world times.
        if not any(w == worker and a - 1e-6 <= t <= b + 1e-6 for a, b, w in by_unit[unit]):
            problems.append(f"unit {unit}: {worker} handed change {change} over at {t:.3f}, outside its ownership")
    handled = defaultdict(list)
    for unit, worker, t, change in outcome.handled:
        handled[unit].append(change)
    assert outcome.store is not None
    for doc, (rev, body) in outcome.store.docs.items():
        if body.get("type") != "lease":
            continue
        unit = body["unit"]
        saved = int(body.get("checkpoint") or 0)
        missing = set(range(1, saved + 1)) - set(handled[unit])
        if missing:
            problems.append(f"unit {unit}: checkpoint {saved} passes changes never handled: {sorted(missing)[:5]}")
    if outcome.graceful_only:
        for unit, changes in handled.items():
            if len(changes) != len(set(changes)):
                problems.append(f"unit {unit}: changes handled twice with only clean handovers")
    owners: dict[str, str] = {}
    for worker, units in outcome.final.items():
        for unit in units:
            if unit in owners:
                problems.append(f"unit {unit} held at the end by {owners[unit]} and {worker}")
            owners[unit] = worker
    if outcome.final and len(owners) != s.units:
        problems.append(f"at the end, units held: {sorted(owners)} of {s.units}")
    problems += _takeovers(outcome, s)
    loads = [len(u) for u in outcome.final.values()]
    if loads and max(loads) - min(loads) > 1:
        problems.append(f"at the end, uneven loads {outcome.final}")
    return problems


def _takeovers(outcome: Outcome, s: Scenario) -> list[str]:
    # A crashed worker's units go to another within the bound, unless
    # another fault (a pause, a partition, another crash) came close to it,
    # or answers get lost or requests refused (each may cost a lease write's
    # timeout or a poll).
    if not outcome.graceful_only and (outcome.lost_answers or outcome.refused):
        return []
    t = Timing.for_ttl(s.ttl)
    # The wait, two reads, and the network: a read, a write and the lease write that landed last.
    bound = (t.ttl + t.margin) * (1 + 2 * s.drift) + 2 * t.poll + 8 * outcome.max_delay + 0.25
    problems = []
    for crashed_at, units in outcome.crashes:
        near = [a for a, b in outcome.faults if a != crashed_at and b >= crashed_at - t.ttl and a <= crashed_at + bound]
        if near or crashed_at + bound > s.duration:
            continue
        for unit in units:
            later = [at for u, w, at in outcome.grants if u == unit and at > crashed_at]
            took = min(later) - crashed_at if later else float("inf")
            outcome.takeovers.append(took)
            if took > bound:
                problems.append(f"unit {unit}: taken over {took:.2f}s after a crash (bound {bound:.2f}s)")
    return problems


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 1000
    first = int(argv[1]) if len(argv) > 1 else 0
    failed = 0
    takeovers: list[float] = []
    for seed in range(first, first + count):
        s = Scenario(seed)
        outcome = run_scenario(s)
        problems = check(outcome, s)
        takeovers += outcome.takeovers
        if problems:
            failed += 1
            print(f"seed {seed}: {problems[:3]}")
    print(f"{count} schedules, {failed} failed; {len(takeovers)} takeovers after a crash, the longest {max(takeovers, default=0):.2f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
