"""The pool of catch-ups: bounded, fair, retried per database; on task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger

from txchanges.errors import CouchError
from txchanges.many._catchup import Outcome
from txchanges.many._pool import Pool


class Catchups:
    """Catch-ups that end when the test says, recording the order they began."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.pending: dict[str, Deferred[Outcome]] = {}

    async def __call__(self, name: str) -> Outcome:
        self.started.append(name)
        d: Deferred[Outcome] = Deferred()
        self.pending[name] = d
        return await d

    def end(self, name: str, more: bool = False) -> None:
        self.pending.pop(name).callback(Outcome(rows=1, more=more, stopped=False))

    def fail(self, name: str, error: BaseException) -> None:
        self.pending.pop(name).errback(error)


def make(size: int = 2, policy: Any = lambda attempt: 10.0 * (attempt + 1)) -> tuple[Pool, Catchups, Clock]:
    clock = Clock()
    runs = Catchups()
    return Pool(runs, size=size, clock=clock, retry_policy=policy, log=Logger()), runs, clock


def test_never_more_than_size_at_once_and_first_come_first_served() -> None:
    pool, runs, _ = make(size=2)
    for name in "abcde":
        pool.dirty(name)
    assert runs.started == ["a", "b"]
    assert (pool.running, pool.waiting) == (2, 3)
    runs.end("b")
    assert runs.started == ["a", "b", "c"]
    runs.end("a")
    runs.end("c")
    assert runs.started == ["a", "b", "c", "d", "e"]
    assert pool.running == 2


def test_a_busy_database_goes_to_the_back_after_each_page() -> None:
    """One database with pages to read never keeps the quiet ones waiting past one page each."""
    pool, runs, _ = make(size=1)
    pool.dirty("busy")
    pool.dirty("quiet1")
    pool.dirty("quiet2")
    runs.end("busy", more=True)
    runs.end("quiet1")
    runs.end("quiet2")
    runs.end("busy", more=True)
    runs.end("busy")
    assert runs.started == ["busy", "quiet1", "quiet2", "busy", "busy"]
    assert pool.running == 0 and pool.waiting == 0


def test_dirty_while_running_reads_once_more_afterwards() -> None:
    pool, runs, _ = make(size=1)
    pool.dirty("a")
    pool.dirty("a")
    pool.dirty("a")
    assert pool.waiting == 0
    runs.end("a")
    assert runs.started == ["a", "a"]
    runs.end("a")
    assert runs.started == ["a", "a"] and pool.running == 0


def test_queued_twice_is_queued_once() -> None:
    pool, runs, _ = make(size=1)
    pool.dirty("a")
    pool.dirty("b")
    pool.dirty("b")
    assert pool.waiting == 1


def test_a_failed_catch_up_is_retried_after_the_policy_delay_others_go_on() -> None:
    pool, runs, clock = make(size=1)
    pool.dirty("a")
    pool.dirty("b")
    runs.fail("a", CouchError(503, "unavailable", "busy", "GET", "http://h/a/_changes"))
    assert runs.started == ["a", "b"]
    pool.dirty("a")  # a change meanwhile does not cut the delay short
    runs.end("b")
    clock.advance(9.9)
    assert runs.started == ["a", "b"]
    clock.advance(0.1)
    assert runs.started == ["a", "b", "a"]
    runs.fail("a", ConnectionError("refused"))
    clock.advance(19.9)
    assert runs.started == ["a", "b", "a"]
    clock.advance(0.1)
    assert runs.started == ["a", "b", "a", "a"]


def test_a_terminal_failure_waits_for_the_next_change() -> None:
    pool, runs, clock = make(size=1)
    pool.dirty("a")
    runs.fail("a", CouchError(403, "forbidden", "no", "GET", "http://h/a/_changes"))
    clock.advance(1000)
    assert runs.started == ["a"]
    pool.dirty("a")
    assert runs.started == ["a", "a"]


def test_oldest_wait_is_the_head_of_the_queue() -> None:
    pool, runs, clock = make(size=1)
    pool.dirty("a")
    assert pool.oldest_wait() == 0.0
    clock.advance(1)
    pool.dirty("b")
    clock.advance(2)
    pool.dirty("c")
    clock.advance(3)
    assert pool.oldest_wait() == 5.0
    runs.end("a")
    assert pool.oldest_wait() == 3.0


def test_forget_drops_a_database_from_the_queue_and_its_retry() -> None:
    pool, runs, clock = make(size=1)
    pool.dirty("a")
    pool.dirty("b")
    pool.forget("b")
    runs.fail("a", ConnectionError("refused"))
    pool.forget("a")
    clock.advance(100)
    assert runs.started == ["a"]
    assert pool.names() == set()


def test_close_starts_nothing_more_and_fires_when_the_running_end() -> None:
    pool, runs, _ = make(size=1)
    pool.dirty("a")
    pool.dirty("b")
    closed = pool.close()
    assert not closed.called
    pool.dirty("c")
    runs.end("a", more=True)
    assert closed.called
    assert runs.started == ["a"]
