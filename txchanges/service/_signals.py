"""
Stopping on SIGINT and SIGTERM: the rule that tells a request to stop from
an echo of the same request, and :func:`run_until_signal`, which runs a
service in a standalone script until such a request arrives.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any, Callable, Optional, Protocol, cast

from twisted.internet.defer import Deferred

from txchanges._reactor import default_reactor

__all__ = ["AGAIN", "ECHO", "ECHO_WINDOW", "FIRST", "StopSignals", "run_until_signal"]

#: What :meth:`StopSignals.receive` answers.
FIRST, ECHO, AGAIN = "first", "echo", "again"

#: Seconds after the first signal during which another one is its echo.
ECHO_WINDOW = 1.0


class _Seconds(Protocol):
    def seconds(self) -> float: ...


class _Reactor(_Seconds, Protocol):
    def callWhenRunning(self, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any: ...

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kw: Any) -> None: ...


class _Service(Protocol):
    running: Any

    def startService(self) -> None: ...

    def stopService(self) -> "Deferred[None]": ...

    def when_stopped(self) -> "Deferred[None]": ...


class StopSignals:
    """
    What each SIGINT or SIGTERM means to a process that stops cleanly.

    The first one asks to stop. Another within *window* seconds of it is
    the same request arriving twice: ``timeout(1)`` signals the process and
    then its whole process group, and a shell script may pass the
    terminal's Ctrl-C on as a SIGTERM, a few milliseconds apart. It is an
    echo, to be ignored. One after that comes from someone who does not
    want to wait any longer.

    :param clock: The reactor (:class:`twisted.internet.task.Clock` in
        tests).
    """

    def __init__(self, clock: _Seconds, window: float = ECHO_WINDOW) -> None:
        self._clock = clock
        self._window = window
        self._first: Optional[float] = None

    def receive(self) -> str:
        """
        :return: :data:`FIRST`, :data:`ECHO` or :data:`AGAIN`, for a signal
            received now.
        """
        now = self._clock.seconds()
        if self._first is None:
            self._first = now
            return FIRST
        return ECHO if now - self._first < self._window else AGAIN


def run_until_signal(service: _Service, reactor: Optional[_Reactor] = None) -> "Deferred[Optional[int]]":
    """
    Run *service* until SIGINT or SIGTERM, then stop it cleanly: how a
    standalone script (in :func:`twisted.internet.task.react`) follows a
    feed until Ctrl-C or its process manager's SIGTERM, and then goes on
    with its own code.

    The service is started unless it is running. Once the reactor runs,
    handlers for SIGINT and SIGTERM replace the reactor's own, which would
    stop the reactor before the service has saved its checkpoint. The first
    signal calls ``stopService()``; the same request arriving again within
    :data:`ECHO_WINDOW` seconds is ignored (see :class:`StopSignals`); a
    signal after that goes to the handler that was there before, as if this
    function had not been called (the reactor's stops the reactor at once,
    Python's raises :exc:`KeyboardInterrupt`). The previous handlers are
    restored once the service has stopped.

    :param service: A :class:`~txchanges.ChangesService`, or anything with
        its ``startService``, ``stopService`` and ``when_stopped``.
    :param reactor: The global reactor unless given: its clock times the
        echo window, and signals reach the service through its
        ``callFromThread``.
    :return: A Deferred that fires once the service has stopped and saved
        its checkpoint: with the number of the signal that stopped it, or
        ``None`` when something else called ``stopService()``. It fails with
        the error that stopped the service, as ``when_stopped()`` does.
    """
    reactor = cast(_Reactor, default_reactor(reactor))
    handlers = _Handlers(service, reactor)
    if not service.running:
        service.startService()
    stopped = service.when_stopped()
    reactor.callWhenRunning(handlers.install)
    stopped.addBoth(handlers.restore)
    return stopped.addCallback(lambda _: handlers.received)


class _Handlers:
    """
    The signal handlers of one :func:`run_until_signal` call.
    """

    def __init__(self, service: _Service, reactor: _Reactor) -> None:
        self._service = service
        self._reactor = reactor
        self._signals = StopSignals(reactor)
        self._previous: dict[int, Any] = {}
        self._done = False
        #: The signal that stopped the service, if one did.
        self.received: Optional[int] = None

    def install(self) -> None:
        if self._done:  # the service stopped before the reactor ran
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(signum, self._signalled)
            # None: a handler not installed from Python, kept by the default.
            self._previous[signum] = signal.SIG_DFL if previous is None else previous

    def restore(self, result: object) -> object:
        self._done = True
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._signalled:  # unless replaced since
                signal.signal(signum, previous)
        self._previous.clear()
        return result

    def _signalled(self, signum: int, frame: Optional[FrameType]) -> None:
        heard = self._signals.receive()
        if heard == FIRST:
            self.received = signum
            # A signal handler runs between any two bytecodes of the main
            # thread: the reactor is told, not called.
            self._reactor.callFromThread(self._service.stopService)
        elif heard == AGAIN:
            self.restore(None)
            signal.raise_signal(signum)
