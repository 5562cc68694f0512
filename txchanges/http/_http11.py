"""
A bulk HTTP/1.1 response reader for long feeds.

Twisted's HTTP client hands a chunked body up one chunk at a time. A CouchDB
continuous feed sends every row as its own chunk, so a 64 KiB socket read
holds hundreds of chunks and becomes hundreds of ``dataReceived`` calls, each
through several layers of Python: on a fast feed that is about half of the
time spent. This module sends one request on a connection of its own and
de-chunks each socket read as a whole, handing the body protocol one
``dataReceived`` per read.

A body protocol that provides
:class:`~txchanges.feed._linereceiver.ILineReceiver` is handed the lines of a
run of one-line chunks already split, with ``lines_received``; any other gets
bytes.

Only feeds go through here (see :meth:`txchanges.Server.open_feed`); every
other request still goes through treq. The response offers what
:class:`~txchanges.feed._feed.FeedRun` needs of an
:class:`~twisted.web.iweb.IResponse`: ``code``, ``phrase``, ``headers``,
``length`` and :meth:`FeedResponse.deliverBody`, whose protocol gets a
transport with ``pauseProducing``/``resumeProducing``/``stopProducing`` and
is told how the body ended with ``ResponseDone``, ``PotentialDataLoss`` (a
body ended by the server closing the connection) or ``ResponseFailed``, as
Twisted's client does.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer  # type: ignore[import-untyped]

from txchanges.feed._linereceiver import ILineReceiver
from txchanges.feed._collect import BodyCollector
from txchanges.http._wire import (
    MAX_HEAD,
    BadResponse,
    Decoder,
    LengthDecoder,
    UntilClose,
    body_framing,
    host_header,
    parse_head,
    render_request,
)

__all__ = ["FeedResponse", "send", "open_response", "read_body"]

_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")


@implementer(IPushProducer)
class _BodyTransport:
    """
    What a body protocol gets as its transport: flow control over the
    response's connection.
    """

    def __init__(self, client: "_ResponseReader") -> None:
        self._client = client

    def pauseProducing(self) -> None:
        self._client.pause_body(True)

    def resumeProducing(self) -> None:
        self._client.pause_body(False)

    def stopProducing(self) -> None:
        self._client.stop_body()

    def loseConnection(self) -> None:
        self._client.stop_body()

    def getPeer(self) -> Any:
        return self._client.transport.getPeer()

    def getHost(self) -> Any:
        return self._client.transport.getHost()


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
        self, reader: "_ResponseReader", version: tuple[bytes, int, int], code: int, phrase: bytes,
        headers: Headers, length: Any,
    ) -> None:
        self._reader = reader
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
        self._reader.deliver_to(protocol)

    def setPreviousResponse(self, response: Any) -> None:
        self.previousResponse = response

    def __repr__(self) -> str:
        return f"<FeedResponse {self.code} {self.phrase.decode('latin-1')!r}>"


def _check_unfinished_head(buffer: bytes) -> None:
    """
    Fail early on the start of a head that can no longer become a valid
    one, rather than wait for more from a server that is not answering in
    HTTP/1.x.

    :raises BadResponse: when *buffer*, still without its blank line, is
        longer than :data:`MAX_HEAD` plus the 3 bytes of an unfinished blank
        line, or when its first bytes or first line are not an HTTP/1.x
        status line.
    """
    if len(buffer) > MAX_HEAD + 3:
        raise BadResponse(f"response head longer than {MAX_HEAD} bytes")
    line, newline, _ = buffer.lstrip(b"\r\n").partition(b"\n")
    if newline:
        parse_head(line)
    elif line[:7] != b"HTTP/1."[: len(line)]:
        raise BadResponse(f"bad status line {line[:80]!r}")


_HEAD, _BODY, _END = range(3)


class _ResponseReader(Protocol):
    """
    Send one request, parse the response head, fire *ready* with the
    response, then decode its body for whoever :meth:`deliver_to` names.
    """

    transport: Any

    def __init__(self, request: bytes, ready: "Deferred[FeedResponse]") -> None:
        self._request = request
        self._ready = ready
        self._state = _HEAD
        self._head = b""
        self._decoder: Optional[Decoder] = None
        self._body: Any = None
        # The body protocol again when it takes lines (ILineReceiver).
        self._lines: Any = None
        self._held: list[bytes] = []
        self._ending: Optional[Failure] = None
        self._told = False
        self._stopped = False
        self._body_paused = False
        self._awaiting_body = False
        self._reading_paused = False
        self._connected = False

    # -- the connection ------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        if self._ready.called:
            # Cancelled while connecting.
            self.transport.abortConnection()
            return
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        if self._state == _BODY:
            self._body_data(data)
        elif self._state == _HEAD:
            self._head_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connected = False
        state, self._state = self._state, _END
        if state == _HEAD:
            if not self._ready.called:
                self._ready.errback(ResponseFailed([reason]))
        elif state == _BODY:
            if isinstance(self._decoder, UntilClose) and reason.check(ConnectionDone):
                self._end_body(Failure(PotentialDataLoss()))
            else:
                self._end_body(Failure(ResponseFailed([reason])))

    # -- the head --------------------------------------------------------------

    def _head_data(self, data: bytes) -> None:
        buffer = self._head + data
        while True:
            match = _END_OF_HEAD.search(buffer)
            if match is None:
                try:
                    _check_unfinished_head(buffer)
                except BadResponse as e:
                    self._bad_head(e)
                else:
                    self._head = buffer
                return
            head, buffer = buffer[: match.start()], buffer[match.end():]
            try:
                if len(head) > MAX_HEAD:
                    # However the reads cut it.
                    raise BadResponse(f"response head longer than {MAX_HEAD} bytes")
                version, code, phrase, headers = parse_head(head.lstrip(b"\r\n"))
                decoder = None if 100 <= code < 200 else body_framing(code, headers)
            except BadResponse as e:
                self._bad_head(e)
                return
            if decoder is not None:
                break
            # An interim response (100 Continue): the real one follows.
        self._head = b""
        self._state = _BODY
        self._decoder = decoder
        length = decoder.length if isinstance(decoder, LengthDecoder) else UNKNOWN_LENGTH
        response = FeedResponse(self, version, code, phrase, headers, length)
        if self._ready.called:
            return
        self._ready.callback(response)
        if self._body is None and self._state == _BODY:
            # Nobody took the body yet: read no more until someone does.
            self._awaiting_body = True
            self._update_reading()
        if buffer or decoder.done:
            self._body_data(buffer)

    def _bad_head(self, error: BaseException) -> None:
        self._state = _END
        if not self._ready.called:
            self._ready.errback(ResponseFailed([Failure(error)]))
        self.transport.abortConnection()

    # -- the body --------------------------------------------------------------

    def _body_data(self, data: bytes) -> None:
        if self._stopped:
            return
        decoder = self._decoder
        assert decoder is not None
        try:
            pieces: list[Union[bytes, list[bytes]]] = decoder.feed(data) if data else []
        except BadResponse as e:
            self._state = _END
            if e.decoded:
                # The body before the broken framing, as Twisted hands it over.
                self._hand_over(e.decoded)
            self._end_body(Failure(ResponseFailed([Failure(e)])))
            self.transport.abortConnection()
            return
        if pieces:
            self._hand_over(pieces)
        if decoder.done and self._state == _BODY:
            self._state = _END
            self._end_body(Failure(ResponseDone()))
            # One request per connection: nothing else will come on it.
            if self._connected:
                self.transport.loseConnection()

    def _hand_over(self, pieces: list[Union[bytes, list[bytes]]]) -> None:
        """
        Give decoded body data to the body protocol (or hold it until there
        is one): one ``dataReceived`` for each run of bytes, and the lines
        of one-line chunks to its ``lines_received`` if it provides
        :class:`~txchanges.feed._linereceiver.ILineReceiver`.
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
                if self._stopped:
                    return
                lines.lines_received(piece)
                if self._stopped:
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

    def _end_body(self, reason: Failure) -> None:
        if self._told:
            return
        if self._body is None:
            self._ending = reason
            return
        self._told = True
        self._body.connectionLost(reason)

    def deliver_to(self, protocol: Any) -> None:
        if self._body is not None:
            raise RuntimeError("the body of this response was already delivered")
        self._body = protocol
        self._lines = protocol if ILineReceiver.providedBy(protocol) else None
        self._awaiting_body = False
        protocol.makeConnection(_BodyTransport(self))
        held, self._held = self._held, []
        if held and not self._stopped:
            protocol.dataReceived(b"".join(held))
        if self._ending is not None:
            ending, self._ending = self._ending, None
            self._end_body(ending)
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
        if self._stopped:
            return
        self._stopped = True
        self._held = []
        if self._connected:
            self.transport.abortConnection()
        elif self._ending is None and not self._told:
            self._end_body(Failure(ResponseFailed([Failure(ConnectionDone())])))

    def _update_reading(self) -> None:
        paused = self._body_paused or self._awaiting_body
        if paused == self._reading_paused or not self._connected or self._state != _BODY:
            return
        self._reading_paused = paused
        if paused:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()


