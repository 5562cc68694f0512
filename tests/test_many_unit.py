"""DatabasesService on the fake CouchDB and task.Clock: handler Deferreds, stops, deletions, failures, scans.

The fake has no ``_db_updates`` (as a CouchDB node without
``_global_changes``), so these services find changes by scanning every
``rescan_interval`` seconds; the ``_db_updates`` path is tested against the
test server in test_many_service.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txchanges import DatabasesService, MemoryCheckpoints, Server
from txchanges.many._match import predicate
from txchanges.testing import FakeCouchDB

RESCAN = 10.0


class Held:
    """A handler whose calls finish when the test says."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.pending: list[Deferred[None]] = []

    def __call__(self, db: str, change: dict[str, Any]) -> "Deferred[None]":
        self.calls.append((db, change["id"]))
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def finish(self, n: int = 1) -> None:
        for _ in range(n):
            self.pending.pop(0).callback(None)


def setup(**kwargs: Any) -> tuple[FakeCouchDB, Clock, Server]:
    clock = Clock()
    fake = FakeCouchDB(clock=clock)
    return fake, clock, Server(fake.url, http=fake.client())


def make(server: Server, handler: Any, clock: Clock, **kwargs: Any) -> DatabasesService:
    kwargs.setdefault("rescan_interval", RESCAN)
    kwargs.setdefault("checkpoint_interval", 1.0)
    return DatabasesService(server, handler, clock=clock, **kwargs)


def test_without_db_updates_the_databases_are_scanned_every_interval() -> None:
    fake, clock, server = setup()
    fake.create_db("a")
    fake.save("a", {"_id": "a1"})
    seen: list[tuple[str, str]] = []
    s = make(server, lambda db, change: seen.append((db, change["id"])), clock)
    s.startService()
    fake.flush()
    assert seen == [("a", "a1")]
    assert s.state == "following" and s.stats.scans == 1
    fake.create_db("b")
    fake.save("b", {"_id": "b1"})
    fake.save("a", {"_id": "a2"})
    clock.advance(RESCAN - 0.1)
    fake.flush()
    assert len(seen) == 1
    clock.advance(0.1)
    fake.flush()
    assert sorted(seen[1:]) == [("a", "a2"), ("b", "b1")]
    assert s.stats.scans == 2


def test_names_that_do_not_match_are_left_alone() -> None:
    fake, clock, server = setup()
    for name in ("tenant-1", "tenant-2", "other"):
        fake.create_db(name)
        fake.save(name, {"_id": "x"})
    seen: list[str] = []
    make(server, lambda db, change: seen.append(db), clock, match=r"tenant-\d+").startService()
    fake.flush()
    assert sorted(seen) == ["tenant-1", "tenant-2"]
    seen.clear()
    make(server, lambda db, change: seen.append(db), clock).startService()
    fake.flush()
    assert sorted(seen) == ["other", "tenant-1", "tenant-2"]
    seen.clear()
    make(server, lambda db, change: seen.append(db), clock, match=lambda name: name.endswith("2")).startService()
    fake.flush()
    assert seen == ["tenant-2"]


def test_by_default_system_databases_are_not_followed() -> None:
    follows = predicate(None)
    assert [follows(name) for name in ("_users", "_replicator", "_global_changes", "_dbs", "a_b")] == [
        False, False, False, False, True
    ]


def test_a_page_at_a_time_and_only_what_is_done_is_checkpointed() -> None:
    fake, clock, server = setup()
    fake.create_db("a")
    after = []
    for i in range(5):
        fake.save("a", {"_id": f"d{i}"})
        after.append(fake.update_seq("a"))
    store = MemoryCheckpoints()
    held = Held()
    s = make(server, held, clock, checkpoint=store, page_size=2, concurrency=1)
    s.startService()
    fake.flush()
    assert held.calls == [("a", "d0")]
    held.finish()
    fake.flush()
    assert held.calls == [("a", "d0"), ("a", "d1")]
    clock.advance(1.0)
    assert store.seqs == {}, "a page is checkpointed once every change of it is done"
    held.finish()
    fake.flush()
    clock.advance(1.0)
    assert store.seqs["a"] == after[1]
    held.finish(2)
    fake.flush()
    held.finish()
    fake.flush()
    assert [doc for _, doc in held.calls] == ["d0", "d1", "d2", "d3", "d4"]
    assert sum(1 for r in fake.requests if r.path[-1:] == ["_changes"]) == 3
    clock.advance(1.0)
    assert store.seqs["a"] == fake.update_seq("a")


def test_a_stop_waits_for_running_calls_then_saves_what_is_done() -> None:
    fake, clock, server = setup()
    first_done = {}
    for name in ("a", "b"):
        fake.create_db(name)
        fake.save(name, {"_id": f"{name}1"})
        first_done[name] = fake.update_seq(name)
        fake.save(name, {"_id": f"{name}2"})
    store = MemoryCheckpoints()
    held = Held()
    s = make(server, held, clock, checkpoint=store, stop_timeout=5.0)
    s.startService()
    fake.flush()
    assert sorted(held.calls) == [("a", "a1"), ("b", "b1")]
    held.finish()  # the first of the two: a1 or b1
    first = held.calls[0][0]
    fake.flush()
    stopped = s.stopService()
    assert not stopped.called
    clock.advance(4.9)
    assert not stopped.called
    clock.advance(0.1)
    assert stopped.called
    # The change done is behind the checkpoint, the ones never finished are not.
    assert store.seqs == {first: first_done[first]}
    assert s.state == "stopped"
    fired: list[Any] = []
    s.when_stopped().addBoth(fired.append)
    assert fired == [None]


