"""
Run a batch handler on batches of changes, one batch at a time, with the
``on_error`` policy applied to the whole batch.

A batch is what :class:`~txchanges.feed._batches.BatchProtocol` hands over:
the changes parsed from one read, at most *max_batch*, never two of one
document. The changes another shard owns and the replays a dedup window
recognises are taken out of it first; what is left goes to the handler.
While a call goes on (a Deferred, a coroutine, a retry waiting) the feed is
paused, so the next batch waits for it; once it is done the resume point
moves past the whole batch, the changes taken out included.
"""

from __future__ import annotations

from types import CoroutineType
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges._reactor import Clock
from txchanges.feed._batches import BatchProtocol, check_max_batch
from txchanges.feed._body import BodyReader
from txchanges.feed._normal import RowsProtocol
from txchanges.feed._runs import Run, last_seq_of
from txchanges.service._onerror import ON_ERROR
from txchanges.service._progress import DedupWindow, Progress
from txchanges.service._scheduler_types import SchedulerListener
from txchanges.service._stats import ServiceStats
from txchanges.service.shard import Shard

__all__ = ["BatchHandler", "BatchScheduler", "choose_handler"]

#: Called with a list of change rows; may return a Deferred or a coroutine.
BatchHandler = Callable[[list[dict[str, Any]]], Any]


def choose_handler(
    handler: Any,
    batch_handler: Any,
    max_batch: Any,
    concurrency: int,
    max_buffered: Optional[int],
    max_ahead: Optional[int],
) -> tuple[Callable[[Any], Any], Optional[int]]:
    """
    Check a follower's handler options.

    :return: The handler, and *max_batch* when it is a batch handler, else
        ``None``.
    :raises TypeError: unless exactly one of *handler* and *batch_handler*
        is given, and is callable.
    :raises ValueError: for a bad *max_batch*, or with a batch handler, for
        options that schedule changes one by one (*concurrency* other than
        1, *max_buffered*, *max_ahead*): batches run one at a time, and the
        feed waits while one runs.
    """
    if (handler is None) == (batch_handler is None):
        raise TypeError("give either handler or batch_handler, not both or neither")
    chosen = handler if batch_handler is None else batch_handler
    if not callable(chosen):
        name = "handler" if batch_handler is None else "batch_handler"
        raise TypeError(f"{name} must be callable, not {chosen!r}")
    if batch_handler is None:
        return chosen, None
    size = check_max_batch(max_batch)
    if concurrency != 1 or max_buffered is not None or max_ahead is not None:
        raise ValueError(
            "a batch_handler takes one batch at a time and the feed waits while one runs: "
            "concurrency, max_buffered and max_ahead do not apply"
        )
    return chosen, size


class _Batch:
    """
    A batch whose handler call did not end at once.

    :ivar rows: What the handler is called with.
    :ivar seq: Where the resume point goes once it is done.
    :ivar attempts: The handler calls made on it so far.
    :ivar retry: The delayed call of its next attempt, while one waits.
    """

    def __init__(self, rows: Run, seq: Any) -> None:
        self.rows = rows
        self.seq = seq
        self.attempts = 0
        self.retry: Any = None


