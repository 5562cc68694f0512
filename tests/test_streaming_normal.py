"""
Consumer.fetch_rows: the normal feed handed over row by row as it is parsed,
so that memory stays flat; its protocol fed in any splits, and the method
against recorded CouchDB bytes, the test server and an in-process fake.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from txchanges import Consumer, LineTooLong, MalformedRow, NotFound, Server, UncleanEnd
from txchanges.feed._normal import RowsProtocol
from txchanges.feed._protocol import Stopped

from ._service_helpers import wait_for
from .fakecouch import Answer, stub
from .fixtures_util import load, names

pytest_plugins = ["tests.conftest_replay"]


def rows(count: int) -> list[dict[str, Any]]:
    return [{"seq": f"{n}-g1AAAA", "id": f"doc{n}", "changes": [{"rev": "1-x"}]} for n in range(1, count + 1)]


def couchdb_body(items: list[dict[str, Any]], last: Any = "9-end", pending: int = 0) -> bytes:
    """A normal feed body laid out as CouchDB 3 writes it: one row per line."""
    inner = ",\r\n".join(json.dumps(r, separators=(",", ":")) for r in items)
    return ('{"results":[\n' + inner + '\n],\n"last_seq":' + json.dumps(last) + ',"pending":%d}\n' % pending).encode()


def pouchdb_body(items: list[dict[str, Any]], last: Any = 9) -> bytes:
    """The same as PouchDB sends it: the whole document on one line."""
    return json.dumps({"results": items, "last_seq": last}).encode()


def fired_with(outcome: list[Any]) -> Any:
    """What a Deferred whose results were appended to *outcome* fired with: its value, or its failure's exception."""
    assert len(outcome) == 1, "finished has not fired"
    value = outcome[0]
    return value.value if isinstance(value, Failure) else value


class Fed:
    """A RowsProtocol on a fake transport, recording what it hands over."""

    def __init__(self, **kw: Any) -> None:
        self.rows: list[dict[str, Any]] = []
        self.outcome: list[Any] = []
        self.protocol = RowsProtocol(kw.pop("on_row", self.rows.append), **kw)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.finished.addBoth(self.outcome.append)

    def feed(self, *pieces: bytes, end: Any = ResponseDone) -> "Fed":
        for piece in pieces:
            self.protocol.dataReceived(piece)
        if end is not None:
            self.protocol.connectionLost(Failure(end()))
        return self

    @property
    def result(self) -> Any:
        return fired_with(self.outcome)


def test_couchdb_layout_all_at_once() -> None:
    """A CouchDB normal body hands over every row in order and fires with last_seq and pending."""
    fed = Fed().feed(couchdb_body(rows(50), "50-g1AAAA", 3))
    assert fed.rows == rows(50)
    assert fed.result == {"last_seq": "50-g1AAAA", "pending": 3}
    assert fed.protocol.last_seq == "50-g1AAAA"


def test_rows_are_handed_over_before_the_body_ends() -> None:
    """Each row is handed over as soon as it is complete, not at the end of the body."""
    body = couchdb_body(rows(3))
    fed = Fed().feed(body[: body.index(b"doc2") + 40], end=None)
    assert [r["id"] for r in fed.rows] == ["doc1", "doc2"] and not fed.outcome


def test_buffer_holds_only_the_unfinished_row() -> None:
    """After each read only the unfinished row is kept: memory does not grow with the feed."""
    body = couchdb_body(rows(5000))
    fed = Fed()
    longest = 0
    for i in range(0, len(body), 4096):
        fed.protocol.dataReceived(body[i:i + 4096])
        longest = max(longest, len(fed.protocol._text))
    fed.protocol.connectionLost(Failure(ResponseDone()))
    assert len(fed.rows) == 5000 and longest < 200


@settings(max_examples=200, deadline=None)
@given(data=st.data(), count=st.integers(0, 12), layout=st.sampled_from(["couchdb", "pouchdb", "spaced"]))
def test_any_split_gives_the_same_rows(data: Any, count: int, layout: str) -> None:
    """However the body is cut into reads, the rows and the end are the same; whatever the layout."""
    items = rows(count)
    if layout == "couchdb":
        body, end = couchdb_body(items), {"last_seq": "9-end", "pending": 0}
    elif layout == "pouchdb":
        body, end = pouchdb_body(items), {"last_seq": 9}
    else:
        body = json.dumps({"results": items, "last_seq": "x"}, indent=2).encode()
        end = {"last_seq": "x"}
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=15))))
    pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    fed = Fed().feed(*pieces)
    assert fed.rows == items and fed.result == end


def test_byte_by_byte_with_non_ascii() -> None:
    """Fed a byte at a time, multi-byte UTF-8 split across reads, every row arrives intact."""
    items = [dict(r, id=f"café-ümläut-{n}") for n, r in enumerate(rows(4))]
    body = couchdb_body(items)
    fed = Fed().feed(*(body[i:i + 1] for i in range(len(body))))
    assert fed.rows == items and fed.result["last_seq"] == "9-end"


