"""
HTTP proxies: the proxy's URL (and its credentials), which proxy the
environment chooses for a server (``HTTPS_PROXY``, ``HTTP_PROXY``,
``NO_PROXY``, as curl reads them), and the tunnel that ``CONNECT`` opens
through a proxy to a server, for ``https``.

Everything but :class:`TunnelEndpoint` is pure and testable without a
network; :mod:`txchanges.http._route` decides which connection a request
takes.
"""

from __future__ import annotations

import ipaddress
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from txchanges.errors import ProxyError
from txchanges.http._httperrors import describe
from txchanges.http._timeouts import NO_TIMEOUT
from txchanges.http._wire import END_OF_HEAD, MAX_HEAD, BadResponse, check_unfinished_head, parse_head

__all__ = ["ProxyURL", "parse_proxy_url", "proxy_from_environment", "bypasses_proxy", "TunnelEndpoint", "tcp_endpoint"]


@dataclass(frozen=True)
class ProxyURL:
    """
    An HTTP proxy.

    :ivar host: Its host.
    :ivar port: Its port.
    :ivar authorization: The ``Proxy-Authorization`` header's value for the
        URL's ``user:password@``, or ``None``.
    """

    host: str
    port: int
    authorization: Optional[bytes] = None

    def __repr__(self) -> str:
        # The credentials must never reach a repr, a log line or an error.
        return f"ProxyURL({self.host}:{self.port}{', with credentials' if self.authorization else ''})"


def parse_proxy_url(text: str) -> ProxyURL:
    """
    :param text: ``http://[user:password@]host[:port][/]``, or
        ``host:port`` as environment variables often hold it; the port
        defaults to 80.
    :raises ValueError: for anything else, an ``https://`` proxy (TLS to the
        proxy itself) included; the message never shows the password.
    """
    if not isinstance(text, str):
        raise TypeError(f"proxy must be a str URL, not {type(text).__name__}")
    text = text.strip()
    parts = urlsplit(text if "://" in text else "http://" + text)
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    if parts.scheme != "http":
        raise ValueError(f"proxy URL must start with http:// (a TLS connection to the proxy is not supported): {shown!r}")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise ValueError(f"invalid proxy URL {shown!r}: {e}") from None
    if not parts.hostname or parts.path.strip("/") or parts.query:
        raise ValueError(f"proxy URL must be http://host:port, nothing more: {shown!r}")
    authorization = None
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
        authorization = b"Basic " + b64encode(f"{user}:{password}".encode("utf-8"))
    return ProxyURL(parts.hostname, port, authorization)


def _variable(environ: Mapping[str, str], name: str) -> Optional[str]:
    # curl's order: the lower-case name first. Empty means unset.
    for key in (name.lower(), name.upper()):
        value = environ.get(key, "").strip()
        if value:
            return value
    return None


def proxy_from_environment(url: str, environ: Mapping[str, str]) -> Optional[str]:
    """
    The proxy the environment gives requests to *url*: ``https_proxy`` for
    an ``https`` URL, ``http_proxy`` for an ``http`` one, then
    ``all_proxy``; none for a host ``no_proxy`` names. Each name is read in
    lower case first, then upper case, but for ``HTTP_PROXY`` in a CGI
    program (``REQUEST_METHOD`` set), where it comes from a request's
    ``Proxy`` header, as Python's ``urllib`` does.

    :param url: The server's URL.
    :param environ: The environment, ``os.environ`` in a program.
    :return: The proxy's URL, or ``None`` for a direct connection.
    """
    parts = urlsplit(url)
    if parts.scheme == "https":
        proxy = _variable(environ, "https_proxy")
    elif "REQUEST_METHOD" in environ:
        proxy = environ.get("http_proxy", "").strip() or None
    else:
        proxy = _variable(environ, "http_proxy")
    proxy = proxy or _variable(environ, "all_proxy")
    if proxy is None:
        return None
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if bypasses_proxy(host, port, _variable(environ, "no_proxy") or ""):
        return None
    return proxy


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """
    Whether ``no_proxy`` sends requests to *host* directly.

    :param no_proxy: Comma-separated entries: ``*`` (every host), a domain
        (``example.com`` or ``.example.com``: it and every name below it),
        an address or a network (``10.0.0.0/8``), each optionally with
        ``:port``.
    """
    host = host.strip("[]").rstrip(".").lower()
    try:
        address: Any = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, wanted_port = entry, None
        if entry.count(":") == 1 or (entry.startswith("[") and "]:" in entry):
            name, _, text = entry.rpartition(":")
            if not text.isdigit():
                continue
            wanted_port = int(text)
        if wanted_port is not None and wanted_port != port:
            continue
        name = name.strip("[]").rstrip(".")
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        domain = name.lstrip("*").lstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def tcp_endpoint(reactor: Any, host: str, port: int) -> Any:
    """
    An :class:`~twisted.internet.interfaces.IStreamClientEndpoint` to
    *host*: no resolver round trip (a thread hop) for an address.
    """
    # The reactor's own connect timeout is off: Limits owns it.
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=NO_TIMEOUT)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=NO_TIMEOUT)
    return HostnameEndpoint(reactor, host.encode("idna"), port, timeout=NO_TIMEOUT)


