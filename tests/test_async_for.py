"""async for over the continuous feed, against the test server and a scripted server."""

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from txchanges import ChangeStream, Consumer, NotFound, Server

from ._service_helpers import open_feeds, wait_for
from .memorynet import MemoryNet
from .scriptedfeed import FeedServer, build_feed, held_back


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
                # Written while the feed is open and has sent the backlog.
                await db.save_doc({"_id": "live-1"})
            if len(seen) == 3:
                live_seq = change["seq"]
                break
    assert seen == ["old-1", "old-2", "live-1"]
    assert changes.last_seq == live_seq == (await Consumer(db).fetch(since="now"))["last_seq"]


@pytest_twisted.ensureDeferred
async def test_break_releases_the_connection(couch_server, db):
    """Leaving a bare async for with break closes the feed on the server side."""
    await db.save_docs([{"_id": f"d{i}"} for i in range(5)])
    before = open_feeds(couch_server)
    async for change in Consumer(db).changes(since=0, heartbeat=500):
        await wait_for(lambda: open_feeds(couch_server) == before + 1, 5, "the server to count the feed open")
        break
    await wait_for(lambda: open_feeds(couch_server) == before, 5, "the server to see the feed closed")


#: Server writes the in-memory network lets wait before it pauses the server.
WINDOW = 1


@pytest_twisted.ensureDeferred
async def test_feed_is_not_read_while_the_body_runs():
    """While the loop body runs, the connection is not read: the scripted server, one row per write, is held back
    exactly WINDOW + 1 rows past the change in hand (what the paused transport holds), wherever the loop is; the loop
    still gets every change in order and ends at last_seq."""
    feed = build_feed(300)
    server = FeedServer(feed, chunk=None, reactor=reactor)
    net = MemoryNet(server, reactor, window=WINDOW)
    couch = Server("http://127.0.0.1:5984/", reactor=net)
    stream = Consumer(couch["db"]).changes(since=0, heartbeat=False)
    seen: list[tuple[str, str]] = []
    ahead: dict[int, int] = {}
    try:
        async for change in stream:
            seen.append((change["id"], change["changes"][0]["rev"]))
            if len(seen) in (1, 150, 297):
                # The body holds this change until nothing moves: the server
                # is paused and the client does not read, or the server is done.
                held = await held_back(net.pipes[-1], server)
                assert held, f"the server wrote the whole feed while change {len(seen)} was held"
                ahead[len(seen)] = server.writers[-1].rows_sent - len(seen)
    finally:
        await couch.close()
    assert ahead == {1: WINDOW + 1, 150: WINDOW + 1, 297: WINDOW + 1}
    assert seen == feed.keys()
    assert stream.last_seq == feed.last_seq and server.feed_requests == ["0"]


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
            # Give the reactor turns: bytes that arrive now must wait too.
            await task.deferLater(reactor, 0, lambda: None)
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
