"""
Scheduler.take(), the way the service hands over each change as it arrives,
behaves exactly like noting the change in the progress and submitting it:
the same calls in the same order, the same resume points, the same pauses
and checkpoints, whatever the handler does.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txchanges.service._progress import Progress
from txchanges.service._scheduler import Scheduler


class Run:
    """
    One scheduler fed like the service feeds it: rows arrive from a feed that
    holds them while paused and hands them over, re-entrantly, on resume.
    """

    def __init__(self, use_take: bool, on_error: str, concurrency: int, max_buffered: int, every: int) -> None:
        self.clock = Clock()
        self.progress = Progress("start")
        self.trace: list[Any] = []
        self.pending: dict[int, Deferred[None]] = {}
        self.behaviour: dict[int, str] = {}
        self.held: list[dict[str, Any]] = []
        self.paused = False
        self.use_take = use_take
        self.scheduler = Scheduler(
            self.handler,
            self.progress,
            self,
            concurrency=concurrency,
            max_buffered=max_buffered,
            on_error=on_error,
            clock=self.clock,
            retry_delay=lambda n: 1.0,
            checkpoint_every=every,
        )

    # -- what the scheduler tells its listener ------------------------------------

    def failed(self, failure: Any) -> None:
        self.trace.append(("failed", str(failure.value)))

    def dropped(self, row: dict[str, Any]) -> None:
        self.trace.append(("dropped", row["n"]))

    def checkpoint(self) -> None:
        self.trace.append(("checkpoint", self.progress.resume))

    def handler(self, row: dict[str, Any]) -> Any:
        n = row["n"]
        self.trace.append(("call", n, self.progress.resume))
        how = self.behaviour[n]
        if how == "raise":
            # Raises once; a retry succeeds.
            self.behaviour[n] = "sync"
            raise ValueError(f"row {n}")
        if how == "defer":
            d: Deferred[None] = Deferred()
            self.pending[n] = d
            return d
        if how == "coroutine":

            async def done() -> str:
                return "ok"

            return done()
        return "a plain value"

    def pause(self) -> None:
        self.trace.append("pause")
        self.paused = True

    def resume(self) -> None:
        self.trace.append("resume")
        self.paused = False
        while self.held and not self.paused:
            self.deliver(self.held.pop(0))

    def arrive(self, row: dict[str, Any], how: str) -> None:
        self.behaviour[row["n"]] = how
        if self.paused or self.held:
            self.held.append(row)
        else:
            self.deliver(row)

    def deliver(self, row: dict[str, Any]) -> None:
        if self.use_take:
            self.scheduler.take(row)
        else:
            self.scheduler.submit(row, self.progress.begin(row["seq"]))
        self.trace.append(("after", row["n"], self.progress.resume, self.scheduler.buffered, self.progress.tracked))

    def finish(self, index: int, fail: bool) -> None:
        if not self.pending:
            return
        n = sorted(self.pending)[index % len(self.pending)]
        d = self.pending.pop(n)
        if fail:
            d.errback(ValueError(f"row {n} late"))
        else:
            d.callback(None)
        self.trace.append(("finished", n, self.progress.resume))

    def state(self) -> Any:
        s = self.scheduler
        return (self.trace, self.progress.resume, s.handled, s.failures, s.buffered, s.paused, self.progress.tracked)


steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("row"),
            st.sampled_from(["a", "b", "c"]),
            st.booleans(),
            st.sampled_from(["sync", "sync", "defer", "raise", "coroutine"]),
        ),
        st.tuples(st.just("finish"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("tick")),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=steps,
    on_error=st.sampled_from(["stop", "skip", "retry"]),
    concurrency=st.integers(1, 3),
    extra=st.integers(0, 3),
    every=st.integers(1, 3),
)
def test_take_is_submit_with_a_fast_lane(steps, on_error, concurrency, extra, every):
    """Any mix of synchronous, Deferred, coroutine and raising handlers gives identical traces both ways."""
    runs = [Run(use_take, on_error, concurrency, concurrency + extra, every) for use_take in (True, False)]
    n = 0
    for step in steps:
        for run in runs:
            if step[0] == "row":
                _, docid, has_seq, how = step
                run.arrive({"id": docid, "seq": f"{n}-s" if has_seq else None, "n": n}, how)
            elif step[0] == "finish":
                run.finish(step[1], step[2])
            else:
                run.clock.advance(1.0)
        n += 1
    fast, slow = runs
    assert fast.state() == slow.state()


def test_a_synchronous_change_moves_the_resume_point_at_once():
    """With nothing running, a plain handler's change is done when take() returns; a null seq holds no place."""
    run = Run(True, "stop", 1, 2, 1)
    run.arrive({"id": "a", "seq": "1-x", "n": 0}, "sync")
    assert run.progress.resume == "1-x" and run.progress.tracked == 0 and run.scheduler.handled == 1
    run.arrive({"id": "a", "seq": None, "n": 1}, "sync")
    assert run.progress.resume == "1-x" and run.scheduler.handled == 2
    assert [t for t in run.trace if t[0] == "checkpoint"] == [("checkpoint", "1-x")]


