"""
Tests for :class:`txchanges.feed._protocol.ChangesProtocol`, fed body bytes directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from txchanges.feed._protocol import DEFAULT_MAX_LINE_LENGTH, ChangesProtocol, Stopped
from txchanges.feed._rows import ChangeRow, LastSeq
from txchanges.errors import ErrorRow, LineTooLong, MalformedRow, UncleanEnd

from .fixtures_util import CONTINUOUS, Recording, load


def row(seq: Any, doc_id: str) -> bytes:
    return json.dumps({"seq": seq, "id": doc_id, "changes": [{"rev": "1-a"}]}).encode() + b"\n"


END = b'{"last_seq":"9-end","pending":0}\n'


@dataclass
class Run:
    """
    What one protocol did with some input.
    """

    protocol: ChangesProtocol
    transport: StringTransport
    changes: list[ChangeRow] = field(default_factory=list)
    outcome: list[Any] = field(default_factory=list)
    activity: int = 0

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self.changes)

    @property
    def result(self) -> Any:
        """
        What ``finished`` fired with: a value, or the exception it failed with.
        """
        assert len(self.outcome) == 1, "finished has not fired"
        value = self.outcome[0]
        return value.value if isinstance(value, Failure) else value


def start(
    on_change: Callable[[ChangeRow], object] | None = None, **options: Any
) -> Run:
    """
    A connected protocol that records what it delivers.
    """
    transport = StringTransport()
    run = Run(protocol=None, transport=transport)

    def count_activity() -> None:
        run.activity += 1

    run.protocol = ChangesProtocol(
        on_change or run.changes.append, on_activity=count_activity, **options
    )
    run.protocol.finished.addBoth(run.outcome.append)
    run.protocol.makeConnection(transport)
    return run


def feed(pieces: Iterable[bytes], end: BaseException | None = ResponseDone(), **options: Any) -> Run:
    """
    Feed body pieces to a fresh protocol, then end the body with *end*.
    """
    run = start(**options)
    for piece in pieces:
        run.protocol.dataReceived(piece)
    if end is not None:
        run.protocol.connectionLost(Failure(end))
    return run


def split_at(data: bytes, points: Iterable[int]) -> list[bytes]:
    bounds = [0] + sorted(set(points)) + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def expected(recording: Recording) -> tuple[list[dict[str, Any]], int, Any]:
    """
    What a recording's body holds, worked out independently of the code under
    test: the change rows and the heartbeats before the end row, and the end
    row (``None`` for a feed still open when it was recorded).
    """
    rows: list[dict[str, Any]] = []
    heartbeats = 0
    for line in recording.body.split(b"\n")[:-1]:
        if not line:
            heartbeats += 1
            continue
        parsed = json.loads(line)
        if "last_seq" in parsed:
            return rows, heartbeats, parsed
        rows.append(parsed)
    return rows, heartbeats, None


def check_replay(run: Run, recording: Recording) -> None:
    """
    Assert that a protocol fed a recording's body saw what the body holds.
    """
    rows, heartbeats, end = expected(recording)
    assert run.rows == rows
    assert run.protocol.heartbeats == heartbeats
    known = [r["seq"] for r in rows if r["seq"] is not None]
    if end is None:
        assert isinstance(run.result, UncleanEnd)
        assert run.result.last_seq == run.protocol.last_seq == (known[-1] if known else None)
    else:
        assert run.result == LastSeq(end["last_seq"], end.get("pending"), end)
        assert run.protocol.last_seq == end["last_seq"]


@pytest.mark.parametrize("name", CONTINUOUS)
def test_recording_fed_as_recorded_chunks(name: str) -> None:
    """A continuous recording fed chunk by chunk as CouchDB sent it gives its rows, heartbeats and end."""
    recording = load(name)
    run = feed(recording.chunks)
    check_replay(run, recording)
    assert run.activity == len(recording.chunks) - (1 if recording.complete else 0)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_recording_fed_all_at_once(name: str) -> None:
    """A continuous recording's whole body in one piece gives the same rows, heartbeats and end."""
    recording = load(name)
    check_replay(feed([recording.body]), recording)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_recording_fed_byte_by_byte(name: str) -> None:
    """A continuous recording's body one byte at a time gives the same rows, heartbeats and end."""
    recording = load(name)
    body = recording.body
    check_replay(feed(body[i : i + 1] for i in range(len(body))), recording)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_recording_fed_in_random_splits(name: str) -> None:
    """A continuous recording's body cut at any points gives the same rows, heartbeats and end."""
    recording = load(name)
    body = recording.body

    # The property runs inside the parametrised test: the pytest plugin for
    # Twisted breaks @given stacked on @parametrize (it re-wraps the shared
    # inner test once per parameter).
    @settings(max_examples=40, deadline=None)
    @given(points=st.lists(st.integers(0, len(body)), max_size=60))
    def cut_anywhere(points: list[int]) -> None:
        check_replay(feed(split_at(body, points)), recording)

    cut_anywhere()


