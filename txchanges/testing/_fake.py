"""
:class:`FakeCouchDB`, the in-memory CouchDB 3 of :mod:`txchanges.testing`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional, cast

from treq.client import HTTPClient
from twisted.web.resource import IResource

from txchanges.testing._client import Pump, make_client
from txchanges.testing._feeds import Feed
from txchanges.testing._filters import FilterFunction, ViewFunction, selector_matches
from txchanges.testing._http import (
    CouchResource,
    InjectedFailure,
    RecordedRequest,
    ServerState,
    drop_db,
)
from txchanges.testing._store import ErrorResponse, FakeDatabase, check_db_name
from txchanges._reactor import default_clock
from txchanges._reactor import Clock
from txchanges.http.client import Server
from txchanges.errors import CouchError, error_for_status

__all__ = ["FakeCouchDB", "RecordedRequest", "FilterFunction", "ViewFunction", "selector_matches"]

_ERRORS_BY_STATUS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    409: "conflict", 429: "too_many_requests", 500: "unknown_error", 503: "service_unavailable",
}


def _raise(e: ErrorResponse, what: str) -> CouchError:
    return error_for_status(e.status)(e.status, e.error, e.reason, "", what, e.body(), e.headers)


class FakeCouchDB:
    """
    An in-memory CouchDB 3 server.

    Write through its HTTP API (any :class:`~txchanges.Server` using
    :meth:`client`) or directly with :meth:`save`, :meth:`save_docs` and
    :meth:`delete`; either way open feeds see the change at once.

    :param clock: Time for heartbeats and feed timeouts, a
        :class:`twisted.internet.task.Clock` in tests; the global reactor
        when omitted.
    :param admin: ``(name, password)`` to require, as CouchDB 3 does by
        default: then requests without them get 401 ``You are not authorized
        to access this db.`` (or ``You are not a server admin.``), and wrong
        ones 401 ``Name or password is incorrect.``.
    """

    #: The base URL to give :class:`~txchanges.Server`; any host works.
    url = "http://couchdb.fake:5984/"

    def __init__(self, *, clock: Optional[Clock] = None, admin: Optional[tuple[str, str]] = None) -> None:
        clock = default_clock(clock)
        self._state = ServerState(clock=clock, pump=Pump(), admin=admin)
        self._resource = CouchResource(self._state)

    def __repr__(self) -> str:
        return f"<FakeCouchDB dbs={sorted(self._state.dbs)} open_feeds={len(self._state.feeds)}>"

    # -- wiring -------------------------------------------------------------------

    @property
    def resource(self) -> IResource:
        """
        The ``twisted.web`` resource serving the fake: usable with
        :class:`treq.testing.StubTreq` (then call its ``flush()`` after the
        fake writes to an open feed) or a real :class:`~twisted.web.server.Site`.
        """
        return cast(IResource, self._resource)

    def client(self) -> HTTPClient:
        """
        :return: A new treq client talking to the fake in memory, for
            ``Server(fake.url, http=fake.client())``. Its requests are
            answered at once and live rows arrive as the fake writes them:
            no ``flush()`` needed.
        """
        return make_client(self.resource, self._state.pump)

    def server(self) -> Server:
        """
        :return: A :class:`~txchanges.Server` on a new :meth:`client`, with
            the admin credentials when the fake has some.
        """
        return Server(self.url, self._state.admin, http=self.client())

    def flush(self) -> None:
        """
        Deliver what is in flight; a client's disconnect reaches the fake
        (closing its feed and timers) on the next write or flush.
        """
        self._state.pump.kick()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, oldest first."""
        return self._state.requests

    @property
    def open_feeds(self) -> int:
        """The number of ``_changes`` responses still open."""
        self.flush()
        return len(self._state.feeds)

    # -- data ---------------------------------------------------------------------

    def _db(self, name: str) -> FakeDatabase:
        if name not in self._state.dbs:
            raise KeyError(f"no database {name!r} in {self!r}")
        return self._state.dbs[name]

    def create_db(self, name: str) -> None:
        """
        Create a database.

        :raises ValueError: for a name CouchDB would reject, or one that exists.
        """
        try:
            check_db_name(name)
        except ErrorResponse as e:
            raise ValueError(e.reason) from None
        if name in self._state.dbs:
            raise ValueError(f"database {name!r} exists")
        self._state.dbs[name] = FakeDatabase(name)

    def delete_db(self, name: str) -> None:
        """
        Delete a database; its open feeds end with a ``last_seq`` row, as on
        CouchDB, and later requests get 404.

        :raises KeyError: when it does not exist.
        """
        self._db(name)
        drop_db(self._state, name)

    def db_names(self) -> list[str]:
        """The databases, sorted."""
        return sorted(self._state.dbs)

    def save(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        """
        Create or update a document, as ``PUT /db/docid`` (or ``POST /db``
        without ``_id``) does; sets ``_id`` and ``_rev`` on *doc*.

        :raises KeyError: for a missing database.
        :raises txchanges.Conflict: when ``_rev`` is not the current revision.
        :return: ``{"ok": True, "id": ..., "rev": ...}``.
        """
        return self.save_docs(db, [doc])[0]

    def save_docs(self, db: str, docs: list[dict[str, Any]], *, new_edits: bool = True) -> list[dict[str, Any]]:
        """
        Save documents as one batch, as ``_bulk_docs`` does (open feeds wake
        once). With ``new_edits=False`` each ``_rev`` is stored as given,
        making conflicts as replication does.

        :raises txchanges.Conflict: on the first conflicting document (the
            ones before it are saved).
        :return: ``{"ok": True, "id", "rev"}`` per document.
        """
        database = self._db(db)
        results = []
        try:
            for doc in docs:
                docid = doc.get("_id") or FakeDatabase.new_id()
                try:
                    rev = database.put(docid, doc, new_edits=new_edits)
                except ErrorResponse as e:
                    raise _raise(e, f"{db}/{docid}") from None
                doc["_id"], doc["_rev"] = docid, rev
                results.append({"ok": True, "id": docid, "rev": rev})
        finally:
            if results and not all(str(r["id"]).startswith("_local/") for r in results):
                database.notify()
        return results

    def delete(self, db: str, docid: str, rev: Optional[str] = None) -> dict[str, Any]:
        """
        Delete a document (its current revision when *rev* is omitted); the
        feed shows it with ``"deleted": true``.

        :raises txchanges.NotFound: when there is no such live document.
        :raises txchanges.Conflict: when *rev* is not its current revision.
        """
        database = self._db(db)
        try:
            if rev is None:
                rev = database.get(docid)["_rev"]
            new_rev = database.delete(docid, rev)
        except ErrorResponse as e:
            raise _raise(e, f"{db}/{docid}") from None
        if not docid.startswith("_local/"):
            database.notify()
        return {"ok": True, "id": docid, "rev": new_rev}

    def get(self, db: str, docid: str) -> Optional[dict[str, Any]]:
        """The current document, or ``None`` when it is missing or deleted."""
        try:
            return self._db(db).get(docid)
        except ErrorResponse:
            return None

    def update_seq(self, db: str) -> str:
        """The database's current sequence: what ``since=now`` stands for."""
        database = self._db(db)
        return database.seq(database.update_seq)

    def register_filter(self, name: str, function: FilterFunction, *, db: Optional[str] = None) -> None:
        """
        Serve ``filter=name`` (``"designname/filtername"``) with a Python
        function standing in for the design document's JavaScript one.

        :param function: Called as ``function(doc, req)`` for each change's
            winning document (a copy); ``req["query"]`` holds the request's
            query parameters as strings, as in CouchDB. A truthy result lets
            the change through; an exception is raised to the test.
        :param db: Only for this database; every database when omitted.
            The design document need not exist.
        """
        self._check_name(name, "filter")
        self._state.functions.filters[(db, name)] = function

    def register_view(self, name: str, function: ViewFunction, *, db: Optional[str] = None) -> None:
        """
        Serve ``filter=_view&view=name`` with a Python function that says
        whether the view's map function emits anything for a document.
        """
        self._check_name(name, "view")
        self._state.functions.views[(db, name)] = function

    @staticmethod
    def _check_name(name: str, kind: str) -> None:
        ddoc, slash, rest = name.partition("/")
        if not (slash and ddoc and rest):
            raise ValueError(f"{kind} name must be 'designname/{kind}name', not {name!r}")

    # -- faults -------------------------------------------------------------------

    def _live(self) -> list[Feed]:
        self.flush()
        return list(self._state.feeds)

    def send_heartbeats(self) -> int:
        """
        Write a heartbeat newline on every open feed now.

        :return: How many feeds got one.
        """
        feeds = [f for f in self._live() if not f.stalled]
        for feed in feeds:
            feed.send_heartbeat()
        return len(feeds)

    def cut_feeds(self, partial: bytes = b"") -> int:
        """
        Drop the connection of every open feed, without its end, as a
        network failure or a restarting node does.

        :param partial: Bytes written just before, e.g. half a row.
        :return: How many feeds were cut.
        """
        feeds = self._live()
        for feed in feeds:
            feed.cut(partial)
        return len(feeds)

    def stall_feeds(self) -> int:
        """
        Make every open feed go silent for good: no row, no heartbeat, no
        end, while its connection stays open. Feeds opened later are not
        affected, so a client that detects the stall and reconnects recovers.

        :return: How many feeds stalled.
        """
        feeds = self._live()
        for feed in feeds:
            feed.stall()
        return len(feeds)

    def send_error_row(self, error: str = "unknown_error", reason: str = "injected by FakeCouchDB",
                       *, end: bool = True) -> int:
        """
        Write ``{"error": error, "reason": reason}`` as a row into every open
        continuous feed, and with *end* end each response after it.

        :return: How many feeds took the row.
        """
        return sum(feed.error_row(error, reason, end) for feed in self._live())

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        *,
        error: Optional[str] = None,
        reason: str = "injected by FakeCouchDB",
        retry_after: Optional[int] = None,
        headers: Optional[Mapping[str, str]] = None,
        only: Optional[Callable[[RecordedRequest], bool]] = None,
    ) -> None:
        """
        Answer the next *count* requests (those *only* accepts, when given)
        with *status* and a CouchDB error body instead of serving them.

        :param error: The body's ``error``; chosen from *status* by default
            (``not_found``, ``too_many_requests``, ``unknown_error``...).
        :param retry_after: Seconds for a ``Retry-After`` header (429, 503).
        :param only: e.g. ``lambda r: r.path[-1:] == ["_changes"]``.
        """
        if count < 1 or status < 400:
            raise ValueError("fail_next needs count >= 1 and an error status")
        all_headers = dict(headers or {})
        if retry_after is not None:
            all_headers["Retry-After"] = str(retry_after)
        body = {"error": error or _ERRORS_BY_STATUS.get(status, "unknown_error"), "reason": reason}
        self._state.failures.append(InjectedFailure(count, status, body, all_headers, only))

    def rewind(self, db: str, since: int | str = 0) -> None:
        """
        Make the next ``_changes`` request of *db* start from an earlier
        position whatever its ``since``, as CouchDB does after a node
        failure: changes are delivered again (at least once).

        :param since: ``0`` (the beginning), or a sequence the fake sent.
        :raises ValueError: for any other *since*.
        """
        database = self._db(db)
        if isinstance(since, int):
            database.rewind_to = since
            return
        try:
            database.rewind_to = database.since_position(since)
        except ErrorResponse as e:
            raise ValueError(f"cannot rewind to {since!r}: {e.reason}") from None
