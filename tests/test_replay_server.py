"""
Tests for the recordings loader and the replay server, and the protocol
end to end through treq against recorded CouchDB bytes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from txchanges.feed._protocol import ChangesProtocol, Stopped
from txchanges.feed._rows import ChangeRow, LastSeq
from txchanges.errors import UncleanEnd

from .fixtures_util import CONTINUOUS, Recording, load, names
from .replay import AllAtOnce, AtRecordedTimes, InSplits, Pacing, ReplayServer, RunningReplay

pytest_plugins = ["tests.conftest_replay"]

#: Nothing here should take long; a hung exchange fails instead of hanging.
TIMEOUT = 5.0


def within(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


# -- the recordings ----------------------------------------------------------


@pytest.mark.parametrize("name", names())
def test_recording_parses_consistently(name: str) -> None:
    """Each .http file splits into head and frames that rebuild it, matching its .json body, chunks and end."""
    recording = load(name)
    response = recording.meta["response"]
    assert recording.head + b"".join(recording.frames) == recording.raw
    assert recording.status == response["status"]
    assert recording.body == response["body"].encode("utf-8")
    assert recording.complete is response["complete"]
    if response["chunks"]:
        assert recording.chunks == [c["data"].encode("utf-8") for c in response["chunks"] if c["size"]]
        assert len(recording.frame_times_ms) == len(recording.frames)


# -- a raw client, to see the exact bytes ------------------------------------


class RawClient(Protocol):
    """
    Send one request, collect every byte of the answer.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self._waiting: tuple[int, Deferred[None]] | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._waiting and len(self.received) >= self._waiting[0]:
            self._waiting[1].callback(None)
            self._waiting = None

    def when_received(self, count: int) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if len(self.received) >= count:
            waiter.callback(None)
        else:
            self._waiting = (count, waiter)
        return waiter

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


async def raw_exchange(running: RunningReplay, request: bytes) -> RawClient:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", running.port)
    return await connectProtocol(endpoint, RawClient(request))


GET_CLOSE = b"GET /fixture-db/_changes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize(
    "pacing",
    [AllAtOnce(), AtRecordedTimes(speed=50), InSplits([1, 10, 300, 301, 1000], interval=0.001)],
    ids=["all-at-once", "recorded-times", "splits"],
)
@pytest.mark.parametrize("name", ["continuous-since-0-timeout", "error-missing-db-404"])
@pytest_twisted.ensureDeferred
async def test_serves_the_recorded_bytes_exactly(replay: Any, name: str, pacing: Pacing) -> None:
    """Whatever the pacing, the client receives the recording's bytes exactly, framing included."""
    running = await replay(name, pacing=pacing)
    client = await raw_exchange(running, GET_CLOSE)
    await within(client.closed)
    assert client.received == load(name).raw


@pytest_twisted.ensureDeferred
async def test_never_ending_feed_is_held_open_until_the_client_closes(replay: Any) -> None:
    """After the last byte of a feed recorded as never-ending the connection stays open until the client closes it."""
    recording = load("continuous-heartbeat-overrides-timeout")
    running = await replay(recording.name)
    client = await raw_exchange(running, GET_CLOSE)
    await within(client.when_received(len(recording.raw)))
    await deferLater(reactor, 0.1, lambda: None)
    assert not client.closed.called
    assert running.open_connections == 1
    client.transport.loseConnection()
    await within(running.when_idle())
    assert client.received == recording.raw


@pytest_twisted.ensureDeferred
async def test_keep_alive_answers_each_request_in_turn(replay: Any) -> None:
    """Two requests on one kept-alive connection get one answer each, from the routed recordings in turn."""
    first, second = load("error-missing-db-404"), load("error-no-credentials-401")
    running = await replay({"/db/_changes": [first.name, second.name]})
    request = b"GET /db/_changes HTTP/1.1\r\nHost: x\r\n\r\n"
    client = await raw_exchange(running, request + request)
    await within(client.when_received(len(first.raw) + len(second.raw)))
    assert client.received == first.raw + second.raw
    assert [r.recording for r in running.requests] == [first.name, second.name]
    client.transport.loseConnection()


# -- routing and recorded requests, through treq -----------------------------


@pytest_twisted.ensureDeferred
async def test_records_what_the_client_sent(replay: Any) -> None:
    """Each request's method, target, headers and body are recorded for the test to assert on."""
    running = await replay("filter-selector-post")
    response = await treq.post(
        running.url + "/fixture-db/_changes?filter=_selector",
        json={"selector": {"type": "vegetable"}},
        headers={"X-Test": "yes"},
        persistent=False,
    )
    await treq.content(response)
    [request] = running.requests
    assert (request.method, request.path, request.query) == ("POST", "/fixture-db/_changes", "filter=_selector")
    assert request.target == "/fixture-db/_changes?filter=_selector"
    assert request.header("x-test") == "yes"
    assert request.header("Content-Type") == "application/json; charset=UTF-8"
    assert json.loads(request.body) == {"selector": {"type": "vegetable"}}
    assert request.recording == "filter-selector-post"


@pytest_twisted.ensureDeferred
async def test_routes_by_method_target_and_path(replay: Any) -> None:
    """Routes match (method, target), target, (method, path) or path, and an unrouted request gets a loud 500."""
    running = await replay(
        {
            ("POST", "/db/_changes"): "filter-selector-post",
            "/db/_changes?feed=continuous&since=0&limit=2": "continuous-since-0-limit-2",
            "/db/_changes": "error-missing-db-404",
        }
    )
    statuses = []
    for method, target in [
        ("POST", "/db/_changes"),
        ("GET", "/db/_changes?feed=continuous&since=0&limit=2"),
        ("GET", "/db/_changes?since=5"),
        ("GET", "/elsewhere"),
    ]:
        response = await treq.request(method, running.url + target, persistent=False)
        body = await treq.content(response)
        statuses.append(response.code)
    assert statuses == [200, 200, 404, 500]
    assert json.loads(body)["error"] == "replay_no_route"
    assert [r.recording for r in running.requests] == [
        "filter-selector-post",
        "continuous-since-0-limit-2",
        "error-missing-db-404",
        None,
    ]


