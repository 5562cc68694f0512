"""The fake is honest: the shared contract (see contract.py) on the in-memory
fake and on the test server, and the fake against the recorded CouchDB 3.5 answers.

The fake runs on a ``task.Clock`` through its in-memory client, so its half
takes no wall-clock time; the server half talks to the project's
CouchDB-compatible server over real sockets with the real reactor, its
feed-reading cases once through txchanges' own HTTP/1.1 reader and once
through treq.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from txchanges import Database, NotFound, Server
from txchanges.testing import FakeCouchDB

from . import fixtures_util
from ._service_helpers import started_feeds
from .contract import FRUIT_FILTER_JS, Backend, ContractTests
from .test_testing import result_of

ADMIN = ("admin", "secret")


async def install_design_filter(db: Database, name: str, js: str) -> None:
    """Add a JavaScript filter to its design document, creating the document if needed."""
    ddoc_name, fname = name.split("/")
    try:
        ddoc = await db.get("_design/" + ddoc_name)
    except NotFound:
        ddoc = {"_id": "_design/" + ddoc_name}
    ddoc.setdefault("filters", {})[fname] = js
    await db.save_doc(ddoc)


class FakeBackend(Backend):
    """The in-memory fake, on a task.Clock advanced in small steps."""

    STEP = 0.05

    def __init__(self) -> None:
        self.clock = Clock()
        self.fake = FakeCouchDB(clock=self.clock, admin=ADMIN)
        self.server = self.fake.server()
        self.db_name = "contract-db"

    def anonymous_server(self) -> Server:
        return Server(self.fake.url, http=self.fake.client())

    def _step(self) -> None:
        self.clock.advance(self.STEP)

    async def pause(self, seconds: float) -> None:
        for _ in range(round(seconds / self.STEP)):
            self._step()

    async def settle(self, d: "Deferred[Any]", within: float = 10.0) -> Any:
        await self.until(lambda: d.called, within)
        return await d

    async def until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        for _ in range(round(within / self.STEP)):
            if predicate():
                return
            self._step()
        assert predicate(), f"not reached within {within} simulated seconds"

    async def add_filter(self, db: Database, name: str, js: str, python: Callable[..., Any]) -> None:
        # As a user's application would: the design document with its
        # JavaScript, and for the fake the Python stand-in.
        await install_design_filter(db, name, js)
        self.fake.register_filter(name, python)

    def started_feeds(self) -> int:
        # One feed at a time in a case, none ending by itself: the open ones
        # are as good a count as the started ones.
        return int(self.fake.open_feeds)

    async def close(self) -> None:
        await super().close()
        assert self.fake.open_feeds == 0, "every feed ended with its test"


class ServerBackend(Backend):
    """The project's CouchDB-compatible server, over the network, its feeds
    read by txchanges' own reader (*fast_feeds*) or by treq."""

    def __init__(self, couch: Any, db_name: str, fast_feeds: bool) -> None:
        self.clock = reactor
        self._url = couch.url
        self._couch = couch
        self._fast_feeds = fast_feeds
        self.server = Server(couch.admin_url, fast_feeds=fast_feeds)
        self.db_name = db_name

    def anonymous_server(self) -> Server:
        return Server(self._url, fast_feeds=self._fast_feeds)

    async def pause(self, seconds: float) -> None:
        await deferLater(reactor, seconds, lambda: None)

    async def settle(self, d: "Deferred[Any]", within: float = 10.0) -> Any:
        timer = reactor.callLater(within, d.cancel)
        try:
            return await d
        finally:
            if timer.active():
                timer.cancel()

    async def until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            assert time.monotonic() < deadline, f"not reached within {within} seconds"
            await self.pause(0.02)

    async def add_filter(self, db: Database, name: str, js: str, python: Callable[..., Any]) -> None:
        await install_design_filter(db, name, js)

    def started_feeds(self) -> int:
        return started_feeds(self._couch)


