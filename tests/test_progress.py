"""The resume-point watermark, the de-duplication window and the handler scheduler."""

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txchanges.service._progress import DedupWindow, Progress
from txchanges.service._scheduler import Scheduler


def test_watermark_waits_for_the_oldest_unfinished_row():
    """With rows finishing out of order, the resume point is the newest seq before which all are done."""
    p = Progress("0")
    a, b, c = p.begin("1-a"), p.begin("2-b"), p.begin("3-c")
    assert p.in_flight == 3
    assert p.finish(c) is False and p.resume == "0"
    assert p.finish(a) is True and p.resume == "1-a"
    assert p.finish(b) is True and p.resume == "3-c"
    assert p.in_flight == 0


def test_null_seqs_hold_back_but_never_become_the_resume_point():
    """A seq_interval row with seq null must be done before the watermark passes it, and is never stored."""
    p = Progress("0")
    a, n, c = p.begin("1-a"), p.begin(None), p.begin("3-c")
    p.finish(a)
    p.finish(c)
    assert p.resume == "1-a"
    p.finish(n)
    assert p.resume == "3-c"


def test_passed_moves_past_rows_a_filter_left_out():
    """The last_seq that ends a filtered feed becomes the resume point once earlier rows are done."""
    p = Progress("0")
    a = p.begin("1-a")
    assert p.passed("9-end") is False
    p.finish(a)
    assert p.resume == "9-end"


def test_dedup_window_recognises_replays_within_its_size():
    """The window flags an (id, rev) it has seen and forgets the oldest beyond its size."""
    w = DedupWindow(2)
    r1 = {"id": "a", "changes": [{"rev": "1-x"}]}
    r2 = {"id": "b", "changes": [{"rev": "1-y"}]}
    r3 = {"id": "c", "changes": [{"rev": "1-z"}]}
    assert [w.seen(r1), w.seen(r1), w.seen(r2), w.seen(r3), w.seen(r1)] == [False, True, False, False, False]
    assert w.seen({"id": "a", "changes": [{"rev": "2-x"}]}) is False, "a new revision is not a replay"


def test_dedup_window_off_and_rows_without_revs():
    """A zero-size window flags nothing; rows without id or changes are never flagged."""
    assert DedupWindow(0).seen({"id": "a", "changes": []}) is False
    w = DedupWindow(5)
    assert [w.seen({"db_name": "x", "type": "updated"}) for _ in range(2)] == [False, False]
    with pytest.raises(ValueError):
        DedupWindow(-1)


