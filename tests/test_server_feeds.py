"""wait_once and wait, with every filter kind, against the project's test server."""

import base64
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from txchanges import Consumer, NotFound

from ._service_helpers import heartbeats_sent, open_feeds, start_feed, testserver_counts, wait_for

FRUIT_FILTER = "function(doc, req) { return doc.type === req.query.type; }"
TYPE_VIEW = "function(doc) { if (doc.type) { emit(doc.type, null); } }"


async def fill(db):
    await db.save_doc(
        {"_id": "_design/app", "filters": {"by_type": FRUIT_FILTER}, "views": {"by_type": {"map": TYPE_VIEW}}}
    )
    await db.save_docs(
        [
            {"_id": "apple", "type": "fruit"},
            {"_id": "banana", "type": "fruit"},
            {"_id": "carrot", "type": "vegetable"},
            {"_id": "no-type"},
        ]
    )


async def current_seq(db) -> Any:
    """The database's last_seq now, from a normal feed since=now."""
    return (await Consumer(db).fetch(since="now"))["last_seq"]


def on_count(count: int, rows: list[Any]) -> tuple["defer.Deferred[None]", Any]:
    """A callback appending each row to *rows*, and a Deferred fired once *count* rows arrived."""
    reached: defer.Deferred[None] = defer.Deferred()

    def cb(row: Any) -> None:
        rows.append(row)
        if len(rows) == count:
            reached.callback(None)

    return reached, cb


async def _within(d, seconds):
    timer = reactor.callLater(seconds, d.cancel)
    try:
        return await d
    finally:
        if timer.active():
            timer.cancel()


@pytest_twisted.ensureDeferred
async def test_wait_once_fires_with_the_change_saved_after_it_started(couch_server, db):
    """wait_once(since='now'), once the server has taken its position, fires with the one change saved afterwards and the database's new last_seq."""
    c = Consumer(db)
    d = await start_feed(couch_server, lambda: c.wait_once(since="now", timeout=10000))
    assert not d.called
    saved = await db.save_doc({"_id": "late"})
    result = await _within(d, 5)
    assert [(r["id"], r["changes"][0]["rev"]) for r in result["results"]] == [("late", saved["rev"])]
    assert result["last_seq"] == result["results"][0]["seq"] == await current_seq(db)


@pytest_twisted.ensureDeferred
async def test_wait_once_times_out_empty(db):
    """wait_once with a short timeout and no change fires with no results, at the database's current seq."""
    await db.save_doc({"_id": "before"})
    result = await _within(Consumer(db).wait_once(since="now", timeout=300), 5)
    assert result["results"] == [] and result["last_seq"] == await current_seq(db)


@pytest_twisted.ensureDeferred
async def test_wait_once_waits_through_heartbeats_then_gets_the_change(couch_server, db):
    """wait_once with a heartbeat stays open while the server sends heartbeats (counted by the server), then parses the change from the body those newlines pad."""
    c = Consumer(db)
    before = heartbeats_sent(couch_server, db.name)
    d = await start_feed(couch_server, lambda: c.wait_once(since="now", heartbeat=100))
    await wait_for(lambda: heartbeats_sent(couch_server, db.name) >= before + 3, 5, "three heartbeats")
    assert not d.called, "a heartbeat ended the longpoll"
    await db.save_doc({"_id": "after-heartbeats"})
    result = await _within(d, 5)
    assert [r["id"] for r in result["results"]] == ["after-heartbeats"]
    assert result["last_seq"] == await current_seq(db)


@pytest_twisted.ensureDeferred
async def test_wait_two_callbacks_get_live_changes_in_order(couch_server, db):
    """wait() hands live changes to two registered callbacks, each in write order, and stop() fires it with the last one's seq."""
    c = Consumer(db)
    first: list[Any] = []
    second: list[Any] = []
    c.register_callback(first.append)
    reached, cb = on_count(5, second)
    c.register_callback(cb)
    # Written only once the server has resolved "now": a write that wins the
    # race with the request lies before "now" and is rightly not delivered.
    d = await start_feed(couch_server, lambda: c.wait(since="now", heartbeat=500))
    for i in range(5):
        await db.save_doc({"_id": f"live-{i}"})
    await _within(reached, 5)
    c.stop()
    resume = await _within(d, 5)
    assert [r["id"] for r in first] == [r["id"] for r in second] == [f"live-{i}" for i in range(5)]
    assert resume == second[-1]["seq"] == await current_seq(db)