class BatchScheduler:
    """
    Hands batches of changes to a batch handler, one at a time.

    It offers what the service asks of a
    :class:`~txchanges.service._scheduler.Scheduler`: :attr:`paused`,
    :attr:`handled`, :attr:`failures`, :meth:`halt` and :meth:`drain`.

    :param handler: Called with each batch.
    :param progress: Where the resume point is kept.
    :param listener: Told what the owner must act on (see
        :class:`~txchanges.service._scheduler_types.SchedulerListener`).
    :param max_batch: The most changes in one batch.
    :param on_error: ``"stop"``, ``"retry"`` or ``"skip"`` the batch whose
        call failed.
    :param clock: Time for retries.
    :param retry_delay: Seconds before retry number *n* (from 1).
    :param checkpoint_every: How many changes must be done between two calls
        of the listener's ``checkpoint()``.
    :param shard: Take out the changes of the documents it does not own.
    :param dedup: Take out the changes seen before (when its size is not 0).
    :param stats: Where the changes taken out are counted.
    """

    log = Logger()

    def __init__(
        self,
        handler: BatchHandler,
        progress: Progress,
        listener: SchedulerListener,
        *,
        max_batch: int,
        on_error: str,
        clock: Clock,
        retry_delay: Callable[[int], float],
        checkpoint_every: int,
        shard: Optional[Shard],
        dedup: DedupWindow,
        stats: ServiceStats,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
        self._handler = handler
        self._progress = progress
        self._listener = listener
        self._max_batch = max_batch
        self._on_error = on_error
        self._clock = clock
        self._retry_delay = retry_delay
        self._checkpoint_every = checkpoint_every
        self._countdown = checkpoint_every
        self._shard = shard
        self._dedup = dedup
        self._stats = stats
        self._sifting = shard is not None or dedup.size > 0
        # The batch whose call goes on, if any.
        self._running: Optional[_Batch] = None
        self._halted = False
        self._drained: list[Deferred[None]] = []
        #: Whether the listener was told to pause and not yet to resume.
        self.paused = False
        self.handled = 0
        self.failures = 0

    def protocol(self, catch_up: bool, on_activity: Callable[[], None], max_line_length: int) -> BodyReader:
        """
        The body protocol of a feed request: batches from a continuous
        feed; from the normal feed of a catch-up, each change as a batch of
        its own.
        """
        if catch_up:
            return RowsProtocol(lambda row: self.take([row]), on_activity, max_line_length)
        return BatchProtocol(self.take, on_activity, max_line_length, self._max_batch)

    def take(self, batch: Run) -> None:
        """
        Take a batch as it arrives: take out what is not to be handled, and
        call the handler with the rest.
        """
        seq = last_seq_of(batch)
        rows = self._sift(batch) if self._sifting else batch
        if self._halted:
            # Stopping: the batch is not done, the resume point stays before it.
            for row in rows:
                self._listener.dropped(row)
            return
        if not rows:
            self._done(0, seq)
            return
        self._call(_Batch(rows, seq))

    def _sift(self, batch: Run) -> Run:
        kept = []
        for row in batch:
            if self._shard is not None and not self._shard.owns(row["id"]):
                self._stats.other_shards += 1
            elif self._dedup.seen(row):
                self._stats.duplicates += 1
            else:
                kept.append(row)
        return kept

    def _call(self, batch: _Batch) -> None:
        batch.attempts += 1
        try:
            result = self._handler(batch.rows)
        except Exception:
            self._hold(batch)
            self._failed(Failure(), batch)
            return
        if result is not None and (type(result) is CoroutineType or isinstance(result, Deferred)):
            self._hold(batch)
            if type(result) is CoroutineType:
                result = Deferred.fromCoroutine(result)
            result.addCallbacks(self._succeeded, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))
            return
        self._finish(batch)

    def _hold(self, batch: _Batch) -> None:
        # The next batch waits for this one: the feed is paused meanwhile.
        self._running = batch
        if not self.paused:
            self.paused = True
            self._listener.pause()

    def _succeeded(self, _: object, batch: _Batch) -> None:
        self._finish(batch)

    def _finish(self, batch: _Batch) -> None:
        self.handled += len(batch.rows)
        # Done before the feed goes on: resuming it may hand the next batch
        # over at once.
        self._done(len(batch.rows), batch.seq)
        self._release()

    def _done(self, count: int, seq: Any) -> None:
        # Nothing else is tracked: one batch at a time.
        self._countdown -= count
        if self._progress.done_at_once(seq) and self._countdown <= 0:
            self._countdown = self._checkpoint_every
            self._listener.checkpoint()

    def _release(self) -> None:
        self._running = None
        if self._drained:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)
        if self.paused and not self._halted:
            self.paused = False
            self._listener.resume()

    def _failed(self, failure: Failure, batch: _Batch) -> None:
        self.failures += 1
        rows = batch.rows
        first, last = rows[0].get("seq"), rows[-1].get("seq")
        if self._halted:
            self._drop(batch)
            self._release()
            return
        if self._on_error == "skip":
            self.log.failure(
                "batch handler failed on {count} changes from seq {first!r} to {last!r}; skipping them",
                failure, count=len(rows), first=first, last=last,
            )
            self._done(len(rows), batch.seq)
            self._release()
        elif self._on_error == "retry":
            delay = self._retry_delay(batch.attempts)
            self.log.failure(
                "batch handler failed on {count} changes from seq {first!r} to {last!r} "
                "(attempt {attempt}); retrying in {delay:.1f}s",
                failure, count=len(rows), first=first, last=last, attempt=batch.attempts, delay=delay,
            )
            batch.retry = self._clock.callLater(delay, self._again, batch)
        else:
            # No traceback here: the service logs the failure that stops it.
            self.log.critical(
                "batch handler failed on {count} changes from seq {first!r} to {last!r}; stopping",
                count=len(rows), first=first, last=last,
            )
            self._halted = True
            self._drop(batch)
            self._release()
            self._listener.failed(failure)

    def _again(self, batch: _Batch) -> None:
        batch.retry = None
        self._call(batch)

    def _drop(self, batch: _Batch) -> None:
        for row in batch.rows:
            self._listener.dropped(row)

    def halt(self) -> None:
        """
        Start nothing more: batches that arrive are dropped (not done, so
        the resume point stays before them), and a retry waiting is
        cancelled. A call going on goes on; see :meth:`drain`.
        """
        self._halted = True
        batch = self._running
        if batch is not None and batch.retry is not None:
            batch.retry.cancel()
            batch.retry = None
            self._drop(batch)
            self._release()

    def drain(self) -> "Deferred[None]":
        """
        :return: A Deferred that fires when no handler call is going on.
        """
        if self._running is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d
