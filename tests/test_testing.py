"""txchanges.testing.FakeCouchDB: the fake itself, its controls, and the example that uses it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.server import Site

import txchanges.testing
from txchanges import (
    BadRequest,
    ChangesService,
    Conflict,
    Consumer,
    ErrorRow,
    NotFound,
    Server,
    ServerError,
    Unauthorized,
    UncleanEnd,
)
from txchanges.service.checkpoint import MemoryCheckpoint
from txchanges.testing import FakeCouchDB, selector_matches

from ._service_helpers import wait_for
from .examplerun import run_example

SEQ = re.compile(r"^\d+-g1AAAA[A-Za-z0-9_-]+$")


def result_of(d: "Deferred[Any]") -> Any:
    """The result of a Deferred that has fired; its exception if it failed."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def failure_of(d: "Deferred[Any]") -> BaseException:
    """The exception a fired Deferred failed with."""
    with pytest.raises(Exception) as caught:
        result_of(d)
    return caught.value


class Body(Protocol):
    """Collects a streamed response body."""

    def __init__(self) -> None:
        self.data = b""
        self.ended: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.ended = reason


def open_body(fake: FakeCouchDB, path: str) -> Body:
    """GET *path* and collect its body as it streams."""
    response = result_of(fake.client().request("GET", fake.url + path, unbuffered=True))
    assert response.code == 200, response.code
    collector = Body()
    response.deliverBody(collector)
    return collector


def ask(fake: FakeCouchDB, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any, Any]:
    """Send one request; return its status, headers and raw body."""
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs["data"] = json.dumps(body).encode()
        kwargs["headers"] = {b"Content-Type": [b"application/json"]}
    response = result_of(fake.client().request(method, fake.url + path, **kwargs))
    return response.code, response.headers, result_of(response.content())


@pytest.fixture
def clock() -> Clock:
    """The fake's and the consumers' time."""
    return Clock()


@pytest.fixture
def fake(clock: Clock) -> FakeCouchDB:
    """A fake with one empty database, "db"."""
    couch = FakeCouchDB(clock=clock)
    couch.create_db("db")
    return couch


@pytest.fixture
def db(fake: FakeCouchDB) -> Any:
    """The Database "db" through the fake's in-memory client."""
    return fake.server()["db"]


# -- the module ---------------------------------------------------------------------


def test_exports() -> None:
    """Every name in txchanges.testing.__all__ exists and none is private."""
    assert txchanges.testing.__all__
    for name in txchanges.testing.__all__:
        assert not name.startswith("_") and getattr(txchanges.testing, name) is not None


def test_module_example_runs() -> None:
    """The usage example in the module docstring runs as written."""
    text = txchanges.testing.__doc__ or ""
    lines = []
    for line in text.split("::\n\n", 1)[1].splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    assert len([line for line in lines if line]) >= 10
    exec(compile("\n".join(lines), "example", "exec"), {})


def test_repr_and_request_log(fake: FakeCouchDB, db: Any) -> None:
    """The fake names its databases in its repr and records each request it receives."""
    result_of(db.save_doc({"_id": "a"}))
    assert "db" in repr(fake)
    last = fake.requests[-1]
    assert (last.method, last.path, last.body) == ("PUT", ["db", "a"], {"_id": "a"})


# -- wire format ----------------------------------------------------------------------


def test_sequences_are_opaque_couchdb3_strings(fake: FakeCouchDB, db: Any) -> None:
    """Sequences look like CouchDB 3's ("N-g1AAAA..."), and one from another database rewinds to 0."""
    result_of(db.save_docs([{"_id": "a"}, {"_id": "b"}]))
    rows = result_of(Consumer(db).fetch(since=0))["results"]
    assert all(SEQ.match(r["seq"]) for r in rows)
    fake.create_db("other")
    fake.save("other", {"_id": "x"})
    foreign = fake.update_seq("other")
    assert [r["id"] for r in result_of(Consumer(db).fetch(since=foreign))["results"]] == ["a", "b"]