def test_db_updates_rows_are_delivered_as_changes() -> None:
    """_db_updates rows reach on_change as their dicts and advance last_seq."""
    recording = load("db-updates-continuous-live")
    run = feed(recording.chunks, end=None)
    assert all(type(c) is dict and "db_name" in c for c in run.changes)
    assert [c["db_name"] for c in run.changes][1:4] == ["fixture-live-db"] * 3
    assert run.protocol.last_seq == run.changes[-1]["seq"]


def test_heartbeats_in_the_same_chunk_as_rows_lose_no_line() -> None:
    """Heartbeats sharing a chunk with rows, before, between and after them, drop no row."""
    chunk = b"\n" + row("1-a", "a") + b"\n\n" + row("2-b", "b") + b"\n\n\n" + row("3-c", "c")
    run = feed([chunk, b"\n" + row("4-d", "d") + b"\n" + END])
    assert [r["id"] for r in run.rows] == ["a", "b", "c", "d"]
    # Every empty line is a heartbeat: 1 before a, 2 after a, 3 after b,
    # 1 starting the second chunk, 1 after d.
    assert run.protocol.heartbeats == 8
    assert run.result == LastSeq("9-end", 0, json.loads(END))


def test_heartbeat_then_a_row_cut_in_half() -> None:
    """A heartbeat followed by the start of a row in one chunk still delivers the row when it completes."""
    line = row("1-a", "a")
    run = feed([b"\n" + line[:10], line[10:] + b"\n"], end=None)
    assert run.rows == [json.loads(line)]
    assert run.protocol.heartbeats == 2


def test_crlf_lines() -> None:
    """Lines ending in CRLF give the same rows, and CR-only lines count as heartbeats."""
    run = feed([row("1-a", "a").replace(b"\n", b"\r\n") + b"\r\n" + END.replace(b"\n", b"\r\n")])
    assert run.rows == [json.loads(row("1-a", "a"))]
    assert run.protocol.heartbeats == 1
    assert isinstance(run.result, LastSeq)


def test_seq_null_never_overwrites_a_known_seq() -> None:
    """Rows with "seq": null (seq_interval) are delivered but leave last_seq at the last real seq."""
    run = feed([row("1-a", "a") + row(None, "b") + row(None, "c")], end=ConnectionLost())
    assert len(run.changes) == 3
    assert run.protocol.last_seq == "1-a"
    assert run.result.last_seq == "1-a"


def test_seq_interval_recording_cut_before_its_end() -> None:
    """Cut before its last_seq row, the seq_interval recording leaves last_seq at its last non-null seq."""
    body = load("continuous-seq-interval-live").body
    run = feed([body[: body.index(b'{"last_seq"')]])
    assert run.protocol.last_seq.startswith("16-")
    assert run.changes[-1]["seq"] is None


def test_on_activity_is_called_for_every_piece_of_data() -> None:
    """on_activity runs once per received piece, heartbeats and partial lines included."""
    run = feed([b"\n", b"\n", row("1-a", "a")[:5], row("1-a", "a")[5:]], end=None)
    assert run.activity == 4


def test_stop_in_the_middle_of_a_chunk() -> None:
    """stop() called while handling a row delivers no later row, even from the same chunk."""
    seen: list[str] = []

    def on_change(change: ChangeRow) -> None:
        seen.append(change["id"])
        if change["id"] == "b":
            run.protocol.stop()

    run = start(on_change)
    run.protocol.dataReceived(row("1-a", "a") + row("2-b", "b") + row("3-c", "c") + END)
    run.protocol.dataReceived(row("4-d", "d"))
    run.protocol.connectionLost(Failure(ResponseDone()))
    assert seen == ["a", "b"]
    # The row whose callback called stop() and returned counts as done.
    assert run.result == Stopped("2-b")
    assert run.protocol.last_seq == "2-b"
    assert run.transport.producerState == "stopped"


