"""
What a handler call that failed leads to, as the ``on_error`` option says:
stop, retry or skip; each failure logged with the change's id and seq.
"""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges._reactor import Clock
from txchanges.service._scheduler_types import Job

__all__ = ["ON_ERROR", "OnError"]

#: What to do when the handler fails on a change.
ON_ERROR = ("stop", "retry", "skip")


class OnError:
    """
    Logs each failure of the handler and, with ``"retry"``, times the next
    attempt; what else follows is the scheduler's to do.

    :param policy: One of :data:`ON_ERROR`.
    :param retry_delay: Seconds before retry number *n* (from 1).
    :param clock: Time for retries.
    :param log: Where failures are logged.
    """

    def __init__(self, policy: str, retry_delay: Callable[[int], float], clock: Clock, log: Logger) -> None:
        self._policy = policy
        self._retry_delay = retry_delay
        self._clock = clock
        self._log = log

    def failed(self, failure: Failure, job: Job, retry: Callable[[Job], None]) -> str:
        """
        Log *failure*, the handler's on *job*'s change; with ``"retry"``,
        call *retry* with *job* after the delay (:attr:`Job.retry
        <txchanges.service._scheduler_types.Job.retry>` is that call until then).

        :return: The policy: ``"skip"``, ``"retry"`` or ``"stop"``.
        """
        row = job.row
        docid = row.get("id", row.get("db_name"))
        if self._policy == "skip":
            self._log.failure(
                "handler failed on change {id!r} at seq {seq!r}; skipping it",
                failure, id=docid, seq=row.get("seq"),
            )
        elif self._policy == "retry":
            delay = self._retry_delay(job.attempts)
            self._log.failure(
                "handler failed on change {id!r} at seq {seq!r} (attempt {attempt}); "
                "retrying in {delay:.1f}s",
                failure, id=docid, seq=row.get("seq"), attempt=job.attempts, delay=delay,
            )
            job.retry = self._clock.callLater(delay, retry, job)
        else:
            # No traceback here: the service logs the failure that stops it.
            self._log.critical("handler failed on change {id!r} at seq {seq!r}; stopping", id=docid, seq=row.get("seq"))
        return self._policy