def test_normal_feed_framing(fake: FakeCouchDB) -> None:
    """A normal feed is CouchDB's body: rows joined by ',\\r\\n', then last_seq and pending, then a newline."""
    fake.save_docs("db", [{"_id": "a"}, {"_id": "b"}])
    status, headers, raw = ask(fake, "db/_changes")
    text = re.sub(r'"\d+-g1[^"]+"', "SEQ", raw.decode())
    text = re.sub(r'"1-[0-9a-f]{32}"', "REV", text)
    assert text == (
        '{"results":[\n'
        '{"seq":SEQ,"id":"a","changes":[{"rev":REV}]},\r\n'
        '{"seq":SEQ,"id":"b","changes":[{"rev":REV}]}\n'
        '],\n"last_seq":SEQ,"pending":0}\n\n'
    )
    assert status == 200 and headers.getRawHeaders(b"etag")
    assert headers.getRawHeaders(b"content-length") is None, "streamed, not sized"


def test_errors_are_json_lines(fake: FakeCouchDB) -> None:
    """An error is one JSON line with CouchDB's error and reason, even for a continuous feed."""
    status, headers, raw = ask(fake, "nope/_changes?feed=continuous")
    assert status == 404
    assert raw == b'{"error":"not_found","reason":"Database does not exist."}\n'
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]


def test_continuous_framing_live_and_timeout(fake: FakeCouchDB, clock: Clock) -> None:
    """A quiet continuous feed sends a newline at once, another before each live row, and last_seq after the idle timeout."""
    body = open_body(fake, "db/_changes?feed=continuous&since=now&timeout=3000")
    assert body.data == b"\n"
    clock.advance(2)
    fake.save("db", {"_id": "live"})
    assert body.data.startswith(b"\n\n{") and body.data.endswith(b'"id":"live","changes":[{"rev":"' +
                                                                    fake.get("db", "live")["_rev"].encode() + b'"}]}\n')
    clock.advance(2.9)
    assert body.ended is None, "the timeout counts from the last change"
    clock.advance(0.1)
    last = json.loads(body.data.split(b"\n")[-3])
    assert last == {"last_seq": fake.update_seq("db"), "pending": 0}
    assert body.data.endswith(b"}\n\n") and body.ended is not None and body.ended.check(ResponseDone)


def test_heartbeat_runs_on_the_clock_and_overrides_timeout(fake: FakeCouchDB, clock: Clock) -> None:
    """With heartbeat the feed writes a newline per interval of the injected clock and never times out."""
    body = open_body(fake, "db/_changes?feed=continuous&since=now&heartbeat=1000&timeout=2000")
    clock.advance(0.999)
    assert body.data == b"\n"
    clock.advance(0.001)
    assert body.data == b"\n\n"
    clock.pump([1] * 10)
    assert body.data == b"\n" * 12 and body.ended is None
    assert fake.open_feeds == 1


def test_longpoll_framing_after_a_wait(fake: FakeCouchDB) -> None:
    """A waiting longpoll body is padded with newlines inside the array and completes with the first change."""
    body = open_body(fake, "db/_changes?feed=longpoll&since=now")
    assert body.data == b'{"results":[\n\n'
    fake.save("db", {"_id": "late"})
    assert body.data.startswith(b'{"results":[\n\n\n{"seq":')
    assert json.loads(body.data)["results"][0]["id"] == "late"
    assert body.data.endswith(b"}\n\n") and body.ended is not None and body.ended.check(ResponseDone)


def test_eventsource_feed(fake: FakeCouchDB, clock: Clock) -> None:
    """feed=eventsource sends each row as a server-sent event with its seq as the id."""
    fake.save("db", {"_id": "a"})
    body = open_body(fake, "db/_changes?feed=eventsource&since=0&timeout=100")
    clock.advance(0.1)
    seq = fake.update_seq("db")
    assert body.data.startswith(b'data: {"seq":"' + seq.encode())
    assert b'\nid: "' + seq.encode() + b'"\n\n' in body.data
    assert body.ended is not None and body.ended.check(ResponseDone)


