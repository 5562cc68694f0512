"""
The normal feed's fast path: chunks that hold CRLF (CouchDB's ``,\\r\\n``
between rows) de-chunked without a Python call per chunk, and the complete
rows of a read parsed in one call and handed over without a Python call per
row but the callback's; and what it falls back on when a read is not a run of
whole rows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from txchanges import MalformedRow
from txchanges.feed._ends import Stopped
from txchanges.feed._normal import RowsProtocol

from .test_http11 import chunked, decode, split_at
from .test_streaming_normal import Fed, couchdb_body, rows


@contextmanager
def python_calls(counted: list[str]) -> Iterator[None]:
    """Record the name of every Python function called (a generator resumed counts) while inside."""

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            counted.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(None)


def reads_of(data: bytes, size: int = 65536) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# -- de-chunking --------------------------------------------------------------------


def test_chunks_holding_crlf_cost_no_python_call_each() -> None:
    """A normal feed in ~1490-byte chunks is de-chunked with a handful of Python calls per read, not one per chunk."""
    body = couchdb_body(rows(3000))
    wire = chunked(*[body[i:i + 1490] for i in range(0, len(body), 1490)])
    reads = reads_of(wire)
    calls: list[str] = []
    with python_calls(calls):
        got, decoder = decode(reads)
    assert got == body and decoder.done
    chunks = len(range(0, len(body), 1490))
    assert chunks > 100 and len(calls) < 10 * len(reads), (chunks, len(calls))


normal_rows = st.lists(
    st.builds(
        lambda n, text: {"seq": f"{n}-g1AAAA", "id": text, "changes": [{"rev": "1-a"}]},
        st.integers(1, 10**6),
        st.text(alphabet="ab\r\n\"é", max_size=20),
    ),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(items=normal_rows, data=st.data(), ext=st.sampled_from([b"", b";a=b"]))
def test_normal_bodies_in_any_chunking_and_reads(items: list[dict[str, Any]], data: Any, ext: bytes) -> None:
    """A body holding CRLF, however cut into chunks and reads, de-chunks to the same bytes."""
    body = couchdb_body(items)
    chunks = split_at(body, data.draw(st.lists(st.integers(1, len(body) - 1), max_size=10)))
    wire = chunked(*chunks, ext=ext)
    reads = split_at(wire, data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=10)))
    got, decoder = decode(reads)
    assert got == body and decoder.done


# -- parsing and handing over ------------------------------------------------------------


def test_rows_cost_no_python_call_but_the_callback() -> None:
    """A CouchDB-laid body in 64 KiB reads calls nothing in Python per row but the callback: rows are parsed by the piece."""
    body = couchdb_body(rows(5000))
    seen: list[str] = []

    def callback(row: dict[str, Any]) -> None:
        seen.append(row["id"])

    protocol = RowsProtocol(callback)
    protocol.makeConnection(StringTransport())
    outcome: list[Any] = []
    protocol.finished.addBoth(outcome.append)
    reads = reads_of(body)
    calls: list[str] = []
    with python_calls(calls):
        for data in reads:
            protocol.dataReceived(data)
    protocol.connectionLost(Failure(ResponseDone()))
    others = [name for name in calls if name != "callback"]
    assert len(seen) == 5000 and outcome == [{"last_seq": "9-end", "pending": 0}]
    # A few calls per piece of a few dozen rows, and per read.
    assert calls.count("callback") == 5000 and len(others) < 5000 / 10, len(others)


@pytest.mark.parametrize("bad", ["null", "1", "[1]", '"row"'])
def test_a_row_that_is_not_an_object_after_good_ones(bad: str) -> None:
    """A value that is not an object among CouchDB-laid rows fails with MalformedRow once the rows before it are handed over."""
    good = [json.dumps(r, separators=(",", ":")) for r in rows(3)]
    body = ('{"results":[\n' + ",\r\n".join(good[:2] + [bad] + good[2:]) + '\n],\n"last_seq":"3","pending":0}\n').encode()
    fed = Fed().feed(body)
    assert fed.rows == rows(2)
    assert isinstance(fed.result, MalformedRow) and fed.result.last_seq == "2-g1AAAA"


def test_a_row_only_the_standard_library_reads() -> None:
    """A row the batch parser refuses (a lone surrogate escape) is read the slow way; no row is lost or repeated."""
    items = rows(4)
    items[2]["id"] = "\ud800"
    body = couchdb_body(items)
    assert b"\\ud800" in body
    fed = Fed().feed(body)
    assert fed.rows == items and fed.result == {"last_seq": "9-end", "pending": 0}


def test_stop_from_the_callback_in_the_middle_of_a_read() -> None:
    """A callback that stops the feed at the second row of a read: that row counts, nothing after it is handed over."""
    holder: list[RowsProtocol] = []
    seen: list[str] = []

    def on_row(row: dict[str, Any]) -> None:
        seen.append(row["id"])
        if row["id"] == "doc2":
            holder[0].stop()

    fed = Fed(on_row=on_row)
    holder.append(fed.protocol)
    fed.feed(couchdb_body(rows(10)), end=None)
    assert seen == ["doc1", "doc2"]
    assert isinstance(fed.result, Stopped) and fed.result.last_seq == "2-g1AAAA"


@pytest.mark.parametrize(
    "layout",
    [
        # PouchDB: one line; rows before the first newline.
        lambda items: json.dumps({"results": items, "last_seq": 9}).encode(),
        # Several rows on each line.
        lambda items: ('{"results":[' + ",\n".join(
            ",".join(json.dumps(r) for r in items[i:i + 3]) for i in range(0, len(items), 3)
        ) + '],"last_seq":9}').encode(),
        # The comma at the start of the next line.
        lambda items: ('{"results":[\n' + "\n,".join(json.dumps(r) for r in items) + '\n],"last_seq":9}').encode(),
    ],
    ids=["one-line", "three-a-line", "leading-comma"],
)
@pytest.mark.parametrize("size", [1, 7, 64, 65536])
def test_other_layouts_in_any_read_size(layout: Callable[[list[dict[str, Any]]], bytes], size: int) -> None:
    """Layouts other than CouchDB's hand over the same rows, whatever the read size."""
    items = rows(10)
    fed = Fed().feed(*reads_of(layout(items), size))
    assert fed.rows == items and fed.result == {"last_seq": 9}



LAYOUTS = {
    "couchdb": lambda items: couchdb_body(items, 9, 0),
    "leading-comma": lambda items: (
        '{"results":[\n' + "\n,".join(json.dumps(r) for r in items) + '\n],"last_seq":9,"pending":0}'
    ).encode(),
    "pretty": lambda items: json.dumps({"results": items, "last_seq": 9, "pending": 0}, indent=1).encode(),
    "three-a-line": lambda items: ('{"results":[' + ",\n".join(
        ",".join(json.dumps(r) for r in items[i:i + 3]) for i in range(0, len(items), 3)
    ) + '],"last_seq":9,"pending":0}').encode(),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("size", [997, 5000, 65536])
def test_reads_of_many_pieces(layout: str, size: int) -> None:
    """Reads of many rows, parsed by the piece or row by row where pieces do not parse, hand over every row once, in order."""
    items = [dict(r, doc={"n": n, "text": "x" * (n % 97)}) for n, r in enumerate(rows(600))]
    body = LAYOUTS[layout](items)
    fed = Fed().feed(*reads_of(body, size))
    assert fed.rows == items and fed.result == {"last_seq": 9, "pending": 0}
