"""
The response :mod:`txchanges.http._http11` gives a feed, and the hand-off
of its body to a protocol.

:class:`FeedResponse` offers what :class:`~txchanges.feed._feed.FeedRun`
needs of an :class:`~twisted.web.iweb.IResponse`: ``code``, ``phrase``,
``headers``, ``length`` and :meth:`FeedResponse.deliverBody`, whose protocol
gets a transport with ``pauseProducing``/``resumeProducing``/``stopProducing``
and is told how the body ended with ``ResponseDone``, ``PotentialDataLoss``
(a body ended by the server closing the connection) or ``ResponseFailed``,
as Twisted's client does. A body protocol that provides
:class:`~txchanges.http._linereceiver.ILineReceiver` is handed the lines of a run of
one-line chunks already split, with ``lines_received``; any other gets bytes.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Union

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer  # type: ignore[import-untyped]

from txchanges.http._linereceiver import ILineReceiver

__all__ = ["FeedResponse", "BodyHandOff", "Connection"]


class Connection(Protocol):
    """
    What the hand-off needs of the connection the body is read from.
    """

    #: Whether the connection is still open.
    is_open: bool
    #: The connection's transport.
    transport: Any

    def pause_reading(self, paused: bool) -> None:
        """
        Stop or go on reading the socket (nothing once the body has ended).
        """


@implementer(IPushProducer)
class _BodyTransport:
    """
    What a body protocol gets as its transport: flow control over the
    response's connection.
    """

    def __init__(self, handoff: "BodyHandOff", connection: Connection) -> None:
        self._handoff = handoff
        self._connection = connection

    def pauseProducing(self) -> None:
        self._handoff.pause_body(True)

    def resumeProducing(self) -> None:
        self._handoff.pause_body(False)

    def stopProducing(self) -> None:
        self._handoff.stop_body()

    def loseConnection(self) -> None:
        self._handoff.stop_body()

    def getPeer(self) -> Any:
        return self._connection.transport.getPeer()

    def getHost(self) -> Any:
        return self._connection.transport.getHost()


@implementer(IResponse)
class FeedResponse:
    """
    A response whose body is read as it arrives.

    :ivar code: The status code.
    :ivar phrase: The reason phrase.
    :ivar headers: The response headers.
    :ivar length: The ``Content-Length``, or ``UNKNOWN_LENGTH``.
    """

    request: Any = None
    previousResponse: Any = None

    def __init__(
        self, handoff: "BodyHandOff", version: tuple[bytes, int, int], code: int, phrase: bytes,
        headers: Headers, length: Any,
    ) -> None:
        self._handoff = handoff
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length

    def deliverBody(self, protocol: Any) -> None:
        """
        Hand the body to *protocol*: ``makeConnection`` with a transport
        that pauses, resumes and stops the response, then ``dataReceived``
        once per socket read, then ``connectionLost``.

        :raises RuntimeError: when called twice.
        """
        self._handoff.deliver_to(protocol)

    def setPreviousResponse(self, response: Any) -> None:
        self.previousResponse = response

    def __repr__(self) -> str:
        return f"<FeedResponse {self.code} {self.phrase.decode('latin-1')!r}>"


class BodyHandOff:
    """
    Hand a response's decoded body to the protocol
    :meth:`FeedResponse.deliverBody` names, holding it (and how it ended)
    until there is one, and pause, resume or drop the connection for it.

    :ivar stopped: Whether the body protocol wants no more.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._body: Any = None
        # The body protocol again when it takes lines (ILineReceiver).
        self._lines: Any = None
        self._held: list[bytes] = []
        self._ending: Optional[Failure] = None
        self._told = False
        self.stopped = False
        self._body_paused = False
        self._awaiting_body = False

    def await_protocol(self) -> None:
        """
        The head has been handed on: when nobody took the body yet, read no
        more until someone does.
        """
        if self._body is None:
            self._awaiting_body = True
            self._update_reading()

    def hand_over(self, pieces: list[Union[bytes, list[bytes]]]) -> None:
        """
        Give decoded body data to the body protocol (or hold it until there
        is one): one ``dataReceived`` for each run of bytes, and the lines
        of one-line chunks to its ``lines_received`` if it provides
        :class:`~txchanges.http._linereceiver.ILineReceiver`.
        """
        body = self._body
        lines = self._lines
        data: list[bytes] = []
        for piece in pieces:
            if type(piece) is list:
                if lines is None:
                    data.append(b"\n".join(piece) + b"\n")
                    continue
                if data:
                    body.dataReceived(b"".join(data))
                    data = []
                if self.stopped:
                    return
                lines.lines_received(piece)
                if self.stopped:
                    return
            else:
                data.append(piece)  # type: ignore[arg-type]
        if not data:
            return
        joined = data[0] if len(data) == 1 else b"".join(data)
        if body is not None:
            body.dataReceived(joined)
        else:
            self._held.append(joined)

    def end_body(self, reason: Failure) -> None:
        """
        Tell the body protocol how the body ended (once), or hold that until
        there is one.
        """
        if self._told:
            return
        if self._body is None:
            self._ending = reason
            return
        self._told = True
        self._body.connectionLost(reason)

    def deliver_to(self, protocol: Any) -> None:
        """
        See :meth:`FeedResponse.deliverBody`.
        """
        if self._body is not None:
            raise RuntimeError("the body of this response was already delivered")
        self._body = protocol
        self._lines = protocol if ILineReceiver.providedBy(protocol) else None
        self._awaiting_body = False
        protocol.makeConnection(_BodyTransport(self, self._connection))
        held, self._held = self._held, []
        if held and not self.stopped:
            protocol.dataReceived(b"".join(held))
        if self._ending is not None:
            ending, self._ending = self._ending, None
            self.end_body(ending)
        else:
            self._update_reading()

    def pause_body(self, paused: bool) -> None:
        self._body_paused = paused
        self._update_reading()

    def stop_body(self) -> None:
        """
        The body protocol wants no more: drop the connection. It is told
        ``ResponseFailed`` when the connection is gone, as Twisted does.
        """
        if self.stopped:
            return
        self.stopped = True
        self._held = []
        if self._connection.is_open:
            self._connection.transport.abortConnection()
        elif self._ending is None and not self._told:
            self.end_body(Failure(ResponseFailed([Failure(ConnectionDone())])))

    def _update_reading(self) -> None:
        self._connection.pause_reading(self._body_paused or self._awaiting_body)
