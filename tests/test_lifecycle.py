"""
The followers' lifecycle, driven by task.Clock against FakeCouchDB: the
states a service goes through, stopService() in each of them, and the
longpoll follower on the same machine.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txchanges import ChangesService, LocalDocCheckpoint, MemoryCheckpoint, Server, State
from txchanges.cli._longpoll import LongpollFollower
from txchanges.service._lifecycle import Lifecycle
from txchanges.service._lifecycle_types import Core
from txchanges.testing import FakeCouchDB


def to_changes(request: Any) -> bool:
    return bool(request.path[-1:] == ["_changes"])


class Gate(Resource):
    """
    In front of a FakeCouchDB: holds every request until let_through() lets
    the fake answer the oldest; once opened, lets the next ones straight through.
    """

    isLeaf = True

    def __init__(self, fake: FakeCouchDB) -> None:
        super().__init__()
        self._fake = fake.resource
        self.held: list[Request] = []
        self.gone: list[Request] = []
        self.open = False

    def render(self, request: Request) -> Any:
        if self.open:
            return self._fake.render(request)
        self.held.append(request)
        request.notifyFinish().addErrback(lambda _: self.gone.append(request))
        return NOT_DONE_YET

    def let_through(self) -> None:
        request = self.held.pop(0)
        body = self._fake.render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()


class Follow:
    """A ChangesService on a FakeCouchDB behind a Gate, on a Clock."""

    def __init__(self, handler: Callable[[dict[str, Any]], Any] | None = None, **options: Any) -> None:
        self.clock = Clock()
        self.fake = FakeCouchDB(clock=self.clock)
        self.fake.create_db("db")
        self.gate = Gate(self.fake)
        self.http = StubTreq(self.gate)
        self.db = Server(self.fake.url, http=self.http)["db"]
        self.handled: list[str] = []
        self.ended: list[Any] = []
        options.setdefault("heartbeat", 1000)
        options.setdefault("retry_policy", lambda attempt: 1.0)
        checkpoint = options.pop("checkpoint", lambda db: MemoryCheckpoint())(self.db)
        self.service = ChangesService(
            self.db, handler or (lambda row: self.handled.append(row["id"])),
            checkpoint=checkpoint, clock=self.clock, **options,
        )

    def start(self) -> None:
        self.service.startService()
        self.service.when_stopped().addBoth(self.ended.append)
        self.http.flush()

    def let_through(self, count: int = 1) -> None:
        for _ in range(count):
            self.gate.let_through()
            self.http.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.http.flush()

    def stop(self) -> list[Any]:
        self.gate.open = True  # for the last checkpoint
        done: list[Any] = []
        self.service.stopService().addBoth(done.append)
        self.http.flush()
        return done


def test_a_run_goes_through_every_state():
    """Starting while the checkpoint loads, connecting until the response, streaming, waiting after a cut, connecting again, then stopping and stopped."""
    f = Follow(checkpoint=lambda db: LocalDocCheckpoint(db, "follower"))
    assert f.service.state is State.STOPPED and f.service.state == "stopped"
    f.start()
    assert f.service.state is State.STARTING and len(f.gate.held) == 1
    f.let_through()  # no such document: is there such a database?
    assert f.service.state is State.STARTING and len(f.gate.held) == 1
    f.let_through()
    assert f.service.state is State.CONNECTING and len(f.gate.held) == 1
    f.fake.save("db", {"_id": "a"})
    f.let_through()
    assert f.service.state is State.STREAMING and f.handled == ["a"]
    f.fake.cut_feeds()
    f.http.flush()
    assert f.service.state is State.WAITING and f.gate.held == []
    f.advance(1.0)
    assert f.service.state is State.CONNECTING and f.service.stats.reconnects == 1
    f.fake.save("db", {"_id": "b"})
    f.let_through()
    assert f.service.state is State.STREAMING and f.handled == ["a", "b"]
    assert f.stop() == [None] and f.ended == [None]
    assert f.service.state is State.STOPPED and f.service.resume_seq == f.fake.update_seq("db")


def test_a_failing_start_up_step_waits_then_goes_on_from_that_step():
    """A 503 while loading the checkpoint means waiting (Retry-After long), then loading again, then following."""
    f = Follow(checkpoint=lambda db: LocalDocCheckpoint(db, "follower"))
    f.fake.fail_next(1, 503, retry_after=3)
    f.start()
    f.let_through()
    assert f.service.state is State.WAITING and f.gate.held == []
    f.advance(2.9)
    assert f.service.state is State.WAITING and f.gate.held == []
    f.advance(0.1)
    assert f.service.state is State.STARTING and len(f.gate.held) == 1
    f.let_through(2)
    assert f.service.state is State.CONNECTING
    assert [r.path for r in f.fake.requests] == [["db", "_local", "follower"]] * 2 + [["db"]]


# Each case drives a service into one state; stop must work from there.
def _starting(f: Follow) -> None:
    f.start()


def _waiting_to_start(f: Follow) -> None:
    f.fake.fail_next(1, 503)
    f.start()
    f.let_through()


def _connecting(f: Follow) -> None:
    f.start()
    f.let_through(2)


def _streaming(f: Follow) -> None:
    _connecting(f)
    f.let_through()


def _waiting(f: Follow) -> None:
    f.fake.fail_next(1, 500, only=to_changes)
    _streaming(f)


STOPS = {
    "starting": (_starting, State.STARTING),
    "waiting to start": (_waiting_to_start, State.WAITING),
    "connecting": (_connecting, State.CONNECTING),
    "streaming": (_streaming, State.STREAMING),
    "waiting to reconnect": (_waiting, State.WAITING),
}


@pytest.mark.parametrize("where", list(STOPS))
def test_stop_in_every_state_fires_and_leaves_nothing_pending(where):
    """stopService() fires at once from every state, when_stopped() with None, and no timer, request or feed is left behind."""
    drive, expected = STOPS[where]
    f = Follow(checkpoint=lambda db: LocalDocCheckpoint(db, "follower"))
    f.fake.save("db", {"_id": "a"})
    drive(f)
    assert f.service.state is expected
    assert f.stop() == [None]
    assert f.ended == [None] and f.service.state is State.STOPPED and not f.service.running
    assert f.clock.getDelayedCalls() == []
    assert f.fake.open_feeds == 0
    assert [r for r in f.gate.held if r not in f.gate.gone] == [], "a request the gate holds was not cancelled"
    asked = len(f.gate.held) + len(f.fake.requests)
    f.advance(120)
    assert len(f.gate.held) + len(f.fake.requests) == asked, "a request after the stop"


def test_stop_waits_for_a_running_handler_call_then_saves():
    """Stopping while a handler call runs is 'stopping' until the call is done, then the checkpoint passes that change."""
    running: list[Deferred[None]] = []
    f = Follow(lambda row: running.append(Deferred()) or running[-1], checkpoint=lambda db: LocalDocCheckpoint(db, "follower"))
    f.fake.save("db", {"_id": "a"})
    _streaming(f)
    assert len(running) == 1
    done = f.stop()
    assert done == [] and f.service.state is State.STOPPING
    with pytest.raises(RuntimeError, match="still stopping"):
        f.service.startService()
    running[0].callback(None)
    assert done == [None] and f.service.state is State.STOPPED
    assert f.service.resume_seq == f.fake.update_seq("db")
    assert f.clock.getDelayedCalls() == []


@pytest.mark.parametrize("catch_up", ["continuous", "normal"])
def test_a_handler_failure_fails_the_service_and_a_restart_retries_that_change(catch_up: str):
    """A handler that raises ends in 'failed', when_stopped() fails with its error, a later stopService() fires at once, and a restart hands the same change over again; the same when the change came in a page of the catch-up, whose end follows the failure."""
    calls: list[str] = []

    def handler(row: dict[str, Any]) -> None:
        calls.append(row["id"])
        raise ValueError(row["id"])

    f = Follow(handler, checkpoint=lambda db: LocalDocCheckpoint(db, "follower"), catch_up=catch_up)
    f.fake.save("db", {"_id": "a"})
    _streaming(f)
    assert f.service.state is State.FAILED and not f.service.running
    assert len(f.ended) == 1 and f.ended[0].check(ValueError)
    failures: list[Any] = []
    f.service.when_stopped().addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(ValueError)
    assert f.stop() == [None] and f.service.state is State.FAILED
    assert f.clock.getDelayedCalls() == []
    f.service.startService()
    f.http.flush()
    assert calls == ["a", "a"] and f.service.state is State.FAILED


class FeedRequest:
    """A feed request in flight, for the machine alone: stop() records that it was ended."""

    def __init__(self) -> None:
        self.done: Deferred[Any] = Deferred()
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


class Cancellable:
    def cancel(self) -> None:
        pass


@pytest.mark.parametrize("outcome", ["ended", "lost"])
def test_the_outcome_of_a_request_told_after_a_crash_is_stale_while_failing_and_once_failed(outcome: str):
    """A request's clean end or failure that reaches the machine after a crash (both from one call chain) changes nothing: the run fails once, with the crash's error."""
    request = FeedRequest()
    finishing: Deferred[None] = Deferred()
    endings: list[Any] = []
    core = Core(
        start_up=lambda c, startup: Cancellable(), connect=lambda c: request, halt=lambda: None,
        finish=lambda: finishing, ended=endings.append, retrying=lambda: None, clock=Clock(),
    )
    lifecycle = Lifecycle(core)
    machine = lifecycle.machine
    machine.start()
    machine.started()
    machine.opened(request)
    machine.crash(Failure(ValueError("handler")))
    tell = (lambda: machine.ended()) if outcome == "ended" else (lambda: machine.lost(1.0))
    assert request.stopped and lifecycle.state is State.STOPPING
    tell()
    assert lifecycle.state is State.STOPPING and endings == []
    finishing.callback(None)
    tell()
    assert lifecycle.state is State.FAILED and core.clock.getDelayedCalls() == []
    assert len(endings) == 1 and endings[0].check(ValueError)


# -- the longpoll follower ------------------------------------------------------------


def longpoll(fake: FakeCouchDB, clock: Clock, handled: list[str], **options: Any) -> LongpollFollower:
    options.setdefault("give_up_after", None)
    options.setdefault("limit", None)
    return LongpollFollower(
        fake.server()["db"], lambda change: handled.append(change["id"]), since=0,
        checkpoint=MemoryCheckpoint(), heartbeat=1000, clock=clock, **options,
    )


def test_longpoll_follower_waits_as_long_as_retry_after_says_then_goes_on():
    """A 503 with Retry-After: 7 keeps the longpoll follower waiting exactly 7 s; then it asks again and hands over the change."""
    clock = Clock()
    fake = FakeCouchDB(clock=clock)
    fake.create_db("db")
    fake.save("db", {"_id": "a"})
    fake.fail_next(1, 503, retry_after=7, only=to_changes)
    handled: list[str] = []
    follower = longpoll(fake, clock, handled)
    follower.start()
    assert follower.state is State.WAITING and handled == []
    asked = len(fake.requests)
    clock.advance(6.99)
    assert follower.state is State.WAITING and len(fake.requests) == asked
    clock.advance(0.01)
    assert handled == ["a"] and follower.stats.reconnects == 1
    assert follower.state is State.STREAMING and follower.resume_seq == fake.update_seq("db")
    stopped: list[Any] = []
    follower.stop().addBoth(stopped.append)
    assert stopped == [None] and follower.state is State.STOPPED
    assert fake.open_feeds == 0 and clock.getDelayedCalls() == []


def test_longpoll_follower_stops_itself_at_the_limit():
    """With a limit the follower asks for no more than is left, and ends 'stopped' once it has handed them over."""
    clock = Clock()
    fake = FakeCouchDB(clock=clock)
    fake.create_db("db")
    fake.save_docs("db", [{"_id": f"d{n}"} for n in range(5)])
    handled: list[str] = []
    follower = longpoll(fake, clock, handled, limit=3)
    ended: list[Any] = []
    follower.start()
    follower.when_stopped().addBoth(ended.append)
    assert handled == ["d0", "d1", "d2"] and ended == [None] and follower.state is State.STOPPED
    assert clock.getDelayedCalls() == []


def test_a_handler_that_stops_the_service_is_the_last_one_called():
    """A handler that calls stopService() is the last call, even when the rows come while the service is opening the feed, and the checkpoint passes it."""
    clock = Clock()
    fake = FakeCouchDB(clock=clock)
    fake.create_db("db")
    seqs = []
    for n in range(5):
        fake.save("db", {"_id": f"d{n}"})
        seqs.append(fake.update_seq("db"))
    handled: list[str] = []
    store = MemoryCheckpoint()

    def handler(row: dict[str, Any]) -> None:
        handled.append(row["id"])
        if len(handled) == 2:
            service.stopService()

    service = ChangesService(fake.server()["db"], handler, checkpoint=store, heartbeat=1000, clock=clock)
    service.startService()
    assert handled == ["d0", "d1"] and service.state is State.STOPPED
    assert store.saves == [seqs[1]] and service.resume_seq == seqs[1]
