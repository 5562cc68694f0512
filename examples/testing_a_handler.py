"""
Test your own changes handler without a CouchDB server, using
txchanges.testing.FakeCouchDB: an in-memory CouchDB 3 driven by a fake clock.

The handler here keeps a word index of article titles. The checks below are
what its tests would be: they write documents to the fake, let the
ChangesService deliver them, and look at the index - including when the
feed is cut, the server fails, and changes are delivered twice (CouchDB's
delivery is at least once, so a handler must be idempotent).

    python examples/testing_a_handler.py

Each check is a plain function; under pytest, name them test_* instead.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from txchanges import ChangesService
from txchanges.testing import FakeCouchDB


class TitleIndex:
    """The code under test: word -> ids of the live articles whose title has it."""

    def __init__(self) -> None:
        self.words: dict[str, set[str]] = {}

    def __call__(self, change: dict[str, Any]) -> None:
        docid = change["id"]
        # Idempotent: forget the document first, then index what it is now,
        # so a change seen twice leaves the index as it was.
        for ids in self.words.values():
            ids.discard(docid)
        if not change.get("deleted"):
            for word in change["doc"].get("title", "").lower().split():
                self.words.setdefault(word, set()).add(docid)
        self.words = {w: ids for w, ids in self.words.items() if ids}

    def find(self, word: str) -> set[str]:
        return self.words.get(word, set())


class World:
    """A fake server, a fake clock, and the handler under a ChangesService."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.couch = FakeCouchDB(clock=self.clock)
        self.couch.create_db("articles")
        self.index = TitleIndex()
        db = self.couch.server()["articles"]
        self.service = ChangesService(
            db, self.index, include_docs=True, since=0, clock=self.clock,
            retry_policy=lambda attempt: 1.0,
        )
        self.service.startService()

    def stop(self) -> None:
        self.service.stopService()
        assert self.couch.open_feeds == 0


def check_indexes_new_and_updated_articles() -> None:
    world = World()
    saved = world.couch.save("articles", {"_id": "a1", "title": "Twisted and CouchDB"})
    assert world.index.find("couchdb") == {"a1"}, "written, delivered and handled at once"
    world.couch.save("articles", {"_id": "a1", "_rev": saved["rev"], "title": "Twisted only"})
    assert world.index.find("couchdb") == set() and world.index.find("only") == {"a1"}
    world.stop()


def check_forgets_deleted_articles() -> None:
    world = World()
    world.couch.save("articles", {"_id": "a1", "title": "Short lived"})
    world.couch.delete("articles", "a1")
    assert world.index.words == {}
    world.stop()


def check_survives_a_cut_feed_and_a_server_error() -> None:
    world = World()
    world.couch.save("articles", {"_id": "a1", "title": "Before"})
    world.couch.fail_next(1, 500)
    world.couch.cut_feeds()
    world.couch.save("articles", {"_id": "a2", "title": "During the outage"})
    assert world.index.find("outage") == set(), "nothing is connected yet"
    world.clock.pump([1.0, 1.0])  # one retry fails with the 500, the next one works
    assert world.index.find("outage") == {"a2"} and world.index.find("before") == {"a1"}
    world.stop()


def check_is_idempotent_when_changes_come_twice() -> None:
    world = World()
    world.couch.save_docs("articles", [{"_id": "a1", "title": "One"}, {"_id": "a2", "title": "Two"}])
    before = {w: set(ids) for w, ids in world.index.words.items()}
    world.couch.rewind("articles")  # the next feed starts over, as after a node failure
    world.couch.cut_feeds()
    world.clock.advance(1.0)
    assert world.service.stats.handled == 4, "both changes were delivered twice"
    assert world.index.words == before
    world.stop()


CHECKS = [
    check_indexes_new_and_updated_articles,
    check_forgets_deleted_articles,
    check_survives_a_cut_feed_and_a_server_error,
    check_is_idempotent_when_changes_come_twice,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok {check.__name__}")
    print("all handler checks passed")
