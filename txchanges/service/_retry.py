"""
What is worth retrying, and how long to wait before the next attempt.
"""

from __future__ import annotations

import email.utils
from typing import Callable, Optional

from twisted.logger import Logger

from txchanges._reactor import Clock
from txchanges.service.checkpoint import CheckpointError
from txchanges.errors import CouchError, LineTooLong, ProxyError, TLSError

__all__ = ["is_terminal", "retry_after", "Backoff", "next_try"]


def is_terminal(error: BaseException) -> bool:
    """
    Whether retrying cannot help: a request CouchDB refuses (400), bad or
    missing credentials (401, 403), a missing database, design document or
    filter (404), a line over the configured bound, or a checkpoint that
    cannot be used (corrupt, written for another feed or shard, unreadable
    or unwritable: a person must look at it), a failed TLS handshake (a
    certificate that does not verify, a client certificate refused), and a
    proxy that refuses a tunnel as a server would refuse a request (407,
    403). Everything else - 5xx, 408, 429, connection failures, cut or
    stalled feeds, error rows - is worth retrying.
    """
    if isinstance(error, (LineTooLong, CheckpointError, TLSError)):
        return True
    status = error.status if isinstance(error, (CouchError, ProxyError)) else None
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def retry_after(error: BaseException, clock: Clock) -> Optional[float]:
    """
    The delay a 429 or 503 answer asks for in its ``Retry-After`` header,
    in seconds, or ``None``.
    """
    if not isinstance(error, CouchError) or error.status not in (429, 503):
        return None
    value = error.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - clock.seconds())


class Backoff:
    """
    Delays between attempts: the retry policy's, or what ``Retry-After``
    asks for, until *give_up_after* seconds of failing.

    :param policy: Seconds before attempt *n* (from 0).
    :param give_up_after: Seconds of failing after which to give up, or
        ``None`` never to.
    :param clock: Time.
    """

    def __init__(
        self, policy: Callable[[int], float], give_up_after: Optional[float], clock: Clock
    ) -> None:
        self._policy = policy
        self._give_up_after = give_up_after
        self._clock = clock
        self.attempt = 0
        self._failing_since: Optional[float] = None

    @property
    def failing_for(self) -> float:
        """
        Seconds since the first failure after the last success.
        """
        if self._failing_since is None:
            return 0.0
        return self._clock.seconds() - self._failing_since

    def reset(self) -> None:
        """
        Something worked: start over.
        """
        self.attempt = 0
        self._failing_since = None

    def next_delay(self, error: BaseException) -> Optional[float]:
        """
        :return: Seconds to wait before the next attempt, or ``None`` when it
            is time to give up.
        """
        if self._failing_since is None:
            self._failing_since = self._clock.seconds()
        elif self._give_up_after is not None and self.failing_for > self._give_up_after:
            return None
        delay = retry_after(error, self._clock)
        if delay is None:
            delay = self._policy(self.attempt)
        self.attempt += 1
        return delay


def next_try(backoff: Backoff, error: BaseException, what: str, log: Logger) -> Optional[float]:
    """
    Decide what follows a failure of *what*, and log it.

    :return: Seconds to wait before trying again (what ``Retry-After``
        asks for, or the backoff's next delay), or ``None`` when retrying
        cannot help (see :func:`is_terminal`) or *give_up_after* has passed.
    """
    if is_terminal(error):
        return None
    delay = backoff.next_delay(error)
    if delay is None:
        log.error("giving up on {what} after {seconds:.0f}s of failures", what=what, seconds=backoff.failing_for)
        return None
    log.warn(
        "{what} failed ({error}); retry {attempt} in {delay:.1f}s",
        what=what, error=error, attempt=backoff.attempt, delay=delay,
    )
    return delay
