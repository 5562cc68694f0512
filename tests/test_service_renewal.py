"""ChangesService's feed_max_duration, driven by task.Clock: a continuous
request is ended after that long and a normal feed from the same position
tells how far the database moved, so a filter that never matches still moves
the checkpoint."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from txchanges import ChangesService, MemoryCheckpoint
from txchanges.testing import FakeCouchDB

from .test_service_unit import Harness, end, row


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock) -> FakeCouchDB:
    """A fake with one database, "db", and a filter "app/none" that matches nothing."""
    couch = FakeCouchDB(clock=clock)
    couch.create_db("db")
    couch.register_filter("app/none", lambda doc, req: False)
    return couch


def feeds(fake: FakeCouchDB) -> list[tuple[str, str]]:
    """Every _changes request the fake received, as ``(feed, since)``, but the one that resolves since=now."""
    return [(r.query.get("feed", "normal"), r.query.get("since", "0"))
            for r in fake.requests if r.path[-1:] == ["_changes"] and r.query.get("since") != "now"]


def follower(fake: FakeCouchDB, clock: Clock, store: MemoryCheckpoint, **options: Any) -> tuple[ChangesService, list[str]]:
    handled: list[str] = []
    options.setdefault("checkpoint_interval", 3600.0)
    options.setdefault("since", "now")
    service = ChangesService(fake.server()["db"], lambda r: handled.append(r["id"]), checkpoint=store,
                             clock=clock, filter_name="app/none", heartbeat=10000, **options)
    return service, handled


def test_filtered_out_writes_move_the_checkpoint(fake: FakeCouchDB, clock: Clock) -> None:
    """After feed_max_duration, the checkpoint is the database's last sequence although no row matched."""
    store = MemoryCheckpoint()
    service, handled = follower(fake, clock, store, feed_max_duration=60.0)
    service.startService()
    start = fake.update_seq("db")
    for n in range(20):
        fake.save("db", {"_id": f"d{n}"})
    clock.advance(59.0)
    assert store.seq == start and service.resume_seq == start
    clock.advance(1.0)
    assert handled == []
    assert store.seq == fake.update_seq("db") == service.resume_seq
    assert feeds(fake) == [("continuous", start), ("normal", start), ("continuous", fake.update_seq("db"))]
    service.stopService()


def test_without_feed_max_duration_the_checkpoint_stays(fake: FakeCouchDB, clock: Clock) -> None:
    """With feed_max_duration=None the one continuous request goes on and the checkpoint never moves."""
    store = MemoryCheckpoint()
    service, _ = follower(fake, clock, store, feed_max_duration=None)
    service.startService()
    start = fake.update_seq("db")
    for n in range(20):
        fake.save("db", {"_id": f"d{n}"})
    clock.pump([60.0] * 10)
    assert store.seq == start
    assert feeds(fake) == [("continuous", start)]
    service.stopService()


def test_renewed_every_period_and_checkpoint_follows(fake: FakeCouchDB, clock: Clock) -> None:
    """Each period ends one continuous request; each catch-up starts where the one before ended and is saved."""
    store = MemoryCheckpoint()
    service, _ = follower(fake, clock, store, feed_max_duration=30.0)
    service.startService()
    ends = [fake.update_seq("db")]
    for period in range(4):
        for n in range(5):
            fake.save("db", {"_id": f"p{period}-{n}"})
        clock.advance(30.0)
        ends.append(fake.update_seq("db"))
        assert store.seq == ends[-1]
    expected = [("continuous", ends[0])]
    for before, after in zip(ends, ends[1:]):
        expected += [("normal", before), ("continuous", after)]
    assert feeds(fake) == expected
    assert service.stats.reconnects == 8
    assert fake.open_feeds == 1
    service.stopService()


def test_rows_still_flow_through_renewals(clock: Clock) -> None:
    """Matching changes written at any time, across renewals, are each handled once."""
    fake = FakeCouchDB(clock=clock)
    fake.create_db("db")
    fake.register_filter("app/even", lambda doc, req: doc["n"] % 2 == 0)
    handled: list[str] = []
    service = ChangesService(fake.server()["db"], lambda r: handled.append(r["id"]), clock=clock,
                             filter_name="app/even", heartbeat=10000, feed_max_duration=7.0)
    service.startService()
    for n in range(40):
        fake.save("db", {"_id": f"d{n}", "n": n})
        clock.advance(1.0)
    assert handled == [f"d{n}" for n in range(0, 40, 2)]
    service.stopService()


def test_the_catch_up_hands_over_its_rows_then_its_last_seq() -> None:
    """Rows of the normal feed after a renewal are handled, and its last_seq, past them, is the checkpoint."""
    h = Harness(feed_max_duration=10.0, heartbeat=60000)
    h.couch.answer(row("1-a", "a"))
    h.couch.answer(b'{"results":[\n', row("2-b", "b").rstrip(), b'\n],\n"last_seq":"9-z","pending":0}\n',
                   finish=True)
    h.couch.answer()
    h.start()
    h.advance(10.0)
    h.flush()
    assert h.handled == ["a", "b"]
    assert [dict(_q(r.uri)).get("feed") for r in h.couch.requests] == ["continuous", "normal", "continuous"]
    assert h.couch.since(1) == "1-a" and h.couch.since(2) == "9-z"
    assert h.service.resume_seq == "9-z"
    assert h.store.seq == "9-z"


def test_a_failed_catch_up_is_retried_as_a_continuous_request() -> None:
    """A catch-up that fails is followed, after the retry delay, by a continuous request from the same place."""
    h = Harness(feed_max_duration=10.0, heartbeat=60000)
    h.couch.answer(row("1-a", "a"))
    h.couch.answer(b'{"error":"unknown_error","reason":"boom"}', status=500)
    h.couch.answer(end("5-e"), finish=True)
    h.couch.answer()
    h.start()
    h.advance(10.0)
    h.flush()
    assert [dict(_q(r.uri)).get("feed") for r in h.couch.requests] == ["continuous", "normal"]
    h.advance(1.0)
    h.flush()
    feeds_sent = [dict(_q(r.uri)).get("feed") for r in h.couch.requests]
    assert feeds_sent == ["continuous", "normal", "continuous", "continuous"]
    assert h.couch.since(2) == "1-a"
    assert h.service.resume_seq == "5-e"


def test_stop_during_a_catch_up() -> None:
    """stopService() while the catch-up waits for its answer stops cleanly, with the checkpoint where the feed was."""
    h = Harness(feed_max_duration=10.0, heartbeat=60000)
    h.couch.answer(row("1-a", "a"))
    h.start()
    h.advance(10.0)
    h.flush()
    assert [dict(_q(r.uri)).get("feed") for r in h.couch.requests] == ["continuous", "normal"]
    stopped = h.service.stopService()
    h.flush()
    assert stopped.called and h.outcome == [None]
    assert h.store.seq == "1-a" and h.clock.getDelayedCalls() == []


@pytest.mark.parametrize("bad", [0, -1.0, True, "300"])
def test_feed_max_duration_must_be_positive(bad: Any) -> None:
    """A feed_max_duration that is not a positive number of seconds is refused at once."""
    fake = FakeCouchDB()
    with pytest.raises(ValueError, match="feed_max_duration must be a positive number of seconds or None"):
        ChangesService(fake.server()["db"], print, feed_max_duration=bad)


def _q(uri: bytes) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl, urlsplit

    return parse_qsl(urlsplit(uri.decode()).query)
