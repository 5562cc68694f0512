"""
One feed request from start to end: send it, guard it with an idle watchdog,
hand the response body to a protocol, and make :meth:`FeedRun.stop` and
stalls end it promptly whatever stage it is in.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse

from txchanges.http._httperrors import describe
from txchanges.feed._params import FeedRequest
from txchanges.feed._protocol import Stopped
from txchanges.feed._watchdog import Clock, Watchdog
from txchanges.http.client import Server
from txchanges.errors import Stalled, UncleanEnd

__all__ = ["FeedRun", "BodyCollector", "Stopped"]


class BodyProtocol(TypingProtocol):
    """
    What :class:`FeedRun` needs of the protocol that reads a body.
    """

    finished: "Deferred[Any]"

    def stop(self) -> None:
        ...


class BodyCollector(Protocol):
    """
    Collect a whole response body (a normal or longpoll feed is one JSON
    document), reporting every piece as activity.

    :ivar finished: Fires with the body's bytes when the response completes,
        with :class:`Stopped` after :meth:`stop`, and fails with
        :class:`~txchanges.errors.UncleanEnd` when the body is cut short.
    """

    def __init__(self, on_activity: Callable[[], object]) -> None:
        self._on_activity = on_activity
        self._parts: list[bytes] = []
        self.finished: Deferred[bytes | Stopped] = Deferred()

    def connectionMade(self) -> None:
        if self.finished.called and self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._parts.append(data)
        self._on_activity()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if isinstance(reason.value, ResponseDone):
            self.finished.callback(b"".join(self._parts))
        else:
            received = sum(map(len, self._parts))
            why = describe(reason.value) if reason.value is not None else "connection lost"
            self.finished.errback(
                UncleanEnd(f"the response body was cut short after {received} bytes ({why})")
            )

    def stop(self) -> None:
        """
        Stop reading; :attr:`finished` fires with :class:`Stopped` at once.
        """
        if self.finished.called:
            return
        self._parts = []
        if self.transport is not None:
            self.transport.stopProducing()
        self.finished.callback(Stopped(None))


class FeedRun:
    """
    One feed request.

    :param server: Where to send it.
    :param path: The encoded path, e.g. ``db/_changes``.
    :param request: The method, query and body.
    :param clock: Time for the watchdog.
    :param idle_limit: Seconds without a byte (headers included) after which
        the request is aborted and :meth:`run` fails with
        :class:`~txchanges.errors.Stalled`.
    :param make_protocol: Builds the body protocol given the activity hook.
    """

    def __init__(
        self,
        server: Server,
        path: str,
        request: FeedRequest,
        clock: Clock,
        idle_limit: float,
        make_protocol: Callable[[Callable[[], None]], BodyProtocol],
    ) -> None:
        self._server = server
        self._path = path
        self._request = request
        self._make_protocol = make_protocol
        self._watchdog = Watchdog(clock, idle_limit, self._stalled)
        self._pending: Optional[Deferred[IResponse]] = None
        self._protocol: Optional[BodyProtocol] = None
        self._stopping = False
        self._paused = False
        self._finished = False
        self._stall: Optional[Stalled] = None
        #: The response once its headers arrived.
        self.response: Optional[IResponse] = None

    async def run(self) -> Any:
        """
        Send the request and read the body to its end.

        :return: What the protocol's ``finished`` fired with, or
            :class:`Stopped` when :meth:`stop` was called before the body
            began.
        :raises Stalled: when the watchdog aborted it.
        """
        self._watchdog.start()
        try:
            return await self._run()
        finally:
            self._finished = True
            self._watchdog.stop()

    async def _run(self) -> Any:
        r = self._request
        body: dict[str, Any] = {} if r.body is None else {"json_body": r.body}
        self._pending = self._server.open_feed(r.method, self._path, r.query, **body)
        try:
            self.response = await self._pending
        except Exception:
            if self._stall is not None:
                raise self._stall from None
            if self._stopping:
                return Stopped(None)
            raise
        finally:
            self._pending = None
        self._watchdog.reset()
        self._protocol = self._make_protocol(self._watchdog.reset)
        if self._stopping:
            self._protocol.stop()
        elif self._paused:
            self._pause_body()
        self.response.deliverBody(self._protocol)  # type: ignore[call-arg, misc]
        result = await self._protocol.finished
        if self._stall is not None:
            self._stall.last_seq = getattr(self._protocol, "last_seq", None)
            raise self._stall
        return result

    @property
    def protocol(self) -> Optional[BodyProtocol]:
        """
        The body protocol, once the response headers arrived.
        """
        return self._protocol

    def pause(self) -> None:
        """
        Backpressure: stop reading the body, and stop the watchdog, since
        the silence that follows is ours, not the server's.
        """
        self._paused = True
        if self._protocol is not None:
            self._pause_body()

    def _pause_body(self) -> None:
        self._watchdog.stop()
        pause = getattr(self._protocol, "pauseProducing", None)
        if pause is not None:
            pause()

    def resume(self) -> None:
        """
        Read the body again after :meth:`pause`, watchdog included.
        """
        self._paused = False
        if self._protocol is not None and not (self._stopping or self._finished):
            self._watchdog.start()
            resume = getattr(self._protocol, "resumeProducing", None)
            if resume is not None:
                resume()

    def stop(self) -> None:
        """
        End the request now, whatever stage it is in; :meth:`run` returns
        :class:`Stopped` (or what the body protocol fires with on a stop).
        """
        self._stopping = True
        self._abort()

    def _abort(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        elif self._protocol is not None:
            self._protocol.stop()

    def _stalled(self, idle: float) -> None:
        self._stall = Stalled(idle)
        self._abort()
