"""How SIGINT and SIGTERM stop a follower: the echo rule, and run_until_signal on a fake CouchDB."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txchanges import ChangesService, FileCheckpoint, NotFound, Server, run_until_signal
from txchanges.service._signals import AGAIN, ECHO, FIRST, StopSignals
from txchanges.testing import FakeCouchDB

from ._service_helpers import lines_then_signal


def test_a_signal_within_a_second_of_the_first_is_its_echo_and_a_later_one_a_new_request():
    """The first signal asks to stop, one less than a second after it is an echo, one a second after it or later is a second request."""
    clock = Clock()
    signals = StopSignals(clock)
    clock.advance(100)
    assert signals.receive() == FIRST
    clock.advance(0.9)
    assert signals.receive() == ECHO
    clock.advance(0.1)
    assert signals.receive() == AGAIN
    clock.advance(60)
    assert signals.receive() == AGAIN


class FakeReactor(Clock):
    """A Clock with the reactor's callWhenRunning and callFromThread, which run what they are given later."""

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self._waiting: list[Callable[[], Any]] = []

    def callWhenRunning(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        if self.running:
            f(*args, **kw)
        else:
            self._waiting.append(lambda: f(*args, **kw))

    def run(self) -> None:
        self.running = True
        for f in self._waiting:
            f()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.callLater(0, f, *args, **kw)


@pytest.fixture
def received() -> Iterator[list[int]]:
    """Signals that reached the handlers in place before the test (recorded, so that none ends pytest)."""
    signals: list[int] = []
    originals = {s: signal.signal(s, lambda signum, frame: signals.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for s, handler in originals.items():
            signal.signal(s, handler)


@pytest.fixture
def reactor() -> FakeReactor:
    return FakeReactor()


@pytest.fixture
def fake(reactor: FakeReactor) -> FakeCouchDB:
    fake = FakeCouchDB(clock=reactor)
    fake.create_db("orders")
    return fake


def outcome(d: Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    d.addBoth(results.append)
    return results


def test_the_first_signal_stops_the_service_saves_the_checkpoint_and_fires_with_that_signal(reactor, fake, received, tmp_path):
    """run_until_signal starts the service; SIGTERM stops it with its checkpoint saved, fires with SIGTERM, and puts the previous handlers back."""
    seen: list[str] = []
    checkpoint = FileCheckpoint(str(tmp_path / "ckpt"))
    service = ChangesService(Server(fake.url, http=fake.client())["orders"], lambda c: seen.append(c["id"]),
                             checkpoint=checkpoint, clock=reactor)
    reactor.run()
    done = outcome(run_until_signal(service, reactor))
    fake.save("orders", {"_id": "o1"})
    assert seen == ["o1"]
    signal.raise_signal(signal.SIGTERM)
    assert done == []  # the service is stopped from the reactor, not from the signal handler
    reactor.advance(0)
    assert done == [signal.SIGTERM]
    assert outcome(checkpoint.load()) == [fake.update_seq("orders")]
    signal.raise_signal(signal.SIGINT)
    assert received == [signal.SIGINT]


def test_an_echo_is_ignored_and_a_later_signal_goes_to_the_previous_handler(reactor, fake, received):
    """While the service stops, a signal within a second of the first does nothing; one after that goes to the handler in place before."""
    running: list[Deferred[None]] = []

    def slow(change: dict[str, Any]) -> Deferred[None]:
        running.append(Deferred())
        return running[-1]

    service = ChangesService(Server(fake.url, http=fake.client())["orders"], slow, clock=reactor)
    reactor.run()
    done = outcome(run_until_signal(service, reactor))
    fake.save("orders", {"_id": "o1"})
    signal.raise_signal(signal.SIGINT)
    reactor.advance(0.5)
    signal.raise_signal(signal.SIGTERM)
    assert received == [] and service.state == "stopping"
    reactor.advance(0.5)
    signal.raise_signal(signal.SIGTERM)
    assert received == [signal.SIGTERM]
    running[0].callback(None)
    assert done == [signal.SIGINT]


def test_a_service_stopped_otherwise_fires_with_none(reactor, fake, received):
    """When something else stops the service, run_until_signal fires with None and puts the previous handlers back."""
    service = ChangesService(Server(fake.url, http=fake.client())["orders"], lambda c: None, clock=reactor)
    reactor.run()
    done = outcome(run_until_signal(service, reactor))
    service.stopService()
    assert done == [None]
    signal.raise_signal(signal.SIGTERM)
    assert received == [signal.SIGTERM]


def test_a_service_that_fails_before_the_reactor_runs_fails_it_and_leaves_the_handlers_alone(reactor, fake, received):
    """A terminal error fails run_until_signal's Deferred with it; had it come before the reactor ran, no handler is installed afterwards."""
    service = ChangesService(Server(fake.url, http=fake.client())["missing"], lambda c: None, clock=reactor)
    done = outcome(run_until_signal(service, reactor))
    reactor.run()
    [failure] = done
    assert failure.check(NotFound)
    signal.raise_signal(signal.SIGINT)
    assert received == [signal.SIGINT]


SCRIPT = Path(__file__).resolve().parent / "follow_until_signal.py"


def test_a_script_runs_its_own_code_after_sigterm_with_the_checkpoint_saved(couch_server, db_url, db_name, tmp_path):
    """A script in task.react that awaits run_until_signal goes on after SIGTERM: it prints its line, with the checkpoint saved past every change."""
    status, _ = couch_server.request("PUT", f"{db_name}/a", {})
    assert status == 201
    path = tmp_path / "ckpt"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), couch_server.admin_url, db_name, str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    first, out, err = lines_then_signal(process, 1, signal.SIGTERM, 30)
    assert first == ["a\n"]
    assert process.returncode == 0, err
    seq = json.loads(path.read_text())["seq"]
    assert out == f"stopped by signal {signal.SIGTERM.value} at {seq}\n"
    status, body = couch_server.request("GET", f"{db_name}/_changes?since={urllib.parse.quote(seq, safe='')}")
    assert status == 200 and body["results"] == []
