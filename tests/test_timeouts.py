"""Time limits on every request: connecting, the response head (a feed's allowing for its heartbeat), and a body read to its end."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from txchanges import ConnectionFailed, Consumer, Server, TimedOut, Timeouts
from txchanges.feed._watchdog import idle_limit
from txchanges.http._timeouts import feed_silence

from ._service_helpers import sleep, wait_for
from .rawserver import RawServer, serving

NORMAL_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


#: A normal feed whose body starts and never ends.
ENDLESS_NORMAL = NORMAL_HEAD + chunk(b'{"results":[\n{"seq":"1-a","id":"d1","changes":[{"rev":"1-x"}]}')


def failure_of(d: "defer.Deferred[Any]") -> BaseException:
    """The exception *d* failed with (it must have)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), results
    return results[0].value


@pytest.mark.parametrize("value", [0, -1, "5", True, float("nan")])
def test_a_limit_must_be_a_positive_number_or_none(value):
    """Zero, a negative number, a string, a bool or NaN is a ValueError naming the limit."""
    with pytest.raises(ValueError, match="Timeouts.body must be a number of seconds"):
        Timeouts(body=value)
    assert Timeouts(connect=None, headers=None, body=None).body is None


@pytest.mark.parametrize("fast_feeds", [True, False])
@pytest.mark.parametrize("call", ["request", "feed"])
def test_a_connection_not_made_in_time_is_timed_out(call, fast_feeds):
    """A connect that never completes fails with TimedOut("connect") at the connect limit, for requests and feeds both."""
    reactor = MemoryReactorClock()
    server = Server("http://127.0.0.1:5984/", reactor=reactor, timeouts=Timeouts(connect=7), fast_feeds=fast_feeds)
    d = server.info() if call == "request" else server.open_feed("GET", "db/_changes", [("feed", "continuous")])
    assert reactor.tcpClients and reactor.tcpClients[-1][3] is None, "the reactor's own connect timer is off"
    reactor.advance(6.9)
    assert not d.called
    reactor.advance(0.2)
    error = failure_of(d)
    assert isinstance(error, TimedOut) and isinstance(error, ConnectionFailed)
    assert (error.what, error.seconds) == ("connect", 7)
    assert str(error) == "could not connect to 127.0.0.1:5984 within 7s"


@pytest_twisted.ensureDeferred
async def test_a_server_that_accepts_and_never_answers_times_out_at_the_head() -> None:
    """A request whose head never comes fails with TimedOut("headers") at the limit, and its connection is dropped."""
    raw = RawServer(b"", close=False)
    clock = Clock()
    async with serving(raw) as url:
        server = Server(url, clock=clock, timeouts=Timeouts(headers=10))
        try:
            d = server.info()
            await wait_for(lambda: bool(raw.requests), 5, "the request to arrive")
            clock.advance(9.9)
            assert not d.called
            clock.advance(0.2)
            error = failure_of(d)
            assert isinstance(error, TimedOut) and (error.what, error.seconds) == ("headers", 10)
            assert str(error).startswith("no response head from 127.0.0.1:")
            await wait_for(lambda: raw.closed == 1, 5, "the connection to be dropped")
        finally:
            await server.close()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("fast_feeds", [True, False])
@pytest.mark.parametrize("query, allowed", [
    ([("feed", "continuous"), ("heartbeat", "30000")], 40.0),
    ([("feed", "longpoll"), ("timeout", "5000")], 15.0),
    ([("feed", "continuous")], 70.0),
])
async def test_a_feed_head_may_wait_for_the_heartbeat(fast_feeds: bool, query: list[tuple[str, str]], allowed: float) -> None:
    """CouchDB sends a feed's head with its first byte: the head limit of a feed adds its heartbeat (or timeout, or 60 s)."""
    raw = RawServer(b"", close=False)
    clock = Clock()
    async with serving(raw) as url:
        server = Server(url, clock=clock, timeouts=Timeouts(headers=10), fast_feeds=fast_feeds)
        try:
            d = server.open_feed("GET", "db/_changes", query)
            await wait_for(lambda: bool(raw.requests), 5, "the request to arrive")
            clock.advance(allowed - 0.1)
            assert not d.called
            clock.advance(0.2)
            error = failure_of(d)
            assert isinstance(error, TimedOut) and (error.what, error.seconds) == ("headers", allowed)
        finally:
            await server.close()


@pytest.mark.parametrize("heartbeat, timeout", [(1000, None), (30000, None), (60000, None), (True, None),
                                                (False, 60000), (False, 1000), (False, None)])
