"""
The HTTP face of :class:`txchanges.testing.FakeCouchDB`: a ``twisted.web``
resource that routes requests to the in-memory databases and answers with
CouchDB 3's statuses, bodies and framing.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from base64 import b64decode
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txchanges.testing._client import Pump
from txchanges.testing._dblist import all_dbs_page, database_info, dbs_info
from txchanges.testing._feeds import Feed, parse_params
from txchanges.testing._filters import Functions, build_filter
from txchanges.testing._store import ErrorResponse, FakeDatabase, check_db_name, dumps
from txchanges._reactor import Clock

__all__ = ["CouchResource", "InjectedFailure", "RecordedRequest", "ServerState"]

SERVER_HEADER = b"CouchDB/3.5.0 (txchanges FakeCouchDB)"
_NOT_SERVER_ADMIN = "You are not a server admin."
_NOT_DB_READER = "You are not authorized to access this db."


@dataclass
class RecordedRequest:
    """
    One request the fake received.

    :ivar method: ``"GET"``, ``"PUT"``...
    :ivar path: The decoded path segments, e.g. ``["db", "_changes"]``.
    :ivar query: The query parameters (the last value of a repeated one).
    :ivar body: The parsed JSON body, or ``None``.
    """

    method: str
    path: list[str]
    query: dict[str, str]
    body: Any = None


@dataclass
class InjectedFailure:
    """
    Requests the fake answers with an error instead of serving them.
    """

    count: int
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    match: Optional[Callable[[RecordedRequest], bool]] = None


@dataclass
class ServerState:
    """
    Everything the fake server knows, shared by its resource and facade.
    """

    clock: Clock
    pump: Pump
    admin: Optional[tuple[str, str]] = None
    dbs: dict[str, FakeDatabase] = field(default_factory=dict)
    functions: Functions = field(default_factory=Functions)
    feeds: list[Feed] = field(default_factory=list)
    failures: list[InjectedFailure] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)

    def db(self, name: str) -> FakeDatabase:
        """
        :raises ErrorResponse: CouchDB's 404 for a missing database.
        """
        found = self.dbs.get(name)
        if found is None:
            raise ErrorResponse(404, "not_found", "Database does not exist.")
        return found

    def take_failure(self, seen: RecordedRequest) -> Optional[InjectedFailure]:
        for failure in self.failures:
            if failure.match is None or failure.match(seen):
                failure.count -= 1
                if failure.count <= 0:
                    self.failures.remove(failure)
                return failure
        return None


class _Writer:
    """A feed's view of its HTTP response."""

    def __init__(self, request: Request, pump: Pump) -> None:
        self._request = request
        self._pump = pump
        self.gone = False

    def write(self, data: bytes) -> None:
        if not self.gone:
            self._request.write(data)
            self._pump.kick()

    def finish(self) -> None:
        if not self.gone:
            self.gone = True
            self._request.finish()
            self._pump.kick()

    def abort(self) -> None:
        if not self.gone:
            self.gone = True
            transport: Any = self._request.channel.transport
            transport.loseConnection()
            self._pump.kick()


def _ok(**extra: Any) -> dict[str, Any]:
    return dict({"ok": True}, **extra)