def test_only_the_latest_change_per_document(fake: FakeCouchDB, db: Any) -> None:
    """A document changed three times appears once, with its latest revision, after the others."""
    first = fake.save("db", {"_id": "a", "v": 1})
    fake.save("db", {"_id": "b"})
    fake.save("db", {"_id": "a", "_rev": first["rev"], "v": 2})
    rows = result_of(Consumer(db).fetch(since=0))["results"]
    assert [(r["id"], r["changes"][0]["rev"][:2]) for r in rows] == [("b", "1-"), ("a", "2-")]


def test_conflicts_style_all_docs(fake: FakeCouchDB, db: Any) -> None:
    """new_edits=False makes a conflict: style=all_docs lists both leaves and conflicts=true names the loser."""
    fake.save("db", {"_id": "a", "v": 1})
    fake.save_docs("db", [{"_id": "a", "_rev": "1-" + "0" * 32, "v": "other"}], new_edits=False)
    row = result_of(Consumer(db).fetch(since=0, style="all_docs", include_docs=True, conflicts=True))["results"][0]
    winner = fake.get("db", "a")
    assert [c["rev"] for c in row["changes"]] == [winner["_rev"], "1-" + "0" * 32]
    assert row["doc"]["_conflicts"] == ["1-" + "0" * 32]


def test_parameter_errors(db: Any) -> None:
    """limit=abc is CouchDB's 500 badarg with a ref; feed=bogus and a bad heartbeat are 400."""
    # Sent as raw requests: the Consumer refuses these before sending them.
    def changes(*query: tuple[str, str]) -> Any:
        return failure_of(db.server.request_json("GET", "db/_changes", list(query)))

    error = changes(("limit", "abc"))
    assert isinstance(error, ServerError) and error.reason == "badarg" and "ref" in error.body
    bad_feed = changes(("feed", "bogus"))
    assert isinstance(bad_feed, BadRequest) and "Supported `feed` types" in bad_feed.reason
    assert isinstance(changes(("heartbeat", "soon")), BadRequest)


def test_unsupported_endpoints_say_so(fake: FakeCouchDB) -> None:
    """Endpoints the fake does not implement answer 501 naming the request, never a wrong answer."""
    status, _, raw = ask(fake, "db/_all_docs")
    assert status == 501 and json.loads(raw)["reason"] == "FakeCouchDB does not serve GET /db/_all_docs"


# -- documents -------------------------------------------------------------------------


def test_direct_api_documents(fake: FakeCouchDB) -> None:
    """save/get/delete work without HTTP, set _id and _rev, and raise txchanges' own errors."""
    doc: dict[str, Any] = {"v": 1}
    saved = fake.save("db", doc)
    assert doc["_id"] == saved["id"] and re.match(r"^1-[0-9a-f]{32}$", doc["_rev"])
    with pytest.raises(Conflict):
        fake.save("db", {"_id": doc["_id"], "_rev": "1-" + "f" * 32})
    deleted = fake.delete("db", doc["_id"])
    assert deleted["rev"].startswith("2-") and fake.get("db", doc["_id"]) is None
    with pytest.raises(NotFound):
        fake.delete("db", doc["_id"])
    with pytest.raises(KeyError):
        fake.save("missing", {})
    with pytest.raises(ValueError):
        fake.create_db("Bad Name")


def test_non_ascii_ids(fake: FakeCouchDB, db: Any) -> None:
    """A non-ASCII id is saved and read over HTTP and appears as raw UTF-8 in the feed, as on CouchDB."""
    result_of(db.save_doc({"_id": "café-ümläut", "n": 1}))
    assert result_of(db.get("café-ümläut"))["n"] == 1
    _, _, raw = ask(fake, "db/_changes")
    assert '"id":"café-ümläut"'.encode("utf-8") in raw


def test_local_documents(fake: FakeCouchDB, db: Any) -> None:
    """_local documents get 0-N revisions, can be deleted, and never reach the feed."""
    first = result_of(db.save_doc({"_id": "_local/ckpt", "seq": 1}))
    assert first["rev"] == "0-1"
    assert result_of(db.save_doc({"_id": "_local/ckpt", "_rev": "0-1", "seq": 2}))["rev"] == "0-2"
    result_of(db.delete_doc("_local/ckpt", "0-2"))
    assert isinstance(failure_of(db.get("_local/ckpt")), NotFound)
    assert result_of(Consumer(db).fetch(since=0))["results"] == []


