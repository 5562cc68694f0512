"""
The behaviours every body protocol gets from their one base,
:class:`txchanges.feed._body.BodyReader`: a pause holds back the rest of a read,
a resume delivers it in order (also when called from the row's own
callable), an end of the body while rows are held is reported after them,
and a cut body fails with the seq of the last row delivered. Each is checked
on the continuous feed's protocol and the normal feed's row reader alike;
then the whole-body collector, and the HTTP reader's hand-off of lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from txchanges import NotFound, UncleanEnd
from txchanges.feed._body import BodyReader
from txchanges.feed._ends import Stopped
from txchanges.http._linereceiver import ILineReceiver
from txchanges.feed._collect import BodyCollector
from txchanges.http._http11 import open_response
from txchanges.feed._normal import RowsProtocol
from txchanges.feed._protocol import ChangesProtocol
from txchanges.feed._rows import LastSeq

from .test_http11 import HEAD, LINES, ScriptedServer, chunked, endpoint_for, feed_error, listen, request_bytes
from .test_streaming_normal import fired_with


def seq(doc_id: str) -> str:
    return f"{ord(doc_id) - 96}-{doc_id}"


def change(doc_id: str) -> dict[str, Any]:
    return {"seq": seq(doc_id), "id": doc_id, "changes": [{"rev": "1-x"}]}


@dataclass(frozen=True)
class Kind:
    """A body protocol that delivers rows, and how its body is written."""

    make: Callable[[Callable[[dict[str, Any]], object]], BodyReader]
    start: bytes
    between: bytes
    end: bytes
    clean: Any


CONTINUOUS = Kind(
    make=lambda on_row: ChangesProtocol(on_row),
    start=b"",
    between=b"",
    end=b'{"last_seq":"9-end","pending":0}\n',
    clean=LastSeq("9-end", 0, {"last_seq": "9-end", "pending": 0}),
)
NORMAL = Kind(
    make=lambda on_row: RowsProtocol(on_row),
    start=b'{"results":[\n',
    between=b",\n",
    end=b'\n],\n"last_seq":"9-end","pending":0}\n',
    clean={"last_seq": "9-end", "pending": 0},
)
KINDS = [pytest.param(CONTINUOUS, id="continuous"), pytest.param(NORMAL, id="normal")]


class Reader:
    """
    A body protocol of one kind on a fake transport, recording the ids it
    delivers; *then* runs in the callable after each row is recorded.
    """

    def __init__(self, kind: Kind, then: Optional[Callable[["Reader", str], object]] = None) -> None:
        self.kind = kind
        self.seen: list[str] = []
        self.outcome: list[Any] = []
        self._then = then
        self._first = True
        self.protocol = kind.make(self._on_row)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.finished.addBoth(self.outcome.append)

    def _on_row(self, row: dict[str, Any]) -> None:
        self.seen.append(row["id"])
        if self._then is not None:
            self._then(self, row["id"])

    def rows(self, *ids: str, end: bool = False) -> "Reader":
        """
        One read holding these rows, and then the end row (the rest of the
        body) if *end*, written as the kind's body writes them.
        """
        data = b""
        for doc_id in ids:
            data += self.kind.start if self._first else self.kind.between
            self._first = False
            data += json.dumps(change(doc_id)).encode() + (b"\n" if self.kind is CONTINUOUS else b"")
        if end:
            data += (self.kind.start if self._first else b"") + self.kind.end
        self.protocol.dataReceived(data)
        return self

    def lost(self, reason: BaseException = ResponseDone()) -> "Reader":
        """The end of the body."""
        self.protocol.connectionLost(Failure(reason))
        return self

    @property
    def result(self) -> Any:
        return fired_with(self.outcome)


def pause_at(*ids: str) -> Callable[[Reader, str], None]:
    def then(reader: Reader, doc_id: str) -> None:
        if doc_id in ids:
            reader.protocol.pauseProducing()

    return then


@pytest.mark.parametrize("kind", KINDS)
def test_pause_holds_back_the_rest_of_a_read(kind: Kind) -> None:
    """A pause from the callable delivers no further row of the same read, and pauses the transport."""
    reader = Reader(kind, pause_at("a")).rows("a", "b", "c")
    assert reader.seen == ["a"]
    assert reader.protocol.paused and reader.transport.producerState == "paused"
    assert reader.protocol.last_seq == seq("a") and not reader.outcome


@pytest.mark.parametrize("kind", KINDS)
def test_resume_delivers_the_rest_then_later_reads_in_order(kind: Kind) -> None:
    """Resuming delivers the held rest of the read, then the reads that arrived meanwhile, then reads on."""
    reader = Reader(kind, pause_at("a")).rows("a", "b", "c").rows("d", "e")
    assert reader.seen == ["a"]
    reader.protocol.resumeProducing()
    assert reader.seen == ["a", "b", "c", "d", "e"]
    assert reader.transport.producerState == "producing" and not reader.protocol.paused
    reader.rows(end=True).lost()
    assert reader.result == kind.clean and reader.protocol.last_seq == "9-end"


@pytest.mark.parametrize("kind", KINDS)
def test_resume_from_the_callable_keeps_the_order(kind: Kind) -> None:
    """A callable that pauses and resumes at once (as async for does) still gets held rows before later reads."""

    def then(reader: Reader, doc_id: str) -> None:
        reader.protocol.pauseProducing()
        if doc_id != "a":
            reader.protocol.resumeProducing()

    reader = Reader(kind, then).rows("a", "b", "c").rows("d")
    reader.protocol.resumeProducing()
    assert reader.seen == ["a", "b", "c", "d"]
    assert reader.transport.producerState == "producing"


@pytest.mark.parametrize("kind", KINDS)
def test_a_read_while_the_callable_runs_waits_for_it(kind: Kind) -> None:
    """Data the transport hands over from inside the callable comes after the rest of the read being delivered."""

    def then(reader: Reader, doc_id: str) -> None:
        if doc_id == "b":
            reader.rows("d")

    reader = Reader(kind, then).rows("a", "b", "c")
    assert reader.seen == ["a", "b", "c", "d"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_end_of_the_body_while_the_callable_runs_waits_for_it(kind: Kind) -> None:
    """A body that ends from inside the callable is reported only after the rest of the read is delivered."""

    def then(reader: Reader, doc_id: str) -> None:
        if doc_id == "b":
            reader.lost()

    reader = Reader(kind, then).rows("a", "b", "c", end=True)
    assert reader.seen == ["a", "b", "c"] and reader.result == kind.clean


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["in-the-held-read", "in-a-later-read", "paused-before-any-read"])
def test_clean_end_while_paused_comes_after_the_held_rows(kind: Kind, where: str) -> None:
    """A body that ends cleanly while rows are held fires finished only once they are delivered."""
    if where == "paused-before-any-read":
        reader = Reader(kind)
        reader.protocol.pauseProducing()
        reader.rows("a").rows("b", end=True)
        held = []
    else:
        reader = Reader(kind, pause_at("a"))
        if where == "in-a-later-read":
            reader.rows("a", "b").rows(end=True)
        else:
            reader.rows("a", "b", end=True)
        held = ["a"]
    reader.lost()
    assert reader.seen == held and not reader.outcome
    reader.protocol.resumeProducing()
    assert reader.seen == ["a", "b"]
    assert reader.result == kind.clean and reader.protocol.last_seq == "9-end"


@pytest.mark.parametrize("kind", KINDS)
def test_cut_body_while_paused_fails_after_the_held_rows(kind: Kind) -> None:
    """A body cut while rows are held fails, with the seq of the last of them, only once they are delivered."""
    reader = Reader(kind, pause_at("a")).rows("a", "b")
    reader.lost(ResponseFailed([Failure(ConnectionLost("gone"))]))
    assert reader.seen == ["a"] and not reader.outcome
    reader.protocol.resumeProducing()
    assert reader.seen == ["a", "b"]
    assert isinstance(reader.result, UncleanEnd) and reader.result.last_seq == seq("b")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reason", [ResponseDone(), ConnectionLost("reset")], ids=["done", "lost"])
def test_cut_body_fails_with_the_last_seq(kind: Kind, reason: BaseException) -> None:
    """A body that ends, however, before its end row fails with UncleanEnd carrying the last delivered seq."""
    reader = Reader(kind).rows("a", "b").lost(reason)
    assert reader.seen == ["a", "b"]
    assert isinstance(reader.result, UncleanEnd) and reader.result.last_seq == seq("b")


@pytest.mark.parametrize("kind", KINDS)
def test_stop_while_paused_drops_the_held_rows(kind: Kind) -> None:
    """stop() during a pause fires Stopped with the last delivered seq at once; nothing held is delivered."""
    reader = Reader(kind, pause_at("a")).rows("a", "b").rows("c")
    reader.protocol.stop()
    assert reader.result == Stopped(seq("a")) and reader.transport.producerState == "stopped"
    reader.protocol.resumeProducing()
    reader.rows("d", end=True).lost()
    assert reader.seen == ["a"] and len(reader.outcome) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_stop_from_the_callable_counts_its_row(kind: Kind) -> None:
    """stop() from the callable fires Stopped once it returns, with that row's seq; no later row follows."""

    def then(reader: Reader, doc_id: str) -> None:
        if doc_id == "b":
            reader.protocol.stop()
            assert not reader.outcome, "finished waits for the callable to return"

    reader = Reader(kind, then).rows("a", "b", "c")
    assert reader.seen == ["a", "b"] and reader.result == Stopped(seq("b"))