def test_a_change_behind_a_running_one_waits_its_turn():
    """A Deferred from take()'s direct call holds the next change of the same document back."""
    run = Run(True, "stop", 2, 4, 100)
    run.arrive({"id": "a", "seq": "1", "n": 0}, "defer")
    run.arrive({"id": "a", "seq": "2", "n": 1}, "sync")
    run.arrive({"id": "b", "seq": "3", "n": 2}, "sync")
    calls = [t[1] for t in run.trace if t[0] == "call"]
    assert calls == [0, 2], "b runs beside a; a's second change waits"
    assert run.progress.resume == "start"
    run.finish(0, False)
    assert [t[1] for t in run.trace if t[0] == "call"] == [0, 2, 1]
    assert run.progress.resume == "3" and run.scheduler.buffered == 0


@pytest.mark.parametrize("on_error", ["stop", "skip", "retry"])
def test_a_raising_handler_in_the_fast_lane_follows_the_policy(on_error):
    """take() routes an exception from its direct call into on_error like any other failure."""
    run = Run(True, on_error, 1, 2, 1)
    run.arrive({"id": "a", "seq": "1", "n": 0}, "raise")
    if on_error == "stop":
        assert ("failed", "row 0") in run.trace and ("dropped", 0) in run.trace
        assert run.progress.resume == "start"
    elif on_error == "skip":
        assert run.progress.resume == "1" and run.scheduler.failures == 1
    else:
        assert run.progress.resume == "start" and run.scheduler.buffered == 1
        run.clock.advance(1.0)
        assert run.progress.resume == "1" and run.scheduler.handled == 1


def test_discard_keeps_the_order_of_the_resume_point():
    """A discarded change is done at once, but the resume point passes it only after earlier changes."""
    run = Run(True, "stop", 1, 4, 1)
    run.arrive({"id": "a", "seq": "1", "n": 0}, "defer")
    run.scheduler.discard({"id": "b", "seq": "2"})
    assert run.progress.resume == "start"
    run.finish(0, False)
    assert run.progress.resume == "2"


@pytest.mark.parametrize("use_take", [True, False])
def test_a_change_resumed_while_the_queue_is_pumped_waits_for_the_pass(use_take):
    """
    A resume from inside a queue pass delivers a held change re-entrantly:
    it joins the pass rather than being called ahead of it.
    """
    run = Run(use_take, "stop", 1, 2, 100)
    run.arrive({"id": "a", "seq": "1", "n": 0}, "defer")
    run.arrive({"id": "b", "seq": "2", "n": 1}, "sync")
    assert run.paused
    run.arrive({"id": "c", "seq": "3", "n": 2}, "sync")
    run.finish(0, False)
    events = [t if isinstance(t, str) else t[:2] for t in run.trace]
    assert events[-5:] == [("call", 1), "resume", ("after", 2), ("call", 2), ("finished", 0)]
    assert run.progress.resume == "3" and run.scheduler.buffered == 0
