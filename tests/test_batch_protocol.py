"""
Batches in the feed layer: how a read's changes are cut into batches
(batches_of, parse_changes), and BatchProtocol fed body bytes directly.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from txchanges.errors import ErrorRow, MalformedRow
from txchanges.feed._batches import BatchProtocol
from txchanges.feed._protocol import Stopped
from txchanges.feed._rows import LastSeq
from txchanges.feed._runs import LIMIT, UNPARSED, batches_of, last_seq_of, parse_changes

from .test_protocol import END, row, split_at


def change(seq: Any, docid: str) -> dict[str, Any]:
    return {"seq": seq, "id": docid, "changes": [{"rev": "1-a"}]}


# -- cutting changes into batches ---------------------------------------------------------


def test_a_run_that_fits_is_one_batch_the_very_list() -> None:
    """A run of changes of distinct documents, no longer than max_batch, is handed over as it is."""
    run = [change(f"{n}-x", f"d{n}") for n in range(5)]
    batches = batches_of(run, 5)
    assert batches == [run] and batches[0] is run


def test_batches_end_before_a_second_change_of_one_document_and_at_max_batch() -> None:
    """A batch never holds two changes of one document nor more than max_batch; order is kept."""
    ids = ["a", "b", "a", "c", "d", "e", "f", "c"]
    run = [change(f"{n}-x", docid) for n, docid in enumerate(ids)]
    batches = batches_of(run, 3)
    assert [[r["id"] for r in b] for b in batches] == [["a", "b"], ["a", "c", "d"], ["e", "f", "c"]]
    assert [r for b in batches for r in b] == run


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.sampled_from("abcdef"), max_size=40), max_batch=st.integers(1, 8))
def test_any_run_is_cut_in_order_without_repeats(ids: list[str], max_batch: int) -> None:
    """However the documents repeat, the batches hold every change once, in order, within the bounds."""
    run = [change(f"{n}-x", docid) for n, docid in enumerate(ids)]
    batches = batches_of(run, max_batch)
    assert [r for b in batches for r in b] == run
    for batch in batches:
        assert 0 < len(batch) <= max_batch
        assert len({r["id"] for r in batch}) == len(batch)


def test_an_id_that_cannot_be_hashed_still_keeps_documents_apart() -> None:
    """Rows whose id is not hashable (a broken server) are cut by the id's text, not a crash."""
    run = [change("1-x", ["x"]), change("2-x", ["x"]), change("3-x", ["y"])]
    assert [len(b) for b in batches_of(run, 10)] == [1, 2]


def test_last_seq_of_skips_null_seqs() -> None:
    """The newest seq of a batch is its last row's, or the last one that is not null."""
    assert last_seq_of([change("1-a", "a"), change(None, "b")]) == "1-a"
    assert last_seq_of([change(None, "a")]) is None


def test_parse_changes_stops_at_what_is_not_a_change_and_at_the_limit() -> None:
    """parse_changes parses changes until a line that is not one (parsed or not), or the limit."""
    lines = [row(f"{n}-x", f"d{n}")[:-1] for n in range(4)]
    run, end, other, unique = parse_changes(lines + [b"", lines[0]], 0, 10)
    assert ([r["id"] for r in run], end, other, unique) == (["d0", "d1", "d2", "d3"], 4, UNPARSED, True)
    run, end, other, _ = parse_changes(lines + [END[:-1]], 1, 10)
    assert [r["id"] for r in run] == ["d1", "d2", "d3"] and end == 4 and other["last_seq"] == "9-end"
    run, end, other, _ = parse_changes(lines, 0, 3)
    assert len(run) == 3 and end == 3 and other is LIMIT
    run, end, _, unique = parse_changes(lines + lines[:1], 0, 10)
    assert len(run) == 5 and not unique


#: Lines that are not change rows, each of a kind that must end a run where
#: it stands, whether the run is parsed line by line or all at once.
ODD_LINES = [
    b"",  # a heartbeat
    b" ",
    END[:-1],  # the end row
    b'{"error":"x","reason":"y"}',
    b"null",
    b"[]",
    b'"text"',
    b"1,2",  # two values on one line
    b'{"seq":"1-x","id":"a","changes":[]},{"seq":"2-x","id":"b","changes":[]}',
    b'{"seq":"1-x","id":"a","changes":[]}],[{"seq":"2-x","id":"b","changes":[]}',
    b'{"id":"a","changes":[]}',  # no seq
    b'{"seq":"1-x","changes":[]}',  # no id
    b'{"seq":"1-x","id":"a"}',  # no changes
    b'{"seq":"1-x","id":["a"],"changes":[]}',  # an id that cannot be hashed
    b'{"seq":"1-x","id":"a","changes":[]',  # cut short
]


