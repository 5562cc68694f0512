"""Behaviours every CouchDB backend must show, written once.

:class:`ContractTests` holds the cases; ``test_contract.py`` runs them on
each backend: the in-memory fake of ``txchanges.testing`` (on a
``task.Clock``) and the project's CouchDB-compatible test server over the
network, the cases marked :func:`reads_feeds` there once with each of
``Server``'s feed readers. A case talks to its backend only through :class:`Backend`: an admin
``Server``, one fresh database, a way to let time pass, and a way to install
a design-document filter.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from txchanges import (
    BadRequest,
    ChangesService,
    Conflict,
    Consumer,
    Database,
    NotFound,
    PreconditionFailed,
    Server,
    Unauthorized,
)

REV = re.compile(r"^\d+-[0-9a-f]{32}$")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

FRUIT_FILTER_JS = "function(doc, req) { return doc.type === req.query.type; }"


def fruit_filter(doc: dict[str, Any], req: dict[str, Any]) -> bool:
    """The Python stand-in of FRUIT_FILTER_JS."""
    return doc.get("type") == req["query"].get("type")


def reads_feeds(case: F) -> F:
    """
    Mark a case that reads a feed (``wait``, ``wait_once``, the service):
    on a real server it runs with each of ``Server``'s feed readers, its own
    (``fast_feeds=True``) and treq's (``fast_feeds=False``).
    """
    case.reads_feeds = True  # type: ignore[attr-defined]
    return case


class Backend(ABC):
    """What a contract case may use."""

    #: The admin Server.
    server: Server
    #: The clock consumers and services must use.
    clock: Any
    #: The name of the database the case may create.
    db_name: str

    async def create_db(self) -> Database:
        return await self.server.create_db(self.db_name)

    def consumer(self, db: Database) -> Consumer:
        return Consumer(db, clock=self.clock)

    @abstractmethod
    def anonymous_server(self) -> Server:
        """A Server without credentials."""

    @abstractmethod
    async def pause(self, seconds: float) -> None:
        """Let *seconds* pass."""

    @abstractmethod
    async def settle(self, d: "Deferred[Any]", within: float = 10.0) -> Any:
        """The result of *d*, letting time pass until it fires (at most *within* seconds)."""

    @abstractmethod
    async def until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Let time pass until *predicate* holds; fail after *within* seconds."""

    @abstractmethod
    async def add_filter(self, db: Database, name: str, js: str, python: Callable[..., Any]) -> None:
        """Install filter ``name`` ("ddoc/fname") given as JavaScript and as its Python stand-in."""

    @abstractmethod
    def started_feeds(self) -> int:
        """How many _changes feeds the backend has started, each counted once
        its ``since`` is resolved."""

    async def start_feed(self, open_feed: Callable[[], T]) -> T:
        """Call *open_feed* (a Consumer call that opens a ``since=now`` feed)
        and return what it returns once the backend has started that feed: a
        write from then on comes after its "now"."""
        before = self.started_feeds()
        result = open_feed()
        await self.until(lambda: self.started_feeds() > before)
        return result

    async def close(self) -> None:
        await self.server.close()


async def fill(db: Database) -> dict[str, str]:
    """Fruit, vegetables, an updated doc, a deleted doc and a design doc; returns id -> rev."""
    design = await db.save_doc({"_id": "_design/app", "language": "javascript"})
    results = await db.save_docs([
        {"_id": "apple", "type": "fruit"},
        {"_id": "banana", "type": "fruit"},
        {"_id": "carrot", "type": "vegetable"},
        {"_id": "doomed", "type": "vegetable"},
        {"_id": "no-type"},
    ])
    revs = {r["id"]: r["rev"] for r in results}
    revs["_design/app"] = design["rev"]
    revs["apple"] = (await db.save_doc({"_id": "apple", "_rev": revs["apple"], "type": "fruit", "n": 2}))["rev"]
    revs["doomed"] = (await db.delete_doc("doomed", revs["doomed"]))["rev"]
    return revs


ALL_IDS = ["_design/app", "apple", "banana", "carrot", "doomed", "no-type"]


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