class CouchResource(Resource):
    """
    Serves a :class:`ServerState` over HTTP, CouchDB 3 style.
    """

    isLeaf = True

    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self._state = state

    def render(self, request: Request) -> bytes | int:
        pump = self._state.pump
        pump.busy += 1
        try:
            return self._render(request)
        finally:
            pump.leave()

    def _render(self, request: Request) -> bytes | int:
        request.setHeader(b"server", SERVER_HEADER)
        request.setHeader(b"cache-control", b"must-revalidate")
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-couch-request-id", secrets.token_hex(5).encode())
        method = request.method.decode("ascii")
        method = "GET" if method == "HEAD" else method
        assert request.uri is not None and request.path is not None
        raw_path = request.path.decode("latin-1").strip("/")
        path = [unquote(s, errors="strict") for s in raw_path.split("/")] if raw_path else []
        # Percent-escapes are UTF-8, as CouchDB reads them; the last value wins.
        query = dict(parse_qsl(urlsplit(request.uri.decode("utf-8", "replace")).query, keep_blank_values=True))
        assert request.content is not None
        raw = request.content.read()
        seen = RecordedRequest(method, path, query, None)
        self._state.requests.append(seen)
        try:
            body = self._parse_body(raw, method, request)
            seen.body = body
            failure = self._state.take_failure(seen)
            if failure is not None:
                for name, value in failure.headers.items():
                    request.setHeader(name.encode(), value.encode())
                return self._json(request, failure.status, failure.body)
            self._authorize(request, method, path)
            status, answer = self._route(request, method, path, query, body)
        except ErrorResponse as e:
            for name, value in e.headers.items():
                request.setHeader(name.encode(), value.encode())
            return self._json(request, e.status, e.body())
        if answer is NOT_DONE_YET:
            done: int = NOT_DONE_YET
            return done
        return self._json(request, status, answer)

    @staticmethod
    def _json(request: Request, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        return (dumps(body) + "\n").encode("utf-8")

    @staticmethod
    def _parse_body(raw: bytes, method: str, request: Request) -> Any:
        if method not in ("POST", "PUT") or not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ErrorResponse(400, "bad_request", "invalid UTF-8 JSON") from None

    def _authorize(self, request: Request, method: str, path: list[str]) -> None:
        admin = self._state.admin
        if admin is None:
            return
        header = request.getHeader(b"authorization")
        if header is not None:
            try:
                scheme, _, token = header.partition(b" ")
                name, _, password = b64decode(token.strip()).decode("utf-8").partition(":")
            except ValueError:
                scheme, name, password = b"", "", ""
            if scheme.lower() != b"basic" or (name, password) != admin:
                raise ErrorResponse(401, "unauthorized", "Name or password is incorrect.")
            return
        if not path or path == ["_up"]:
            return
        if path[0].startswith("_") or (len(path) == 1 and method in ("PUT", "DELETE")):
            raise ErrorResponse(401, "unauthorized", _NOT_SERVER_ADMIN)
        raise ErrorResponse(401, "unauthorized", _NOT_DB_READER)

    # -- routes -----------------------------------------------------------------

    def _route(
        self, request: Request, method: str, path: list[str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        state = self._state
        if not path:
            _allow(method, "GET")
            return 200, {"couchdb": "Welcome", "version": "3.5.0", "git_sha": "fake",
                         "uuid": "fakecouchdb", "features": [],
                         "vendor": {"name": "txchanges FakeCouchDB"}}
        name, rest = path[0], path[1:]
        if name == "_all_dbs" and not rest:
            _allow(method, "GET")
            return 200, all_dbs_page(state.dbs, query)
        if name == "_dbs_info" and not rest:
            _allow(method, "POST")
            return 200, dbs_info(state.dbs, body)
        if name == "_up" and not rest:
            return 200, {"status": "ok", "seeds": {}}
        if name == "_db_updates":
            # A single node without the _global_changes database answers so.
            raise ErrorResponse(404, "not_found", "Database does not exist.")
        if name.startswith("_"):
            raise _unsupported(method, path)
        if not rest:
            return self._database(request, method, name, body)
        db = state.db(name)
        head = rest[0]
        if head == "_changes" and len(rest) == 1:
            _allow(method, "GET", "POST")
            return 200, self._changes(request, db, method, query, body)
        if head == "_bulk_docs" and len(rest) == 1:
            _allow(method, "POST")
            return 201, self._bulk_docs(db, body)
        if head in ("_design", "_local") and len(rest) == 2:
            return self._document(db, method, head + "/" + rest[1], query, body)
        if head.startswith("_") or len(rest) != 1:
            raise _unsupported(method, path)
        return self._document(db, method, head, query, body)

    def _database(self, request: Request, method: str, name: str, body: Any) -> tuple[int, Any]:
        state = self._state
        if method == "PUT":
            check_db_name(name)
            if name in state.dbs:
                raise ErrorResponse(412, "file_exists",
                                    "The database could not be created, the file already exists.")
            state.dbs[name] = FakeDatabase(name)
            request.setHeader(b"location", f"http://couchdb.fake/{name}".encode())
            return 201, _ok()
        db = state.db(name)
        if method == "DELETE":
            drop_db(state, name)
            return 200, _ok()
        if method == "POST":
            doc = _object(body)
            docid = doc.get("_id") or FakeDatabase.new_id()
            rev = db.put(docid, doc)
            db.notify()
            return 201, _ok(id=docid, rev=rev)
        _allow(method, "GET")
        return 200, database_info(db)

    def _document(
        self, db: FakeDatabase, method: str, docid: str, query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        if method == "GET":
            return 200, db.get(docid, query.get("rev"), query.get("conflicts") == "true")
        if method == "PUT":
            doc = dict(_object(body), _id=docid)
            if "rev" in query:
                doc.setdefault("_rev", query["rev"])
            rev = db.put(docid, doc, new_edits=query.get("new_edits") != "false")
            db.notify()
            return 201, _ok(id=docid, rev=rev)
        if method == "DELETE":
            rev = db.delete(docid, query.get("rev"))
            db.notify()
            return 200, _ok(id=docid, rev=rev)
        raise ErrorResponse(405, "method_not_allowed", "Only DELETE,GET,HEAD,PUT allowed")

    def _bulk_docs(self, db: FakeDatabase, body: Any) -> list[dict[str, Any]]:
        docs = _object(body).get("docs")
        if not isinstance(docs, list):
            raise ErrorResponse(400, "bad_request", "POST body must include `docs` parameter.")
        new_edits = body.get("new_edits", True) is not False
        results: list[dict[str, Any]] = []
        for doc in docs:
            doc = _object(doc)
            docid = doc.get("_id") or FakeDatabase.new_id()
            try:
                rev = db.put(docid, doc, new_edits=new_edits)
            except ErrorResponse as e:
                results.append({"id": docid, "error": e.error, "reason": e.reason})
                continue
            if new_edits:
                results.append(_ok(id=docid, rev=rev))
        # One wake-up per batch, as CouchDB's db_updated event works.
        db.notify()
        return results

    def _changes(
        self, request: Request, db: FakeDatabase, method: str, query: dict[str, str], body: Any
    ) -> Any:
        state = self._state
        params = parse_params(query)
        if method == "POST" and body is not None and not isinstance(body, dict):
            raise ErrorResponse(400, "bad_request", "Request body must be a JSON object")
        change_filter = build_filter(db, query, body, method, state.functions)
        start = db.since_position(params.since)
        if db.rewind_to is not None:
            start, db.rewind_to = min(db.rewind_to, db.update_seq), None
        request.setResponseCode(200)
        if params.feed == "eventsource":
            request.setHeader(b"content-type", b"text/event-stream")
            request.setHeader(b"cache-control", b"no-cache")
        if params.feed == "normal":
            tag = hashlib.md5(db.incarnation + str((db.update_seq, sorted(query.items()))).encode())
            request.setHeader(b"etag", b'"' + tag.hexdigest()[:25].upper().encode() + b'"')
        writer = _Writer(request, state.pump)
        feed = Feed(db, params, change_filter, start, writer, state.clock, _forget(state))
        state.feeds.append(feed)

        def gone(reason: Optional[Failure]) -> None:
            writer.gone = True
            feed.cancel()

        request.notifyFinish().addErrback(gone)
        feed.start()
        return NOT_DONE_YET


def drop_db(state: ServerState, name: str) -> None:
    """Delete a database; its open feeds end like a timeout."""
    db = state.dbs.pop(name)
    db.deleted = True
    db.notify()


def _forget(state: ServerState) -> Callable[[Feed], None]:
    def forget(feed: Feed) -> None:
        if feed in state.feeds:
            state.feeds.remove(feed)

    return forget


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ErrorResponse(400, "bad_request", "Document must be a JSON object")
    return body


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ErrorResponse(405, "method_not_allowed", f"Only {','.join(allowed)} allowed")


def _unsupported(method: str, path: list[str]) -> ErrorResponse:
    # Honest about the fake's limits rather than answering something wrong.
    return ErrorResponse(501, "not_implemented",
                         f"FakeCouchDB does not serve {method} /{'/'.join(path)}")
