"""
At most so many catch-ups at once, and a fair queue for the databases that
wait: first come, first served, and a database with more to read goes to
the back of the queue after each page, so that one busy database never
starves the quiet ones.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges._reactor import Clock
from txchanges.many._catchup import Outcome
from txchanges.service._retry import is_terminal

__all__ = ["Pool"]


class Pool:
    """
    Runs catch-ups of dirty databases, *size* at a time.

    :param catch_up: Runs one catch-up of the named database.
    :param size: The most catch-ups running at once.
    :param retry_policy: Seconds before retry *n* (from 0) of a database
        whose catch-up failed; other databases go on meanwhile.
    :param log: Where failed catch-ups are told.
    """

    def __init__(
        self,
        catch_up: Callable[[str], Coroutine[Any, Any, Outcome]],
        *,
        size: int,
        clock: Clock,
        retry_policy: Callable[[int], float],
        log: Logger,
    ) -> None:
        self._catch_up = catch_up
        self._size = size
        self._clock = clock
        self._retry_policy = retry_policy
        self._log = log
        # Waiting databases, to the clock time each joined the queue; a dict
        # keeps insertion order, so the first key waited longest.
        self._queue: dict[str, float] = {}
        self._running: dict[str, Deferred[Any]] = {}
        # Databases marked dirty while their catch-up ran.
        self._again: set[str] = set()
        # Databases whose catch-up failed: attempts so far, and the retry.
        self._failing: dict[str, tuple[int, Any]] = {}
        self._pumping = False
        self._closed = False

    @property
    def running(self) -> int:
        """Catch-ups running now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Databases waiting for their turn."""
        return len(self._queue)

    def oldest_wait(self) -> float:
        """Seconds the first database in the queue has waited, or 0."""
        for joined in self._queue.values():
            return self._clock.seconds() - joined
        return 0.0

    def names(self) -> set[str]:
        """The databases waiting, running, or waiting for a retry."""
        return set(self._queue) | set(self._running) | set(self._failing)

    def dirty(self, name: str) -> None:
        """
        A database has changes to read: queue it, unless it is queued
        already; if it is being read, read it again afterwards. One waiting
        for a retry keeps its delay.
        """
        if self._closed:
            return
        if name in self._running:
            self._again.add(name)
        elif name not in self._queue and self._retry_of(name) is None:
            self._queue[name] = self._clock.seconds()
            self._pump()

    def forget(self, name: str) -> None:
        """
        Drop a database from the queue and its retries (it was deleted); a
        catch-up of it that runs is for the caller to stop.
        """
        self._queue.pop(name, None)
        self._again.discard(name)
        attempts, retry = self._failing.pop(name, (0, None))
        if retry is not None and retry.active():
            retry.cancel()

    def close(self) -> "Deferred[Any]":
        """
        Start nothing more.

        :return: A Deferred that fires when the catch-ups running now end
            (the caller stops them).
        """
        self._closed = True
        self._queue.clear()
        for name in list(self._failing):
            self.forget(name)
        return DeferredList(list(self._running.values()))

    def _retry_of(self, name: str) -> Any:
        failing = self._failing.get(name)
        if failing is None or failing[1] is None or not failing[1].active():
            return None
        return failing[1]

    def _pump(self) -> None:
        # A catch-up that ends at once comes back here through _ended(); the
        # outer loop then carries on.
        if self._pumping:
            return
        self._pumping = True
        try:
            queue, running = self._queue, self._running
            while queue and len(running) < self._size and not self._closed:
                name = next(iter(queue))
                del queue[name]
                # Known as running before it starts: a catch-up may get far
                # (even stop the owner) before its first pause.
                done: Deferred[Outcome] = Deferred()
                running[name] = done
                done.addBoth(self._ended, name)
                Deferred.fromCoroutine(self._catch_up(name)).chainDeferred(done)
        finally:
            self._pumping = False

    def _ended(self, result: Any, name: str) -> None:
        del self._running[name]
        again = name in self._again
        self._again.discard(name)
        if isinstance(result, Failure):
            self._failed(name, result)
        else:
            assert isinstance(result, Outcome), result
            self._failing.pop(name, None)
            if (result.more or again) and not self._closed:
                self._queue[name] = self._clock.seconds()
        self._pump()

    def _failed(self, name: str, failure: Failure) -> None:
        error = failure.value
        if is_terminal(error):  # type: ignore[arg-type]
            # Nothing a retry can change: the next change to it tries again.
            self._failing.pop(name, None)
            self._log.error("cannot read the changes of {db}: {error}", db=name, error=error)
            return
        attempts = self._failing.get(name, (0, None))[0]
        delay = self._retry_policy(attempts)
        self._log.warn(
            "reading the changes of {db} failed ({error}); retry {attempt} in {delay:.1f}s",
            db=name, error=error, attempt=attempts + 1, delay=delay,
        )
        if self._closed:
            return
        retry = self._clock.callLater(delay, self._retry, name)
        self._failing[name] = (attempts + 1, retry)

    def _retry(self, name: str) -> None:
        attempts, _ = self._failing[name]
        self._failing[name] = (attempts, None)
        self.dirty(name)