def test_bulk_docs_reports_conflicts_per_document(db: Any) -> None:
    """_bulk_docs saves what it can and reports a conflict for the rest, in order."""
    result_of(db.save_doc({"_id": "a"}))
    results = result_of(db.save_docs([{"_id": "a"}, {"_id": "b"}]))
    assert results[0] == {"id": "a", "error": "conflict", "reason": "Document update conflict."}
    assert results[1]["ok"] is True


# -- filters ---------------------------------------------------------------------------


def test_python_filter_stand_in(fake: FakeCouchDB, db: Any) -> None:
    """A registered Python function serves filter=ddoc/name and sees query parameters in req['query']."""
    fake.save_docs("db", [{"_id": "a", "type": "fruit"}, {"_id": "b", "type": "légume"}])
    calls: list[dict[str, Any]] = []

    def by_type(doc: dict[str, Any], req: dict[str, Any]) -> bool:
        calls.append(req)
        return doc.get("type") == req["query"]["type"]

    fake.register_filter("app/by_type", by_type, db="db")
    rows = result_of(Consumer(db).fetch(since=0, filter_name="app/by_type", params={"type": "légume"}))["results"]
    assert [r["id"] for r in rows] == ["b"]
    assert calls[0]["query"]["type"] == "légume" and calls[0]["info"] == {"db_name": "db"}


def test_filter_errors_as_couchdb_words_them(fake: FakeCouchDB, db: Any) -> None:
    """Missing design doc, missing function, malformed name and a JS-only filter each get a clear error."""
    c = Consumer(db)
    assert failure_of(c.fetch(filter_name="nope/nope")).reason == "missing"
    fake.save("db", {"_id": "_design/app", "filters": {"js": "function(doc) { return true; }"}})
    assert failure_of(c.fetch(filter_name="app/nope")).reason == "missing json key: nope"
    js_only = failure_of(c.fetch(filter_name="app/js"))
    assert isinstance(js_only, ServerError) and "register_filter('app/js'" in js_only.reason
    status, _, raw = ask(fake, "db/_changes?filter=nofilter")
    assert status == 400 and b"must be of the form" in raw
    with pytest.raises(ValueError):
        fake.register_filter("nofilter", lambda doc, req: True)


def test_view_filter_stand_in(fake: FakeCouchDB, db: Any) -> None:
    """filter=_view uses a registered Python function; without view= it is a 400."""
    fake.save_docs("db", [{"_id": "a", "type": "fruit"}, {"_id": "b"}])
    fake.register_view("app/typed", lambda doc: "type" in doc)
    rows = result_of(Consumer(db).fetch(since=0, view="app/typed"))["results"]
    assert [r["id"] for r in rows] == ["a"]
    status, _, raw = ask(fake, "db/_changes?filter=_view")
    assert status == 400 and json.loads(raw)["reason"] == "`view` filter parameter is not provided."


@pytest.mark.parametrize("selector, matches", [
    ({"type": "fruit"}, True),
    ({"type": "veg"}, False),
    ({"size": {"$gt": 2, "$lte": 3}}, True),
    ({"size": {"$gt": "2"}}, False),
    ({"tags": {"$in": [["a", "b"]]}}, True),
    ({"type": {"$in": ["veg", "fruit"]}}, True),
    ({"color": {"$exists": False}}, True),
    ({"$or": [{"type": "veg"}, {"info.origin": "es"}]}, True),
    ({"$and": [{"type": "fruit"}, {"info.origin": {"$ne": "es"}}]}, False),
    ({"type": {"$not": {"$eq": "fruit"}}}, False),
    ({"$nor": [{"type": "veg"}]}, True),
])
def test_selector_subset(selector: dict[str, Any], matches: bool) -> None:
    """The documented Mango subset matches documents as CouchDB would."""
    doc = {"_id": "x", "type": "fruit", "size": 3, "tags": ["a", "b"], "info": {"origin": "es"}}
    assert selector_matches(doc, selector) is matches