def test_unknown_recording_is_refused_at_once() -> None:
    """Routing to a recording that does not exist fails when serving starts, not on the first request."""
    with pytest.raises(FileNotFoundError):
        ReplayServer().serve({"/": ["no-such-recording"]})


# -- the protocol end to end -------------------------------------------------


class Watching(ChangesProtocol):
    """
    A ChangesProtocol that also says when a given number of body bytes has
    arrived, so a test knows when a never-ending feed has sent everything.
    """

    def __init__(self, expect: int, **options: Any) -> None:
        super().__init__(**options)
        self.expect = expect
        self.received = 0
        self.all_arrived: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.received += len(data)
        if self.received >= self.expect and not self.all_arrived.called:
            self.all_arrived.callback(None)


def directly(recording: Recording) -> tuple[list[dict[str, Any]], int, Any]:
    """
    Rows, heartbeats and result of feeding the recorded body straight to the
    protocol (and stopping it at the end of a never-ending feed).
    """
    rows: list[ChangeRow] = []
    protocol = ChangesProtocol(rows.append)
    outcome: list[Any] = []
    protocol.finished.addBoth(outcome.append)
    protocol.makeConnection(StringTransport())
    for chunk in recording.chunks:
        protocol.dataReceived(chunk)
    if not recording.complete:
        protocol.stop()
    return list(rows), protocol.heartbeats, outcome[0]


async def through_treq(
    running: RunningReplay, recording: Recording, **options: Any
) -> tuple[list[dict[str, Any]], int, Any]:
    """
    Rows, heartbeats and result of fetching a recording with treq and reading
    the body with the protocol (stopping it once a never-ending feed has sent
    all its bytes).
    """
    response = await within(
        treq.request(recording.method, running.url + recording.path, unbuffered=True, persistent=False)
    )
    rows: list[ChangeRow] = []
    protocol = Watching(len(recording.body), on_change=rows.append, **options)
    response.deliverBody(protocol)
    if not recording.complete:
        await within(protocol.all_arrived)
        protocol.stop()
    result = await within(protocol.finished)
    return list(rows), protocol.heartbeats, result


@pytest.mark.parametrize("name", CONTINUOUS)
@pytest_twisted.ensureDeferred
async def test_treq_gets_the_same_rows_as_direct_feeding(replay: Any, name: str) -> None:
    """Each continuous recording fetched through treq gives the same rows, heartbeats and end as feeding its bytes directly."""
    recording = load(name)
    running = await replay(name)
    got = await through_treq(running, recording)
    assert got == directly(recording)
    assert isinstance(got[2], LastSeq if recording.complete else Stopped)


@pytest.mark.parametrize(
    "name",
    ["continuous-heartbeat-live", "db-updates-continuous-live", "continuous-timeout-live-change-then-last-seq"],
)
@pytest_twisted.ensureDeferred
async def test_treq_at_recorded_times(replay: Any, name: str) -> None:
    """A recording played at its chunk times (20x faster) through treq gives the same rows, and takes that long."""
    recording = load(name)
    running = await replay(name, pacing=AtRecordedTimes(speed=20))
    started = time.monotonic()
    got = await through_treq(running, recording)
    elapsed = time.monotonic() - started
    assert got == directly(recording)
    # The last chunk cannot arrive before its scheduled time.
    assert elapsed >= 0.9 * recording.frame_times_ms[-1] / 1000 / 20


@pytest_twisted.ensureDeferred
async def test_treq_in_small_splits(replay: Any) -> None:
    """The response written in 7-byte pieces, cutting lines and chunk framing anywhere, gives the same rows."""
    recording = load("continuous-since-0-timeout")
    running = await replay(recording.name, pacing=InSplits(range(0, len(recording.raw), 7)))
    pieces: list[None] = []
    got = await through_treq(running, recording, on_activity=lambda: pieces.append(None))
    assert got == directly(recording)
    # The splits really reached the protocol as separate pieces.
    assert len(pieces) > 10


@pytest_twisted.ensureDeferred
async def test_stop_closes_the_connection(replay: Any) -> None:
    """stop() on a live feed read through treq closes the connection the server holds open."""
    recording = load("continuous-heartbeat-live")
    running = await replay(recording.name)
    rows, _, result = await through_treq(running, recording)
    assert result == Stopped(rows[-1]["seq"])
    await within(running.when_idle())


@pytest_twisted.ensureDeferred
async def test_server_closing_a_live_feed_is_an_unclean_end(replay: Any) -> None:
    """A never-ending feed whose connection the server closes fails with UncleanEnd and the last seq seen."""
    recording = load("continuous-heartbeat-live")
    running = await replay(recording.name, close_when_done=True)
    response = await within(treq.get(running.url + recording.path, unbuffered=True, persistent=False))
    rows: list[ChangeRow] = []
    protocol = ChangesProtocol(rows.append)
    response.deliverBody(protocol)
    with pytest.raises(UncleanEnd) as caught:
        await within(protocol.finished)
    assert caught.value.last_seq == rows[-1]["seq"]
    assert len(rows) == 2
    assert "response failed" in caught.value.reason
