"""Server and Database over an in-process fake: requests sent, answers and errors mapped."""

import socket

import pytest
import pytest_twisted

from txchanges import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    Consumer,
    CouchError,
    Database,
    Forbidden,
    NotFound,
    PreconditionFailed,
    Server,
    ServerError,
    Unauthorized,
    UnexpectedResponse,
)

from .fakecouch import Answer, result_of, stub

SECRET = "s3cr3t-pw"


def make(*answers):
    client, couch = stub(*answers)
    return Server(f"http://admin:{SECRET}@127.0.0.1:5984/", http=client), client, couch


def test_basic_auth_sent_on_every_request():
    """Credentials from the URL go out as basic auth, with Accept: application/json."""
    server, client, couch = make(Answer(body={"couchdb": "Welcome"}))
    assert result_of(server.info(), client) == {"couchdb": "Welcome"}
    assert result_of(server.all_dbs(), client) == {"couchdb": "Welcome"}
    for seen in couch.seen:
        assert seen.headers["authorization"] == "Basic YWRtaW46czNjcjN0LXB3"
        assert seen.headers["accept"] == "application/json"
    assert [s.uri for s in couch.seen] == ["/", "/_all_dbs"]


def test_no_credentials_no_auth_header():
    """A URL without userinfo sends no Authorization header."""
    client, couch = stub(Answer(body=[]))
    result_of(Server("http://127.0.0.1:5984/", http=client).all_dbs(), client)
    assert "authorization" not in couch.seen[0].headers


def test_server_repr_and_url_hide_password():
    """Neither repr nor url of a Server or Database shows the password."""
    server, _, _ = make()
    for text in (repr(server), server.url, repr(server["db"]), server["db"].url):
        assert SECRET not in text
    assert server["a/b"].url == "http://127.0.0.1:5984/a%2Fb"


def test_create_get_delete_db():
    """create_db PUTs and fires with a Database; get_db checks it exists; delete_db DELETEs."""
    server, client, couch = make(Answer(status=201, body={"ok": True}), Answer(body={"db_name": "a/b"}), Answer(body={"ok": True}))
    db = result_of(server.create_db("a/b"), client)
    assert isinstance(db, Database) and db.name == "a/b"
    assert result_of(server.get_db("a/b"), client).name == "a/b"
    assert result_of(server.delete_db("a/b"), client) == {"ok": True}
    assert [(s.method, s.uri) for s in couch.seen] == [("PUT", "/a%2Fb"), ("GET", "/a%2Fb"), ("DELETE", "/a%2Fb")]


def test_invalid_db_name_raises_at_once():
    """An invalid database name raises ValueError before any request."""
    server, _, couch = make()
    with pytest.raises(ValueError, match="'Bad'"):
        server.create_db("Bad")
    with pytest.raises(ValueError):
        server["9x"]
    assert couch.seen == []


def test_save_doc_post_and_put():
    """save_doc POSTs without _id, PUTs with it, and sets _id and _rev on the dict."""
    server, client, couch = make(
        Answer(status=201, body={"ok": True, "id": "gen", "rev": "1-a"}),
        Answer(status=201, body={"ok": True, "id": "_design/app", "rev": "1-b"}),
    )
    db = server["db"]
    doc = {"x": 1}
    assert result_of(db.save_doc(doc), client) == {"ok": True, "id": "gen", "rev": "1-a"}
    assert doc == {"x": 1, "_id": "gen", "_rev": "1-a"}
    ddoc = {"_id": "_design/app", "filters": {}}
    result_of(db.save_doc(ddoc), client)
    assert ddoc["_rev"] == "1-b"
    assert [(s.method, s.uri) for s in couch.seen] == [("POST", "/db"), ("PUT", "/db/_design/app")]
    assert couch.seen[0].json() == {"x": 1}
    assert couch.seen[0].headers["content-type"] == "application/json"


def test_save_doc_non_ascii_id():
    """A non-ASCII id is percent-encoded as UTF-8 in the path."""
    server, client, couch = make(Answer(body={"ok": True, "id": "café", "rev": "1-a"}))
    result_of(server["db"].save_doc({"_id": "café"}), client)
    assert couch.seen[0].uri == "/db/caf%C3%A9"


def test_save_docs_sets_ids_of_saved_only():
    """save_docs posts _bulk_docs and sets _id/_rev only on documents that were saved."""
    server, client, couch = make(
        Answer(
            status=201,
            body=[
                {"ok": True, "id": "a", "rev": "1-a"},
                {"id": "b", "error": "conflict", "reason": "Document update conflict."},
            ],
        )
    )
    docs = [{"_id": "a"}, {"_id": "b"}]
    results = result_of(server["db"].save_docs(docs, new_edits=True), client)
    assert results[1]["error"] == "conflict"
    assert docs == [{"_id": "a", "_rev": "1-a"}, {"_id": "b"}]
    assert couch.seen[0].uri == "/db/_bulk_docs"
    assert couch.seen[0].json() == {"new_edits": True, "docs": [{"_id": "a"}, {"_id": "b"}]}


def test_get_with_params():
    """get() encodes the id and passes boolean parameters as true/false."""
    server, client, couch = make(Answer(body={"_id": "a/b"}))
    result_of(server["db"].get("a/b", conflicts=True), client)
    assert couch.seen[0].uri == "/db/a%2Fb?conflicts=true"


def test_delete_doc_fetches_rev_when_missing():
    """delete_doc by id alone fetches the current rev, then DELETEs with it."""
    server, client, couch = make(Answer(body={"_id": "x", "_rev": "3-c"}), Answer(body={"ok": True, "id": "x", "rev": "4-d"}))
    assert result_of(server["db"].delete_doc("x"), client)["rev"] == "4-d"
    assert [(s.method, s.uri) for s in couch.seen] == [("GET", "/db/x"), ("DELETE", "/db/x?rev=3-c")]