def test_selector_errors(fake: FakeCouchDB, db: Any) -> None:
    """An unknown operator and a missing selector are 400 'Selector error' answers."""
    error = failure_of(Consumer(db).fetch(selector={"a": {"$regex": "x"}}))
    assert isinstance(error, BadRequest) and error.reason.startswith("Selector error: unknown operator $regex")
    status, _, raw = ask(fake, "db/_changes?filter=_selector", "POST", {})
    assert (status, json.loads(raw)["reason"]) == (400, "Selector error: expected a JSON object")


def test_selector_fields_projection(fake: FakeCouchDB, db: Any) -> None:
    """With fields, include_docs returns only those fields (no _id or _rev), as CouchDB does."""
    fake.save("db", {"_id": "a", "type": "fruit", "name": "Kiwi", "color": "green"})
    row = result_of(Consumer(db).fetch(since=0, selector={"type": "fruit"}, fields=["name"], include_docs=True))
    assert row["results"][0]["doc"] == {"name": "Kiwi"}


# -- authentication --------------------------------------------------------------------------


def test_admin_credentials(clock: Clock) -> None:
    """With an admin, anonymous and wrong credentials get CouchDB 3's 401 bodies; the welcome stays public."""
    fake = FakeCouchDB(clock=clock, admin=("admin", "pw"))
    fake.create_db("db")
    anonymous = Server(fake.url, http=fake.client())
    assert result_of(anonymous.info())["couchdb"] == "Welcome"
    assert failure_of(anonymous.all_dbs()).reason == "You are not a server admin."
    assert failure_of(anonymous["db"].info()).reason == "You are not authorized to access this db."
    wrong = Server(fake.url, ("admin", "nope"), http=fake.client())
    error = failure_of(Consumer(wrong["db"]).fetch())
    assert isinstance(error, Unauthorized) and error.reason == "Name or password is incorrect."
    assert result_of(fake.server().all_dbs()) == ["db"]


# -- live feeds and time -------------------------------------------------------------------


def test_direct_writes_reach_open_feeds_at_once(fake: FakeCouchDB, db: Any, clock: Clock) -> None:
    """fake.save() and HTTP writes both reach an open wait() callback without a flush or clock step."""
    seen: list[str] = []
    c = Consumer(db, clock=clock)
    d = c.wait(since="now", cb=lambda r: seen.append(r["id"]))
    fake.save("db", {"_id": "direct"})
    result_of(db.save_doc({"_id": "over-http"}))
    assert seen == ["direct", "over-http"]
    c.stop()
    assert result_of(d) == fake.update_seq("db")
    assert fake.open_feeds == 0 and clock.getDelayedCalls() == []


def test_stub_treq_with_manual_flush(clock: Clock) -> None:
    """The resource also works under a plain StubTreq, whose flush() delivers live rows."""
    fake = FakeCouchDB(clock=clock)
    fake.create_db("db")
    stub = StubTreq(fake.resource)
    db = Server(fake.url, http=stub)["db"]
    seen: list[str] = []
    d = Consumer(db, clock=clock).wait(since="now", heartbeat=False, timeout=1000, cb=lambda r: seen.append(r["id"]))
    stub.flush()
    fake.save("db", {"_id": "a"})
    stub.flush()
    assert seen == ["a"]
    clock.advance(1)
    stub.flush()
    assert result_of(d) == fake.update_seq("db")


def test_deleting_the_database_ends_open_feeds(fake: FakeCouchDB, db: Any, clock: Clock) -> None:
    """delete_db ends an open continuous feed with its last_seq, as CouchDB does."""
    d = Consumer(db, clock=clock).wait(since="now")
    fake.delete_db("db")
    assert SEQ.match(result_of(d))
    assert isinstance(failure_of(Consumer(db).fetch()), NotFound)


@pytest_twisted.ensureDeferred
async def test_with_the_real_reactor() -> None:
    """Without a clock the fake uses the reactor: a timeout ends a wait() in real time."""
    fake = FakeCouchDB()
    fake.create_db("db")
    fake.save("db", {"_id": "a"})
    db = fake.server()["db"]
    seen: list[str] = []
    last_seq = await Consumer(db).wait(since=0, heartbeat=False, timeout=50, cb=lambda r: seen.append(r["id"]))
    assert seen == ["a"] and last_seq == fake.update_seq("db")