@pytest_twisted.ensureDeferred
async def test_wait_timeout_without_heartbeat_ends_with_last_seq(db):
    """wait(timeout=..., heartbeat=False) ends by itself with the feed's last_seq."""
    await fill(db)
    c = Consumer(db)
    seen = []
    last_seq = await _within(c.wait(since=0, heartbeat=False, timeout=500, cb=lambda r: seen.append(r["id"])), 5)
    assert sorted(seen) == ["_design/app", "apple", "banana", "carrot", "no-type"]
    assert last_seq == await current_seq(db)


@pytest_twisted.ensureDeferred
async def test_resume_from_last_seq_no_gaps_no_repeats(db):
    """A second wait from the first one's last_seq gets exactly the changes made in between."""
    c = Consumer(db)
    seen = []
    c.register_callback(lambda r: seen.append(r["id"]))
    await db.save_docs([{"_id": f"first-{i}"} for i in range(3)])
    last_seq = await c.wait(since=0, heartbeat=False, timeout=300)
    await db.save_docs([{"_id": f"second-{i}"} for i in range(3)])
    await c.wait(since=last_seq, heartbeat=False, timeout=300)
    assert seen == [f"first-{i}" for i in range(3)] + [f"second-{i}" for i in range(3)]


@pytest_twisted.ensureDeferred
async def test_wait_limit_ends_feed(db):
    """wait(limit=2) ends after two rows, with the second row's seq as last_seq (one shard: rows in write order)."""
    await fill(db)
    seen = []
    last_seq = await _within(Consumer(db).wait(since=0, limit=2, cb=seen.append), 5)
    assert [r["id"] for r in seen] == ["_design/app", "apple"]
    assert last_seq == seen[1]["seq"]


@pytest_twisted.ensureDeferred
async def test_database_deleted_under_open_feed(couch_server, db):
    """Deleting the database under an open feed ends wait cleanly at the seq it had; a new request is NotFound."""
    await db.save_doc({"_id": "only"})
    at = await current_seq(db)
    c = Consumer(db)
    d = await start_feed(couch_server, lambda: c.wait(since=0, heartbeat=300))
    await db.server.delete_db(db.name)
    last_seq = await _within(d, 5)
    assert last_seq == at
    with pytest.raises(NotFound):
        await c.fetch()


@pytest_twisted.ensureDeferred
async def test_stop_ends_open_feed(couch_server, db):
    """stop() ends an open continuous feed: wait fires with the position it started from (no change came), and the server sees the connection close."""
    before = open_feeds(couch_server)
    c = Consumer(db)
    d = await start_feed(couch_server, lambda: c.wait(since="now", heartbeat=10000))
    await wait_for(lambda: open_feeds(couch_server) == before + 1, 5, "the server to hold the feed open")
    c.stop()
    assert await _within(d, 5) == "now"
    await wait_for(lambda: open_feeds(couch_server) == before, 5, "the server to see the feed closed")


def feed_ids(rows):
    return sorted(r["id"] for r in rows)


FILTER_CASES = [
    ({"filter_name": "app/by_type", "params": {"type": "fruit"}}, ["apple", "banana"]),
    ({"filter": "app/by_type", "params": {"type": "vegetable"}}, ["carrot"]),
    ({"doc_ids": ["apple", "no-type", "not-there"]}, ["apple", "no-type"]),
    ({"selector": {"type": "fruit"}}, ["apple", "banana"]),
    ({"view": "app/by_type"}, ["apple", "banana", "carrot"]),
    ({"filter_name": "_design"}, ["_design/app"]),
]


@pytest.mark.parametrize("params, expected", FILTER_CASES)
@pytest_twisted.ensureDeferred
async def test_filters_with_every_method(db, params, expected):
    """Each filter kind (a filter's own parameters in params=) delivers exactly the matching documents on fetch,
    fetch_rows, wait_once, wait and changes."""
    await fill(db)
    c = Consumer(db)
    fetched = await c.fetch(since=0, **params)
    assert feed_ids(fetched["results"]) == expected
    rows = []
    await c.fetch_rows(rows.append, since=0, **params)
    assert feed_ids(rows) == expected
    once = await c.wait_once(since=0, **params)
    assert feed_ids(once["results"]) == expected
    seen = []
    await c.wait(since=0, heartbeat=False, timeout=300, cb=seen.append, **params)
    assert feed_ids(seen) == expected
    streamed = []
    async with c.changes(since=0, heartbeat=False, timeout=300, **params) as changes:
        async for change in changes:
            streamed.append(change)
    assert feed_ids(streamed) == expected


