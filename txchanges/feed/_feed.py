"""
One feed request from start to end: send it, guard it with an idle watchdog,
hand the response body to a protocol, and make :meth:`FeedRun.stop` and
stalls end it promptly whatever stage it is in.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.web.iweb import IResponse

from txchanges.feed._body import BodyReader
from txchanges.feed._ends import Stopped
from txchanges.feed._params import FeedRequest
from txchanges._reactor import Clock
from txchanges.feed._watchdog import Watchdog
from txchanges.http.client import Server
from txchanges.errors import Stalled

__all__ = ["FeedRun"]


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
        make_protocol: Callable[[Callable[[], None]], BodyReader],
    ) -> None:
        self._server = server
        self._path = path
        self._request = request
        self._make_protocol = make_protocol
        self._watchdog = Watchdog(clock, idle_limit, self._stalled)
        self._pending: Optional[Deferred[IResponse]] = None
        self._protocol: Optional[BodyReader] = None
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
            self._stall.last_seq = self._protocol.last_seq
            raise self._stall
        return result

    @property
    def protocol(self) -> Optional[BodyReader]:
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
        assert self._protocol is not None
        self._protocol.pauseProducing()

    def resume(self) -> None:
        """
        Read the body again after :meth:`pause`, watchdog included.
        """
        self._paused = False
        if self._protocol is not None and not (self._stopping or self._finished):
            self._watchdog.start()
            self._protocol.resumeProducing()

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