def test_the_handler_failing_with_on_error_stop_stops_the_service() -> None:
    fake, clock, server = setup()
    fake.create_db("a")
    fake.save("a", {"_id": "good"})
    fake.save("a", {"_id": "bad"})
    store = MemoryCheckpoints()

    def handler(db: str, change: dict[str, Any]) -> None:
        if change["id"] == "bad":
            raise ValueError("no")

    s = make(server, handler, clock, checkpoint=store)
    ended = s.when_stopped()
    failures: list[Any] = []
    ended.addErrback(failures.append)
    s.startService()
    fake.flush()
    assert s.state == "stopped" and not s.running
    assert len(failures) == 1 and failures[0].check(ValueError)
    # Asked once stopped, when_stopped() says the same at once.
    later: list[Any] = []
    s.when_stopped().addErrback(later.append)
    assert len(later) == 1 and later[0].check(ValueError)
    assert store.seqs["a"] != fake.update_seq("a")


def test_a_database_deleted_is_told_and_its_checkpoint_dropped() -> None:
    fake, clock, server = setup()
    fake.create_db("a")
    fake.save("a", {"_id": "a1"})
    fake.create_db("b")
    fake.save("b", {"_id": "b1"})
    store = MemoryCheckpoints()
    told: list[str] = []
    s = make(server, lambda db, change: None, clock, checkpoint=store, on_deleted=told.append)
    s.startService()
    fake.flush()
    clock.advance(1.0)
    assert set(store.seqs) == {"a", "b"}
    fake.delete_db("a")
    clock.advance(RESCAN)
    fake.flush()
    clock.advance(1.0)
    assert told == ["a"]
    assert set(store.seqs) == {"b"}
    assert s.stats.deleted == 1 and s.stats.databases == 1


def test_an_empty_database_needs_no_request() -> None:
    fake, clock, server = setup()
    for n in range(50):
        fake.create_db(f"empty{n}")
    store = MemoryCheckpoints()
    s = make(server, lambda db, change: None, clock, checkpoint=store)
    s.startService()
    fake.flush()
    clock.advance(1.0)
    assert not [r for r in fake.requests if r.path[-1:] == ["_changes"]]
    assert len(store.seqs) == 50 and s.stats.databases == 50
    fake.save("empty7", {"_id": "x"})
    clock.advance(RESCAN)
    fake.flush()
    assert [r.path for r in fake.requests if r.path[-1:] == ["_changes"]] == [["empty7", "_changes"]]


def test_checkpoints_of_many_databases_are_saved_in_one_batch() -> None:
    fake, clock, server = setup()
    for n in range(30):
        fake.create_db(f"db{n}")
        fake.save(f"db{n}", {"_id": "x"})
    store = MemoryCheckpoints()
    s = make(server, lambda db, change: None, clock, checkpoint=store)
    s.startService()
    fake.flush()
    clock.advance(1.0)
    assert len(store.saves) == 1 and len(store.saves[0][0]) == 30
    assert s.stats.checkpoints == 1


@pytest.mark.parametrize("bad", [
    {"max_connections": 0}, {"page_size": -1}, {"since": 5}, {"match": 3},
    {"match": "("}, {"checkpoint_interval": 0}, {"limit": 5}, {"timeout": 1},
])
def test_bad_options_are_refused_at_once(bad: dict[str, Any]) -> None:
    fake, clock, server = setup()
    with pytest.raises((TypeError, ValueError)):
        DatabasesService(server, lambda db, change: None, clock=clock, **bad)


def test_an_unknown_feed_parameter_names_the_closest() -> None:
    fake, clock, server = setup()
    with pytest.raises(TypeError, match="include_docs"):
        DatabasesService(server, lambda db, change: None, clock=clock, include_doc=True)  # type: ignore[call-arg]


def test_a_filter_that_matches_nothing_still_moves_the_checkpoint_to_the_end() -> None:
    """The normal feed's last_seq passes the changes the filter left out: the next scan reads nothing."""
    fake, clock, server = setup()
    fake.create_db("a")
    for i in range(3):
        fake.save("a", {"_id": f"d{i}", "wanted": i == 1})
    fake.register_filter("app/wanted", lambda doc, req: doc.get("wanted"))
    store = MemoryCheckpoints()
    seen: list[str] = []
    make(server, lambda db, change: seen.append(change["id"]), clock, checkpoint=store, filter_name="app/wanted").startService()
    fake.flush()
    clock.advance(1.0)
    assert seen == ["d1"]
    assert store.seqs["a"] == fake.update_seq("a")
    clock.advance(RESCAN)
    fake.flush()
    assert sum(1 for r in fake.requests if r.path[-1:] == ["_changes"]) == 1
