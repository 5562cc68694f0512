"""
A small CouchDB client over treq: :class:`Server`, and :class:`Database`
from :mod:`txchanges.http._database`.

Every I/O method returns a :class:`~twisted.internet.defer.Deferred`. HTTP
errors fail it with a :class:`~txchanges.errors.CouchError` subclass chosen by
status; a connection that cannot be made or is lost fails it with
:class:`~txchanges.errors.ConnectionFailed`. Credentials are sent as basic
auth on every request and never appear in a URL, error or ``repr``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional, cast

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.client import _HTTP11ClientFactory  # the pool's own factory, made quiet below
from twisted.web.iweb import IAgent, IPolicyForHTTPS, IResponse

from txchanges.http import _http11, _urls
from txchanges.http._database import Database
from txchanges.http._httperrors import CONNECTION_ERRORS, couch_error, describe
from txchanges.http._request import NO_BODY, RequestPreparer
from txchanges.errors import ConnectionFailed, CouchError, UncleanEnd, UnexpectedResponse
from txchanges._reactor import default_reactor

__all__ = ["Server", "Database"]

#: CouchDB's ``[chttpd] max_db_number_for_dbs_info_req`` default.
_MAX_DBS_INFO_NAMES = 100


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


class _QuietPool(HTTPConnectionPool):
    """
    A connection pool whose connections are not announced: Twisted's factory
    logs "Starting factory" and "Stopping factory" for every connection, on
    every reconnect of a long-lived follower.
    """

    _factory = _QuietFactory


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
        self._requests = RequestPreparer(self._url, authorization)
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
            self._pool = _QuietPool(reactor, persistent=True)
            agent = Agent(reactor, contextFactory=self._tls_policy, pool=self._pool)
            http = HTTPClient(cast(IAgent, agent))
        self._reactor = reactor
        self._http = http

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
        json_body: Any = NO_BODY,
        unbuffered: bool = False,
    ) -> "Deferred[IResponse]":
        """
        Send a request and check its status.

        :param method: The HTTP method.
        :param path: The already-encoded path below the server's URL.
        :param query: Query pairs (see :func:`txchanges.http._query.encode_params`).
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
        url, headers, body = self._requests.prepare(path, query, json_body)
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
        json_body: Any = NO_BODY,
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
        url, headers, body = self._requests.prepare(path, query, json_body)
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
        json_body: Any = NO_BODY,
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

    def all_dbs(
        self,
        start_key: Optional[str] = None,
        end_key: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> "Deferred[list[str]]":
        """
        List database names in CouchDB's order (raw string order), one page
        at a time if asked: the next page starts after the last name seen.

        :param start_key: The first name to list, if it exists.
        :param end_key: The last name to list (included), if it exists.
        :param limit: At most this many names.
        :return: A Deferred firing with the list of database names.
        """
        query = [(k, json.dumps(v)) for k, v in (("start_key", start_key), ("end_key", end_key))
                 if v is not None]
        if limit is not None:
            query.append(("limit", str(limit)))
        return self.request_json("GET", "_all_dbs", query)

    def dbs_info(self, names: Sequence[str]) -> "Deferred[list[dict[str, Any]]]":
        """
        Ask for several databases' information in one request (``POST /_dbs_info``).

        :param names: Up to 100 database names (CouchDB's default limit).
        :raises ValueError: at once, for too many names or one that is not a ``str``.
        :return: A Deferred firing with one row per name, in order:
            ``{"key": name, "info": {...}}`` (the body of ``GET /{db}``) or
            ``{"key": name, "error": "not_found"}``.
        """
        if isinstance(names, str):
            raise ValueError(f"dbs_info takes a sequence of names, not the str {names!r}")
        if len(names) > _MAX_DBS_INFO_NAMES:
            raise ValueError(f"dbs_info takes at most {_MAX_DBS_INFO_NAMES} names, not {len(names)}")
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"a database name must be a str, not {name!r}")
        return self.request_json("POST", "_dbs_info", json_body={"keys": list(names)})

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
