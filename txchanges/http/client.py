"""
A small CouchDB client over treq: :class:`Server` and :class:`Database`.

Every I/O method returns a :class:`~twisted.internet.defer.Deferred`. HTTP
errors fail it with a :class:`~txchanges.errors.CouchError` subclass chosen by
status; a connection that cannot be made or is lost fails it with
:class:`~txchanges.errors.ConnectionFailed`. Credentials are sent as basic
auth on every request and never appear in a URL, error or ``repr``.
"""

from __future__ import annotations

import json
from base64 import b64encode
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional, cast

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IPolicyForHTTPS, IResponse

from txchanges.http import _http11, _urls
from txchanges.http._httperrors import CONNECTION_ERRORS, couch_error, describe
from txchanges.feed._params import encode_params
from txchanges.errors import ConnectionFailed, CouchError, UncleanEnd, UnexpectedResponse
from txchanges._reactor import default_reactor

__all__ = ["Server", "Database"]

_NO_BODY: Any = object()

class Server:
    """
    A CouchDB server.

    :param url: The server's URL, optionally with ``user:password@`` and a
        path prefix (when CouchDB sits behind a proxy under one).
    :param credentials: ``(username, password)``; overrides any in *url*.
    :param authorization: Instead of credentials, a function returning the
        ``Authorization`` header's value, called for every request and
        every feed connection: ``lambda: "Bearer " + tokens.current`` for
        CouchDB's JWT authentication or a cloud provider's token, which
        your code renews before it expires. Never logged; a function that
        raises fails that request, and a follower retries it with backoff.
    :param http: A treq :class:`~treq.client.HTTPClient` to send requests
        with (tests inject :class:`treq.testing.StubTreq` here). When omitted
        the server builds one with its own persistent connection pool, which
        :meth:`close` closes.
    :param reactor: The reactor for the default client; the global reactor
        when omitted.
    :param tls_policy: Who to trust for ``https`` URLs, an
        :class:`~twisted.web.iweb.IPolicyForHTTPS` (e.g. one trusting your
        own certificate authority); the platform's trust store by default.
        Only for the server's own connections.
    :param fast_feeds: Read continuous and other streamed feeds with
        txchanges' own HTTP/1.1 reader (one connection per feed, each socket
        read de-chunked at once), which costs about half the CPU of going
        through treq; ``False`` sends them through treq like every other
        request. It needs the server's own connections: with an injected
        *http* client, feeds go through that client.
    :raises ValueError: when *url* is not an ``http``/``https`` URL,
        *tls_policy* or *fast_feeds* is given with an injected *http*, or
        *authorization* with credentials.
    """

    log = Logger()

    def __init__(
        self,
        url: str = "http://127.0.0.1:5984/",
        credentials: Optional[tuple[str, str]] = None,
        *,
        http: Optional[HTTPClient] = None,
        reactor: Any = None,
        tls_policy: Optional[IPolicyForHTTPS] = None,
        fast_feeds: Optional[bool] = None,
        authorization: Optional[Callable[[], str]] = None,
    ) -> None:
        self._url = _urls.parse_server_url(url, credentials)
        if authorization is not None:
            if not callable(authorization):
                raise TypeError(f"authorization must be a function returning the header's value, not {authorization!r}")
            if self._url.credentials is not None:
                raise ValueError("give either credentials (in the URL or as an argument) or authorization, not both")
        self._authorization = authorization
        self._pool: Optional[HTTPConnectionPool] = None
        if http is not None and (tls_policy is not None or fast_feeds):
            raise ValueError(
                "tls_policy and fast_feeds apply to the server's own connections, "
                "not to an injected http client"
            )
        self._fast_feeds = http is None and fast_feeds is not False
        self._tls_policy: Any = tls_policy or BrowserLikePolicyForHTTPS()
        if http is None:
            reactor = default_reactor(reactor)
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            agent = Agent(reactor, contextFactory=self._tls_policy, pool=self._pool)
            http = HTTPClient(cast(IAgent, agent))
        self._reactor = reactor
        self._http = http
        self._headers = {b"Accept": [b"application/json"]}
        if self._url.credentials is not None:
            user, password = self._url.credentials
            token = b64encode(f"{user}:{password}".encode("utf-8"))
            self._headers[b"Authorization"] = [b"Basic " + token]

    @property
    def url(self) -> str:
        """
        The server's base URL, without credentials, ending in ``/``.
        """
        return self._url.base

    @property
    def http(self) -> HTTPClient:
        """
        The treq client requests are sent with.
        """
        return self._http

    def __repr__(self) -> str:
        if self._authorization is not None:
            return f"<Server {self._url.base} authorization=(a function)>"
        user = self._url.credentials[0] if self._url.credentials else None
        return f"<Server {self._url.base} user={user!r}>"

    def _prepare(
        self, path: str, query: list[tuple[str, str]], json_body: Any
    ) -> tuple[str, Headers, Optional[bytes]]:
        """
        What every request sends, whichever client sends it: the full URL,
        the headers, and the encoded JSON body (``None`` without one).
        """
        url = self._url.base + path
        if query:
            url += "?" + _urls.query_string(query)
        headers = self._request_headers()
        if json_body is _NO_BODY:
            return url, headers, None
        headers.setRawHeaders(b"Content-Type", [b"application/json"])
        return url, headers, json.dumps(json_body).encode("utf-8")

    def _request_headers(self) -> Headers:
        # A new header set per request: the authorization function may
        # give a renewed token every time.
        headers = Headers(dict(self._headers))
        if self._authorization is not None:
            value = self._authorization()
            if not isinstance(value, str) or not value.strip() or "\r" in value or "\n" in value:
                raise ValueError("the authorization function must return a one-line, non-empty str")
            try:
                raw = value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("the authorization function returned characters HTTP headers cannot carry") from None
            headers.setRawHeaders(b"Authorization", [raw])
        return headers

    def close(self) -> "Deferred[None]":
        """
        Close the connection pool the server created (a no-op with an
        injected client).

        :return: A Deferred that fires when the cached connections are closed.
        """
        if self._pool is None:
            return succeed(None)
        pool, self._pool = self._pool, None
        d: Deferred[None] = pool.closeCachedConnections()
        return d

    # -- requests ---------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]] = (),
        json_body: Any = _NO_BODY,
        unbuffered: bool = False,
    ) -> "Deferred[IResponse]":
        """
        Send a request and check its status.

        :param method: The HTTP method.
        :param path: The already-encoded path below the server's URL.
        :param query: Query pairs (see :func:`txchanges.feed._params.encode_params`).
        :param json_body: A value sent as a JSON body, if given.
        :param unbuffered: ``True`` to read the body as it arrives (feeds).
        :return: A Deferred that fires with the response when its status is
            below 400, and fails with a :class:`CouchError` subclass (the
            body read and parsed) or :class:`ConnectionFailed` otherwise.
        """
        return Deferred.fromCoroutine(
            self._request(method, path, list(query), json_body, unbuffered)
        )

    async def _request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        json_body: Any,
        unbuffered: bool,
    ) -> IResponse:
        url, headers, body = self._prepare(path, query, json_body)
        kwargs: dict[str, Any] = {} if body is None else {"data": body}
        try:
            response = await self._http.request(
                method,
                url,
                headers=headers,
                allow_redirects=False,
                unbuffered=unbuffered,
                **kwargs,
            )
        except CONNECTION_ERRORS as e:
            raise ConnectionFailed(self._url.host, self._url.port, describe(e)) from None
        if response.code >= 400:
            raise await self._error(response, method, url)
        return cast(IResponse, response)

    async def _error(self, response: Any, method: str, url: str) -> CouchError:
        try:
            raw: bytes = await response.content()
        except CONNECTION_ERRORS:
            raw = b""
        return couch_error(response.code, response.phrase, response.headers, raw, method, url)

    def open_feed(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]] = (),
        json_body: Any = _NO_BODY,
    ) -> "Deferred[IResponse]":
        """
        Send a feed request and fire once the response headers arrive, its
        body unread; see *fast_feeds* for how.

        :param method: ``GET``, or ``POST`` for a *json_body*.
        :param path: The already-encoded path below the server's URL.
        :param query: Query pairs.
        :param json_body: A value sent as a JSON body, if given.
        :return: A Deferred that fires and fails like :meth:`request` with
            ``unbuffered=True``; cancelling it before the headers arrive
            drops the connection.
        """
        if not self._fast_feeds:
            return self.request(method, path, query, json_body, unbuffered=True)
        return Deferred.fromCoroutine(self._open_feed(method, path, list(query), json_body))

    async def _open_feed(
        self, method: str, path: str, query: list[tuple[str, str]], json_body: Any
    ) -> IResponse:
        url, headers, body = self._prepare(path, query, json_body)
        try:
            response = await _http11.send(self._reactor, self._tls_policy, method, url, headers, body)
            if response.code < 400:
                return cast(IResponse, response)
            try:
                raw = await _http11.read_body(cast(IResponse, response))
            except (UncleanEnd, *CONNECTION_ERRORS):
                raw = b""
        except CONNECTION_ERRORS as e:
            raise ConnectionFailed(self._url.host, self._url.port, describe(e)) from None
        raise couch_error(response.code, response.phrase, response.headers, raw, method, url)

    def request_json(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]] = (),
        json_body: Any = _NO_BODY,
    ) -> "Deferred[Any]":
        """
        Send a request and parse its JSON response body.

        :return: A Deferred that fires with the parsed body, and fails like
            :meth:`request`, or with :class:`UnexpectedResponse` when a
            success response's body is not JSON.
        """
        return Deferred.fromCoroutine(self._request_json(method, path, list(query), json_body))

    async def _request_json(
        self, method: str, path: str, query: list[tuple[str, str]], json_body: Any
    ) -> Any:
        response = await self._request(method, path, query, json_body, False)
        url = self._url.base + path
        try:
            raw: bytes = await response.content()
        except CONNECTION_ERRORS as e:
            raise ConnectionFailed(self._url.host, self._url.port, describe(e)) from None
        try:
            return json.loads(raw)
        except ValueError:
            ctype = response.headers.getRawHeaders(b"content-type", [None])[0]
            raise UnexpectedResponse(
                response.code,
                method,
                url,
                ctype.decode("latin-1") if ctype else None,
                raw.decode("utf-8", "replace"),
            ) from None

    # -- the server's API ---------------------------------------------------

    def info(self) -> "Deferred[dict[str, Any]]":
        """
        :return: A Deferred firing with the server's welcome document
            (``{"couchdb": "Welcome", "version": ...}``).
        """
        return self.request_json("GET", "")

    def all_dbs(self) -> "Deferred[list[str]]":
        """
        :return: A Deferred firing with the list of database names.
        """
        return self.request_json("GET", "_all_dbs")

    def create_db(self, name: str) -> "Deferred[Database]":
        """
        Create a database.

        :param name: A valid CouchDB database name.
        :raises ValueError: at once, for an invalid name.
        :return: A Deferred firing with the new :class:`Database`, or failing
            with :class:`~txchanges.errors.PreconditionFailed` when it exists.
        """
        db = self[name]
        d = self.request_json("PUT", _urls.quote_db_name(name))
        return d.addCallback(lambda _: db)

    def get_db(self, name: str) -> "Deferred[Database]":
        """
        Open an existing database.

        :raises ValueError: at once, for an invalid name.
        :return: A Deferred firing with the :class:`Database`, or failing with
            :class:`~txchanges.errors.NotFound` when it does not exist.
        """
        db = self[name]
        return db.info().addCallback(lambda _: db)

    def delete_db(self, name: str) -> "Deferred[dict[str, Any]]":
        """
        Delete a database.

        :return: A Deferred firing with ``{"ok": True}``, or failing with
            :class:`~txchanges.errors.NotFound`.
        """
        return self.request_json("DELETE", _urls.quote_db_name(name))

    def __getitem__(self, name: str) -> "Database":
        """
        A :class:`Database` object for *name*, without any request.

        :raises ValueError: for an invalid name.
        """
        return Database(self, name)