def send(
    reactor: Any, tls_policy: Any, method: str, url: str, headers: Headers, body: Optional[bytes]
) -> "Deferred[FeedResponse]":
    """
    Send one request on a connection of its own and wait for the response
    head; see :func:`open_response`.

    :param tls_policy: An :class:`~twisted.web.iweb.IPolicyForHTTPS` for
        ``https`` URLs.
    :param url: The whole URL, without credentials.
    :param headers: The request's headers but ``Host``,
        ``Content-Length`` and ``Connection``.
    :param body: The request body, if any.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    endpoint: Any
    if isIPAddress(host):
        # No resolver round trip (a thread hop) for an address.
        endpoint = TCP4ClientEndpoint(reactor, host, port)
    elif isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port)
    else:
        endpoint = HostnameEndpoint(reactor, host.encode("idna"), port)
    if parts.scheme == "https":
        endpoint = wrapClientTLS(tls_policy.creatorForNetloc(host.encode("idna"), port), endpoint)
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    request = render_request(method, target, host_header(parts.netloc, host), headers, body)
    return open_response(endpoint, request)


def open_response(endpoint: Any, request: bytes) -> "Deferred[FeedResponse]":
    """
    Connect, send *request* and wait for the response head.

    :param endpoint: Where to connect, an
        :class:`~twisted.internet.interfaces.IStreamClientEndpoint` (TCP, or
        TLS wrapped around it).
    :param request: The request's bytes, from :func:`render_request`.
    :return: A Deferred that fires with the :class:`FeedResponse` once its
        head has arrived, whatever its status. It fails with the endpoint's
        error when the connection cannot be made, and with
        :class:`~twisted.web.client.ResponseFailed` when the connection ends
        before a whole head or the head is not HTTP. Cancelling it before
        the head arrives drops the connection.
    """
    readers: list[_ResponseReader] = []

    def cancel(d: Deferred[FeedResponse]) -> None:
        connecting.cancel()
        for reader in readers:
            if reader._connected:
                reader.transport.abortConnection()

    ready: Deferred[FeedResponse] = Deferred(cancel)

    def build() -> _ResponseReader:
        reader = _ResponseReader(request, ready)
        readers.append(reader)
        return reader

    def failed(failure: Failure) -> None:
        if not ready.called:
            ready.errback(failure)

    factory = Factory.forProtocol(build)
    factory.noisy = False  # no "Starting factory" log line for every feed connection
    connecting = endpoint.connect(factory)
    connecting.addErrback(failed)
    return ready


def read_body(response: IResponse) -> "Deferred[bytes]":
    """
    Read a whole (small) response body.

    :return: A Deferred that fires with the body (also one ended by the
        server closing the connection), and fails with
        :class:`~txchanges.errors.UncleanEnd` when it is cut short.
    """
    collector = BodyCollector(until_close=True)
    response.deliverBody(collector)  # type: ignore[call-arg, misc]
    return collector.finished