def test_results_not_first_is_read_whole() -> None:
    """A body whose first key is not results is read whole, then handed over row by row."""
    body = json.dumps({"last_seq": "3-x", "results": rows(3), "pending": 0}).encode()
    fed = Fed().feed(body)
    assert fed.rows == rows(3) and fed.result == {"last_seq": "3-x", "pending": 0}


def test_empty_results() -> None:
    """A feed without changes hands over nothing and fires with its last_seq."""
    fed = Fed().feed(b'{"results":[\n\n],\n"last_seq":"0","pending":0}\n')
    assert fed.rows == [] and fed.result == {"last_seq": "0", "pending": 0}


def test_deferred_from_the_callback_holds_the_next_row() -> None:
    """A callback's Deferred pauses the body and holds the next row back until it fires."""
    gates: list[defer.Deferred[None]] = []
    seen: list[str] = []

    def on_row(row: dict[str, Any]) -> Any:
        seen.append(row["id"])
        gates.append(defer.Deferred())
        return gates[-1]

    fed = Fed(on_row=on_row).feed(couchdb_body(rows(3)))
    assert seen == ["doc1"] and fed.transport.producerState == "paused" and not fed.outcome
    gates[0].callback(None)
    assert seen == ["doc1", "doc2"] and not fed.outcome
    gates[1].callback(None)
    gates[2].callback(None)
    assert seen == ["doc1", "doc2", "doc3"] and fed.result == {"last_seq": "9-end", "pending": 0}


def test_resumed_once_the_deferred_fires() -> None:
    """When the Deferred holding the feed fires and the buffer is used up, the body is read again."""
    gate: defer.Deferred[None] = defer.Deferred()
    body = couchdb_body(rows(3))
    fed = Fed(on_row=lambda row: gate if row["id"] == "doc1" else None)
    fed.feed(body[:80], end=None)
    assert fed.transport.producerState == "paused"
    gate.callback(None)
    assert fed.transport.producerState == "producing"
    fed.feed(body[80:])
    assert fed.result["last_seq"] == "9-end"


def test_failing_deferred_fails_the_feed() -> None:
    """A callback's Deferred that fails ends the feed with that failure; no later row is handed over."""
    seen: list[str] = []

    def on_row(row: dict[str, Any]) -> Any:
        seen.append(row["id"])
        return defer.fail(KeyError("boom")) if row["id"] == "doc2" else None

    fed = Fed(on_row=on_row).feed(couchdb_body(rows(3)))
    assert seen == ["doc1", "doc2"] and isinstance(fed.result, KeyError)
    assert fed.transport.producerState == "stopped"


def test_raising_callback_fails_the_feed() -> None:
    """A callback that raises ends the feed with that exception."""

    def on_row(row: dict[str, Any]) -> None:
        raise ValueError(row["id"])

    fed = Fed(on_row=on_row).feed(couchdb_body(rows(2)))
    assert isinstance(fed.result, ValueError) and str(fed.result) == "doc1"