@pytest_twisted.ensureDeferred
async def test_served_over_a_real_socket() -> None:
    """The resource is a plain twisted.web resource: served by a Site, a normal Server reaches it over TCP."""
    fake = FakeCouchDB()
    port = reactor.listenTCP(0, Site(fake.resource), interface="127.0.0.1")
    server = Server(f"http://127.0.0.1:{port.getHost().port}/")
    try:
        db = await server.create_db("db")
        c = Consumer(db)
        d = c.wait_once(since="now", timeout=5000)
        await wait_for(lambda: fake.open_feeds == 1, 5, "the longpoll to reach the fake")
        fake.save("db", {"_id": "over-tcp"})
        assert [r["id"] for r in (await d)["results"]] == ["over-tcp"]
    finally:
        await server.close()
        await port.stopListening()


class _Raw(Protocol):
    """Sends raw request bytes and collects the raw answer until the server closes."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(self.data)


@pytest_twisted.ensureDeferred
async def test_wire_framing_over_a_socket() -> None:
    """On the wire errors carry a Content-Length and feeds are chunked with '{"results":[\\n' as the first chunk."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    fake = FakeCouchDB()
    fake.create_db("db")
    fake.save("db", {"_id": "a"})
    port = reactor.listenTCP(0, Site(fake.resource), interface="127.0.0.1")
    try:
        answers = []
        for path in ("/nope/_changes?feed=continuous", "/db/_changes"):
            raw = _Raw(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), raw)
            answers.append(await raw.done)
    finally:
        await port.stopListening()
    error_head, error_body = answers[0].split(b"\r\n\r\n", 1)
    assert error_head.startswith(b"HTTP/1.1 404 ") and b"Transfer-Encoding" not in error_head
    assert f"Content-Length: {len(error_body)}".encode() in error_head
    feed_head, feed_body = answers[1].split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in feed_head
    assert feed_body.startswith(b'd\r\n{"results":[\n\r\n') and feed_body.endswith(b"\r\n0\r\n\r\n")


# -- fault controls ------------------------------------------------------------------------


def test_send_heartbeats(fake: FakeCouchDB) -> None:
    """send_heartbeats writes one newline on every open feed now."""
    bodies = [open_body(fake, "db/_changes?feed=continuous&since=now") for _ in range(2)]
    assert fake.send_heartbeats() == 2
    assert [b.data for b in bodies] == [b"\n\n", b"\n\n"]


def test_cut_feeds_mid_line(fake: FakeCouchDB, db: Any, clock: Clock) -> None:
    """cut_feeds drops the connection after half a row: wait() fails with UncleanEnd, keeping the last seq."""
    seen: list[str] = []
    d = Consumer(db, clock=clock).wait(since="now", cb=lambda r: seen.append(r["id"]))
    fake.save("db", {"_id": "a"})
    assert fake.cut_feeds(partial=b'{"seq":"9-') == 1
    error = failure_of(d)
    assert isinstance(error, UncleanEnd) and error.last_seq == fake.update_seq("db")
    assert seen == ["a"] and fake.open_feeds == 0


def test_send_error_row(fake: FakeCouchDB, db: Any, clock: Clock) -> None:
    """send_error_row puts an error row into open continuous feeds; wait() fails with ErrorRow."""
    d = Consumer(db, clock=clock).wait(since="now")
    assert fake.send_error_row("badmatch", "shard moved") == 1
    error = failure_of(d)
    assert isinstance(error, ErrorRow) and "badmatch" in str(error)


def test_fail_next_only_matching_requests(fake: FakeCouchDB, db: Any) -> None:
    """fail_next answers the next matching requests with the status and leaves the others alone."""
    fake.fail_next(2, 503, only=lambda r: r.path[-1:] == ["_changes"])
    assert result_of(db.info())["db_name"] == "db"
    for _ in range(2):
        error = failure_of(Consumer(db).fetch())
        assert isinstance(error, ServerError) and error.error == "service_unavailable"
    assert result_of(Consumer(db).fetch())["results"] == []
    with pytest.raises(ValueError):
        fake.fail_next(1, 200)


