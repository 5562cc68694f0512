"""The pending probe: how many changes lie past a follower's resume point."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from txchanges import ChangesService, ConnectionFailed
from txchanges.service._pending import PendingProbe

from ._service_helpers import wait_for, write_docs


class Answers:
    """A server whose answers the test gives, one request at a time."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, list[tuple[str, str]]]] = []
        self.waiting: list[defer.Deferred[Any]] = []

    def request_json(self, method: str, path: str, query: Any) -> "defer.Deferred[Any]":
        self.asked.append((method, path, list(query)))
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append(d)
        return d

    def answer(self, body: Any) -> None:
        self.waiting.pop(0).callback(body)

    def fail(self, error: Exception) -> None:
        self.waiting.pop(0).errback(error)


class Db:
    def __init__(self) -> None:
        self.server = Answers()

    def path(self, *segments: str) -> str:
        return "/db/" + "/".join(segments)


def make(resume: Any = "7-abc") -> tuple[PendingProbe, Db, list[int], dict[str, Any], Clock]:
    db, reports, state, clock = Db(), [], {"handled": 0, "resume": resume}, Clock()
    probe = PendingProbe(db, lambda: state["resume"], lambda: state["handled"], reports.append, clock)  # type: ignore[arg-type]
    return probe, db, reports, state, clock


def test_asks_from_the_resume_point_and_subtracts_what_was_handled_meanwhile():
    """The question is a limit=0 normal feed from the resume point; changes handled while it was asked are taken off."""
    probe, db, reports, state, _ = make()
    probe.ask()
    assert db.server.asked == [("GET", "/db/_changes", [("since", "7-abc"), ("limit", "0")])]
    state["handled"] = 3
    db.server.answer({"results": [], "last_seq": "9-x", "pending": 10})
    assert reports == [7]
    probe.ask()
    state["handled"] = 30
    db.server.answer({"results": [], "last_seq": "9-x", "pending": 10})
    assert reports == [7, 0], "never below zero"


def test_one_question_at_a_time_and_failures_are_skipped():
    """While an answer is on its way, ask() does nothing; a failed or odd answer reports nothing and frees the probe."""
    probe, db, reports, _, _ = make(resume=None)
    probe.ask()
    probe.ask()
    assert len(db.server.asked) == 1 and db.server.asked[0][2][0] == ("since", "0")
    db.server.fail(ConnectionFailed("127.0.0.1", 5984, "refused"))
    probe.ask()
    db.server.answer("<html>a proxy</html>")
    probe.ask()
    db.server.answer({"last_seq": "1-a", "pending": True})
    assert reports == [] and len(db.server.asked) == 3


def test_start_asks_at_once_then_every_interval_and_stop_drops_a_late_answer():
    """start() asks now and every interval on the clock; after stop() nothing is asked or reported."""
    probe, db, reports, _, clock = make()
    probe.start(30.0)
    assert len(db.server.asked) == 1
    db.server.answer({"pending": 4})
    clock.advance(30.0)
    assert len(db.server.asked) == 2
    probe.stop()
    db.server.answer({"pending": 2})
    clock.advance(60.0)
    assert reports == [4] and len(db.server.asked) == 2 and not clock.getDelayedCalls()


@pytest.mark.parametrize("bad", [0, -1.0, "30", True])
def test_the_service_refuses_a_bad_interval(bad):
    """pending_interval is a positive number of seconds or None."""
    from txchanges import Server

    with pytest.raises(ValueError, match="pending_interval"):
        ChangesService(Server("http://127.0.0.1:5984/")["db"], lambda row: None, pending_interval=bad)


@pytest_twisted.ensureDeferred
async def test_the_service_reports_pending_while_it_follows(db):
    """With pending_interval, stats.pending tracks the backlog of a live continuous feed down to 0."""
    await write_docs(db, [f"d{i:02d}" for i in range(40)])
    gate: defer.Deferred[None] = defer.Deferred()
    handled: list[str] = []

    async def handler(row: dict[str, Any]) -> None:
        await gate
        handled.append(row["id"])

    svc = ChangesService(db, handler, pending_interval=0.05)
    svc.startService()
    try:
        await wait_for(lambda: svc.stats.pending is not None, 5, "a first pending count")
        assert svc.stats.pending == 40, "nothing is done: every change lies ahead"
        gate.callback(None)
        await wait_for(lambda: len(handled) == 40, 10, "every change")
        await wait_for(lambda: svc.stats.pending == 0, 5, "pending to reach 0")
    finally:
        await svc.stopService()
    pending_calls = [c for c in reactor.getDelayedCalls() if "PendingProbe" in repr(c.func)]
    assert pending_calls == [], "the probe goes on after the stop"