@pytest_twisted.ensureDeferred
async def test_filtered_live_feed_skips_other_changes(couch_server, db):
    """A JS filter on a live continuous feed delivers only matching writes: a vegetable written before a fruit never arrives, the fruit does."""
    await fill(db)
    c = Consumer(db)
    seen: list[Any] = []
    cherry, cb = on_count(1, seen)
    d = await start_feed(couch_server, lambda: c.wait(since="now", heartbeat=300, filter_name="app/by_type",
                                                      params={"type": "fruit"}, cb=cb))
    await db.save_doc({"_id": "leek", "type": "vegetable"})
    await db.save_doc({"_id": "cherry", "type": "fruit"})
    # One shard sends rows in write order: had leek passed, it would be first.
    await _within(cherry, 5)
    c.stop()
    await _within(d, 5)
    assert [r["id"] for r in seen] == ["cherry"]


@pytest_twisted.ensureDeferred
async def test_seq_interval_rows_keep_known_seq(db):
    """With seq_interval=3, rows carry a seq only where CouchDB's rule puts one (the second and fifth of six), and the resume point stays a real seq."""
    await db.save_docs([{"_id": f"d{i}"} for i in range(6)])
    c = Consumer(db)
    rows = []
    last_seq = await c.wait(since=0, heartbeat=False, timeout=300, seq_interval=3, cb=rows.append)
    every = (await c.fetch(since=0))["results"]
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(6)]
    assert [r["seq"] for r in rows] == [None, every[1]["seq"], None, None, every[4]["seq"], None]
    assert last_seq == await current_seq(db)


@pytest_twisted.ensureDeferred
async def test_a_document_being_updated_never_vanishes_from_the_feed(db):
    """Every normal feed read while documents are updated lists every document, as CouchDB's atomic by-seq index does (the test server's reads wait for writes in progress)."""
    revs = {r["id"]: r["rev"] for r in await db.save_docs([{"_id": f"doc-{i:02d}"} for i in range(20)])}
    writing = True

    async def update() -> None:
        nonlocal writing
        for n in range(200):
            docid = f"doc-{n % 20:02d}"
            saved = await db.save_doc({"_id": docid, "_rev": revs[docid], "n": n})
            revs[docid] = saved["rev"]
        writing = False

    async def read() -> list[int]:
        counts = []
        while writing:
            result = await Consumer(db).fetch(since=0)
            counts.append(len(result["results"]))
        return counts

    updating = defer.Deferred.fromCoroutine(update())
    reads = await defer.gatherResults([defer.Deferred.fromCoroutine(read()) for _ in range(3)])
    await updating
    counts = [n for r in reads for n in r]
    assert len(counts) >= 10 and set(counts) == {20}, counts


@pytest_twisted.ensureDeferred
async def test_a_write_whose_client_left_while_it_waited_for_the_lock_gives_its_turn_up(couch_server, db):
    """A client gone before its write's turn does not keep the database's writes waiting for ever (the lock above)."""
    auth = base64.b64encode(":".join(couch_server.admin).encode()).decode()

    def put(doc: str, body: bytes, length: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", couch_server.port))
        head = (
            f"PUT /{db.name}/{doc} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
        s.sendall(head.encode() + body)
        return s

    def lock() -> dict[str, Any]:
        return dict(testserver_counts(couch_server)["write_locks"].get(db.name, {}))

    # A holds the lock: its body is not all there yet.
    holder = put("a", b'{"n":', 20)
    await wait_for(lambda: lock().get("writing") is True, 10, "the first write holding the lock")
    # B waits behind it, and its client goes.
    waiter = put("b", b'{"n": 2}', 8)
    await wait_for(lambda: lock().get("waiting") == 1, 10, "the second write waiting")
    waiter.close()
    await wait_for(lambda: lock().get("abandoned") == 1, 10, "the server seeing the second client go")
    holder.close()
    saved = db.save_doc({"_id": "c"})
    saved.addTimeout(10, reactor)
    assert (await saved)["id"] == "c"
    assert lock() == {"writing": False, "readers": 0, "waiting": 0, "abandoned": 1}
    with pytest.raises(NotFound):
        await db.get("b")
