"""An HTTP/1.1 proxy for the tests of proxies, load balancers and TLS.

In front of one server (*upstream*) it is a reverse proxy, as nginx or
HAProxy in front of CouchDB: every request goes to that server, with a
*prefix* only the paths under it (taken off on the way), and with *tls* it
terminates TLS. Without *upstream* it is a forward proxy, as squid: ``CONNECT
host:port`` opens a tunnel, and an absolute-form request (``GET
http://host:port/path``) goes to that host. Either kind can close
connections that stay silent for *idle_timeout* seconds (nginx's
``proxy_read_timeout``, HAProxy's ``timeout server``) and can buffer
responses (nginx's ``proxy_buffering``): hold every response until the
server ends it, or deliver it only in blocks of *buffering* bytes.

Each request is sent on with ``Connection: close`` (the server then says so
in its answer), so one connection carries one exchange. What the proxy did
is counted, for the tests to check.
"""

from __future__ import annotations

from base64 import b64encode
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

__all__ = ["HTTPProxy", "basic", "common_name"]

_DROPPED_HEADERS = (b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization")


def common_name(certificate: x509.Certificate) -> str:
    """The first common name of a certificate's subject."""
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def basic(user: str, password: str) -> bytes:
    """The value of a basic ``Authorization`` (or ``Proxy-Authorization``) header."""
    return b"Basic " + b64encode(f"{user}:{password}".encode())


def _answer(status: str, extra: bytes = b"") -> bytes:
    page = f"<html><body><h1>{status}</h1></body></html>".encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {len(page)}\r\nConnection: close\r\n".encode()
        + extra + b"\r\n" + page
    )


