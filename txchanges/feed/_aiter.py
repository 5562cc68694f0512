"""
``async for change in consumer.changes(...)``: the continuous feed as an
asynchronous iterator, for Twisted coroutines; and ``async for batch in
consumer.batches(...)``, the same a batch at a time.

No change is read ahead: the feed is paused until the loop asks for a
change (or a batch), and again as soon as one is handed over, so a slow
loop body holds the server back instead of filling memory. Holding back
what the connection still delivers is the body protocol's job (see
:mod:`txchanges.feed._body`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Optional, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from typing_extensions import Self

from txchanges.feed._batches import BatchProtocol
from txchanges.feed._feed import FeedRun
from txchanges.feed._params import FeedRequest
from txchanges.feed._protocol import ChangesProtocol
from txchanges.feed._rows import LastSeq
from txchanges.feed._runs import last_seq_of
from txchanges._reactor import Clock

if TYPE_CHECKING:
    from txchanges.http.client import Database

__all__ = ["ChangeStream", "BatchStream"]

#: What a stream hands over: a change, or a batch of them.
T = TypeVar("T")


class _Pipe(Generic[T]):
    """
    The feed behind a stream: a change (or a batch) is delivered only while
    the loop waits for one. It holds no reference to the stream, so that a
    stream dropped after a ``break`` is collected at once and can close its
    pipe.

    :param max_batch: ``None`` for a change at a time, else the most
        changes in one batch.
    """

    def __init__(
        self,
        db: "Database",
        request: FeedRequest,
        clock: Clock,
        limit: float,
        max_line_length: int,
        max_batch: Optional[int] = None,
    ) -> None:
        self.last_seq: Any = None
        self._waiter: Optional[Deferred[T]] = None
        self._ended = False
        self._error: Optional[Failure] = None
        self._max = max_line_length
        self._max_batch = max_batch
        self._run = FeedRun(db.server, db.path("_changes"), request, clock, limit, self._make_protocol)
        # Nothing is read until the loop asks.
        self._run.pause()
        self._done = Deferred.fromCoroutine(self._run.run())
        self._done.addCallbacks(self._end, self._fail)

    @property
    def finished(self) -> bool:
        return self._ended or self._error is not None

    def _make_protocol(self, on_activity: Callable[[], None]) -> ChangesProtocol:
        if self._max_batch is None:
            return ChangesProtocol(self._on_change, on_activity, self._max)
        return BatchProtocol(self._on_batch, on_activity, self._max, self._max_batch)

    def _on_change(self, row: dict[str, Any]) -> None:
        if row["seq"] is not None:
            self.last_seq = row["seq"]
        self._hand_over(row)

    def _on_batch(self, batch: list[dict[str, Any]]) -> None:
        seq = last_seq_of(batch)
        if seq is not None:
            self.last_seq = seq
        self._hand_over(batch)

    def _hand_over(self, item: Any) -> None:
        # The feed runs only while the loop waits: there is a waiter. The
        # pause comes first, for the loop body runs inside callback().
        self._run.pause()
        waiter, self._waiter = self._waiter, None
        assert waiter is not None
        waiter.callback(item)

    def _end(self, end: Any) -> None:
        self._ended = True
        if isinstance(end, LastSeq):
            self.last_seq = end.last_seq
        self._wake()

    def _fail(self, failure: Failure) -> None:
        self._error = failure
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.errback(self._error or Failure(StopAsyncIteration()))

    def next(self) -> "Deferred[T]":
        if self._error is not None:
            return fail(self._error)
        if self._ended:
            return fail(StopAsyncIteration())
        if self._waiter is not None:
            raise RuntimeError("the previous one has not arrived yet")
        waiter = self._waiter = Deferred()
        # Resuming may deliver a held-back row at once, firing the waiter.
        self._run.resume()
        return waiter

    def close(self) -> "Deferred[None]":
        if not self.finished:
            self._run.stop()
        d: Deferred[None] = Deferred()
        self._done.addBoth(lambda _: d.callback(None))
        return d


class _Stream(Generic[T]):
    """
    What :class:`ChangeStream` and :class:`BatchStream` share: the
    asynchronous iterator over a pipe, and its closing.
    """

    _pipe: _Pipe[T]

    @property
    def last_seq(self) -> Any:
        """
        The seq of the newest change handed to the loop; once the server
        ended the feed, its ``last_seq``: where to resume.
        """
        return self._pipe.last_seq

    def __aiter__(self) -> Self:
        return self

    def __anext__(self) -> "Deferred[T]":
        """
        :return: A Deferred firing with what comes next; it fails with
            ``StopAsyncIteration`` when the server ended the feed or
            :meth:`close` was called, and with the feed's typed error (see
            :meth:`Consumer.wait <txchanges.Consumer.wait>`) otherwise.
        """
        return self._pipe.next()

    def close(self) -> "Deferred[None]":
        """
        Close the feed now; the loop, if it asks again, ends.

        :return: A Deferred that fires once the connection is released.
        """
        return self._pipe.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __del__(self) -> None:
        pipe = getattr(self, "_pipe", None)
        if pipe is not None and not pipe.finished:
            pipe.close()


class ChangeStream(_Stream[dict[str, Any]]):
    """
    The changes of a continuous feed, one at a time, from
    :meth:`Consumer.changes <txchanges.Consumer.changes>`.

    Use it with ``async for`` in a coroutine run by
    :meth:`~twisted.internet.defer.Deferred.fromCoroutine` (or
    ``ensureDeferred``), best as an ``async with`` block so that the feed is
    closed however the loop ends::

        async with consumer.changes(since=0) as changes:
            async for change in changes:
                ...

    A ``break`` out of a bare ``async for consumer.changes(...)`` closes the
    feed too, as soon as the stream is no longer referenced. Each step of
    the loop gets the next change, a dict as the server sent it;
    :attr:`last_seq` is where to resume.
    """

    def __init__(
        self, db: "Database", request: FeedRequest, clock: Clock, limit: float, max_line_length: int
    ) -> None:
        self._pipe = _Pipe(db, request, clock, limit, max_line_length)


class BatchStream(_Stream[list[dict[str, Any]]]):
    """
    The changes of a continuous feed, a batch at a time, from
    :meth:`Consumer.batches <txchanges.Consumer.batches>`: each step of the
    loop gets the changes parsed from one read of the body (at most
    *max_batch*, never two of one document) as a list, in feed order. It is
    used as :class:`ChangeStream` is::

        async with consumer.batches(since=0, include_docs=True) as batches:
            async for batch in batches:
                await db.save_docs([index_entry(change) for change in batch])
        resume_from = batches.last_seq
    """

    def __init__(
        self, db: "Database", request: FeedRequest, clock: Clock, limit: float, max_line_length: int, max_batch: int
    ) -> None:
        self._pipe = _Pipe(db, request, clock, limit, max_line_length, max_batch)
