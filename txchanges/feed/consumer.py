"""
:class:`Consumer`: couchdbkit's changes API on Twisted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from collections.abc import Mapping
from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import Unpack

from txchanges.feed._aiter import ChangeStream
from txchanges.feed._body import Stopped
from txchanges.feed._collect import BodyCollector
from txchanges.feed._feed import FeedRun
from txchanges.feed._normal import RowsProtocol
from txchanges.feed._params import FeedRequest
from txchanges.feed._protocol import DEFAULT_MAX_LINE_LENGTH, ChangesProtocol
from txchanges.feed._watchdog import Clock, idle_limit
from txchanges.http.client import Database
from txchanges.errors import UnexpectedResponse
from txchanges.feed._feedparams import FeedParams, live_request, normal_request
from txchanges._reactor import default_clock

__all__ = ["Consumer"]

#: A callback receives one change row, as the server sent it.
Callback = Callable[[dict[str, Any]], Any]


class Consumer:
    """
    Reads the ``_changes`` feed of one database.

    The names are couchdbkit's: :meth:`fetch` reads the normal feed,
    :meth:`wait_once` one longpoll, and :meth:`wait` the continuous feed,
    handing each change to the callbacks given to :meth:`register_callback`.

    Sequences are opaque: whatever the server sent as ``seq`` or ``last_seq``
    is passed back verbatim as ``since``, never parsed or compared.

    Delivery is at least once: CouchDB may send a change again after a
    rewind or a node failure, so callbacks should be idempotent.

    :param db: The database to follow.
    :param clock: Time for the stall watchdog; the global reactor when
        omitted.
    :param max_line_length: The longest continuous-feed line accepted, in
        bytes; a longer one fails the feed with
        :class:`~txchanges.errors.LineTooLong`.
    """

    log = Logger()

    def __init__(
        self,
        db: Database,
        *,
        clock: Optional[Clock] = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        if not isinstance(db, Database):
            raise TypeError(f"Consumer needs a Database, not {type(db).__name__}")
        clock = default_clock(clock)
        self.db = db
        self._clock: Clock = clock
        self._max_line_length = max_line_length
        self._callbacks: list[Callback] = []
        self._runs: set[FeedRun] = set()

    def __repr__(self) -> str:
        return f"<Consumer of {self.db!r}>"

    # -- callbacks ----------------------------------------------------------

    def register_callback(self, callback: Callback) -> None:
        """
        Call *callback* with every change :meth:`wait` and :meth:`wait_once`
        receive, in the order received, after those registered before it.

        :param callback: Called with the change row (a dict exactly as the
            server sent it). If it raises, the feed fails with that exception;
            if it returns a Deferred that fails, so does the feed.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {callback!r}")
        self._callbacks.append(callback)

    def unregister_callback(self, callback: Callback) -> None:
        """
        Stop calling a callback given to :meth:`register_callback`.

        :raises ValueError: when it was not registered.
        """
        try:
            self._callbacks.remove(callback)
        except ValueError:
            raise ValueError(f"{callback!r} is not a registered callback") from None

    # -- the three feeds ----------------------------------------------------

    def fetch(
        self,
        since: Any = None,
        *,
        filter_name: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        **feed_params: Unpack[FeedParams],
    ) -> "Deferred[dict[str, Any]]":
        """
        Read the changes since *since* in one request (``feed=normal``).

        :param since: An opaque sequence string from an earlier answer,
            ``0``, ``"now"``, or an integer for CouchDB 1.x and PouchDB;
            ``None`` starts at the beginning.
        :param filter_name: A filter, ``"designname/filtername"`` or a
            built-in (``_doc_ids``, ``_selector``, ``_view``, ``_design``);
            ``filter=`` is its alias.
        :param params: Any other query parameter, sent unchanged: above all
            a filter function's own, which it reads in ``req.query``
            (``params={"type": "fruit"}``). A key that is a feed parameter,
            or one the method sets (``feed``, ``since``), is a
            ``ValueError``.
        :param feed_params: The feed parameters of
            :class:`~txchanges.FeedParams`: ``limit``, ``descending``,
            ``include_docs``, ``conflicts``, ``attachments``,
            ``att_encoding_info``, ``style``, ``seq_interval``, ``filter``,
            ``doc_ids=[...]``, ``selector={...}`` (and ``fields``),
            ``view="ddoc/view"``. Booleans are sent as ``true``/``false``.
        :raises TypeError: at once, for an unknown keyword (the message
            names the closest known one) or a value of the wrong type.
        :raises ValueError: at once, for a malformed filter name,
            contradicting filter parameters, or a key of *params* that
            collides with a named parameter.
        :return: A Deferred firing with the body exactly as the server sent
            it, ``{"results": [...], "last_seq": ..., "pending": ...}``; it
            fails with a :class:`~txchanges.errors.CouchError` subclass (e.g.
            :class:`~txchanges.errors.NotFound` for a missing database) or
            :class:`~txchanges.errors.ConnectionFailed`.
        """
        request = normal_request(self.fetch, since, filter_name, params, feed_params)
        return self.db.server.request_json(
            request.method,
            self.db.path("_changes"),
            request.query,
            *(() if request.body is None else (request.body,)),
        )

    def fetch_rows(
        self,
        callback: Callback,
        since: Any = None,
        *,
        filter_name: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        **feed_params: Unpack[FeedParams],
    ) -> "Deferred[dict[str, Any]]":
        """
        Read the normal feed (``feed=normal``) like :meth:`fetch`, but hand
        each row to *callback* as soon as it is parsed instead of returning
        them all: memory stays flat however many changes there are.

        ::

            end = yield consumer.fetch_rows(index_row, since=0, include_docs=True)
            since = end["last_seq"]

        :param callback: Called with each row (a dict, exactly as the server
            sent it), in order. When it returns a Deferred, the next row
            waits for it (and the response is paused meanwhile); when it
            raises, or its Deferred fails, the fetch fails with that. The
            registered callbacks are not called.
        :param since: Where to start, as for :meth:`fetch`.
        :param filter_name: A filter, as for :meth:`fetch`.
        :param params: Other query parameters, and *feed_params* the feed
            parameters, as for :meth:`fetch` (and checked as there).
        :return: A Deferred that fires, once every row was handed over and
            every Deferred *callback* returned has fired, with the rest of
            the body: ``{"last_seq": ..., "pending": N}``. It fails like
            :meth:`fetch` before the body arrives; then with
            :class:`~txchanges.errors.MalformedRow` for a body that is not a
            normal feed, :class:`~txchanges.errors.LineTooLong` for a row
            longer than ``max_line_length``,
            :class:`~txchanges.errors.UncleanEnd` when the body is cut short,
            :class:`~txchanges.errors.Stalled` when nothing arrives for
            80 s (each carrying the ``last_seq`` of the last row handed
            over), or with what *callback* raised. :meth:`stop` fails it with
            :class:`~twisted.internet.defer.CancelledError`.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {callback!r}")
        request = normal_request(self.fetch_rows, since, filter_name, params, feed_params)
        return Deferred.fromCoroutine(self._fetch_rows(request, callback))

    async def _fetch_rows(self, request: FeedRequest, callback: Callback) -> dict[str, Any]:
        def make_protocol(on_activity: Callable[[], None]) -> RowsProtocol:
            return RowsProtocol(
                callback, on_activity, self._max_line_length, pause=run.pause, resume=run.resume
            )

        run = FeedRun(
            self.db.server,
            self.db.path("_changes"),
            request,
            self._clock,
            idle_limit(None, None),
            make_protocol,
        )
        end = await self._track(run)
        if isinstance(end, Stopped):
            raise CancelledError("the consumer was stopped")
        return end  # type: ignore[no-any-return]

    def wait_once(
        self,
        since: Any = None,
        timeout: Optional[int] = 60000,
        heartbeat: Any = False,
        filter_name: Optional[str] = None,
        cb: Optional[Callback] = None,
        *,
        params: Optional[Mapping[str, Any]] = None,
        **feed_params: Unpack[FeedParams],
    ) -> "Deferred[dict[str, Any]]":
        """
        Wait for the next changes in one longpoll request (``feed=longpoll``).

        The server answers at once if there are changes after *since*, else
        when the first one arrives or its *timeout* ends the wait.

        :param since: Where to start, as for :meth:`fetch`; ``"now"`` waits
            for the next change.
        :param timeout: How long the server waits, in milliseconds.
        :param heartbeat: ``True`` or milliseconds to have the server send
            keep-alive newlines while it waits (CouchDB then ignores
            *timeout*).
        :param filter_name: A filter, ``"designname/filtername"`` or a
            built-in; *params* reach it as ``req.query``.
        :param cb: Called with each change, after the registered callbacks.
        :param params: Other query parameters, and *feed_params* the feed
            parameters, as for :meth:`fetch` (and checked as there).
        :return: A Deferred firing with ``{"results": [...], "last_seq": ...,
            "pending": ...}`` once every callback is done with the results;
            it fails like :meth:`fetch`, with what a callback raised, or with
            :class:`~txchanges.errors.Stalled` when nothing (not even a
            heartbeat) arrives for well over the expected interval.
            :meth:`stop` or cancelling it fails it with
            :class:`~twisted.internet.defer.CancelledError`.
        """
        request = live_request(self.wait_once, "longpoll", since, heartbeat, timeout, filter_name, params, feed_params)
        limit = idle_limit(heartbeat, timeout)
        return Deferred.fromCoroutine(self._wait_once(request, limit, cb))

    async def _wait_once(
        self, request: FeedRequest, limit: float, cb: Optional[Callback]
    ) -> dict[str, Any]:
        run = FeedRun(
            self.db.server, self.db.path("_changes"), request, self._clock, limit, BodyCollector
        )
        raw = await self._track(run)
        if isinstance(raw, Stopped):
            raise CancelledError("the consumer was stopped")
        try:
            result = json.loads(raw)
            rows = result["results"]
        except (ValueError, TypeError, KeyError):
            response = run.response
            ctype = response.headers.getRawHeaders(b"content-type", [b""])[0] if response else b""
            raise UnexpectedResponse(
                response.code if response else 0,
                request.method,
                self.db.url + "/_changes",
                ctype.decode("latin-1") or None,
                raw.decode("utf-8", "replace"),
            ) from None
        dispatch = _Dispatcher(self._callbacks, cb)
        for row in rows:
            dispatch.row(row)
        await dispatch.drain()
        return result  # type: ignore[no-any-return]

    def wait(
        self,
        since: Any = None,
        heartbeat: Any = True,
        timeout: Optional[int] = None,
        filter_name: Optional[str] = None,
        cb: Optional[Callback] = None,
        *,
        params: Optional[Mapping[str, Any]] = None,
        **feed_params: Unpack[FeedParams],
    ) -> "Deferred[Any]":
        """
        Follow the continuous feed (``feed=continuous``) over one connection,
        handing each change to every registered callback, then *cb*, in the
        order received.

        This is one connection: it does not reconnect. For a follower that
        survives failures and restarts, use the service.

        :param since: Where to start, as for :meth:`fetch`.
        :param heartbeat: ``True`` for the server's default interval, or
            milliseconds; keeps the connection alive and lets a stalled one
            be detected. The server then never ends the feed by itself.
        :param timeout: Without a heartbeat, milliseconds of idleness after
            which the server ends the feed.
        :param filter_name: A filter, as for :meth:`wait_once`.
        :param cb: Called with each change, after the registered callbacks.
        :param params: Other query parameters, and *feed_params* the feed
            parameters, as for :meth:`fetch` (and checked as there);
            ``limit`` ends the feed after that many rows.
        :return: A Deferred that fires with the feed's ``last_seq`` when the
            server ends it (timeout, limit, database deleted), or with the
            place to resume from (the last seq delivered, else *since*) when
            :meth:`stop` ends it. It fails with the typed error otherwise:
            a :class:`~txchanges.errors.CouchError` subclass before the feed
            starts, and :class:`~txchanges.errors.ErrorRow`,
            :class:`~txchanges.errors.MalformedRow`,
            :class:`~txchanges.errors.LineTooLong`,
            :class:`~txchanges.errors.UncleanEnd` or
            :class:`~txchanges.errors.Stalled` (each carrying ``last_seq``)
            during it, or with what a callback raised.
        """
        request = live_request(self.wait, "continuous", since, heartbeat, timeout, filter_name, params, feed_params)
        limit = idle_limit(heartbeat, timeout)
        return Deferred.fromCoroutine(self._wait(request, limit, since, cb))

    async def _wait(
        self, request: FeedRequest, limit: float, since: Any, cb: Optional[Callback]
    ) -> Any:
        dispatch = _Dispatcher(self._callbacks, cb)

        def make_protocol(on_activity: Callable[[], None]) -> ChangesProtocol:
            protocol = ChangesProtocol(dispatch.row, on_activity, self._max_line_length)
            dispatch.on_failure = protocol.stop
            return protocol

        run = FeedRun(
            self.db.server, self.db.path("_changes"), request, self._clock, limit, make_protocol
        )
        try:
            end = await self._track(run)
        finally:
            # Callbacks still running hold the feed's result back, and their
            # failure wins over a clean end: nothing is reported done early.
            await dispatch.drain()
        if isinstance(end, Stopped):
            return since if end.last_seq is None else end.last_seq
        return end.last_seq

    def changes(
        self,
        since: Any = None,
        heartbeat: Any = True,
        timeout: Optional[int] = None,
        filter_name: Optional[str] = None,
        *,
        params: Optional[Mapping[str, Any]] = None,
        **feed_params: Unpack[FeedParams],
    ) -> ChangeStream:
        """
        The continuous feed as an asynchronous iterator, for ``async for``
        in a Twisted coroutine; the feed is paused while the loop body runs.

        ::

            async with consumer.changes(since=0, include_docs=True) as changes:
                async for change in changes:
                    await handle(change)

        The parameters are those of :meth:`wait` but *cb*, checked as
        there; registered callbacks are not called. :meth:`stop` does not
        end it; leave the loop, or call :meth:`ChangeStream.close
        <txchanges.ChangeStream.close>`.

        :return: A :class:`~txchanges.ChangeStream`; the request is sent at
            once.
        """
        request = live_request(self.changes, "continuous", since, heartbeat, timeout, filter_name, params, feed_params)
        return ChangeStream(
            self.db, request, self._clock, idle_limit(heartbeat, timeout), self._max_line_length
        )

    async def _track(self, run: FeedRun) -> Any:
        self._runs.add(run)
        try:
            return await run.run()
        finally:
            self._runs.discard(run)

    def stop(self) -> None:
        """
        End every :meth:`wait` and :meth:`wait_once` of this consumer now:
        the request is aborted and no further change is delivered, even one
        already received. :meth:`wait`'s Deferred fires with the place to
        resume from; :meth:`wait_once`'s fails with ``CancelledError``.
        """
        for run in list(self._runs):
            run.stop()


class _Dispatcher:
    """
    Hands rows to a consumer's callbacks and keeps track of the Deferreds
    they return, so that a late failure is not lost.

    :param registered: The consumer's registered callbacks, read again for
        every row: one registered or unregistered while a feed runs takes
        effect from the next row.
    :param cb: The feed's own callback, called after them.
    """

    def __init__(self, registered: Sequence[Callback], cb: Optional[Callback]) -> None:
        self._registered = registered
        self._cb = cb
        self._outstanding: list[Deferred[Any]] = []
        self._failure: Optional[Failure] = None
        #: Called when a callback's Deferred fails, to end the feed.
        self.on_failure: Callable[[], object] = lambda: None

    def row(self, row: dict[str, Any]) -> None:
        # A copy: a callback may unregister itself.
        callbacks = list(self._registered)
        if self._cb is not None:
            callbacks.append(self._cb)
        for callback in callbacks:
            try:
                result = callback(row)
            except Exception:
                self._log(Failure(), callback, row)
                raise
            # Most callbacks return None; isinstance on Deferred (an ABC) is
            # not free.
            if result is not None and isinstance(result, Deferred):
                self._watch(result, callback, row)

    def _watch(self, d: "Deferred[Any]", callback: Callback, row: dict[str, Any]) -> None:
        def failed(f: Failure) -> None:
            self._log(f, callback, row)
            if self._failure is None:
                self._failure = f
                self.on_failure()

        def done(_: object) -> None:
            self._outstanding.remove(d)

        d.addErrback(failed)
        if not d.called:
            self._outstanding.append(d)
            d.addBoth(done)

    def _log(self, f: Failure, callback: Callback, row: dict[str, Any]) -> None:
        Consumer.log.failure(
            "changes callback {callback!r} failed on change {id!r} at seq {seq!r}",
            f,
            callback=callback,
            id=row.get("id", row.get("db_name")),
            seq=row.get("seq"),
        )

    async def drain(self) -> None:
        """
        Wait for every callback's Deferred, then raise the first failure.
        """
        if self._outstanding:
            await DeferredList(list(self._outstanding))
        if self._failure is not None:
            self._failure.raiseException()