def reference_parse(lines: list[bytes], start: int, limit: int) -> tuple[list[Any], int, Any, bool]:
    """What parse_changes must return, worked out one line at a time with the standard library."""
    run: list[Any] = []
    for line in lines[start : start + limit]:
        try:
            obj = json.loads(line)
        except ValueError:
            return run, start + len(run), UNPARSED, len({r["id"] for r in run}) == len(run)
        if not (isinstance(obj, dict) and {"seq", "id", "changes"} <= obj.keys()) or isinstance(obj["id"], list):
            return run, start + len(run), obj, len({r["id"] for r in run}) == len(run)
        run.append(obj)
    end = start + len(run)
    return run, end, LIMIT if end < len(lines) else UNPARSED, len({r["id"] for r in run}) == len(run)


@settings(max_examples=500, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.sampled_from("abcd").map(lambda docid: row("5-x", docid)[:-1]),
            st.sampled_from(ODD_LINES),
        ),
        max_size=12,
    ),
    start=st.integers(0, 12),
    limit=st.integers(1, 12),
)
def test_parse_changes_reads_any_lines_as_one_line_at_a_time_would(lines: list[bytes], start: int, limit: int) -> None:
    """However change rows and other lines mix, parse_changes gives what a loop over single lines gives."""
    start = min(start, len(lines))
    got = parse_changes(lines, start, limit)
    want = reference_parse(lines, start, limit)
    assert got[0] == want[0] and got[1:2] == want[1:2] and got[3] == want[3]
    assert got[2] is want[2] if want[2] in (UNPARSED, LIMIT) else got[2] == want[2]


# -- BatchProtocol ---------------------------------------------------------------------


class Batches:
    """A connected BatchProtocol that records its batches and how it ended."""

    def __init__(self, max_batch: int = 200, on_batch: Any = None) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.outcome: list[Any] = []
        self.transport = StringTransport()
        self.protocol = BatchProtocol(on_batch or self.batches.append, max_batch=max_batch)
        self.protocol.finished.addBoth(self.outcome.append)
        self.protocol.makeConnection(self.transport)

    @property
    def ids(self) -> list[list[str]]:
        return [[r["id"] for r in b] for b in self.batches]

    @property
    def result(self) -> Any:
        assert len(self.outcome) == 1, "finished has not fired"
        value = self.outcome[0]
        return value.value if isinstance(value, Failure) else value


def test_the_changes_of_one_read_are_one_batch() -> None:
    """Each read's changes come as one list, whatever the framing; an end row ends the body."""
    run = Batches()
    run.protocol.dataReceived(row("1-a", "a") + row("2-b", "b") + row("3-c", "c")[:10])
    run.protocol.dataReceived(row("3-c", "c")[10:] + row("4-d", "d"))
    run.protocol.lines_received([row("5-e", "e")[:-1], row("6-f", "f")[:-1]])
    run.protocol.dataReceived(END)
    assert run.ids == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert isinstance(run.result, LastSeq) and run.protocol.last_seq == "9-end"


def test_heartbeats_and_the_end_row_end_the_batch_before_them() -> None:
    """A heartbeat ends a batch; the changes after the end row are not delivered."""
    run = Batches()
    run.protocol.dataReceived(row("1-a", "a") + b"\n" + row("2-b", "b") + END + row("3-c", "c"))
    assert run.ids == [["a"], ["b"]] and run.protocol.heartbeats == 1
    assert isinstance(run.result, LastSeq)


@pytest.mark.parametrize(
    "bad, error",
    [(b'{"error":"x","reason":"y"}\n', ErrorRow), (b"not json\n", MalformedRow), (b'{"seq":"2-b"}\n', MalformedRow)],
)
def test_a_bad_line_fails_after_the_batch_before_it(bad: bytes, error: type) -> None:
    """The changes before an error row or a bad line are handed over, then the feed fails with their seq."""
    run = Batches()
    run.protocol.dataReceived(row("1-a", "a") + bad + row("3-c", "c"))
    assert run.ids == [["a"]]
    assert isinstance(run.result, error) and run.result.last_seq == "1-a"


def test_max_batch_and_a_repeated_document_cut_a_read() -> None:
    """A read is cut at max_batch changes and before a second change of one document."""
    run = Batches(max_batch=2)
    run.protocol.dataReceived(b"".join(row(f"{n}-x", docid) for n, docid in enumerate("abcaad")))
    assert run.ids == [["a", "b"], ["c", "a"], ["a", "d"]]
    assert run.protocol.last_seq == "5-x"