def test_the_default_head_limit_of_a_feed_outlasts_its_watchdog(heartbeat, timeout):
    """With the default limits a healthy feed is ended by nothing but its own watchdog's (longer) patience."""
    query = [("feed", "continuous")]
    if heartbeat is not False:
        query.append(("heartbeat", "true" if heartbeat is True else str(heartbeat)))
    if timeout is not None:
        query.append(("timeout", str(timeout)))
    assert Timeouts().headers + feed_silence(query) > idle_limit(heartbeat or None, timeout)


class Recorder(Protocol):
    """A body protocol that records what arrives and how the body ended."""

    def __init__(self) -> None:
        self.data = b""
        self.ended: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended.append(reason)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("fast_feeds", [True, False])
@pytest.mark.parametrize("feed, bounded", [("normal", True), ("continuous", False), ("longpoll", False)])
async def test_only_a_normal_feed_body_has_a_time_limit(fast_feeds: bool, feed: str, bounded: bool) -> None:
    """A normal feed's body that never ends is ended with TimedOut("body"); a continuous or longpoll one is left to the watchdog."""
    raw = RawServer(ENDLESS_NORMAL, close=False)
    clock = Clock()
    async with serving(raw) as url:
        server = Server(url, clock=clock, timeouts=Timeouts(body=5), fast_feeds=fast_feeds)
        try:
            response = await server.open_feed("GET", "db/_changes", [("feed", feed)])
            body = Recorder()
            response.deliverBody(body)
            await wait_for(lambda: b'"d1"' in body.data, 5, "the first row")
            clock.advance(4.9)
            assert body.ended == []
            clock.advance(100)
            if bounded:
                assert len(body.ended) == 1 and body.ended[0].check(TimedOut)
                assert (body.ended[0].value.what, body.ended[0].value.seconds) == ("body", 5)
                await wait_for(lambda: raw.closed == 1, 5, "the connection to be dropped")
            else:
                assert body.ended == [] and raw.closed == 0
        finally:
            await server.close()


@pytest_twisted.ensureDeferred
async def test_time_a_reader_holds_the_body_paused_does_not_count() -> None:
    """fetch_rows with a slow callback: the body limit counts reading time only, and then ends the endless body."""
    raw = RawServer(ENDLESS_NORMAL, close=False)
    clock = Clock()
    async with serving(raw) as url:
        server = Server(url, clock=clock, timeouts=Timeouts(body=5))
        try:
            slow: defer.Deferred[None] = defer.Deferred()
            rows: list[str] = []

            def on_row(row: dict[str, Any]) -> "defer.Deferred[None]":
                rows.append(row["id"])
                return slow

            d = Consumer(server["db"], clock=clock).fetch_rows(on_row, since=0)
            await wait_for(lambda: rows == ["d1"], 5, "the first row")
            clock.advance(1000)
            assert not d.called, "paused by the callback: no time counts"
            slow.callback(None)
            clock.advance(4.9)
            assert not d.called
            clock.advance(0.2)
            error = failure_of(d)
            assert isinstance(error, TimedOut) and error.what == "body"
        finally:
            await server.close()


@pytest_twisted.ensureDeferred
async def test_fetch_of_a_body_that_never_ends_times_out() -> None:
    """Consumer.fetch (a body read whole through treq) fails with TimedOut("body") rather than waiting forever."""
    raw = RawServer(ENDLESS_NORMAL, close=False)
    clock = Clock()
    async with serving(raw) as url:
        server = Server(url, clock=clock, timeouts=Timeouts(headers=1000, body=5))
        try:
            d = Consumer(server["db"], clock=clock).fetch(since=0)
            await wait_for(lambda: bool(raw.requests), 5, "the request to arrive")
            # The head arrives a few reactor turns after the request, unseen
            # from here: the fake clock runs one second per turn until the
            # fetch ends (the head's limit, 1000 s, is never reached).
            while not d.called and clock.seconds() < 100:
                clock.advance(1)
                await sleep(0)
            error = failure_of(d)
            assert isinstance(error, TimedOut) and error.what == "body"
        finally:
            await server.close()


def test_no_limit_at_all():
    """Timeouts(None, None, None): nothing times out however long the clock runs."""
    reactor = MemoryReactorClock()
    server = Server("http://127.0.0.1:5984/", reactor=reactor, timeouts=Timeouts(None, None, None))
    d = server.info()
    reactor.advance(10**6)
    assert not d.called