@implementer(IStreamClientEndpoint)
class ProxyEndpoint:
    """
    The TCP connection to a proxy, whose failure says it was the proxy that
    could not be reached (a :class:`~txchanges.errors.ProxyError`).
    """

    def __init__(self, reactor: Any, proxy: ProxyURL) -> None:
        self._endpoint = tcp_endpoint(reactor, proxy.host, proxy.port)
        self._proxy = proxy

    def connect(self, factory: Any) -> "Deferred[Any]":
        def unreachable(failure: Failure) -> Failure:
            if failure.check(ProxyError) or not failure.check(Exception):
                return failure
            proxy = self._proxy
            why = describe(failure.value) if failure.value is not None else "failed"
            return Failure(ProxyError(proxy.host, proxy.port, f"cannot reach the proxy: {why}"))

        d: Deferred[Any] = self._endpoint.connect(factory)
        return d.addErrback(unreachable)


def _connect_request(host: str, port: int, authorization: Optional[bytes]) -> bytes:
    authority = (f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")) + f":{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    head = "\r\n".join(lines).encode("ascii")
    if authorization is not None:
        head += b"\r\nProxy-Authorization: " + authorization
    return head + b"\r\n\r\n"


class _Tunnel(Protocol):
    """
    Asks the proxy for a tunnel; once it says yes, hands the connection to
    the protocol it was made for, and every later byte and its end.
    """

    transport: Any

    def __init__(self, request: bytes, proxy: ProxyURL, factory: Any, ready: "Deferred[Any]") -> None:
        self._request = request
        self._proxy = proxy
        self._factory = factory
        self._ready = ready
        self._head = b""
        self._wrapped: Optional[Protocol] = None

    def connectionMade(self) -> None:
        if self._ready.called:  # cancelled while connecting
            self.transport.abortConnection()
            return
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        if self._wrapped is not None:
            self._wrapped.dataReceived(data)
            return
        if self._ready.called:
            return
        buffer = self._head + data
        match = END_OF_HEAD.search(buffer)
        try:
            if match is None:
                check_unfinished_head(buffer)
                self._head = buffer
                return
            head, rest = buffer[: match.start()], buffer[match.end():]
            if len(head) > MAX_HEAD:
                raise BadResponse(f"response head longer than {MAX_HEAD} bytes")
            _, code, phrase, _ = parse_head(head.lstrip(b"\r\n"))
        except BadResponse as e:
            self._refused(f"its answer to CONNECT is not HTTP: {e}", None)
            return
        if not 200 <= code < 300:
            words = phrase.decode("latin-1").strip()
            self._refused(f"CONNECT answered {code}{' ' + words if words else ''}", code)
            return
        self._factory.doStart()
        wrapped = self._factory.buildProtocol(self.transport.getPeer())
        self._wrapped = wrapped
        wrapped.makeConnection(self.transport)
        self._ready.callback(wrapped)
        if rest:
            wrapped.dataReceived(rest)

    def _refused(self, reason: str, status: Optional[int]) -> None:
        self._ready.errback(ProxyError(self._proxy.host, self._proxy.port, reason, status))
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._wrapped is not None:
            self._wrapped.connectionLost(reason)
            self._factory.doStop()
        elif not self._ready.called:
            why = describe(reason.value) if reason.value is not None else "closed"
            self._refused(f"it closed the connection before answering CONNECT ({why})", None)


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """
    A connection to ``host:port`` through a ``CONNECT`` tunnel of an HTTP
    proxy. Its Deferred fires with the protocol once the proxy has opened
    the tunnel, and fails with a :class:`~txchanges.errors.ProxyError` when
    the proxy cannot be reached or refuses (with its status).
    """

    def __init__(self, reactor: Any, proxy: ProxyURL, host: str, port: int) -> None:
        self._proxy_endpoint = ProxyEndpoint(reactor, proxy)
        self._proxy = proxy
        self._request = _connect_request(host, port, proxy.authorization)

    def connect(self, factory: Any) -> "Deferred[Any]":
        tunnels: list[_Tunnel] = []

        def cancel(d: "Deferred[Any]") -> None:
            connecting.cancel()
            for tunnel in tunnels:
                if tunnel.transport is not None:
                    tunnel.transport.abortConnection()

        ready: Deferred[Any] = Deferred(cancel)

        def build() -> _Tunnel:
            tunnel = _Tunnel(self._request, self._proxy, factory, ready)
            tunnels.append(tunnel)
            return tunnel

        def failed(failure: Failure) -> None:
            if not ready.called:
                ready.errback(failure)

        tunnel_factory = Factory.forProtocol(build)
        tunnel_factory.noisy = False
        connecting = self._proxy_endpoint.connect(tunnel_factory)
        connecting.addErrback(failed)
        return ready
