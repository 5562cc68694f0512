"""
Time limits on every request of a :class:`~txchanges.Server`: how long
connecting may take, how long the response head may take to arrive, and how
long a body read to its end may take.

A continuous feed is meant never to end and a longpoll with heartbeats may
wait for hours, so their bodies have no limit here: the feed layer's idle
watchdog ends those when they go silent. Their heads do have one, with the
silence the feed asks of the server (its ``heartbeat`` or ``timeout``) added:
CouchDB holds a feed's head back until the first byte of its body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse
from zope.interface import alsoProvides, implementer  # type: ignore[import-untyped]

from txchanges._reactor import Clock, default_clock
from txchanges.errors import TimedOut
from txchanges.http._linereceiver import ILineReceiver
from txchanges.http._urls import ServerURL

__all__ = ["Timeouts", "Limits", "feed_silence", "NO_TIMEOUT"]

T = TypeVar("T")

#: CouchDB's longest silence before a feed's first byte when the request
#: names neither ``heartbeat`` nor ``timeout`` (``[httpd] changes_timeout``,
#: and the interval of ``heartbeat=true``), in seconds.
DEFAULT_FEED_SILENCE = 60.0

#: The ``timeout`` of a Twisted client endpoint that sets no timer of its
#: own (its connectors take ``None``, though it is typed as a float):
#: :meth:`Limits.endpoint` owns the connect timeout.
NO_TIMEOUT = cast(float, None)


def _check(name: str, value: Optional[float]) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"Timeouts.{name} must be a number of seconds above 0, or None for no limit, not {value!r}")


@dataclass(frozen=True)
class Timeouts:
    """
    The time limits of a :class:`~txchanges.Server`'s requests, in seconds;
    ``None`` is no limit. One that runs out drops the connection and fails
    the request with :class:`~txchanges.errors.TimedOut` (a
    :class:`~txchanges.errors.ConnectionFailed`, which a follower retries),
    whose ``what`` names the limit.

    :ivar connect: Making the TCP (and TLS) connection.
    :ivar headers: From sending the request (connecting included) to its
        response head. A feed's head gets the silence the feed asks the
        server for on top (its ``heartbeat``, else its ``timeout``, else
        CouchDB's 60 s), since CouchDB sends the head with the first byte
        of the body.
    :ivar body: From the head to the end of a body txchanges reads to its
        end: every response but continuous and longpoll feeds (whose
        silence the feed watchdog bounds), normal feeds included. Time a
        reader holds the body paused (a slow ``fetch_rows`` callback) does
        not count.
    :raises ValueError: for a limit that is not a positive number or ``None``.
    """

    connect: Optional[float] = 30.0
    headers: Optional[float] = 120.0
    body: Optional[float] = 600.0

    def __post_init__(self) -> None:
        for name in ("connect", "headers", "body"):
            _check(name, getattr(self, name))


def feed_silence(query: list[tuple[str, str]]) -> float:
    """
    The longest a healthy feed's server may stay silent, from what the
    request asks: its ``heartbeat``, else its ``timeout``, else CouchDB's
    default.

    :param query: The request's query pairs, as sent.
    :return: Seconds.
    """
    params = dict(query)
    for name in ("heartbeat", "timeout"):
        value = params.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value) / 1000
        if name == "heartbeat" and value == "true":
            return DEFAULT_FEED_SILENCE
    return DEFAULT_FEED_SILENCE


def within(clock: Clock, seconds: Optional[float], d: "Deferred[T]", error: Callable[[], Exception]) -> "Deferred[T]":
    """
    Cancel *d* when it has not fired after *seconds*, and fail it then with
    ``error()`` instead of what the cancellation made of it.

    :return: *d*.
    """
    if seconds is None:
        return d
    expired = []

    def expire() -> None:
        expired.append(True)
        d.cancel()

    call = clock.callLater(seconds, expire)

    def done(result: Any) -> Any:
        if not expired:
            call.cancel()
        elif isinstance(result, Failure):
            raise error()
        return result

    return d.addBoth(done)


@implementer(IStreamClientEndpoint)
class _TimedEndpoint:
    def __init__(self, endpoint: Any, limits: "Limits") -> None:
        self._endpoint = endpoint
        self._limits = limits

    def connect(self, factory: Any) -> "Deferred[Any]":
        limits = self._limits
        d: Deferred[Any] = self._endpoint.connect(factory)
        return within(limits.clock, limits.timeouts.connect, d, lambda: limits.error("connect"))


class Limits:
    """
    The :class:`Timeouts` of one server, on its clock.

    :param timeouts: The limits.
    :param clock: Where time comes from; the global reactor, imported when
        a limit first needs it, when ``None``.
    :param host: The server's host, for the errors.
    :param port: The server's port, for the errors.
    """

    def __init__(self, timeouts: Timeouts, clock: Optional[Clock], host: str, port: int) -> None:
        if not isinstance(timeouts, Timeouts):
            raise TypeError(f"timeouts must be a Timeouts, not {timeouts!r}")
        self.timeouts = timeouts
        self._clock = clock
        self._host = host
        self._port = port

    @classmethod
    def of_server(
        cls, url: ServerURL, timeouts: Optional[Timeouts], clock: Optional[Clock], reactor: Any, injected: bool
    ) -> "Limits":
        """
        The limits of a :class:`~txchanges.Server`: *timeouts* (the
        defaults when ``None``) on *clock*, else on *reactor*, else on the
        global reactor. A server with an *injected* client (a test's fake)
        and neither *clock* nor *reactor* has no limits unless *timeouts*
        is given: their timers would run on a reactor the client never uses.
        """
        if timeouts is None:
            bare = injected and clock is None and reactor is None
            timeouts = Timeouts(None, None, None) if bare else Timeouts()
        return cls(timeouts, clock or reactor, url.host, url.port)

    @property
    def clock(self) -> Clock:
        """
        Where time comes from.
        """
        if self._clock is None:
            self._clock = default_clock(None)
        return self._clock

    def error(self, what: str) -> TimedOut:
        """
        :param what: The name of the limit that ran out.
        """
        return TimedOut(self._host, self._port, what, getattr(self.timeouts, what))

    def endpoint(self, endpoint: Any) -> Any:
        """
        :return: *endpoint*, its connections limited to
            :attr:`Timeouts.connect`: one not made in time fails with
            :class:`TimedOut`.
        """
        if self.timeouts.connect is None:
            return endpoint
        return _TimedEndpoint(endpoint, self)

    def head(self, d: "Deferred[T]", feed: Optional[list[tuple[str, str]]] = None) -> "Deferred[T]":
        """
        Limit the wait for a response head to :attr:`Timeouts.headers` (and
        :attr:`Timeouts.connect`, which the wait includes).

        :param d: The request's Deferred, cancelled when the time runs out.
        :param feed: A feed's query: the silence it asks for is added.
        :return: *d*, failing with :class:`TimedOut` when the time ran out.
        """
        limit = self.timeouts.headers
        if limit is None:
            return d
        total = limit + (feed_silence(feed) if feed is not None else 0.0)
        error = TimedOut(self._host, self._port, "headers", total)
        return within(self.clock, total, d, lambda: error)

    def body(self, response: IResponse) -> IResponse:
        """
        :return: *response*, its body limited to :attr:`Timeouts.body`: when
            the time runs out the body's transport is stopped and its
            protocol told :class:`TimedOut` as the reason the body ended.
        """
        if self.timeouts.body is None:
            return response
        return _BoundedResponse(response, self)

    def feed_body(self, response: IResponse, query: list[tuple[str, str]]) -> IResponse:
        """
        :return: *response*, its body limited as :meth:`body` does when it
            is a normal feed's (a query without ``feed``, or
            ``feed=normal``); a continuous or longpoll feed's as it is.
        """
        if dict(query).get("feed", "normal") != "normal":
            return response
        return self.body(response)


class _BoundedResponse(proxyForInterface(IResponse)):  # type: ignore[misc]
    def __init__(self, original: IResponse, limits: Limits) -> None:
        super().__init__(original)
        self._limits = limits

    def deliverBody(self, protocol: Any) -> None:
        self.original.deliverBody(_BoundedBody(protocol, self._limits))


class _BoundedBody(Protocol):
    """
    Stand between a body and its protocol, and end the body with
    :class:`TimedOut` when it has been read longer than the limit; time
    spent paused by the protocol does not count.
    """

    transport: Any

    def __init__(self, inner: Any, limits: Limits) -> None:
        self._inner = inner
        self._limits = limits
        assert limits.timeouts.body is not None
        self._left: float = limits.timeouts.body
        self._since = 0.0
        self._call: Any = None
        self._over = False
        if ILineReceiver.providedBy(inner):
            alsoProvides(self, ILineReceiver)

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connected = 1
        self.counting(True)
        self._inner.makeConnection(_CountingTransport(transport, self))

    def dataReceived(self, data: bytes) -> None:
        if not self._over:
            self._inner.dataReceived(data)

    def lines_received(self, lines: list[bytes]) -> None:
        if not self._over:
            self._inner.lines_received(lines)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.counting(False)
        if not self._over:
            self._over = True
            self._inner.connectionLost(reason)

    def counting(self, counting: bool) -> None:
        """
        Start or stop counting the time the body is read.
        """
        clock = self._limits.clock
        if counting and self._call is None and not self._over:
            self._since = clock.seconds()
            self._call = clock.callLater(max(self._left, 0.0), self._expire)
        elif not counting and self._call is not None:
            self._call.cancel()
            self._call = None
            self._left -= clock.seconds() - self._since

    def _expire(self) -> None:
        self._call = None
        self._over = True
        self.transport.stopProducing()
        self._inner.connectionLost(Failure(self._limits.error("body")))


@implementer(IPushProducer)
class _CountingTransport:
    """
    The body's transport as its protocol sees it: pausing stops the clock of
    the body's limit.
    """

    def __init__(self, transport: Any, body: _BoundedBody) -> None:
        self._transport = transport
        self._body = body

    def pauseProducing(self) -> None:
        self._body.counting(False)
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()
        self._body.counting(True)

    def stopProducing(self) -> None:
        self._transport.stopProducing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
