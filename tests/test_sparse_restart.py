"""A filter that matches nothing, against the project's test server: the
server's last_seq moves past every change the filter leaves out, and a
follower must checkpoint it, or a restart makes the server read all those
changes again. The server counts the changes its feeds go through
(``rows_scanned`` of ``GET /_testserver``)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytest
import pytest_twisted

from txchanges import ChangesService, Consumer, Database, MemoryCheckpoint

from ._service_helpers import sleep, started_feeds, wait_for, write_docs
from ._service_helpers import testserver_counts as server_counts

WRITES = 10_000
BATCH = 1_000
NONE_MATCH = {"_id": "_design/app", "filters": {"none": "function(doc, req) { return false; }"}}


def rows_scanned(couch_server: Any, db_name: str) -> int:
    """How many changes of *db_name* the test server's feeds have gone through."""
    return int(server_counts(couch_server)["rows_scanned"].get(db_name, 0))


async def current_seq(db: Database) -> Any:
    """The database's last_seq now, from a normal feed since=now."""
    return (await Consumer(db).fetch(since="now"))["last_seq"]


async def follow(couch_server: Any, db: Database, store: MemoryCheckpoint,
                 feed_max_duration: Optional[float], handled: Callable[[Any], None]) -> ChangesService:
    """A follower of the filter that matches nothing, started once the server has started its feed."""
    service = ChangesService(db, handled, checkpoint=store, since="now", filter_name="app/none",
                             feed_max_duration=feed_max_duration)
    before = started_feeds(couch_server)
    service.startService()
    await wait_for(lambda: started_feeds(couch_server) > before and service.stats.last_activity is not None,
                   5, "the follower's feed to be served")
    return service


@pytest.mark.parametrize("feed_max_duration", [None, 0.5], ids=["without", "renewed"])
@pytest_twisted.ensureDeferred
async def test_a_restart_does_not_read_again_the_changes_a_filter_left_out(
    couch_server: Any, db: Database, db_name: str, report_summary: Callable[[str], None],
    feed_max_duration: Optional[float],
) -> None:
    """After 10,000 changes a filter left out and a restart, the server reads none of them again when the
    follower renews its feed; without renewals it reads every one of them again."""
    await db.save_doc(dict(NONE_MATCH))
    store = MemoryCheckpoint()
    handled: list[Any] = []
    first = await follow(couch_server, db, store, feed_max_duration, handled.append)
    start_seq = store.seq
    await write_docs(db, [f"doc-{n:05d}" for n in range(WRITES)], batch=BATCH)
    end_seq = await current_seq(db)
    await wait_for(lambda: rows_scanned(couch_server, db_name) >= WRITES, 10, "the feed to go through the writes")
    if feed_max_duration is not None:
        await wait_for(lambda: store.seq == end_seq, 10, "the checkpoint to reach the database's last_seq")
    await first.stopService()
    requests = first.stats.reconnects
    scanned_following = rows_scanned(couch_server, db_name)

    second = await follow(couch_server, db, store, feed_max_duration, handled.append)
    read_again = rows_scanned(couch_server, db_name) - scanned_following
    await second.stopService()

    report_summary(f"sparse filter, {WRITES} changes left out then a restart, feed_max_duration="
                   f"{feed_max_duration}: rows read again {read_again}; while following: rows scanned "
                   f"{scanned_following}, feed requests {requests} besides the first")
    assert handled == []
    if feed_max_duration is None:
        assert store.seq == start_seq and read_again == WRITES
    else:
        assert store.seq == end_seq and read_again == 0
        # A catch-up reads again at most what its continuous request read.
        assert WRITES <= scanned_following <= 2 * WRITES


@pytest_twisted.ensureDeferred
async def test_timeout_does_not_end_a_feed_whose_database_keeps_changing(couch_server: Any, db: Database) -> None:
    """As on CouchDB 3, a continuous feed's timeout (without heartbeat) counts from the last write, filtered out
    or not: while writes come more often than that, the feed goes on, so timeout cannot move a sparse follower."""
    await db.save_doc(dict(NONE_MATCH))
    before = started_feeds(couch_server)
    ended = Consumer(db).wait(since="now", heartbeat=False, timeout=1000, filter_name="app/none")
    await wait_for(lambda: started_feeds(couch_server) > before, 5, "the feed to start")
    for n in range(10):  # the writes are paced, a write every 0.2 s for 2 s: twice the timeout
        await db.save_doc({"_id": f"w{n}"})
        await sleep(0.2)
    assert not ended.called
    assert await ended == await current_seq(db)