# -- the whole-body collector ---------------------------------------------------------


def collect(*pieces: bytes, end: BaseException, **options: Any) -> tuple[BodyCollector, StringTransport, list[Any]]:
    collector = BodyCollector(**options)
    transport = StringTransport()
    outcome: list[Any] = []
    collector.finished.addBoth(outcome.append)
    collector.makeConnection(transport)
    for piece in pieces:
        collector.dataReceived(piece)
    collector.connectionLost(Failure(end))
    return collector, transport, outcome


def test_collector_fires_with_the_whole_body() -> None:
    """A complete body, reads held by a pause included, is collected whole once resumed; the transport is not stopped."""
    collector = BodyCollector()
    outcome: list[Any] = []
    collector.finished.addBoth(outcome.append)
    transport = StringTransport()
    collector.makeConnection(transport)
    collector.dataReceived(b'{"results":')
    collector.pauseProducing()
    collector.dataReceived(b"[]}")
    collector.connectionLost(Failure(ResponseDone()))
    assert outcome == []
    collector.resumeProducing()
    assert outcome == [b'{"results":[]}'] and transport.producerState != "stopped"


@pytest.mark.parametrize("until_close", [False, True])
def test_collector_and_a_body_ended_by_the_close(until_close: bool) -> None:
    """A body without framing, ended by the close, is whole only for a collector told so (error responses)."""
    _, _, outcome = collect(b"abc", b"def", end=PotentialDataLoss(), until_close=until_close)
    if until_close:
        assert outcome == [b"abcdef"]
    else:
        assert isinstance(outcome[0].value, UncleanEnd) and "after 6 bytes" in str(outcome[0].value)