@pytest.mark.parametrize(
    "body",
    [
        b'{"results":[{"seq":1,"id":"a","changes":[]} {"seq":2}],"last_seq":2}',  # no comma
        b'{"results":[{"seq":1,"id":"a","changes":[]},[1]],"last_seq":2}',  # not an object
        b"<html>proxy error</html>",
        b'{"results":{"a":1},"last_seq":2}',
        b'{"results":[{"seq":1,"id":"a","changes":[]}],"last_seq":2,}',  # bad tail
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    """A body that is not a normal feed fails with MalformedRow, after the good rows before the fault."""
    fed = Fed().feed(body)
    assert isinstance(fed.result, MalformedRow)


def test_cut_short_is_unclean_with_last_seq() -> None:
    """A body cut short fails with UncleanEnd carrying the seq of the last row handed over."""
    body = couchdb_body(rows(3))
    fed = Fed().feed(body[: body.index(b"doc3")], end=lambda: ResponseFailed([Failure(ConnectionError("cut"))]))
    assert isinstance(fed.result, UncleanEnd) and fed.result.last_seq == "2-g1AAAA"
    fed = Fed().feed(body[:-20])
    assert isinstance(fed.result, UncleanEnd)
    fed = Fed().feed(body[: body.index(b"doc3")])
    assert isinstance(fed.result, UncleanEnd) and fed.result.last_seq == "2-g1AAAA"


def test_closed_connection_after_a_complete_body_is_fine() -> None:
    """A complete body ended by the server closing (no framing) is a clean end."""
    fed = Fed().feed(couchdb_body(rows(2)), end=PotentialDataLoss)
    assert fed.result == {"last_seq": "9-end", "pending": 0}


def test_row_too_long() -> None:
    """A row that grows past the bound fails with LineTooLong before it is complete."""
    fed = Fed(max_row_length=1000)
    fed.feed(b'{"results":[{"seq":1,"id":"' + b"x" * 2000, end=None)
    assert isinstance(fed.result, LineTooLong)


def test_stop() -> None:
    """stop() hands over nothing more, stops the transport and fires with Stopped."""
    fed = Fed()
    body = couchdb_body(rows(3))
    fed.feed(body[:60], end=None)
    fed.protocol.stop()
    fed.feed(body[60:])
    assert fed.rows == [] or len(fed.rows) <= 1
    assert isinstance(fed.result, Stopped) and fed.transport.producerState == "stopped"


def test_huge_row_in_many_reads_is_not_rescanned_each_time() -> None:
    """A row arriving in many small reads is parsed a bounded number of times, not once per read."""
    big = {"seq": "1-a", "id": "big", "changes": [], "doc": {"blob": "z" * 200_000}}
    body = couchdb_body([big])
    fed = Fed()
    attempts = []
    original = fed.protocol._rows

    def counting() -> int:
        attempts.append(1)
        return original()

    fed.protocol._rows = counting  # type: ignore[method-assign]
    fed.feed(*(body[i:i + 1000] for i in range(0, len(body), 1000)))
    assert fed.rows == [big] and len(attempts) == len(range(0, len(body), 1000)) + 1


# -- Consumer.fetch_rows ---------------------------------------------------------------


NORMAL = [n for n in names() if n.startswith(("normal-", "filter-", "deleted-"))]


@pytest.mark.parametrize("name", NORMAL)
@pytest_twisted.ensureDeferred
async def test_fetch_rows_on_recorded_normal_feeds(replay: Any, name: str) -> None:
    """fetch_rows hands over exactly the recorded rows, in order, and fires with the rest of the body."""
    from .test_consumer_replay import recorded_call

    method, db, since, kwargs = recorded_call(name)
    running = await replay(name)
    server = Server(f"http://admin:secret@127.0.0.1:{running.port}/")
    seen: list[dict[str, Any]] = []
    try:
        rest = await Consumer(server[db]).fetch_rows(seen.append, since, **kwargs)
    finally:
        await server.close()
    whole = json.loads(load(name).body)
    assert seen == whole.pop("results") and rest == whole


@pytest_twisted.ensureDeferred
async def test_fetch_rows_error_is_typed(replay: Any) -> None:
    """A missing database fails fetch_rows with NotFound, as fetch does."""
    running = await replay("error-missing-db-404")
    server = Server(f"http://127.0.0.1:{running.port}/")
    try:
        with pytest.raises(NotFound):
            await Consumer(server["no-such-db"]).fetch_rows(lambda row: None, since=0)
    finally:
        await server.close()


def test_fetch_rows_through_an_injected_client() -> None:
    """With an injected StubTreq, fetch_rows reads the normal feed through it."""
    body = couchdb_body(rows(4), "4-g1AAAA")
    client, couch = stub(Answer(body=body))
    consumer = Consumer(Server("http://127.0.0.1:5984/", http=client)["db"])
    seen: list[dict[str, Any]] = []
    results: list[Any] = []
    consumer.fetch_rows(seen.append, since=0, limit=4).addBoth(results.append)
    client.flush()
    assert results == [{"last_seq": "4-g1AAAA", "pending": 0}] and seen == rows(4)
    assert "feed=normal" in couch.seen[0].uri and "limit=4" in couch.seen[0].uri


def test_fetch_rows_refuses_a_non_callable() -> None:
    """fetch_rows without a callable callback raises TypeError at once."""
    with pytest.raises(TypeError):
        Consumer(Server("http://127.0.0.1:1/")["db"]).fetch_rows("nope")  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_fetch_rows_against_the_test_server(couch_server: Any, db_name: str) -> None:
    """fetch_rows against the CouchDB-compatible server: every document once, slow callbacks included, then last_seq."""
    server = Server(couch_server.admin_url)
    try:
        db = await server.create_db(db_name)
        await db.save_docs([{"_id": f"d{n:03d}"} for n in range(120)])
        seen: list[str] = []

        def slow(row: dict[str, Any]) -> Any:
            seen.append(row["id"])
            return task.deferLater(reactor, 0.001, lambda: None) if len(seen) % 10 == 0 else None

        rest = await Consumer(db).fetch_rows(slow, since=0)
        whole = await Consumer(db).fetch(since=0)
    finally:
        await server.close()
    assert seen == [r["id"] for r in whole["results"]] and len(seen) == 120
    assert rest["last_seq"] == whole["last_seq"]


@pytest_twisted.ensureDeferred
async def test_consumer_stop_cancels_fetch_rows(couch_server: Any, db_name: str) -> None:
    """Consumer.stop() ends a fetch_rows in progress with CancelledError."""
    server = Server(couch_server.admin_url)
    try:
        db = await server.create_db(db_name)
        await db.save_docs([{"_id": f"d{n:03d}"} for n in range(20)])
        consumer = Consumer(db)
        gate: defer.Deferred[None] = defer.Deferred()
        handed: list[Any] = []
        d = consumer.fetch_rows(lambda row: handed.append(row) or gate, since=0)
        await wait_for(lambda: bool(handed), 5, "the first row")
        consumer.stop()
        assert len(handed) == 1, "a row was handed over while the first one's Deferred was pending"
        with pytest.raises(defer.CancelledError):
            await d
    finally:
        await server.close()
