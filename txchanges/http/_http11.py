"""
A bulk HTTP/1.1 response reader for long feeds.

Twisted's HTTP client hands a chunked body up one chunk at a time. A CouchDB
continuous feed sends every row as its own chunk, so a 64 KiB socket read
holds hundreds of chunks and becomes hundreds of ``dataReceived`` calls, each
through several layers of Python: on a fast feed that is about half of the
time spent. This module sends one request on a connection of its own, reads
the response head, and de-chunks each socket read as a whole, handing the
body protocol one ``dataReceived`` per read (through
:mod:`txchanges.http._response`, which describes what the response offers).

Only feeds go through here (see :meth:`txchanges.Server.open_feed`); every
other request still goes through treq.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from txchanges.feed._collect import BodyCollector
from txchanges.http._framing import Decoder, LengthDecoder, UntilClose, body_framing
from txchanges.http._proxy import ProxyURL
from txchanges.http._response import BodyHandOff, FeedResponse
from txchanges.http._route import route_for
from txchanges.http._wire import (
    END_OF_HEAD,
    MAX_HEAD,
    BadResponse,
    check_unfinished_head,
    host_header,
    parse_head,
    render_request,
)

__all__ = ["send", "open_response", "read_body"]

_HEAD, _BODY, _END = range(3)


class _ResponseReader(Protocol):
    """
    Send one request, parse the response head, fire *ready* with the
    response, then decode its body and hand it over.

    :ivar is_open: Whether the connection is open.
    """

    transport: Any

    def __init__(self, request: bytes, ready: "Deferred[FeedResponse]") -> None:
        self._request = request
        self._ready = ready
        self._state = _HEAD
        self._head = b""
        self._decoder: Optional[Decoder] = None
        self._handoff = BodyHandOff(self)
        self._reading_paused = False
        self.is_open = False

    # -- the connection ------------------------------------------------------

    def connectionMade(self) -> None:
        self.is_open = True
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
        self.is_open = False
        state, self._state = self._state, _END
        if state == _HEAD:
            if not self._ready.called:
                self._ready.errback(ResponseFailed([reason]))
        elif state == _BODY:
            if isinstance(self._decoder, UntilClose) and reason.check(ConnectionDone):
                self._handoff.end_body(Failure(PotentialDataLoss()))
            else:
                self._handoff.end_body(Failure(ResponseFailed([reason])))

    # -- the head --------------------------------------------------------------

    def _head_data(self, data: bytes) -> None:
        buffer = self._head + data
        while True:
            match = END_OF_HEAD.search(buffer)
            if match is None:
                try:
                    check_unfinished_head(buffer)
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
        response = FeedResponse(self._handoff, version, code, phrase, headers, length)
        if self._ready.called:
            return
        self._ready.callback(response)
        if self._state == _BODY:
            self._handoff.await_protocol()
        if buffer or decoder.done:
            self._body_data(buffer)

    def _bad_head(self, error: BaseException) -> None:
        self._state = _END
        if not self._ready.called:
            self._ready.errback(ResponseFailed([Failure(error)]))
        self.transport.abortConnection()

    # -- the body --------------------------------------------------------------

    def _body_data(self, data: bytes) -> None:
        handoff = self._handoff
        if handoff.stopped:
            return
        decoder = self._decoder
        assert decoder is not None
        try:
            pieces: list[Union[bytes, list[bytes]]] = decoder.feed(data) if data else []
        except BadResponse as e:
            self._state = _END
            if e.decoded:
                # The body before the broken framing, as Twisted hands it over.
                handoff.hand_over(e.decoded)
            handoff.end_body(Failure(ResponseFailed([Failure(e)])))
            self.transport.abortConnection()
            return
        if pieces:
            handoff.hand_over(pieces)
        if decoder.done and self._state == _BODY:
            self._state = _END
            handoff.end_body(Failure(ResponseDone()))
            # One request per connection: nothing else will come on it.
            if self.is_open:
                self.transport.loseConnection()

    def pause_reading(self, paused: bool) -> None:
        """
        Stop or go on reading the socket, for the body's
        :class:`~txchanges.http._response.BodyHandOff`.
        """
        if paused == self._reading_paused or not self.is_open or self._state != _BODY:
            return
        self._reading_paused = paused
        if paused:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()


def send(
    reactor: Any,
    tls_policy: Any,
    method: str,
    url: str,
    headers: Headers,
    body: Optional[bytes],
    proxy: Optional[ProxyURL] = None,
    limit: Callable[[Any], Any] = lambda endpoint: endpoint,
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
    :param proxy: The HTTP proxy to go through (see
        :func:`~txchanges.http._route.route_for`), or ``None``.
    :param limit: Wraps the endpoint connected to; it owns the connect
        timeout (the reactor's own is off), see
        :meth:`~txchanges.http._timeouts.Limits.endpoint`.
    """
    parts = urlsplit(url)
    route = route_for(reactor, tls_policy, proxy, url, limit)
    if route.proxy_authorization is not None:
        headers = headers.copy()
        headers.setRawHeaders(b"Proxy-Authorization", [route.proxy_authorization])
    host = host_header(parts.netloc, parts.hostname or "")
    return open_response(route.endpoint, render_request(method, route.target, host, headers, body))


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
            if reader.is_open:
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
