"""
An in-process TCP server that answers every request with scripted bytes.

It does not speak HTTP: once a request's head (and its ``Content-Length``
body) is in, it writes the script exactly as given, whatever it holds (a
broken status line, a body cut anywhere), then closes the connection or
keeps it open. A conformance test can so put any byte sequence in front of
an HTTP client::

    async with serving(RawServer(b"HTTP/1.1 200 OK\\r\\n\\r\\n{}")) as url:
        ...  # url is "http://127.0.0.1:PORT/"
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Optional, Union

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

__all__ = ["RawServer", "serving"]


class _Answer(Protocol):
    factory: "RawServer"
    transport: Any

    def connectionMade(self) -> None:
        self._request = b""
        self._answered = False
        self.factory.open.append(self)

    def dataReceived(self, data: bytes) -> None:
        self._request += data
        head, blank, body = self._request.partition(b"\r\n\r\n")
        if self._answered or not blank:
            return
        lengths = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")]
        if lengths and len(body) < lengths[0]:
            return
        self._answered = True
        self.factory.requests.append(self._request)
        size = self.factory.write_size
        script = self.factory.script
        if callable(script):
            script = script(self._request)
        self._write([script[i:i + size] for i in range(0, len(script), size)] if size else [script])

    def _write(self, pieces: list[bytes]) -> None:
        if not self.connected:
            return
        if pieces:
            self.transport.write(pieces[0])
            if len(pieces) > 1:
                # One write per reactor turn: the client meets many small reads.
                reactor.callLater(0, self._write, pieces[1:])
                return
        if self.factory.close:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.open.remove(self)
        self.factory.closed += 1


class RawServer(Factory):
    """
    Answer each request with :attr:`script`.

    :ivar script: The bytes written after each request, or a function of
        the request's bytes that returns them.
    :ivar write_size: Write the script in pieces of this many bytes, one
        piece per reactor turn (``1``: one byte at a time); ``None`` writes
        it at once.
    :ivar close: Close the connection (a clean FIN) once the script is
        written; ``False`` keeps it open until the client closes it.
    :ivar requests: The requests received, head and body, in order.
    :ivar closed: How many connections have ended.
    """

    protocol = _Answer

    def __init__(self, script: Union[bytes, Callable[[bytes], bytes]], *, write_size: Optional[int] = None, close: bool = True) -> None:
        self.script = script
        self.write_size = write_size
        self.close = close
        self.requests: list[bytes] = []
        self.closed = 0
        self.open: list[_Answer] = []


@asynccontextmanager
async def serving(server: RawServer) -> AsyncIterator[str]:
    """
    Listen on a free loopback port for the ``async with`` block, and give
    the base URL; afterwards, stop listening and drop the connections still
    open.
    """
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port.getHost().port}/"
    finally:
        for connection in list(server.open):
            connection.transport.abortConnection()
        await port.stopListening()