def test_stop_between_chunks() -> None:
    """stop() fires finished at once with Stopped and the last seq, stops the transport, and ignores later data."""
    run = start()
    run.protocol.dataReceived(row("1-a", "a") + row("2-b", "b"))
    run.protocol.stop()
    assert run.result == Stopped("2-b")
    assert run.transport.producerState == "stopped"
    run.protocol.dataReceived(row("3-c", "c") + END)
    run.protocol.connectionLost(Failure(ResponseDone()))
    run.protocol.stop()
    assert len(run.changes) == 2
    assert len(run.outcome) == 1


def test_stop_before_the_body_arrives() -> None:
    """stop() before the transport is connected fires Stopped(None) and stops the transport once it is."""
    protocol = ChangesProtocol(lambda change: None)
    protocol.stop()
    outcome: list[Any] = []
    protocol.finished.addBoth(outcome.append)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert outcome == [Stopped(None)]
    assert transport.producerState == "stopped"


def test_raising_on_change_fails_the_feed() -> None:
    """An exception from on_change fails finished with that very exception and delivers nothing after."""
    boom = RuntimeError("handler broke")
    seen: list[str] = []

    def on_change(change: ChangeRow) -> None:
        seen.append(change["id"])
        if change["id"] == "b":
            raise boom

    run = start(on_change)
    run.protocol.dataReceived(row("1-a", "a") + row("2-b", "b") + row("3-c", "c"))
    run.protocol.dataReceived(END)
    assert seen == ["a", "b"]
    assert run.result is boom
    assert run.outcome[0].getTracebackObject() is not None
    assert run.protocol.last_seq == "1-a"
    assert run.transport.producerState == "stopped"


def test_on_change_that_stops_then_raises_fails_the_feed() -> None:
    """A callback that calls stop() and then raises fails finished once, with its exception."""

    def on_change(change: ChangeRow) -> None:
        run.protocol.stop()
        raise RuntimeError("after stop")

    run = start(on_change)
    run.protocol.dataReceived(row("1-a", "a") + row("2-b", "b"))
    assert len(run.outcome) == 1
    assert isinstance(run.result, RuntimeError)
    assert run.protocol.last_seq is None


def test_raising_on_activity_fails_the_feed() -> None:
    """An exception from on_activity fails finished with it before any row of that data is delivered."""
    boom = ValueError("watchdog broke")

    def on_activity() -> None:
        raise boom

    rows: list[ChangeRow] = []
    protocol = ChangesProtocol(rows.append, on_activity=on_activity)
    outcome: list[Failure] = []
    protocol.finished.addErrback(outcome.append)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(row("1-a", "a"))
    assert rows == []
    assert outcome[0].value is boom


def test_error_row() -> None:
    """An error row delivers the rows before it, then fails with ErrorRow carrying error, reason and last_seq."""
    error = b'{"error":"case_clause","reason":"bad"}\n'
    run = feed([row("1-a", "a") + row("2-b", "b") + error + row("3-c", "c")])
    assert [r["id"] for r in run.rows] == ["a", "b"]
    assert isinstance(run.result, ErrorRow)
    assert (run.result.error, run.result.reason, run.result.last_seq) == ("case_clause", "bad", "2-b")
    assert run.transport.producerState == "stopped"


@pytest.mark.parametrize("bad", [b"not json", b"[1,2]", b"7", b'{"seq":"3-c","id":', b"\xff\xfe"])
def test_malformed_line(bad: bytes) -> None:
    """A malformed line delivers the rows before it, then fails with MalformedRow and last_seq."""
    run = feed([row("1-a", "a"), bad + b"\n" + row("3-c", "c")])
    assert [r["id"] for r in run.rows] == ["a"]
    assert isinstance(run.result, MalformedRow)
    assert run.result.last_seq == "1-a"


def test_line_too_long_in_one_piece() -> None:
    """A complete line over max_line_length fails with LineTooLong after the rows before it."""
    long_line = row("2-b", "b" * 200)
    run = feed([row("1-a", "a") + long_line + row("3-c", "c")], max_line_length=100)
    assert [r["id"] for r in run.rows] == ["a"]
    assert isinstance(run.result, LineTooLong)
    assert (run.result.limit, run.result.last_seq) == (100, "1-a")
    assert run.result.line.startswith('{"seq": "2-b"')
    assert run.transport.producerState == "stopped"


