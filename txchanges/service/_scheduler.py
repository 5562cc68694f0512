"""
Run a handler on changes: several at once, one at a time per document, with
a bounded buffer, and a chosen policy for failures.
"""

from __future__ import annotations

from collections import deque
from types import CoroutineType
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.service._progress import Progress
from txchanges._reactor import Clock

__all__ = ["Scheduler", "SchedulerListener", "ON_ERROR", "buffer_bounds", "check_options"]

#: What to do when the handler fails on a change.
ON_ERROR = ("stop", "retry", "skip")

Handler = Callable[[dict[str, Any]], Any]


def default_max_ahead(max_buffered: int) -> int:
    """
    The default bound on rows past the resume point: generous enough that
    out-of-order completion never pauses a healthy feed.
    """
    return max(1000, 50 * max_buffered)


def buffer_bounds(
    concurrency: int, max_buffered: int | None, max_ahead: int | None, on_error: str
) -> tuple[int, int]:
    """
    Check a follower's scheduling options and fill in the defaults.

    :return: ``(max_buffered, max_ahead)``: ``2 * concurrency`` and
        :func:`default_max_ahead` where not given.
    :raises ValueError: for options a :class:`Scheduler` cannot work with.
    """
    buffered = 2 * concurrency if max_buffered is None else max_buffered
    check_options(concurrency, buffered, on_error)
    ahead = default_max_ahead(buffered) if max_ahead is None else max_ahead
    if not isinstance(ahead, int):
        raise ValueError(f"max_ahead must be an int, not {ahead!r}")
    if ahead < buffered:
        raise ValueError(f"max_ahead ({ahead}) must be at least max_buffered ({buffered})")
    return buffered, ahead


def check_options(concurrency: int, max_buffered: int, on_error: str) -> None:
    """
    :raises ValueError: for options a :class:`Scheduler` cannot work with.
    """
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int of at least 1, not {concurrency!r}")
    if not isinstance(max_buffered, int) or max_buffered < concurrency:
        raise ValueError(f"max_buffered ({max_buffered!r}) must be an int of at least concurrency ({concurrency})")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")


class SchedulerListener(Protocol):
    """
    What a :class:`Scheduler` tells its owner.
    """

    def pause(self) -> None:
        """The buffer is full: read no more changes for now."""

    def resume(self) -> None:
        """Half the buffer is free again: read on."""

    def failed(self, failure: Failure) -> None:
        """The handler failed with ``on_error="stop"``: nothing more starts."""

    def dropped(self, row: dict[str, Any]) -> None:
        """A change taken will never be done: dropped by
        :meth:`Scheduler.halt`, or its handler failed with
        ``on_error="stop"``."""

    def checkpoint(self) -> None:
        """The resume point moved and *checkpoint_every* changes are done
        (handled, skipped or discarded) since the last call."""


@dataclass(eq=False, slots=True)
class _Job:
    row: dict[str, Any]
    ticket: int
    key: Any
    attempts: int = 0
    retry: Any = field(default=None, repr=False)


class Scheduler:
    """
    Hands changes to a handler.

    :param handler: Called with each change row; may return a Deferred.
    :param progress: Told when each change is done.
    :param listener: Told what the owner must act on (see
        :class:`SchedulerListener`).
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
        self._on_error = on_error
        self._clock = clock
        self._retry_delay = retry_delay
        self._waiting: deque[_Job] = deque()
        # Keys of the changes running, to their job record if they have one.
        self._running: dict[Any, _Job | None] = {}
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
        self._countdown -= 1
        if self._progress.done_at_once(row["seq"]) and self._countdown <= 0:
            self._countdown = self._checkpoint_every
            self._listener.checkpoint()

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
        key = self._key(row)
        self._watch(self._job(row, ticket, key, None), outcome)
        self._check_buffer()

    def _watch(self, job: _Job, outcome: Any) -> None:
        # A handler call that raised (outcome is its Failure), or that goes
        # on (a Deferred, or a coroutine to run as one).
        if isinstance(outcome, Failure):
            self._failed(outcome, job)
            return
        if type(outcome) is CoroutineType:
            outcome = Deferred.fromCoroutine(outcome)
        outcome.addCallbacks(self._succeeded, self._failed, callbackArgs=(job,), errbackArgs=(job,))

    @staticmethod
    def _key(row: dict[str, Any]) -> Any:
        # What serialises changes: the document id (the database name for
        # _db_updates rows).
        key = row.get("id")
        if key is None:
            key = row.get("db_name")
        return key

    def submit(self, row: dict[str, Any], ticket: int) -> None:
        """
        Take a change; it runs when a slot is free and no earlier change of
        the same document is running.
        """
        key = self._key(row)
        running = self._running
        if (
            self._waiting
            or self._pumping
            or self._halted
            or key in running
            or len(running) >= self._concurrency
        ):
            self._waiting.append(_Job(row, ticket, key))
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

    def _start(self, row: dict[str, Any], ticket: int, key: Any, job: _Job | None) -> None:
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

    def _job(self, row: dict[str, Any], ticket: int, key: Any, job: _Job | None) -> _Job:
        if job is None:
            job = self._running[key] = _Job(row, ticket, key, attempts=1)
        return job

    def _succeeded(self, _: object, job: _Job) -> None:
        self.handled += 1
        self._finish(job)

    def _failed(self, failure: Failure, job: _Job) -> None:
        self.failures += 1
        row = job.row
        docid = row.get("id", row.get("db_name"))
        if self._halted:
            self._listener.dropped(row)
            self._release(job)
            return
        if self._on_error == "skip":
            self.log.failure(
                "handler failed on change {id!r} at seq {seq!r}; skipping it",
                failure, id=docid, seq=row.get("seq"),
            )
            self._finish(job)
        elif self._on_error == "retry":
            delay = self._retry_delay(job.attempts)
            self.log.failure(
                "handler failed on change {id!r} at seq {seq!r} (attempt {attempt}); "
                "retrying in {delay:.1f}s",
                failure, id=docid, seq=row.get("seq"), attempt=job.attempts, delay=delay,
            )
            job.retry = self._clock.callLater(delay, self._retry, job)
        else:
            # No traceback here: the service logs the failure that stops it.
            self.log.critical("handler failed on change {id!r} at seq {seq!r}; stopping", id=docid, seq=row.get("seq"))
            self._halted = True
            self._listener.dropped(row)
            self._release(job)
            self._listener.failed(failure)

    def _retry(self, job: _Job) -> None:
        job.retry = None
        self._start(job.row, job.ticket, job.key, job)

    def _finish(self, job: _Job) -> None:
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

    def _release(self, job: _Job) -> None:
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

