"""
Running the feeds of one :class:`~txchanges.Consumer`: each call sends one
request (a :class:`~txchanges.feed._feed.FeedRun`) with the body protocol of
its feed, and turns how it ended into what the consumer's method fires with;
:meth:`FeedRunner.stop` ends those still running.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import CancelledError

from txchanges.errors import UnexpectedResponse
from txchanges.feed._aiter import BatchStream, ChangeStream
from txchanges.feed._collect import BodyCollector
from txchanges.feed._batches import BatchProtocol
from txchanges.feed._dispatch import Callback, Dispatcher
from txchanges.feed._ends import Stopped
from txchanges.feed._feed import FeedRun
from txchanges.feed._normal import RowsProtocol
from txchanges.feed._params import FeedRequest
from txchanges.feed._protocol import ChangesProtocol
from txchanges.feed._runs import batches_of
from txchanges._reactor import Clock
from txchanges.feed._watchdog import idle_limit
from txchanges.http.client import Database

__all__ = ["FeedRunner"]


class FeedRunner:
    """
    Sends the feed requests of one consumer and keeps those running, for
    :meth:`stop`.

    :param db: The database followed.
    :param clock: Time for the stall watchdog.
    :param max_line_length: The longest row accepted, in bytes.
    :param max_batch: The most changes a batch callback is handed at once.
    """

    def __init__(self, db: Database, clock: Clock, max_line_length: int, max_batch: int) -> None:
        self._db = db
        self._clock = clock
        self._max_line_length = max_line_length
        self._max_batch = max_batch
        self._runs: set[FeedRun] = set()

    async def rows(self, request: FeedRequest, callback: Callback) -> dict[str, Any]:
        """
        Stream a normal feed to *callback*, row by row.

        :return: The rest of the body: ``{"last_seq": ..., "pending": N}``.
        :raises CancelledError: when :meth:`stop` ended it.
        """

        def make_protocol(on_activity: Callable[[], None]) -> RowsProtocol:
            return RowsProtocol(
                callback, on_activity, self._max_line_length, pause=run.pause, resume=run.resume
            )

        run = FeedRun(
            self._db.server,
            self._db.path("_changes"),
            request,
            self._clock,
            idle_limit(None, None),
            make_protocol,
        )
        end = await self._track(run)
        if isinstance(end, Stopped):
            raise CancelledError("the consumer was stopped")
        return end  # type: ignore[no-any-return]

    async def longpoll(self, request: FeedRequest, limit: float, dispatch: Dispatcher) -> dict[str, Any]:
        """
        Read one longpoll answer whole, then hand its rows to *dispatch* and
        wait for the callbacks.

        :param limit: Seconds of silence after which the request stalled.
        :return: The body, as the server sent it.
        :raises UnexpectedResponse: for a body that is not a feed's.
        :raises CancelledError: when :meth:`stop` ended it.
        """
        run = FeedRun(
            self._db.server, self._db.path("_changes"), request, self._clock, limit, BodyCollector
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
                self._db.url + "/_changes",
                ctype.decode("latin-1") or None,
                raw.decode("utf-8", "replace"),
            ) from None
        if dispatch.batched:
            for batch in batches_of(rows, self._max_batch):
                held = dispatch.batch(batch)
                if held is not None:
                    await held
        else:
            for row in rows:
                dispatch.row(row)
        await dispatch.drain()
        return result  # type: ignore[no-any-return]

    async def continuous(
        self, request: FeedRequest, limit: float, since: Any, dispatch: Dispatcher
    ) -> Any:
        """
        Follow a continuous feed, handing each row to *dispatch* as it
        arrives; a callback's failed Deferred ends the feed.

        :param limit: Seconds of silence after which the feed stalled.
        :param since: Where the feed started, the place to resume from when
            it is stopped before any row.
        :return: The ``last_seq`` of the end row, or, when :meth:`stop` ended
            it, the place to resume from.
        """

        def make_protocol(on_activity: Callable[[], None]) -> ChangesProtocol:
            protocol: ChangesProtocol
            if dispatch.batched:
                protocol = BatchProtocol(dispatch.batch, on_activity, self._max_line_length, self._max_batch)
            else:
                protocol = ChangesProtocol(dispatch.row, on_activity, self._max_line_length)
                dispatch.attach(protocol)
            dispatch.on_failure = protocol.stop
            # A batch callback's Deferred holds the next batch back.
            dispatch.hold = run.pause
            dispatch.release = run.resume
            return protocol

        run = FeedRun(
            self._db.server, self._db.path("_changes"), request, self._clock, limit, make_protocol
        )
        try:
            end = await self._track(run)
        finally:
            dispatch.detach()
            # Callbacks still running hold the feed's result back, and their
            # failure wins over a clean end: nothing is reported done early.
            await dispatch.drain()
        if isinstance(end, Stopped):
            return since if end.last_seq is None else end.last_seq
        return end.last_seq

    def stream(self, request: FeedRequest, limit: float) -> ChangeStream:
        """
        A continuous feed for ``async for``; :meth:`stop` does not end it.
        """
        return ChangeStream(self._db, request, self._clock, limit, self._max_line_length)

    def batch_stream(self, request: FeedRequest, limit: float, max_batch: int) -> BatchStream:
        """
        A continuous feed for ``async for``, a batch at a time; :meth:`stop`
        does not end it.
        """
        return BatchStream(self._db, request, self._clock, limit, self._max_line_length, max_batch)

    async def _track(self, run: FeedRun) -> Any:
        self._runs.add(run)
        try:
            return await run.run()
        finally:
            self._runs.discard(run)

    def stop(self) -> None:
        """
        Stop every feed running: its request is aborted and no further row
        is delivered.
        """
        for run in list(self._runs):
            run.stop()