def test_line_too_long_fails_before_it_ends_and_stays_bounded() -> None:
    """An unfinished line fails as soon as it passes the bound, holding no more than the bound plus one read."""
    run = start(max_line_length=100)
    run.protocol.dataReceived(row("1-a", "a"))
    for _ in range(5):
        run.protocol.dataReceived(b"x" * 30)
        assert run.protocol._pending_length <= 100 + 30
    assert isinstance(run.result, LineTooLong)
    assert run.result.last_seq == "1-a"
    assert run.protocol._pending_length == 0
    run.protocol.dataReceived(b"\n" + row("2-b", "b"))
    assert len(run.changes) == 1


def test_line_of_exactly_the_bound_is_accepted() -> None:
    """A line exactly max_line_length bytes long (without its newline) is accepted."""
    line = row("1-a", "a")
    run = feed([line, END], max_line_length=len(line) - 1)
    assert len(run.changes) == 1
    assert isinstance(run.result, LastSeq)


@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.integers(0, 600), max_size=40))
def test_line_too_long_is_the_same_whatever_the_splits(points: list[int]) -> None:
    """Rows, then a too-long line, fed in any splits, always give the same rows and LineTooLong."""
    body = row("1-a", "a") + b"\n" + row("2-b", "b") + row("3-c", "c" * 300) + row("4-d", "d")
    run = feed(split_at(body, points), max_line_length=120)
    assert [r["id"] for r in run.rows] == ["a", "b"]
    assert isinstance(run.result, LineTooLong)
    assert run.result.last_seq == "2-b"


def test_default_bound_and_bad_bound() -> None:
    """The default bound is 64 MiB and a bound below one byte is refused at once."""
    assert ChangesProtocol(print)._max == DEFAULT_MAX_LINE_LENGTH == 64 * 1024 * 1024
    with pytest.raises(ValueError):
        ChangesProtocol(print, max_line_length=0)


@pytest.mark.parametrize(
    "reason, words",
    [
        (ResponseDone(), "ended without a last_seq row"),
        (PotentialDataLoss(), "no framing"),
        (ResponseFailed([Failure(ConnectionLost("gone"))]), "ConnectionLost"),
        (ConnectionLost("reset"), "ConnectionLost"),
    ],
)
def test_unclean_end(reason: BaseException, words: str) -> None:
    """A body that ends, however, without a last_seq row fails with UncleanEnd saying why, with last_seq."""
    run = feed([row("1-a", "a") + b"\n"], end=reason)
    assert isinstance(run.result, UncleanEnd)
    assert words in run.result.reason
    assert run.result.last_seq == "1-a"


def test_unclean_end_mid_line_reports_the_dropped_bytes() -> None:
    """A body cut in the middle of a line fails with UncleanEnd that says an unfinished line was dropped."""
    run = feed([row("1-a", "a") + row("2-b", "b")[:12]], end=ResponseFailed([Failure(ConnectionLost())]))
    assert isinstance(run.result, UncleanEnd)
    assert "12 bytes of an unfinished line dropped" in run.result.reason
    assert run.result.last_seq == "1-a"
    assert len(run.changes) == 1


def test_nothing_after_last_seq_is_delivered() -> None:
    """Rows after the last_seq row, in its chunk or later ones, are neither delivered nor counted."""
    run = feed([row("1-a", "a") + END + row("2-b", "b"), b"\n", row("3-c", "c")])
    assert [r["id"] for r in run.rows] == ["a"]
    assert run.result == LastSeq("9-end", 0, json.loads(END))
    assert run.protocol.last_seq == "9-end"
    assert run.protocol.heartbeats == 0
    assert run.activity == 1


def test_clean_end_leaves_the_transport_alone() -> None:
    """After a last_seq row the transport is not stopped, so the connection can be reused."""
    run = feed([END])
    assert run.transport.producerState == "producing"
    assert run.protocol.done


def test_pause_and_resume_pass_through() -> None:
    """pauseProducing and resumeProducing reach the transport, also when paused before it is connected."""
    run = start()
    run.protocol.pauseProducing()
    assert run.transport.producerState == "paused"
    run.protocol.resumeProducing()
    assert run.transport.producerState == "producing"

    early = ChangesProtocol(print)
    early.pauseProducing()
    transport = StringTransport()
    early.makeConnection(transport)
    assert transport.producerState == "paused"