def test_collector_cut_short() -> None:
    """A body cut short fails with UncleanEnd saying how much arrived and why."""
    _, _, outcome = collect(b"abcd", end=ResponseFailed([Failure(ConnectionLost("gone"))]))
    error = outcome[0].value
    assert isinstance(error, UncleanEnd) and "after 4 bytes" in error.reason and "ConnectionLost" in error.reason


def test_collector_stopped_before_its_body() -> None:
    """stop() before the body arrives fires Stopped(None), and stops the transport once there is one."""
    collector = BodyCollector()
    collector.stop()
    outcome: list[Any] = []
    collector.finished.addBoth(outcome.append)
    transport = StringTransport()
    collector.makeConnection(transport)
    collector.dataReceived(b"ignored")
    assert outcome == [Stopped(None)] and transport.producerState == "stopped"


# -- the HTTP reader's hand-off -------------------------------------------------------


class Recorder(Protocol):
    """Records what the HTTP reader hands over; has lines_received, but says nothing of it."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lines: list[list[bytes]] = []
        self.ended: list[Failure] = []
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def lines_received(self, lines: list[bytes]) -> None:
        self.lines.append(list(lines))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended.append(reason)
        self.done.callback(None)


@implementer(ILineReceiver)
class LineRecorder(Recorder):
    """The same, declaring ILineReceiver."""


async def hand_off(body: Recorder) -> None:
    port, listening = listen(ScriptedServer(HEAD + chunked(*LINES)))
    try:
        response = await open_response(endpoint_for(port), request_bytes(port))
        response.deliverBody(body)
        await body.done
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_line_receiver_gets_the_lines_of_one_line_chunks() -> None:
    """A body protocol that provides ILineReceiver gets one-line chunks as lines, not bytes."""
    body = LineRecorder()
    await hand_off(body)
    assert sum(body.lines, []) == [line[:-1] for line in LINES] and body.data == []
    assert body.ended[0].check(ResponseDone)


@pytest_twisted.ensureDeferred
async def test_an_undeclared_lines_received_is_not_called() -> None:
    """A body protocol that has a lines_received method but does not provide ILineReceiver gets bytes only."""
    body = Recorder()
    await hand_off(body)
    assert body.lines == [] and b"".join(body.data) == b"".join(LINES)
    assert body.ended[0].check(ResponseDone)


@pytest_twisted.ensureDeferred
async def test_an_error_body_ended_by_the_close_is_read_whole() -> None:
    """An error response without framing, ended by the server's close, still gives its typed error and reason."""
    body = b'{"error":"not_found","reason":"Database does not exist."}'
    error = await feed_error(ScriptedServer(b"HTTP/1.0 404 Object Not Found\r\nContent-Type: application/json\r\n\r\n" + body))
    assert isinstance(error, NotFound) and error.reason == "Database does not exist."


@pytest_twisted.ensureDeferred
async def test_an_error_body_cut_short_still_gives_the_typed_error() -> None:
    """An error response whose body is cut short gives the typed error for its status, with its phrase."""
    error = await feed_error(ScriptedServer(HEAD.replace(b"200 OK", b"404 Object Not Found") + b"40\r\n{\"error\":"))
    assert isinstance(error, NotFound) and error.reason == "Object Not Found"