def service_on(fake: FakeCouchDB, clock: Clock, handled: list[str], **options: Any) -> ChangesService:
    options.setdefault("retry_policy", lambda attempt: 1.0)
    service = ChangesService(fake.server()["db"], lambda r: handled.append(r["id"]), since=0,
                             heartbeat=1000, clock=clock, **options)
    service.startService()
    return service


def test_service_honours_retry_after_and_loses_nothing(fake: FakeCouchDB, clock: Clock) -> None:
    """A 429 with Retry-After makes the service wait exactly that long; then every change arrives."""
    fake.save("db", {"_id": "before"})
    fake.fail_next(1, 429, retry_after=7)
    handled: list[str] = []
    service = service_on(fake, clock, handled)
    fake.save("db", {"_id": "during"})
    clock.advance(6.9)
    assert handled == [] and fake.requests[-1].query.get("feed") == "continuous"
    clock.advance(0.1)
    assert handled == ["before", "during"]
    result_of(service.stopService())


def test_service_recovers_from_cut_and_stalled_feeds(fake: FakeCouchDB, clock: Clock) -> None:
    """After a cut and after a silent stall the service reconnects from its resume point, losing nothing."""
    handled: list[str] = []
    service = service_on(fake, clock, handled)
    fake.save("db", {"_id": "a"})
    fake.cut_feeds()
    fake.save("db", {"_id": "b"})
    clock.advance(1)
    assert handled == ["a", "b"]
    assert fake.stall_feeds() == 1
    fake.save("db", {"_id": "c"})
    assert handled == ["a", "b"], "a stalled feed sends nothing"
    clock.pump([0.5] * 15)
    assert handled == ["a", "b", "c"]
    assert service.stats.reconnects == 2
    result_of(service.stopService())
    assert fake.open_feeds == 0


def test_rewind_replays_changes_at_least_once(fake: FakeCouchDB, clock: Clock) -> None:
    """rewind makes the next feed start over: without dedup the handler sees changes again, with it it does not."""
    for dedup, expected in [(0, ["a", "b", "a", "b", "c"]), (100, ["a", "b", "c"])]:
        fake.delete_db("db")
        fake.create_db("db")
        fake.save_docs("db", [{"_id": "a"}, {"_id": "b"}])
        handled: list[str] = []
        service = service_on(fake, clock, handled, dedup_window=dedup, checkpoint=MemoryCheckpoint())
        fake.rewind("db")
        fake.cut_feeds()
        fake.save("db", {"_id": "c"})
        clock.advance(1)
        assert handled == expected
        result_of(service.stopService())
    with pytest.raises(ValueError):
        fake.rewind("db", "bogus")


@pytest.mark.parametrize("start", ["since-now", "local-checkpoint"])
def test_service_retries_a_transient_error_while_starting(start: str, fake: FakeCouchDB, clock: Clock) -> None:
    """A 503 while the service resolves since='now' or loads its checkpoint is retried like any transient error."""
    from txchanges import LocalDocCheckpoint

    db = fake.server()["db"]
    options: dict[str, Any] = {"since": "now"} if start == "since-now" else {
        "since": 0, "checkpoint": LocalDocCheckpoint(db, "follower")}
    handled: list[str] = []
    service = ChangesService(db, lambda r: handled.append(r["id"]), heartbeat=1000, clock=clock,
                             retry_policy=lambda attempt: 1.0, **options)
    fake.fail_next(1, 503, retry_after=1)
    service.startService()
    clock.pump([1.0] * 3)
    fake.save("db", {"_id": "after-the-outage"})
    assert service.state == "streaming" and handled == ["after-the-outage"]
    result_of(service.stopService())


# -- the example --------------------------------------------------------------------------


@pytest.mark.runs_example("testing_a_handler.py")
def test_example_runs() -> None:
    """examples/testing_a_handler.py runs its handler tests against the fake and reports them passed."""
    done = run_example("testing_a_handler.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "all handler checks passed"
    assert len([line for line in lines if line.startswith("ok ")]) >= 3
