"""async for over the continuous feed, against the test server."""

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from txchanges import ChangeStream, Consumer, NotFound, Server


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)



async def open_feeds(couch_server, expected, timeout=5.0):
    """Poll the test server's count of open _changes feeds until it is `expected`."""
    deadline = reactor.seconds() + timeout
    while True:
        status, body = couch_server.request("GET", "/_testserver")
        assert status == 200
        if body["open_feeds"]["changes"] == expected or reactor.seconds() > deadline:
            return body["open_feeds"]["changes"]
        await sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_async_for_receives_backlog_and_live_changes(db):
    """The loop gets the existing changes, then live ones as they are written, in order."""
    await db.save_docs([{"_id": "old-1"}, {"_id": "old-2"}])
    seen = []
    async with Consumer(db).changes(since=0, heartbeat=500) as changes:
        assert isinstance(changes, ChangeStream)
        async for change in changes:
            seen.append(change["id"])
            if len(seen) == 2:
                reactor.callLater(0.1, db.save_doc, {"_id": "live-1"})
            if len(seen) == 3:
                break
    assert seen == ["old-1", "old-2", "live-1"]
    assert changes.last_seq is not None


@pytest_twisted.ensureDeferred
async def test_break_releases_the_connection(couch_server, db):
    """Leaving a bare async for with break closes the feed on the server side."""
    await db.save_docs([{"_id": f"d{i}"} for i in range(5)])
    before = await open_feeds(couch_server, 0)
    async for change in Consumer(db).changes(since=0, heartbeat=500):
        assert await open_feeds(couch_server, before + 1) == before + 1
        break
    assert await open_feeds(couch_server, before) == before


@pytest_twisted.ensureDeferred
async def test_feed_is_paused_while_the_body_runs(db):
    """A slow loop body holds the feed back: while it runs the feed is paused, so its stall watchdog is too."""
    await db.save_docs([{"_id": f"d{i:03d}"} for i in range(200)])
    watchdog_time = task.Clock()
    stream = Consumer(db, clock=watchdog_time).changes(since=0, heartbeat=False, timeout=500)
    count = 0
    async for change in stream:
        # Hours pass in the body: a feed still being read would stall.
        watchdog_time.advance(3600)
        count += 1
        if count % 50 == 0:
            await sleep(0.01)
    assert count == 200
    assert stream.last_seq == (await Consumer(db).fetch(since="now"))["last_seq"]


@pytest_twisted.ensureDeferred
async def test_errors_surface_in_the_loop(couch_server):
    """A missing database raises NotFound from the async for statement."""
    server = Server(couch_server.admin_url)
    try:
        with pytest.raises(NotFound):
            async for _ in Consumer(server["no-such-db"]).changes():
                pass
    finally:
        await server.close()