class _Upstream(Protocol):
    def __init__(self, exchange: "_Exchange") -> None:
        self._exchange = exchange

    def connectionMade(self) -> None:
        self._exchange.upstream_made(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._exchange.from_upstream(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._exchange.upstream_lost()


class _Exchange(Protocol):
    """One client connection: its request head read, then a relay to the server."""

    def __init__(self, proxy: "HTTPProxy") -> None:
        self._proxy = proxy
        self._head = b""
        self._relaying = False
        self._upstream: Any = None
        self._to_upstream: list[bytes] = []
        self._held: list[bytes] = []
        self._response_head: Optional[bytes] = b""
        self._tunnel = False
        self._idle: Any = None
        self._closed = False

    # -- the client side --------------------------------------------------------

    def connectionMade(self) -> None:
        self._proxy.connections += 1
        self._proxy.exchanges.add(self)
        self._touch()

    def dataReceived(self, data: bytes) -> None:
        self._touch()
        if self._relaying:
            self._send_upstream(data)
            return
        self._head += data
        if b"\r\n\r\n" not in self._head:
            return
        self._relaying = True
        if self._proxy.tls is not None:
            certificate = self.transport.getPeerCertificate()
            self._proxy.client_certificates.append(common_name(certificate.to_cryptography()) if certificate else None)
        head, rest = self._head.split(b"\r\n\r\n", 1)
        self._head = b""
        self._request(head, rest)

    def _request(self, head: bytes, rest: bytes) -> None:
        proxy = self._proxy
        request_line, *header_lines = head.split(b"\r\n")
        method, target, _ = request_line.decode("latin-1").split(" ", 2)
        headers = [line.split(b":", 1) for line in header_lines if b":" in line]
        given = {name.strip().lower(): value.strip() for name, value in headers}
        proxy.requests.append((method, target))
        proxy.request_times.append(proxy.reactor.seconds())
        if proxy.credentials is not None and given.get(b"proxy-authorization") != proxy.credentials:
            proxy.refused += 1
            self._reply(_answer("407 Proxy Authentication Required", b'Proxy-Authenticate: Basic realm="test"\r\n'))
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            if proxy.upstream is not None or proxy.connect_status is not None:
                proxy.refused += 1
                self._reply(_answer(proxy.connect_status or "405 Method Not Allowed"))
                return
            self._tunnel = True
            proxy.tunnels.append(target)
            self._to_upstream.append(rest)
            self._connect(host.strip("[]"), int(port))
            return
        if target.startswith("http://") and proxy.upstream is None:
            parts = urlsplit(target)
            where: tuple[str, int] = (parts.hostname or "", parts.port or 80)
            path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        elif target.startswith("/") and proxy.upstream is not None:
            where, path = proxy.upstream, target
            prefix = proxy.prefix
            if prefix is not None:
                if not (path == prefix or path.startswith(prefix + "/")):
                    self._reply(_answer("404 Not Found"))
                    return
                path = path[len(prefix):] or "/"
        else:
            self._reply(_answer("400 Bad Request"))
            return
        lines = [f"{method} {path} HTTP/1.1".encode("latin-1")]
        lines += [name + b":" + value for name, value in headers if name.strip().lower() not in _DROPPED_HEADERS]
        lines.append(b"Connection: close")
        self._to_upstream.append(b"\r\n".join(lines) + b"\r\n\r\n" + rest)
        self._connect(*where)

    def _reply(self, data: bytes) -> None:
        self.transport.write(data)
        self.transport.loseConnection()

    def _connect(self, host: str, port: int) -> None:
        endpoint = TCP4ClientEndpoint(self._proxy.reactor, host, port)
        connectProtocol(endpoint, _Upstream(self)).addErrback(self._cannot_connect)  # type: ignore[no-untyped-call]

    def _cannot_connect(self, failure: Failure) -> None:
        if not self._closed:
            self._reply(_answer("502 Bad Gateway"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._stop_idle()
        self._proxy.exchanges.discard(self)
        if self._upstream is not None:
            self._upstream.abortConnection()

    # -- the server side ----------------------------------------------------------

    def upstream_made(self, transport: Any) -> None:
        if self._closed:
            transport.abortConnection()
            return
        self._upstream = transport
        if self._tunnel:
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for data in self._to_upstream:
            transport.write(data)
        self._to_upstream = []

    def _send_upstream(self, data: bytes) -> None:
        if self._upstream is None:
            self._to_upstream.append(data)
        else:
            self._upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        self._touch()
        buffering = None if self._tunnel else self._proxy.buffering
        if buffering is None:
            self._deliver(data)
            return
        if self._response_head is not None:
            # As nginx does, the head goes on at once; the body is buffered.
            data = self._response_head + data
            head, end, body = data.partition(b"\r\n\r\n")
            if not end:
                self._response_head = data
                return
            self._response_head = None
            self._deliver(head + end)
            data = body
        self._held.append(data)
        if buffering != "all" and sum(map(len, self._held)) >= buffering:
            self._deliver(b"".join(self._held))
            self._held = []

    def _deliver(self, data: bytes) -> None:
        self._proxy.bytes_delivered += len(data)
        self.transport.write(data)

    def upstream_lost(self) -> None:
        self._upstream = None
        if not self._closed:
            self._deliver(b"".join(self._held))
            self._held = []
            self.transport.loseConnection()

    # -- idle connections ---------------------------------------------------------

    def _touch(self) -> None:
        timeout = self._proxy.idle_timeout
        if timeout is None or self._closed:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = self._proxy.reactor.callLater(timeout, self._idled)

    def _stop_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()

    def _idled(self) -> None:
        # As nginx does when proxy_read_timeout passes: the client gets what
        # was sent, then the connection closes, mid-response or not.
        proxy = self._proxy
        proxy.idle_drops.append(proxy.reactor.seconds())
        if self._upstream is not None:
            self._upstream.abortConnection()
        self._held = []
        self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()


class HTTPProxy(Factory):
    """
    The proxy; it is the factory of its own listening port.

    :param upstream: ``(host, port)`` of the one server behind a reverse
        proxy; ``None`` for a forward proxy.
    :param prefix: A reverse proxy's path prefix (``"/couch"``).
    :param tls: A context factory: listen with TLS (see
        :func:`tests.tlscerts.server_tls`).
    :param idle_timeout: Close a connection after this many seconds with no
        byte either way.
    :param buffering: ``"all"`` to hold each response's body until the
        server ends it, or a number of bytes to deliver it in blocks of at
        least that many (and the rest at its end); ``None`` to pass bytes on
        as they come. The response head always goes on at once.
    :param credentials: The ``Proxy-Authorization`` value a forward proxy
        requires (a 407 answer otherwise).
    :param connect_status: Answer ``CONNECT`` with this status line
        (``"403 Forbidden"``) instead of opening a tunnel.

    :ivar port: The port listened on.
    :ivar connections: Client connections accepted.
    :ivar requests: ``(method, target)`` of every request, as received.
    :ivar request_times: The reactor time of each of :attr:`requests`.
    :ivar tunnels: ``host:port`` of every tunnel opened.
    :ivar refused: Requests answered by the proxy itself (407, refused CONNECT).
    :ivar idle_drops: Reactor times at which idle connections were closed.
    :ivar bytes_delivered: Response bytes handed to clients.
    :ivar client_certificates: With *tls*, the common name of the
        certificate each client showed (``None`` for none), per request.
    """

    noisy = False

    def __init__(
        self,
        upstream: Optional[tuple[str, int]] = None,
        *,
        prefix: Optional[str] = None,
        tls: Any = None,
        idle_timeout: Optional[float] = None,
        buffering: Union[None, str, int] = None,
        credentials: Optional[bytes] = None,
        connect_status: Optional[str] = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.upstream = upstream
        self.prefix = prefix.rstrip("/") if prefix else None
        self.tls = tls
        self.idle_timeout = idle_timeout
        self.buffering = buffering
        self.credentials = credentials
        self.connect_status = connect_status
        self.port = 0
        self.connections = 0
        self.requests: list[tuple[str, str]] = []
        self.request_times: list[float] = []
        self.tunnels: list[str] = []
        self.refused = 0
        self.idle_drops: list[float] = []
        self.bytes_delivered = 0
        self.client_certificates: list[Optional[str]] = []
        self.exchanges: set[_Exchange] = set()
        self._listener: Any = None

    def start(self, interface: str = "127.0.0.1") -> "HTTPProxy":
        """Listen on a free port of *interface*."""
        if self.tls is None:
            self._listener = self.reactor.listenTCP(0, self, interface=interface)
        else:
            self._listener = self.reactor.listenSSL(0, self, self.tls, interface=interface)
        self.port = self._listener.getHost().port
        return self

    async def stop(self) -> None:
        """Stop listening and abort every connection."""
        for exchange in list(self.exchanges):
            exchange.abort()
        if self._listener is not None:
            await self._listener.stopListening()

    def url(self, scheme: str = "http", host: str = "127.0.0.1", userinfo: str = "") -> str:
        """The proxy's base URL, with the reverse proxy's prefix."""
        at = userinfo + "@" if userinfo else ""
        return f"{scheme}://{at}{host}:{self.port}{self.prefix or ''}/"

    def buildProtocol(self, addr: Any) -> Protocol:
        return _Exchange(self)
