"""
:class:`Consumer`: couchdbkit's changes API on Twisted.

This module checks each call and says what it does; running the requests is
:mod:`txchanges.feed._runner`'s job, and handing changes to the callbacks
:mod:`txchanges.feed._dispatch`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from typing_extensions import Unpack

from txchanges.feed._aiter import BatchStream, ChangeStream
from txchanges.feed._batches import DEFAULT_MAX_BATCH, check_max_batch
from txchanges.feed._dispatch import BatchCallback, Callback, Callbacks, Dispatcher
from txchanges.feed._protocol import DEFAULT_MAX_LINE_LENGTH
from txchanges.feed._runner import FeedRunner
from txchanges._reactor import Clock
from txchanges.feed._watchdog import idle_limit
from txchanges.http.client import Database
from txchanges.feed._feedparams import FeedParams, live_request, normal_request
from txchanges._reactor import default_clock

__all__ = ["Consumer"]


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
    :param max_batch: The most changes handed over in one batch, to a
        callback given to :meth:`register_batch_callback` or by
        :meth:`batches`.
    """

    log = Logger()

    def __init__(
        self,
        db: Database,
        *,
        clock: Optional[Clock] = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if not isinstance(db, Database):
            raise TypeError(f"Consumer needs a Database, not {type(db).__name__}")
        self.db = db
        self._callbacks = Callbacks()
        self._max_batch = check_max_batch(max_batch)
        self._runner = FeedRunner(db, default_clock(clock), max_line_length, self._max_batch)

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
        self._callbacks.add(callback, False)

    def register_batch_callback(self, callback: BatchCallback) -> None:
        """
        Call *callback* with the changes :meth:`wait` and :meth:`wait_once`
        receive, many at once: a list of the changes parsed from one read
        of the feed (at most *max_batch*), in the order received, after the
        callbacks registered before it.

        A batch never holds two changes of one document: where a read holds
        two, the batch ends before the second. Choose it over
        :meth:`register_callback` when the handler does better with many
        changes at once (a ``_bulk_docs`` write, a message queue's batch
        send): the per-change work of delivery is then done once per batch.

        :param callback: Called with a non-empty list of change rows (dicts
            exactly as the server sent them), which it may keep. When it
            returns a Deferred, the next batch waits until that fires (the
            feed is paused meanwhile). If it raises, or its Deferred fails,
            the feed fails with that exception.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {callback!r}")
        self._callbacks.add(callback, True)

    def unregister_callback(self, callback: Callable[..., Any]) -> None:
        """
        Stop calling a callback given to :meth:`register_callback` or
        :meth:`register_batch_callback`.

        :raises ValueError: when it was not registered.
        """
        self._callbacks.remove(callback)

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
        return Deferred.fromCoroutine(self._runner.rows(request, callback))

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
        dispatch = Dispatcher(self._callbacks, cb, Consumer.log)
        return Deferred.fromCoroutine(self._runner.longpoll(request, limit, dispatch))

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
        dispatch = Dispatcher(self._callbacks, cb, Consumer.log)
        return Deferred.fromCoroutine(self._runner.continuous(request, limit, since, dispatch))

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
        return self._runner.stream(request, idle_limit(heartbeat, timeout))

    def batches(
        self,
        since: Any = None,
        heartbeat: Any = True,
        timeout: Optional[int] = None,
        filter_name: Optional[str] = None,
        *,
        params: Optional[Mapping[str, Any]] = None,
        max_batch: Optional[int] = None,
        **feed_params: Unpack[FeedParams],
    ) -> BatchStream:
        """
        The continuous feed as an asynchronous iterator of batches: each
        step of the loop gets the changes parsed from one read (at most
        *max_batch*, never two of one document) as a list. The feed is
        paused while the loop body runs.

        ::

            async with consumer.batches(since=0, include_docs=True) as batches:
                async for batch in batches:
                    await db.save_docs([to_index(change["doc"]) for change in batch])
            resume_from = batches.last_seq

        The parameters are those of :meth:`changes`, checked as there.

        :param max_batch: The most changes in one batch; the consumer's
            *max_batch* when omitted.
        :return: A :class:`~txchanges.BatchStream`; the request is sent at
            once.
        """
        request = live_request(self.batches, "continuous", since, heartbeat, timeout, filter_name, params, feed_params)
        size = self._max_batch if max_batch is None else check_max_batch(max_batch)
        return self._runner.batch_stream(request, idle_limit(heartbeat, timeout), size)

    def stop(self) -> None:
        """
        End every :meth:`wait` and :meth:`wait_once` of this consumer now:
        the request is aborted and no further change is delivered, even one
        already received. :meth:`wait`'s Deferred fires with the place to
        resume from; :meth:`wait_once`'s fails with ``CancelledError``.
        """
        self._runner.stop()