def test_a_pause_from_the_callable_holds_the_next_batch_back() -> None:
    """Pausing from inside the callable delivers nothing more until resumeProducing, then the rest in order."""
    run = Batches(max_batch=2)

    def on_batch(batch: list[dict[str, Any]]) -> None:
        run.batches.append(batch)
        run.protocol.pauseProducing()

    run.protocol = BatchProtocol(on_batch, max_batch=2)
    run.protocol.finished.addBoth(run.outcome.append)
    run.protocol.makeConnection(run.transport)
    run.protocol.dataReceived(b"".join(row(f"{n}-x", f"d{n}") for n in range(5)) + END)
    assert run.ids == [["d0", "d1"]] and run.protocol.last_seq == "1-x"
    run.protocol.resumeProducing()
    assert run.ids == [["d0", "d1"], ["d2", "d3"]] and run.outcome == []
    run.protocol.resumeProducing()
    run.protocol.resumeProducing()
    assert run.ids[-1] == ["d4"] and isinstance(run.result, LastSeq)


def test_a_stop_from_the_callable_counts_that_batch_only() -> None:
    """stop() from the callable ends the feed with Stopped at that batch's last seq."""
    run = Batches(max_batch=2)

    def on_batch(batch: list[dict[str, Any]]) -> None:
        run.batches.append(batch)
        run.protocol.stop()

    run.protocol = BatchProtocol(on_batch, max_batch=2)
    run.protocol.finished.addBoth(run.outcome.append)
    run.protocol.makeConnection(run.transport)
    run.protocol.dataReceived(b"".join(row(f"{n}-x", f"d{n}") for n in range(5)))
    assert run.ids == [["d0", "d1"]] and run.result == Stopped("1-x")


def test_a_callable_that_raises_fails_the_feed_before_that_batch() -> None:
    """A raising callable fails the feed with its exception; last_seq stays before that batch."""
    seen: list[list[str]] = []

    def on_batch(batch: list[dict[str, Any]]) -> None:
        seen.append([r["id"] for r in batch])
        if len(seen) == 2:
            raise KeyError("boom")

    run = Batches(max_batch=2, on_batch=on_batch)
    run.protocol.dataReceived(b"".join(row(f"{n}-x", f"d{n}") for n in range(5)))
    assert seen == [["d0", "d1"], ["d2", "d3"]]
    assert isinstance(run.result, KeyError) and run.protocol.last_seq == "1-x"


def test_a_batch_with_null_seqs_leaves_last_seq_at_the_newest_known() -> None:
    """With seq_interval, rows with a null seq never become last_seq."""
    run = Batches()
    run.protocol.dataReceived(row("1-a", "a") + row(None, "b"))
    run.protocol.dataReceived(row(None, "c"))
    assert run.ids == [["a", "b"], ["c"]] and run.protocol.last_seq == "1-a"


@settings(max_examples=100, deadline=None)
@given(data=st.data(), ids=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=30), max_batch=st.integers(1, 6))
def test_any_reads_hand_over_every_change_once_in_order(data: Any, ids: list[str], max_batch: int) -> None:
    """However the body is cut into reads, every change comes once, in order, in batches within the bounds."""
    body = b"".join(row(f"{n}-x", docid) for n, docid in enumerate(ids)) + END
    run = Batches(max_batch=max_batch)
    for piece in split_at(body, data.draw(st.lists(st.integers(1, len(body) - 1), max_size=10))):
        run.protocol.dataReceived(piece)
    assert [r["id"] for b in run.batches for r in b] == ids
    assert all(0 < len(b) <= max_batch and len({r["id"] for r in b}) == len(b) for b in run.batches)
    assert isinstance(run.result, LastSeq)


def test_an_unclean_end_fails_after_the_batches() -> None:
    """A body that ends without its end row fails with UncleanEnd carrying the last seq delivered."""
    run = Batches()
    run.protocol.dataReceived(row("1-a", "a"))
    run.protocol.connectionLost(Failure(ResponseDone()))
    assert run.ids == [["a"]] and run.result.last_seq == "1-a"


def test_changes_of_a_db_updates_feed_come_in_batches_too() -> None:
    """Rows of _db_updates are handed over, a database at most once per batch."""
    run = Batches()
    line = lambda name, seq: json.dumps({"db_name": name, "type": "updated", "seq": seq}).encode() + b"\n"  # noqa: E731
    run.protocol.dataReceived(line("a", "1-x") + line("b", "2-x") + line("a", "3-x"))
    assert [[r["db_name"] for r in b] for b in run.batches] == [["a", "b"], ["a"]]