#: The backends, and how the test server's feeds are read: "server" with
#: txchanges' own HTTP/1.1 reader (the default), "server-treq-feeds" through
#: treq (``fast_feeds=False``), only for the cases that read feeds.
BACKENDS = ["fake", "server"]
FEED_BACKENDS = BACKENDS + ["server-treq-feeds"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_spec" in metafunc.fixturenames:
        feeds = getattr(metafunc.function, "reads_feeds", False)
        metafunc.parametrize("backend_spec", FEED_BACKENDS if feeds else BACKENDS, indirect=True)


@pytest.fixture
def backend_spec(request: pytest.FixtureRequest) -> tuple[str, Any, Any]:
    """Which backend; the test server is only started for the server half."""
    if request.param == "fake":
        return ("fake", None, None)
    return (request.param, request.getfixturevalue("couch_server"), request.getfixturevalue("db_name"))


@pytest_twisted.async_yield_fixture
async def backend(backend_spec: tuple[str, Any, Any]) -> AsyncIterator[Backend]:
    kind, couch, db_name = backend_spec
    chosen: Backend = (FakeBackend() if kind == "fake"
                       else ServerBackend(couch, db_name, fast_feeds=kind != "server-treq-feeds"))
    yield chosen
    await chosen.close()


class TestContract(ContractTests):
    """Runs every contract case on both backends, and those that read feeds
    on the test server with both feed readers."""


# -- the recorded CouchDB 3.5 answers ------------------------------------------------------
#
# The fake is given the recordings' data set (see fixtures/couchdb-3/README.md)
# and asked the recorded requests. Rows may come in another order (CouchDB
# merges two shards) and revision hashes differ; everything else must match.

RECORDED_ERRORS = fixtures_util.names("error-*") + ["db-updates-without-global-changes-db"]
RECORDED_FEEDS = [
    "normal-since-0", "normal-since-now", "normal-include-docs", "normal-style-all-docs",
    "normal-all-docs-conflicts-include-docs", "normal-seq-interval-3", "normal-descending",
    "normal-descending-limit-1", "deleted-doc-include-docs", "filter-ddoc-query-param",
    "filter-doc-ids-post", "filter-doc-ids-get", "filter-selector-post",
    "filter-selector-include-docs-fields", "filter-view", "filter-design", "longpoll-immediate",
]
TYPE_VIEW_JS = "function(doc) { if (doc.type) { emit(doc.type, null); } }"


def recorded_data_set() -> FakeCouchDB:
    """The recordings' database, written in the recorded order, with Python stand-ins for its JavaScript."""
    fake = FakeCouchDB(clock=Clock(), admin=("admin", "changes-test"))
    fake.create_db("fixture-db")
    fake.save("fixture-db", {"_id": "_design/app", "filters": {"by_type": FRUIT_FILTER_JS},
                             "views": {"by_type": {"map": TYPE_VIEW_JS}}})
    fake.register_filter("app/by_type", lambda doc, req: doc.get("type") == req["query"].get("type"))
    fake.register_view("app/by_type", lambda doc: "type" in doc)
    apple = {"_id": "apple", "type": "fruit", "name": "Apple", "color": "red"}
    fake.save("fixture-db", apple)
    fake.save_docs("fixture-db", [
        {"_id": "banana", "type": "fruit", "name": "Banana", "color": "yellow"},
        {"_id": "carrot", "type": "vegetable", "name": "Carrot"},
        {"_id": "doc-to-delete", "type": "vegetable"},
        {"_id": "no-type", "note": "document without a type field"},
    ])
    fake.save("fixture-db", dict(apple, color="green"))  # the first save set apple's _rev
    fake.delete("fixture-db", "doc-to-delete")
    fake.save_docs("fixture-db", [{"_id": "banana", "_rev": "1-0123456789abcdef0123456789abcdef",
                                   "type": "fruit", "name": "Banana (conflict)"}], new_edits=False)
    fake.save("fixture-db", {"_id": "café-ümläut", "type": "fruit", "name": "unicode id"})
    return fake


def replay(fake: FakeCouchDB, name: str) -> tuple[int, bytes]:
    """Send a recorded request (method, target, credentials, body) to the fake; its status and body."""
    head, _, body = fixtures_util.load(name).meta["request"]["raw"].encode("utf-8").partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("utf-8").split("\r\n")
    method, target, _ = request_line.split(" ")
    headers = {k.encode(): [v.strip().encode()] for k, _, v in (h.partition(":") for h in header_lines)
               if k.lower() in ("authorization", "content-type")}
    response = result_of(fake.client().request(method, fake.url + target.lstrip("/"), headers=headers,
                                                **({"data": body} if body else {})))
    return response.code, result_of(response.content())


def skeleton(body: bytes) -> str:
    """The framing with each row and sequence replaced by a placeholder."""
    lines = body.decode("utf-8").split("\n")
    lines = ["ROW" + (",\r" if line.endswith(",\r") else "") if line.startswith('{"seq"') else line
             for line in lines]
    return re.sub(r'"last_seq":"[^"]+"', '"last_seq":SEQ', "\n".join(lines))


def row_shape(row: dict[str, Any]) -> tuple[Any, ...]:
    """What must match in a row whatever the shard order and revision hashes."""
    doc = dict(row.get("doc") or {}, _rev=None)
    doc["_conflicts"] = len(doc.get("_conflicts", []))
    return (row["id"], row.get("deleted", False), len(row["changes"]),
            sorted(doc.items()) if "doc" in row else None)


@pytest.mark.parametrize("name", RECORDED_ERRORS)
def test_recorded_errors_answered_alike(name: str) -> None:
    """The fake answers each recorded failing request with CouchDB 3.5's status and body."""
    status, body = replay(recorded_data_set(), name)
    recording = fixtures_util.load(name)
    expected, got = json.loads(recording.body), json.loads(body)
    assert ("ref" in got) == ("ref" in expected)
    expected.pop("ref", None)
    got.pop("ref", None)
    assert (status, got) == (recording.status, expected)


@pytest.mark.parametrize("name", RECORDED_FEEDS)
def test_recorded_feeds_answered_alike(name: str) -> None:
    """The fake answers each recorded feed request with the same rows, pending, seq nulls and framing."""
    status, body = replay(recorded_data_set(), name)
    recording = fixtures_util.load(name)
    expected, got = json.loads(recording.body), json.loads(body)
    assert status == recording.status == 200
    assert sorted(map(row_shape, got["results"])) == sorted(map(row_shape, expected["results"]))
    assert [r["seq"] is None for r in got["results"]] == [r["seq"] is None for r in expected["results"]]
    assert got["pending"] == expected["pending"] and isinstance(got["last_seq"], str)
    assert skeleton(body) == skeleton(recording.body)