class Calls:
    """A handler whose calls stay pending until the test fires them."""

    def __init__(self) -> None:
        self.pending: list[tuple[dict[str, Any], Deferred[None]]] = []
        self.started: list[str] = []

    def __call__(self, row: dict[str, Any]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.started.append(row["id"])
        self.pending.append((row, d))
        return d

    def finish(self, docid: str, error: Exception | None = None) -> None:
        for i, (row, d) in enumerate(self.pending):
            if row["id"] == docid:
                del self.pending[i]
                d.errback(error) if error else d.callback(None)
                return
        raise AssertionError(f"{docid} is not running")


class Listener:
    """A SchedulerListener that records what the scheduler tells it."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.failures: list[Any] = []
        self.dropped_ids: list[str] = []
        self.checkpoints = 0

    def pause(self) -> None:
        self.events.append("pause")

    def resume(self) -> None:
        self.events.append("resume")

    def failed(self, failure: Any) -> None:
        self.failures.append(failure)

    def dropped(self, row: dict[str, Any]) -> None:
        self.dropped_ids.append(row["id"])

    def checkpoint(self) -> None:
        self.checkpoints += 1


def make(handler, progress=None, listener=None, **options):
    progress = progress or Progress(None)
    listener = listener or Listener()
    options.setdefault("concurrency", 2)
    options.setdefault("max_buffered", 4)
    options.setdefault("on_error", "stop")
    clock = options.pop("clock", Clock())
    s = Scheduler(handler, progress, listener, clock=clock, retry_delay=lambda n: float(n), **options)
    return s, progress, listener.events


def submit(s, progress, docid, seq):
    s.submit({"id": docid, "seq": seq}, progress.begin(seq))


def test_concurrency_limit_and_same_id_serialisation():
    """At most `concurrency` run at once, and a document's second change waits for its first."""
    calls = Calls()
    s, p, _ = make(calls, concurrency=2, max_buffered=10)
    for docid, seq in [("a", "1"), ("a", "2"), ("b", "3"), ("c", "4")]:
        submit(s, p, docid, seq)
    assert calls.started == ["a", "b"]
    calls.finish("b")
    assert calls.started == ["a", "b", "c"], "c overtakes the waiting second change of a"
    calls.finish("a")
    assert calls.started == ["a", "b", "c", "a"]
    assert p.resume == "1"
    calls.finish("c")
    calls.finish("a")
    assert p.resume == "4" and s.buffered == 0


def test_backpressure_pauses_at_the_bound_and_resumes_half_empty():
    """The feed is paused when max_buffered changes are held and resumed when half are done."""
    calls = Calls()
    s, p, events = make(calls, concurrency=1, max_buffered=4)
    for i in range(4):
        submit(s, p, f"d{i}", str(i))
    assert events == ["pause"] and s.buffered == 4
    calls.finish("d0")
    assert events == ["pause"], "3 held: not yet half empty"
    calls.finish("d1")
    assert events == ["pause", "resume"]


def test_a_stuck_call_pauses_after_max_ahead_rows():
    """While one call hangs, the feed is paused once max_ahead rows are past the resume point."""
    calls = Calls()
    s, p, events = make(calls, concurrency=2, max_buffered=4, max_ahead=10)
    submit(s, p, "stuck", "0")
    for i in range(1, 9):
        submit(s, p, f"d{i}", str(i))
        calls.finish(f"d{i}")
    assert events == []
    submit(s, p, "d9", "9")
    assert events == ["pause"] and p.tracked == 10 and p.resume is None
    calls.finish("d9")
    assert events == ["pause"], "still 10 past the resume point"
    calls.finish("stuck")
    assert events == ["pause", "resume"] and p.resume == "9"


def test_stop_policy_reports_and_starts_nothing_more():
    """With on_error='stop' the failure is reported, the change stays undone and nothing else starts."""
    calls = Calls()
    listener = Listener()
    s, p, _ = make(calls, listener=listener, concurrency=1)
    failures = listener.failures
    submit(s, p, "a", "1")
    submit(s, p, "b", "2")
    calls.finish("a", RuntimeError("bad"))
    assert len(failures) == 1 and failures[0].check(RuntimeError)
    assert calls.started == ["a"] and p.resume is None


def test_skip_policy_counts_the_change_as_done():
    """With on_error='skip' a failed change is logged and the resume point moves past it."""
    calls = Calls()
    s, p, _ = make(calls, concurrency=1, on_error="skip")
    submit(s, p, "a", "1")
    calls.finish("a", RuntimeError("bad"))
    assert p.resume == "1" and s.failures == 1 and s.handled == 0


def test_retry_policy_retries_after_the_delay_and_keeps_order():
    """With on_error='retry' the change is called again after the delay, before the same id's next change."""
    calls = Calls()
    clock = Clock()
    s, p, _ = make(calls, concurrency=2, on_error="retry", clock=clock)
    submit(s, p, "a", "1")
    submit(s, p, "a", "2")
    calls.finish("a", RuntimeError("flaky"))
    assert calls.started == ["a"]
    clock.advance(0.9)
    assert calls.started == ["a"]
    clock.advance(0.1)
    assert calls.started == ["a", "a"]
    calls.finish("a")
    assert calls.started == ["a", "a", "a"] and p.resume == "1"


def test_halt_drops_waiting_and_drain_waits_for_running():
    """halt() drops waiting changes and cancels retries; drain() fires when running calls end."""
    calls = Calls()
    s, p, _ = make(calls, concurrency=1)
    submit(s, p, "a", "1")
    submit(s, p, "b", "2")
    s.halt()
    drained = []
    s.drain().addCallback(drained.append)
    assert drained == []
    calls.finish("a")
    assert drained == [None] and calls.started == ["a"] and p.resume == "1"


def test_plain_and_raising_handlers():
    """A handler returning a plain value is done at once; one that raises follows the policy."""
    s, p, _ = make(lambda row: None, concurrency=1)
    submit(s, p, "a", "1")
    assert p.resume == "1" and s.handled == 1

    def boom(row):
        raise ValueError(row["id"])

    s, p, _ = make(boom, concurrency=1, on_error="skip")
    submit(s, p, "a", "1")
    assert p.resume == "1" and s.failures == 1


def test_bad_options():
    """Concurrency below 1, a buffer below concurrency and an unknown policy are ValueErrors."""
    for options in ({"concurrency": 0}, {"max_buffered": 1, "concurrency": 2}, {"on_error": "ignore"}):
        with pytest.raises(ValueError):
            make(lambda row: None, **options)


def test_handlers_that_finish_at_once_with_a_queue():
    """Handlers finishing synchronously while others wait keep order per id and lose nothing."""
    order = []
    s, p, _ = make(lambda row: order.append(row["id"]), concurrency=2, max_buffered=8)
    pending = Calls()
    s._handler = lambda row: pending(row) if row["id"] == "slow" else order.append(row["id"])
    for docid, seq in [("slow", "0"), ("a", "1"), ("a", "2"), ("b", "3"), ("a", "4"), ("c", "5")]:
        submit(s, p, docid, seq)
    assert order == ["a", "a", "b", "a", "c"]
    pending.finish("slow")
    assert p.resume == "5" and s.buffered == 0


def test_dropped_changes_are_reported():
    """halt() and a failure under on_error='stop' report each change taken but never done."""
    calls = Calls()
    listener = Listener()
    s, p, _ = make(calls, listener=listener, concurrency=1)
    dropped = listener.dropped_ids
    submit(s, p, "a", "1")
    submit(s, p, "b", "2")
    calls.finish("a", RuntimeError("bad"))
    assert dropped == ["a"]
    s.halt()
    assert dropped == ["a", "b"]


def test_forgotten_rows_are_no_replays():
    """A row the window forgot is not flagged when it comes again."""
    w = DedupWindow(10)
    r = {"id": "a", "changes": [{"rev": "1-x"}]}
    assert w.seen(r) is False
    w.forget(r)
    assert w.seen(r) is False and w.seen(r) is True
