"""
Run a handler on changes: several at once, one at a time per document, with
a bounded buffer, and a chosen policy for failures.
"""

from __future__ import annotations

from collections import deque
from types import CoroutineType
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges._reactor import Clock
from txchanges.feed._delivery import RunReader
from txchanges.service._onerror import OnError
from txchanges.service._options import check_options, default_max_ahead
from txchanges.service._progress import Progress
from txchanges.service._scheduler_types import Handler, Job, SchedulerListener, key_of

__all__ = ["Scheduler"]


class Scheduler:
    """
    Hands changes to a handler.

    :param handler: Called with each change row; may return a Deferred.
    :param progress: Told when each change is done.
    :param listener: Told what the owner must act on (see
        :class:`~txchanges.service._scheduler_types.SchedulerListener`).
    :param concurrency: The most handler calls running at once.
    :param max_buffered: The most changes held (running or waiting) before
        the listener's ``pause()`` is called; ``resume()`` is called when
        half of them are done, so that a fast feed is not paused and resumed
        per row.
    :param max_ahead: The most rows past the resume point (see
        :attr:`Progress.tracked <txchanges.service._progress.Progress.tracked>`)
        before ``pause()`` is called: one handler call that hangs must not
        let the feed flow on past it without bound.
    :param on_error: ``"stop"``: report the failure to the listener's
        ``failed()`` and start nothing more; ``"retry"``: call the handler
        again after ``retry_delay(attempt)`` seconds; ``"skip"``: log it and
        count the change as done.
    :param clock: Time for retries.
    :param retry_delay: Seconds before retry number *n* (from 1).
    :param checkpoint_every: How many changes must be done between two calls
        of the listener's ``checkpoint()``.
    """

    log = Logger()

    def __init__(
        self,
        handler: Handler,
        progress: Progress,
        listener: SchedulerListener,
        *,
        concurrency: int,
        max_buffered: int,
        on_error: str,
        clock: Clock,
        max_ahead: int | None = None,
        retry_delay: Callable[[int], float],
        checkpoint_every: int = 1,
    ) -> None:
        check_options(concurrency, max_buffered, on_error)
        self._handler = handler
        self._progress = progress
        self._concurrency = concurrency
        self._max_buffered = max_buffered
        self._max_ahead = max_ahead if max_ahead is not None else default_max_ahead(max_buffered)
        self._on_error = OnError(on_error, retry_delay, clock, self.log)
        self._waiting: deque[Job] = deque()
        # Keys of the changes running, to their job record if they have one.
        self._running: dict[Any, Job | None] = {}
        self._drained: list[Deferred[None]] = []
        self._halted = False
        self._pumping = False
        self._pump_again = False
        #: Whether the listener was told to pause and not yet to resume.
        self.paused = False
        self._listener = listener
        self._checkpoint_every = checkpoint_every
        # Changes still to be done before the next call of checkpoint().
        self._countdown = checkpoint_every
        self.handled = 0
        self.failures = 0
        self._feed: Optional[RunReader] = None

    @property
    def buffered(self) -> int:
        """
        Changes held: running, retrying or waiting for their turn.
        """
        return len(self._waiting) + len(self._running)

    def take(self, row: dict[str, Any]) -> None:
        """
        Take a change as it arrives: note it in the progress, and run it or
        queue it as :meth:`submit` does.

        This runs once per change, and most handlers are synchronous: when
        nothing is running or waiting, the handler is called at once, and a
        call that returns a plain value is done with no more bookkeeping than
        moving the resume point. A call that raises or returns a Deferred or
        a coroutine is adopted as if :meth:`submit` had started it.
        """
        if self._running or self._waiting or self._pumping or self._halted:
            self.submit(row, self._progress.begin(row["seq"]))
            return
        # Nothing is running or waiting, so nothing is tracked either (every
        # ticket handed out is finished): the progress is idle, and a change
        # done now may set the resume point directly.
        try:
            result = self._handler(row)
        except Exception:
            self._adopt(row, Failure())
            return
        if result is not None and (type(result) is CoroutineType or isinstance(result, Deferred)):
            self._adopt(row, result)
            return
        self.handled += 1
        countdown = self._countdown = self._countdown - 1
        # Progress.done_at_once(), inline: this runs once per change.
        seq = row["seq"]
        if seq is not None:
            self._progress.resume = seq
            if countdown <= 0:
                self._countdown = self._checkpoint_every
                self._listener.checkpoint()

    # -- the feed's watcher: the handler called from the feed itself -------------

    #: The feed tells how many changes the handler was done with at once.
    counting = True

    def watch(self, feed: RunReader) -> None:
        """
        Choose what *feed* hands its changes to (see :meth:`pick`) from now
        on, instead of the last feed watched.
        """
        feed.watcher = self
        self._feed = feed

    def pick(self) -> Handler:
        """
        What the feed should hand the next changes to: while nothing is
        running, waiting or tracked, the handler itself, so that a change
        costs the feed one call and no bookkeeping of its own (the feed
        tells :meth:`passed` what it did, once per read); otherwise
        :meth:`take`.
        """
        if self._running or self._waiting or self._pumping or self._halted:
            return self.take
        return self._handler

    def passed(self, on_row: Any, count: int, seq: Any) -> None:
        """
        The handler, called by the feed, returned ``None`` for *count*
        changes, the newest seq among them being *seq*: they are done.
        """
        if on_row is not self._handler:
            return
        self.handled += count
        countdown = self._countdown = self._countdown - count
        # Progress.done_at_once(): nothing is tracked while the feed calls
        # the handler itself.
        if seq is not None:
            self._progress.resume = seq
            if countdown <= 0:
                self._countdown = self._checkpoint_every
                self._listener.checkpoint()

    def returned(self, on_row: Any, row: dict[str, Any], result: Any) -> bool:
        """
        The handler, called by the feed, returned *result* for *row*: done
        at once, or adopted when it goes on (then the feed hands the next
        changes to :meth:`take`).
        """
        if on_row is not self._handler:
            return False
        if type(result) is CoroutineType or isinstance(result, Deferred):
            self._adopt(row, result)
            return True
        self.passed(on_row, 1, row["seq"])
        return False

    def raised(self, on_row: Any, row: dict[str, Any], failure: Failure) -> bool:
        """
        The handler, called by the feed, raised for *row*: the ``on_error``
        policy decides, as for a call :meth:`take` made.
        """
        if on_row is not self._handler:
            return False
        self._adopt(row, failure)
        return True

    def discard(self, row: dict[str, Any]) -> None:
        """
        Take a change that needs no handling (a duplicate): it is done at
        once, and the resume point passes it once every change before it is
        done.
        """
        progress = self._progress
        self._count_done(progress.finish(progress.begin(row["seq"])))

    def _count_done(self, moved: bool) -> None:
        self._countdown -= 1
        if moved and self._countdown <= 0:
            self._countdown = self._checkpoint_every
            self._listener.checkpoint()

    def _adopt(self, row: dict[str, Any], outcome: Any) -> None:
        """
        Track a change whose handler call, made by :meth:`take`, failed
        (*outcome* is the :class:`Failure`) or is still going (a Deferred or
        a coroutine), just as if :meth:`_start` had made it.
        """
        ticket = self._progress.begin(row["seq"])
        key = key_of(row)
        self._watch(self._job(row, ticket, key, None), outcome)
        self._check_buffer()

    def _watch(self, job: Job, outcome: Any) -> None:
        # A handler call that raised (outcome is its Failure), or that goes
        # on (a Deferred, or a coroutine to run as one).
        if isinstance(outcome, Failure):
            self._failed(outcome, job)
            return
        if type(outcome) is CoroutineType:
            outcome = Deferred.fromCoroutine(outcome)
        outcome.addCallbacks(self._succeeded, self._failed, callbackArgs=(job,), errbackArgs=(job,))

    def submit(self, row: dict[str, Any], ticket: int) -> None:
        """
        Take a change; it runs when a slot is free and no earlier change of
        the same document is running.
        """
        key = key_of(row)
        running = self._running
        if (
            self._waiting
            or self._pumping
            or self._halted
            or key in running
            or len(running) >= self._concurrency
        ):
            self._waiting.append(Job(row, ticket, key))
            self._pump()
        else:
            # The common case, a free slot and no queue: no pass over it.
            self._start(row, ticket, key, None)
        self._check_buffer()

    def _check_buffer(self) -> None:
        # Pause the feed when the buffer is full, or the resume point lags
        # too far behind.
        if not self.paused and (
            len(self._waiting) + len(self._running) >= self._max_buffered
            or self._progress.tracked >= self._max_ahead
        ):
            self.paused = True
            self._listener.pause()

    def _pump(self) -> None:
        # A handler that finishes at once re-enters through _release(); the
        # outer call then makes one more pass instead of the inner one
        # changing the queue under it.
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again and not self._halted:
                self._pump_again = False
                blocked = set(self._running)
                for job in list(self._waiting):
                    if len(self._running) >= self._concurrency:
                        break
                    if job.key in blocked:
                        continue
                    blocked.add(job.key)
                    self._waiting.remove(job)
                    self._start(job.row, job.ticket, job.key, job)
                    if self._halted:
                        return
        finally:
            self._pumping = False

    def _start(self, row: dict[str, Any], ticket: int, key: Any, job: Job | None) -> None:
        # Most handlers are synchronous, and this runs once per change: the
        # job record is made only for a call that fails or returns a
        # Deferred, and a plain return value is done at once.
        self._running[key] = job
        if job is not None:
            job.attempts += 1
        try:
            result = self._handler(row)
        except Exception:
            self._watch(self._job(row, ticket, key, job), Failure())
            return
        if result is not None and (type(result) is CoroutineType or isinstance(result, Deferred)):
            self._watch(self._job(row, ticket, key, job), result)
            return
        self.handled += 1
        self._complete(row, ticket, key)

    def _job(self, row: dict[str, Any], ticket: int, key: Any, job: Job | None) -> Job:
        if job is None:
            job = self._running[key] = Job(row, ticket, key, attempts=1)
        return job

    def _succeeded(self, _: object, job: Job) -> None:
        self.handled += 1
        self._finish(job)

    def _failed(self, failure: Failure, job: Job) -> None:
        self.failures += 1
        if self._halted:
            self._listener.dropped(job.row)
            self._release(job)
            return
        policy = self._on_error.failed(failure, job, self._retry)
        if policy == "skip":
            self._finish(job)
        elif policy == "stop":
            self._halted = True
            self._listener.dropped(job.row)
            self._release(job)
            self._listener.failed(failure)

    def _retry(self, job: Job) -> None:
        job.retry = None
        self._start(job.row, job.ticket, job.key, job)

    def _finish(self, job: Job) -> None:
        self._complete(job.row, job.ticket, job.key)

    def _complete(self, row: dict[str, Any], ticket: int, key: Any) -> None:
        self._count_done(self._progress.finish(ticket))
        # What _release() does, inline: this runs once per change.
        del self._running[key]
        if self._waiting:
            self._pump()
        if self.paused or self._drained:
            self._after_release()

    def _after_release(self) -> None:
        running = self._running
        if (
            self.paused
            and not self._halted
            and len(self._waiting) + len(running) <= self._max_buffered // 2
            and self._progress.tracked < self._max_ahead
        ):
            self.paused = False
            self._listener.resume()
        if self._drained and not running:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def _release(self, job: Job) -> None:
        del self._running[job.key]
        if self._waiting:
            self._pump()
        self._after_release()

    def halt(self) -> None:
        """
        Start nothing more: drop the changes waiting for a turn (they are
        not done, so the resume point stays before them) and cancel pending
        retries. Running handler calls go on; see :meth:`drain`.
        """
        self._halted = True
        if self._feed is not None:
            # A feed calling the handler itself calls it no more.
            self._feed.repick()
        waiting, self._waiting = self._waiting, deque()
        for job in waiting:
            self._listener.dropped(job.row)
        for retrying in list(self._running.values()):
            if retrying is not None and retrying.retry is not None:
                retrying.retry.cancel()
                retrying.retry = None
                self._listener.dropped(retrying.row)
                self._release(retrying)

    def drain(self) -> "Deferred[None]":
        """
        :return: A Deferred that fires when no handler call is running.
        """
        if not self._running:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

