"""wait_once and wait, with every filter kind, against the project's test server."""

import time

import pytest_twisted
from twisted.internet import defer, reactor, task

from txchanges import Consumer, NotFound
import pytest

from ._service_helpers import start_feed

FRUIT_FILTER = "function(doc, req) { return doc.type === req.query.type; }"
TYPE_VIEW = "function(doc) { if (doc.type) { emit(doc.type, null); } }"


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)



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


@pytest_twisted.ensureDeferred
async def test_wait_once_fires_after_a_save_and_not_before(couch_server, db):
    """wait_once(since='now') is still waiting before a save and fires with that change after it."""
    c = Consumer(db)
    d = await start_feed(couch_server, lambda: c.wait_once(since="now", timeout=10000))
    await sleep(0.5)
    assert not d.called
    await db.save_doc({"_id": "late"})
    result = await d
    assert [r["id"] for r in result["results"]] == ["late"]
    assert isinstance(result["last_seq"], str)


@pytest_twisted.ensureDeferred
async def test_wait_once_times_out_empty(db):
    """wait_once with a short timeout and no change fires with no results."""
    result = await Consumer(db).wait_once(since="now", timeout=300)
    assert result["results"] == [] and "last_seq" in result


@pytest_twisted.ensureDeferred
async def test_wait_once_with_heartbeat(couch_server, db):
    """wait_once with a heartbeat still parses the body CouchDB pads with newlines."""
    c = Consumer(db)
    d = await start_feed(couch_server, lambda: c.wait_once(since="now", heartbeat=200))
    await sleep(0.7)
    await db.save_doc({"_id": "after-heartbeats"})
    result = await d
    assert [r["id"] for r in result["results"]] == ["after-heartbeats"]


@pytest_twisted.ensureDeferred
async def test_wait_two_callbacks_get_live_changes_in_order(couch_server, db):
    """wait() hands live changes to two registered callbacks, each in write order."""
    c = Consumer(db)
    first, second = [], []
    c.register_callback(lambda row: first.append(row["id"]))
    c.register_callback(lambda row: second.append(row["id"]))
    # Written only once the server has resolved "now": a write that wins the
    # race with the request lies before "now" and is rightly not delivered.
    d = await start_feed(couch_server, lambda: c.wait(since="now", heartbeat=500))
    for i in range(5):
        await db.save_doc({"_id": f"live-{i}"})
        await sleep(0.05)
    deadline = time.monotonic() + 5
    while len(second) < 5 and time.monotonic() < deadline:
        await sleep(0.05)
    c.stop()
    resume = await d
    assert first == second == [f"live-{i}" for i in range(5)]
    assert isinstance(resume, str)


@pytest_twisted.ensureDeferred
async def test_wait_timeout_without_heartbeat_ends_with_last_seq(db):
    """wait(timeout=..., heartbeat=False) ends by itself with the feed's last_seq."""
    await fill(db)
    c = Consumer(db)
    seen = []
    start = time.monotonic()
    last_seq = await c.wait(since=0, heartbeat=False, timeout=500, cb=lambda r: seen.append(r["id"]))
    assert time.monotonic() - start < 5
    assert sorted(seen) == ["_design/app", "apple", "banana", "carrot", "no-type"]
    assert last_seq == (await c.fetch(since="now"))["last_seq"]


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
    """wait(limit=2) ends after two rows with a last_seq."""
    await fill(db)
    seen = []
    last_seq = await Consumer(db).wait(since=0, limit=2, cb=seen.append)
    assert len(seen) == 2 and last_seq is not None


@pytest_twisted.ensureDeferred
async def test_database_deleted_under_open_feed(couch_server, db):
    """Deleting the database under an open feed ends wait cleanly; a new request is NotFound."""
    c = Consumer(db)
    d = c.wait(since=0, heartbeat=300)
    await sleep(0.3)
    await db.server.delete_db(db.name)
    last_seq = await defer.Deferred.fromCoroutine(_within(d, 5))
    assert last_seq is not None
    with pytest.raises(NotFound):
        await c.fetch()


async def _within(d, seconds):
    timer = reactor.callLater(seconds, d.cancel)
    try:
        return await d
    finally:
        if timer.active():
            timer.cancel()


@pytest_twisted.ensureDeferred
async def test_stop_ends_open_feed_within_a_second(db):
    """stop() ends an open continuous feed and wait fires in well under a second."""
    c = Consumer(db)
    d = c.wait(since="now", heartbeat=10000)
    await sleep(0.3)
    start = time.monotonic()
    c.stop()
    await d
    assert time.monotonic() - start < 1


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
    """A JS filter on a live continuous feed delivers only matching writes."""
    await fill(db)
    c = Consumer(db)
    seen = []
    d = await start_feed(couch_server, lambda: c.wait(since="now", heartbeat=300, filter_name="app/by_type", params={"type": "fruit"}, cb=lambda r: seen.append(r["id"])))
    await db.save_doc({"_id": "leek", "type": "vegetable"})
    await db.save_doc({"_id": "cherry", "type": "fruit"})
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        await sleep(0.05)
    await sleep(0.2)
    c.stop()
    await d
    assert seen == ["cherry"]


@pytest_twisted.ensureDeferred
async def test_seq_interval_rows_keep_known_seq(db):
    """With seq_interval most rows carry seq null, and the resume point stays a real seq."""
    await db.save_docs([{"_id": f"d{i}"} for i in range(6)])
    c = Consumer(db)
    rows = []
    last_seq = await c.wait(since=0, heartbeat=False, timeout=300, seq_interval=3, cb=rows.append)
    assert len(rows) == 6
    assert any(r["seq"] is None for r in rows)
    assert isinstance(last_seq, str)


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