class Database:
    """
    A CouchDB database on a :class:`Server`.

    :param server: The server it lives on.
    :param name: Its name.
    :raises ValueError: for a name CouchDB would reject.
    """

    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.name = _urls.validate_db_name(name)
        self._path = _urls.quote_db_name(name)

    @property
    def url(self) -> str:
        """
        The database's URL, without credentials.
        """
        return self.server.url + self._path

    def __repr__(self) -> str:
        return f"<Database {self.name!r} on {self.server!r}>"

    def path(self, *segments: str) -> str:
        """
        The encoded path of something inside the database.

        :param segments: Already-encoded path segments, e.g. ``"_changes"``.
        """
        return "/".join((self._path,) + segments)

    def info(self) -> "Deferred[dict[str, Any]]":
        """
        :return: A Deferred firing with the database's info document.
        """
        return self.server.request_json("GET", self._path)

    def get(self, docid: str, **params: Any) -> "Deferred[dict[str, Any]]":
        """
        Fetch a document.

        :param docid: The document id, e.g. ``"apple"`` or ``"_design/app"``.
        :param params: Query parameters (``rev``, ``conflicts=True``, ...).
        :return: A Deferred firing with the document, or failing with
            :class:`~txchanges.errors.NotFound`.
        """
        return self.server.request_json(
            "GET", self.path(_urls.quote_doc_id(docid)), encode_params(params)
        )

    def save_doc(self, doc: dict[str, Any], **params: Any) -> "Deferred[dict[str, Any]]":
        """
        Create or update a document, as couchdbkit does: a POST when it has no
        ``_id``, else a PUT.

        :param doc: The document; its ``_id`` and ``_rev`` are set from the
            server's answer.
        :param params: Query parameters (``batch="ok"``, ...).
        :return: A Deferred firing with ``{"ok": True, "id": ..., "rev": ...}``,
            or failing with :class:`~txchanges.errors.Conflict`.
        """
        if not isinstance(doc, dict):
            raise TypeError(f"a document must be a dict, not {type(doc).__name__}")
        query = encode_params(params)
        if "_id" in doc:
            d = self.server.request_json(
                "PUT", self.path(_urls.quote_doc_id(doc["_id"])), query, doc
            )
        else:
            d = self.server.request_json("POST", self._path, query, doc)

        def saved(result: dict[str, Any]) -> dict[str, Any]:
            doc["_id"] = result["id"]
            doc["_rev"] = result["rev"]
            return result

        return d.addCallback(saved)

    def save_docs(
        self, docs: list[dict[str, Any]], **params: Any
    ) -> "Deferred[list[dict[str, Any]]]":
        """
        Save several documents in one ``_bulk_docs`` request.

        :param docs: The documents; each one saved gets its ``_id`` and
            ``_rev`` set.
        :param params: Fields of the request body, e.g. ``new_edits=False``.
        :return: A Deferred firing with CouchDB's per-document results, in
            order: ``{"ok": True, "id", "rev"}`` or ``{"id", "error",
            "reason"}`` for each document that was not saved (nothing is
            raised for those: check each result).
        """
        body = dict(params, docs=docs)

        def saved(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for doc, result in zip(docs, results):
                if "rev" in result and "error" not in result:
                    doc["_id"] = result["id"]
                    doc["_rev"] = result["rev"]
            return results

        d = self.server.request_json("POST", self.path("_bulk_docs"), (), body)
        return d.addCallback(saved)

    def delete_doc(
        self, doc_or_id: Mapping[str, Any] | str, rev: Optional[str] = None
    ) -> "Deferred[dict[str, Any]]":
        """
        Delete a document.

        :param doc_or_id: The document (its ``_id`` and ``_rev`` are used) or
            its id.
        :param rev: The revision to delete; when neither it nor the document
            gives one, the current revision is fetched first.
        :return: A Deferred firing with ``{"ok": True, "id", "rev"}``.
        """
        if isinstance(doc_or_id, str):
            docid = doc_or_id
        else:
            docid = doc_or_id["_id"]
            rev = rev or doc_or_id.get("_rev")
        path = self.path(_urls.quote_doc_id(docid))
        return Deferred.fromCoroutine(self._delete(path, docid, rev))

    async def _delete(self, path: str, docid: str, rev: Optional[str]) -> dict[str, Any]:
        if rev is None:
            rev = (await self.get(docid))["_rev"]
        result: dict[str, Any] = await self.server.request_json(
            "DELETE", path, [("rev", rev)]
        )
        return result

