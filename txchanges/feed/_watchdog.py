"""
An idle timer: it fires when nothing has happened for too long.

A feed proves it is alive by sending bytes, heartbeats included; a connection
that goes silent for longer than the heartbeat interval (plus a margin) is
dead even if TCP has not noticed. Every received chunk calls :meth:`reset`.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from txchanges._reactor import Clock

__all__ = ["Watchdog", "idle_limit"]


class _DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, seconds: float) -> None: ...


#: Added to every limit so that scheduling jitter and a slow first byte
#: (CouchDB may hold response headers back for a whole heartbeat interval)
#: never trip the watchdog on a healthy feed.
GRACE = 5.0

#: CouchDB's interval when ``heartbeat=true`` is sent without a number, and
#: its default ``timeout`` (``[httpd] changes_timeout``), in milliseconds.
DEFAULT_INTERVAL_MS = 60000


def idle_limit(heartbeat: object, timeout: object) -> float:
    """
    How long a feed may stay silent before it is considered stalled.

    :param heartbeat: The ``heartbeat`` parameter as given: ``True``,
        milliseconds, or ``None``/``False``.
    :param timeout: The ``timeout`` parameter in milliseconds, or ``None``.
    :return: Seconds: the expected longest silence times 1.25, plus
        :data:`GRACE`.
    """
    if heartbeat is True:
        interval = DEFAULT_INTERVAL_MS
    elif isinstance(heartbeat, int) and heartbeat:
        interval = heartbeat
    elif isinstance(timeout, int) and not isinstance(timeout, bool):
        interval = timeout
    else:
        interval = DEFAULT_INTERVAL_MS
    return interval / 1000 * 1.25 + GRACE


class Watchdog:
    """
    Calls *on_idle* once, after *limit* seconds without a :meth:`reset`.

    :param clock: Where time comes from (a reactor, or
        :class:`twisted.internet.task.Clock` in tests).
    :param limit: Seconds of silence allowed.
    :param on_idle: Called with the limit when it is exceeded.
    """

    def __init__(
        self, clock: Clock, limit: float, on_idle: Callable[[float], None]
    ) -> None:
        self._clock = clock
        self.limit = limit
        self._on_idle = on_idle
        self._call: Optional[_DelayedCall] = None
        self._stopped = False

    def start(self) -> None:
        """
        Start (or restart) counting from now.
        """
        self._stopped = False
        self.reset()

    def reset(self) -> None:
        """
        Something arrived: count again from now.
        """
        if self._stopped:
            return
        if self._call is not None and self._call.active():
            self._call.reset(self.limit)
        else:
            self._call = self._clock.callLater(self.limit, self._fire)

    def stop(self) -> None:
        """
        Stop counting; :meth:`start` counts again.
        """
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        self._stopped = True
        self._on_idle(self.limit)