def test_delete_doc_from_dict():
    """delete_doc with a document uses its _id and _rev without fetching."""
    server, client, couch = make(Answer(body={"ok": True, "id": "x", "rev": "2-b"}))
    result_of(server["db"].delete_doc({"_id": "x", "_rev": "1-a"}), client)
    assert [(s.method, s.uri) for s in couch.seen] == [("DELETE", "/db/x?rev=1-a")]


@pytest.mark.parametrize(
    "status, cls",
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (412, PreconditionFailed),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (418, CouchError),
    ],
)
def test_error_classes_by_status(status, cls):
    """Each error status maps to its class, carrying status, error, reason, method and URL."""
    server, client, _ = make(Answer(status=status, body={"error": "e", "reason": "why"}))
    with pytest.raises(cls) as e:
        result_of(server["db"].info(), client)
    err = e.value
    assert type(err) is cls
    assert (err.status, err.error, err.reason, err.method) == (status, "e", "why", "GET")
    assert err.url == "http://127.0.0.1:5984/db"
    assert err.body == {"error": "e", "reason": "why"}
    for text in (str(err), repr(err), err.url):
        assert SECRET not in text


def test_html_error_page_from_a_proxy():
    """An HTML error body still gives the typed error, with a short snippet as reason."""
    page = b"<html><head><title>502 Bad Gateway</title></head><body>" + b"x" * 5000 + b"</body></html>"
    server, client, _ = make(Answer(status=502, body=page, content_type="text/html"))
    with pytest.raises(ServerError) as e:
        result_of(server.info(), client)
    assert e.value.error is None
    assert e.value.reason.startswith("<html><head><title>502 Bad Gateway")
    assert len(e.value.reason) <= 203


def test_empty_error_body():
    """An empty error body gives the typed error with the status phrase as reason."""
    server, client, _ = make(Answer(status=401, body=b""))
    with pytest.raises(Unauthorized) as e:
        result_of(server.info(), client)
    assert e.value.reason == "Unauthorized"


def test_retry_after_kept():
    """The Retry-After header of an error response is kept on the error."""
    server, client, _ = make(Answer(status=503, body=b"busy", headers={"Retry-After": "7"}))
    with pytest.raises(ServerError) as e:
        result_of(server.info(), client)
    assert e.value.headers == {"retry-after": "7"}


def test_html_success_page_is_unexpected():
    """A 200 answer with an HTML body (a captive proxy) fails with UnexpectedResponse."""
    server, client, _ = make(Answer(body=b"<html>login here</html>", content_type="text/html"))
    with pytest.raises(UnexpectedResponse) as e:
        result_of(server.info(), client)
    assert e.value.content_type == "text/html"
    assert "login here" in str(e.value)


def test_fetch_request_shape():
    """fetch sends feed=normal with since verbatim and returns the body as sent."""
    body = {"results": [{"seq": "1-x", "id": "a", "changes": [{"rev": "1-a"}]}], "last_seq": "1-x", "pending": 0}
    server, client, couch = make(Answer(body=body))
    out = result_of(Consumer(server["db"]).fetch(since="7-g1AA/=x", limit=2, include_docs=True), client)
    assert out == body
    assert couch.seen[0].method == "GET"
    assert couch.seen[0].uri == "/db/_changes?feed=normal&since=7-g1AA/%3Dx&limit=2&include_docs=true"


def test_fetch_doc_ids_posts():
    """fetch(doc_ids=...) POSTs the ids as JSON."""
    server, client, couch = make(Answer(body={"results": [], "last_seq": "0", "pending": 0}))
    result_of(Consumer(server["db"]).fetch(doc_ids=["a"]), client)
    assert couch.seen[0].method == "POST"
    assert couch.seen[0].uri == "/db/_changes?feed=normal&filter=_doc_ids"
    assert couch.seen[0].json() == {"doc_ids": ["a"]}


def test_consumer_needs_database():
    """Consumer given something that is not a Database is a TypeError."""
    with pytest.raises(TypeError):
        Consumer("mydb")  # type: ignore[arg-type]


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest_twisted.ensureDeferred
async def test_refused_connection_names_host_and_port():
    """A refused connection fails with ConnectionFailed naming host and port, no password."""
    port = _closed_port()
    server = Server(f"http://admin:{SECRET}@127.0.0.1:{port}/")
    try:
        with pytest.raises(ConnectionFailed) as e:
            await server.info()
    finally:
        await server.close()
    assert (e.value.host, e.value.port) == ("127.0.0.1", port)
    assert f"127.0.0.1:{port}" in str(e.value)
    assert SECRET not in str(e.value) + repr(e.value)


@pytest_twisted.ensureDeferred
async def test_dropped_connection_names_host_and_port():
    """A server that accepts and hangs up without answering gives ConnectionFailed."""
    from twisted.internet import protocol, reactor

    class HangUp(protocol.Protocol):
        def dataReceived(self, data):
            self.transport.loseConnection()

    listening = reactor.listenTCP(0, protocol.Factory.forProtocol(HangUp), interface="127.0.0.1")
    port = listening.getHost().port
    server = Server(f"http://admin:{SECRET}@127.0.0.1:{port}/")
    try:
        with pytest.raises(ConnectionFailed) as e:
            await server.info()
    finally:
        await server.close()
        await listening.stopListening()
    assert e.value.port == port and "127.0.0.1" in str(e.value)
    assert SECRET not in str(e.value)