class ContractTests:
    """The contract; a subclass provides the ``backend`` fixture."""

    @pytest_twisted.ensureDeferred
    async def test_documents_and_revisions(self, backend: Backend) -> None:
        """Saving, updating, reading and deleting a document gives N-<32 hex> revisions and 409 on a stale one."""
        db = await backend.create_db()
        first = await db.save_doc({"_id": "doc", "v": 1})
        assert REV.match(first["rev"]) and first["rev"].startswith("1-")
        assert await db.get("doc") == {"_id": "doc", "_rev": first["rev"], "v": 1}
        second = await db.save_doc({"_id": "doc", "_rev": first["rev"], "v": 2})
        assert second["rev"].startswith("2-")
        with pytest.raises(Conflict):
            await db.save_doc({"_id": "doc", "_rev": first["rev"], "v": 3})
        deleted = await db.delete_doc("doc", second["rev"])
        assert deleted["rev"].startswith("3-")
        with pytest.raises(NotFound):
            await db.get("doc")
        again = await db.save_doc({"_id": "doc", "v": 4})
        assert again["rev"].startswith("4-"), "a re-created document extends its deleted branch"
        generated = await db.save_doc({"v": 5})
        assert (await db.get(generated["id"]))["v"] == 5

    @pytest_twisted.ensureDeferred
    async def test_databases(self, backend: Backend) -> None:
        """A created database is listed and has info; creating it twice is PreconditionFailed."""
        db = await backend.create_db()
        assert backend.db_name in await backend.server.all_dbs()
        info = await db.info()
        assert info["db_name"] == backend.db_name and isinstance(info["update_seq"], str)
        with pytest.raises(PreconditionFailed):
            await backend.server.create_db(backend.db_name)
        assert (await backend.server.info())["couchdb"] == "Welcome"

    @pytest_twisted.ensureDeferred
    async def test_fetch_since_0(self, backend: Backend) -> None:
        """fetch(since=0) has one row per document with its latest rev, deleted rows, string seqs, last_seq and pending 0."""
        db = await backend.create_db()
        revs = await fill(db)
        result = await backend.consumer(db).fetch(since=0)
        rows = result["results"]
        assert sorted(ids(rows)) == ALL_IDS
        assert {r["id"]: r["changes"][0]["rev"] for r in rows} == revs
        assert [r["id"] for r in rows if r.get("deleted")] == ["doomed"]
        assert all(isinstance(r["seq"], str) for r in rows)
        assert isinstance(result["last_seq"], str) and result["last_seq"] == rows[-1]["seq"]
        assert result["pending"] == 0

    @pytest_twisted.ensureDeferred
    async def test_fetch_since_last_seq_is_empty(self, backend: Backend) -> None:
        """fetch(since=last_seq) has no rows and the same last_seq; since='now' too."""
        db = await backend.create_db()
        await fill(db)
        c = backend.consumer(db)
        last_seq = (await c.fetch(since=0))["last_seq"]
        after = await c.fetch(since=last_seq)
        assert after["results"] == [] and after["last_seq"] == last_seq and after["pending"] == 0
        now = await c.fetch(since="now")
        assert now["results"] == [] and now["last_seq"] == last_seq

    @pytest_twisted.ensureDeferred
    async def test_paging_with_limit(self, backend: Backend) -> None:
        """Pages of limit=2 from each last_seq cover every change once, pending counting down."""
        db = await backend.create_db()
        await fill(db)
        c = backend.consumer(db)
        seen: list[str] = []
        pendings = []
        since: Any = 0
        for _ in range(10):
            page = await c.fetch(since=since, limit=2)
            seen += ids(page["results"])
            pendings.append(page["pending"])
            since = page["last_seq"]
            if not page["results"]:
                break
        assert sorted(seen) == ALL_IDS and len(seen) == len(set(seen))
        assert pendings == [4, 2, 0, 0]

    @pytest_twisted.ensureDeferred
    async def test_descending(self, backend: Backend) -> None:
        """descending=true returns the rows newest first; with limit=1 its last_seq is the current one."""
        db = await backend.create_db()
        await fill(db)
        c = backend.consumer(db)
        forward = ids((await c.fetch(since=0))["results"])
        backward = await c.fetch(descending=True)
        assert ids(backward["results"]) == forward[::-1]
        newest = await c.fetch(descending=True, limit=1)
        assert ids(newest["results"]) == forward[-1:]
        assert newest["last_seq"] == (await c.fetch(since="now"))["last_seq"]
        assert newest["pending"] == len(forward) - 1

    @pytest_twisted.ensureDeferred
    async def test_include_docs(self, backend: Backend) -> None:
        """include_docs=true adds each document, and a stub with _deleted for a deleted one."""
        db = await backend.create_db()
        revs = await fill(db)
        rows = (await backend.consumer(db).fetch(since=0, include_docs=True))["results"]
        docs = {r["id"]: r["doc"] for r in rows}
        assert docs["apple"] == {"_id": "apple", "_rev": revs["apple"], "type": "fruit", "n": 2}
        assert docs["doomed"] == {"_id": "doomed", "_rev": revs["doomed"], "_deleted": True}

    @pytest_twisted.ensureDeferred
    async def test_filter_doc_ids(self, backend: Backend) -> None:
        """doc_ids returns only those documents (absent ids silently), pending counting the others."""
        db = await backend.create_db()
        await fill(db)
        result = await backend.consumer(db).fetch(since=0, doc_ids=["apple", "doomed", "not-there"])
        assert sorted(ids(result["results"])) == ["apple", "doomed"]
        assert result["pending"] == len(ALL_IDS) - 2

    @pytest_twisted.ensureDeferred
    async def test_filter_selector(self, backend: Backend) -> None:
        """An equality selector returns the matching documents and a last_seq past the last row."""
        db = await backend.create_db()
        await fill(db)
        c = backend.consumer(db)
        result = await c.fetch(since=0, selector={"type": "fruit"})
        assert sorted(ids(result["results"])) == ["apple", "banana"]
        assert result["last_seq"] == (await c.fetch(since="now"))["last_seq"]
        assert result["last_seq"] != result["results"][-1]["seq"], "doomed was deleted after both"

    @pytest_twisted.ensureDeferred
    async def test_filter_design(self, backend: Backend) -> None:
        """filter=_design returns only design documents."""
        db = await backend.create_db()
        await fill(db)
        result = await backend.consumer(db).fetch(since=0, filter_name="_design")
        assert ids(result["results"]) == ["_design/app"]

    @reads_feeds
    @pytest_twisted.ensureDeferred
    async def test_design_document_filter(self, backend: Backend) -> None:
        """A ddoc/name filter sees the params={...} of the call as req.query, on fetch and on a live feed."""
        db = await backend.create_db()
        await fill(db)
        await backend.add_filter(db, "app/by_type", FRUIT_FILTER_JS, fruit_filter)
        c = backend.consumer(db)
        fruit = await c.fetch(since=0, filter_name="app/by_type", params={"type": "fruit"})
        assert sorted(ids(fruit["results"])) == ["apple", "banana"]
        d = await backend.start_feed(
            lambda: c.wait_once(since="now", filter_name="app/by_type", params={"type": "vegetable"}, timeout=5000))
        await db.save_doc({"_id": "kiwi", "type": "fruit"})
        await backend.pause(0.1)
        assert not d.called, "a rejected change does not end the longpoll"
        await db.save_doc({"_id": "leek", "type": "vegetable"})
        assert ids((await backend.settle(d))["results"]) == ["leek"]

    @reads_feeds
    @pytest_twisted.ensureDeferred
    async def test_wait_once_fires_after_a_write(self, backend: Backend) -> None:
        """wait_once(since='now') waits, then fires with the change written meanwhile."""
        db = await backend.create_db()
        await fill(db)
        c = backend.consumer(db)
        d = await backend.start_feed(lambda: c.wait_once(since="now", timeout=10000))
        await backend.pause(0.2)
        assert not d.called
        await db.save_doc({"_id": "late"})
        result = await backend.settle(d)
        assert ids(result["results"]) == ["late"]
        assert result["last_seq"] == (await c.fetch(since="now"))["last_seq"]

    @reads_feeds
    @pytest_twisted.ensureDeferred
    async def test_wait_once_answers_at_once_when_changes_exist(self, backend: Backend) -> None:
        """wait_once(since=0) does not wait when there are changes: it returns them like fetch."""
        db = await backend.create_db()
        await fill(db)
        c = backend.consumer(db)
        result = await backend.settle(c.wait_once(since=0, timeout=60000), within=2)
        assert sorted(ids(result["results"])) == ALL_IDS
        assert result["last_seq"] == (await c.fetch(since="now"))["last_seq"]

    @reads_feeds
    @pytest_twisted.ensureDeferred
    async def test_wait_once_timeout(self, backend: Backend) -> None:
        """wait_once with a timeout and no change fires with no rows and the current last_seq."""
        db = await backend.create_db()
        await fill(db)
        c = backend.consumer(db)
        result = await backend.settle(c.wait_once(since="now", timeout=200))
        assert result["results"] == []
        assert result["last_seq"] == (await c.fetch(since="now"))["last_seq"]

    @reads_feeds
    @pytest_twisted.ensureDeferred
    async def test_wait_ends_with_last_seq(self, backend: Backend) -> None:
        """wait(since=0, heartbeat=False, timeout=...) delivers every row and ends with the current last_seq."""
        db = await backend.create_db()
        await fill(db)
        c = backend.consumer(db)
        seen: list[dict[str, Any]] = []
        last_seq = await backend.settle(c.wait(since=0, heartbeat=False, timeout=200, cb=seen.append))
        assert sorted(ids(seen)) == ALL_IDS
        assert last_seq == (await c.fetch(since="now"))["last_seq"]

    @reads_feeds
    @pytest_twisted.ensureDeferred
    async def test_wait_limit(self, backend: Backend) -> None:
        """wait(limit=2) ends after two rows with a last_seq from which the rest follows."""
        db = await backend.create_db()
        await fill(db)
        c = backend.consumer(db)
        seen: list[dict[str, Any]] = []
        last_seq = await backend.settle(c.wait(since=0, limit=2, cb=seen.append))
        assert len(seen) == 2
        rest = await c.fetch(since=last_seq)
        assert sorted(ids(seen) + ids(rest["results"])) == ALL_IDS

    @reads_feeds
    @pytest_twisted.ensureDeferred
    async def test_wait_live_rows(self, backend: Backend) -> None:
        """wait(since='now') hands changes written while it runs to the callback in write order."""
        db = await backend.create_db()
        c = backend.consumer(db)
        seen: list[dict[str, Any]] = []
        d = await backend.start_feed(lambda: c.wait(since="now", heartbeat=200, cb=seen.append))
        for i in range(3):
            await db.save_doc({"_id": f"live-{i}"})
        await db.save_docs([{"_id": "bulk-a"}, {"_id": "bulk-b"}])
        await backend.until(lambda: len(seen) == 5)
        await backend.pause(0.5)
        c.stop()
        resume = await backend.settle(d)
        assert ids(seen) == ["live-0", "live-1", "live-2", "bulk-a", "bulk-b"]
        assert resume == seen[-1]["seq"]
        assert (await c.fetch(since=resume))["results"] == []

    @pytest_twisted.ensureDeferred
    async def test_seq_interval(self, backend: Backend) -> None:
        """With seq_interval some rows carry seq null while last_seq stays a real sequence."""
        db = await backend.create_db()
        await db.save_docs([{"_id": f"d{i}"} for i in range(6)])
        result = await backend.consumer(db).fetch(since=0, seq_interval=3)
        assert len(result["results"]) == 6
        assert [r["seq"] is None for r in result["results"]] == [True, False, True, True, False, True]
        assert isinstance(result["last_seq"], str)

    @pytest_twisted.ensureDeferred
    async def test_local_documents_stay_out_of_the_feed(self, backend: Backend) -> None:
        """A _local document can be saved, read and updated but never appears in _changes."""
        db = await backend.create_db()
        saved = await db.save_doc({"_id": "_local/checkpoint", "seq": "x"})
        await db.save_doc({"_id": "_local/checkpoint", "_rev": saved["rev"], "seq": "y"})
        assert (await db.get("_local/checkpoint"))["seq"] == "y"
        with pytest.raises(Conflict):
            await db.save_doc({"_id": "_local/checkpoint", "_rev": saved["rev"], "seq": "z"})
        assert (await backend.consumer(db).fetch(since=0))["results"] == []

    @reads_feeds
    @pytest_twisted.ensureDeferred
    async def test_missing_database(self, backend: Backend) -> None:
        """Every feed of a missing database fails with NotFound 'Database does not exist.'."""
        c = backend.consumer(backend.server[backend.db_name])
        for d in (c.fetch(), c.wait_once(since=0), c.wait(since=0)):
            with pytest.raises(NotFound) as caught:
                await backend.settle(d)
            assert caught.value.reason == "Database does not exist."

    @pytest_twisted.ensureDeferred
    async def test_bad_since(self, backend: Backend) -> None:
        """A bare integer or garbage since is a BadRequest worded as CouchDB does."""
        db = await backend.create_db()
        c = backend.consumer(db)
        for since in (3, "bogus"):
            with pytest.raises(BadRequest) as caught:
                await c.fetch(since=since)
            assert caught.value.reason == "Malformed sequence supplied in 'since' parameter."

    @pytest_twisted.ensureDeferred
    async def test_no_credentials(self, backend: Backend) -> None:
        """Without credentials a database is Unauthorized, as CouchDB 3's defaults make it."""
        await backend.create_db()
        anonymous = backend.anonymous_server()
        try:
            with pytest.raises(Unauthorized) as caught:
                await Consumer(anonymous[backend.db_name], clock=backend.clock).fetch()
            assert caught.value.reason == "You are not authorized to access this db."
        finally:
            await anonymous.close()

    @reads_feeds
    @pytest_twisted.ensureDeferred
    async def test_database_deleted_under_an_open_feed(self, backend: Backend) -> None:
        """Deleting the database ends an open wait() with a last_seq; the next request is NotFound."""
        db = await backend.create_db()
        await fill(db)
        c = backend.consumer(db)
        d = c.wait(since=0, heartbeat=200)
        await backend.pause(0.1)
        await backend.server.delete_db(backend.db_name)
        assert isinstance(await backend.settle(d, within=5), str)
        with pytest.raises(NotFound):
            await c.fetch()

    @pytest_twisted.ensureDeferred
    async def test_stale_since_after_recreation_rewinds(self, backend: Backend) -> None:
        """A since from before the database was re-created is not an error: the feed starts over."""
        db = await backend.create_db()
        await fill(db)
        c = backend.consumer(db)
        old = (await c.fetch(since=0))["last_seq"]
        await backend.server.delete_db(backend.db_name)
        db = await backend.create_db()
        await db.save_doc({"_id": "reborn"})
        assert ids((await c.fetch(since=old))["results"]) == ["reborn"]

    @reads_feeds
    @pytest_twisted.ensureDeferred
    async def test_service_passes_params_to_its_filter(self, backend: Backend) -> None:
        """A ChangesService's params={...} reach its ddoc/name filter as req.query: only those documents are handled."""
        db = await backend.create_db()
        await fill(db)
        await backend.add_filter(db, "app/by_type", FRUIT_FILTER_JS, fruit_filter)
        handled: list[str] = []
        service = ChangesService(db, lambda row: handled.append(row["id"]), since=0, heartbeat=500,
                                 clock=backend.clock, filter_name="app/by_type", params={"type": "vegetable"})
        service.startService()
        try:
            await backend.until(lambda: "carrot" in handled)
            await db.save_docs([{"_id": "kiwi", "type": "fruit"}, {"_id": "leek", "type": "vegetable"}])
            await backend.until(lambda: "leek" in handled)
        finally:
            await backend.settle(service.stopService())
        assert sorted(handled) == ["carrot", "leek"]

    @pytest_twisted.ensureDeferred
    async def test_service_handles_every_document(self, backend: Backend) -> None:
        """A ChangesService handles every document, old and live, and stops where nothing is left."""
        db = await backend.create_db()
        await fill(db)
        handled: list[str] = []
        service = ChangesService(db, lambda row: handled.append(row["id"]), since=0,
                                 heartbeat=500, clock=backend.clock)
        service.startService()
        try:
            await backend.until(lambda: len(handled) == len(ALL_IDS))
            await db.save_docs([{"_id": f"new-{i}"} for i in range(3)])
            await backend.until(lambda: len(handled) == len(ALL_IDS) + 3)
        finally:
            await backend.settle(service.stopService())
        assert sorted(handled) == sorted(ALL_IDS + [f"new-{i}" for i in range(3)])
        assert (await backend.consumer(db).fetch(since=service.resume_seq))["results"] == []
