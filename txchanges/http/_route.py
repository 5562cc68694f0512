"""
How a request reaches its server, for both of a
:class:`~txchanges.Server`'s HTTP paths (treq's agent, and the feed reader
of :mod:`txchanges.http._http11`): straight over TCP; for ``https``, TLS
around that, or around a ``CONNECT`` tunnel through an HTTP proxy; for
``http`` through a proxy, an absolute-form request (``GET http://host/...``)
to the proxy, as curl sends it, since many proxies open tunnels to port
443 only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.web.client import Agent, HTTPConnectionPool, ProxyAgent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer  # type: ignore[import-untyped]

from txchanges.http._proxy import ProxyEndpoint, ProxyURL, TunnelEndpoint, tcp_endpoint
from txchanges.http._wire import host_header

__all__ = ["Route", "route_for", "agent_for"]


@dataclass(frozen=True)
class Route:
    """
    Where to connect for one URL, and what to ask there.

    :ivar endpoint: The connection, to the server or to the proxy: an
        :class:`~twisted.internet.interfaces.IStreamClientEndpoint`.
    :ivar target: The request target: the path and query, or the whole URL
        for a proxy.
    :ivar proxy_authorization: The ``Proxy-Authorization`` header to send
        with the request, or ``None``.
    """

    endpoint: Any
    target: str
    proxy_authorization: Optional[bytes] = None


#: Wraps each endpoint connected to (the connect time limit of
#: :meth:`~txchanges.http._timeouts.Limits.endpoint`), or leaves it.
Wrap = Callable[[Any], Any]


def _unwrapped(endpoint: Any) -> Any:
    return endpoint


def _endpoint(reactor: Any, tls_policy: Any, proxy: Optional[ProxyURL], scheme: str, host: str, port: int) -> Any:
    endpoint: Any
    if proxy is None:
        endpoint = tcp_endpoint(reactor, host, port)
    else:
        endpoint = TunnelEndpoint(reactor, proxy, host, port)
    if scheme == "https":
        endpoint = wrapClientTLS(tls_policy.creatorForNetloc(host.encode("idna"), port), endpoint)
    return endpoint


def route_for(reactor: Any, tls_policy: Any, proxy: Optional[ProxyURL], url: str, wrap: Wrap = _unwrapped) -> Route:
    """
    :param tls_policy: An :class:`~twisted.web.iweb.IPolicyForHTTPS`, for
        ``https`` URLs.
    :param proxy: The HTTP proxy, or ``None`` to connect directly.
    :param wrap: Wraps the endpoint (a time limit on connecting).
    :param url: The request's whole URL, without credentials.
    :return: How to send a request for *url* on a connection of its own.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    if proxy is not None and parts.scheme == "http":
        authority = host_header(parts.netloc, host).decode("ascii")
        return Route(wrap(ProxyEndpoint(reactor, proxy)), f"http://{authority}{target}", proxy.authorization)
    return Route(wrap(_endpoint(reactor, tls_policy, proxy, parts.scheme, host, port)), target)


class _Endpoints:
    """
    The endpoint factory of an :class:`~twisted.web.client.Agent`: TCP, or
    a proxy's tunnels, then TLS for ``https``, each endpoint wrapped.
    """

    def __init__(self, reactor: Any, tls_policy: Any, proxy: Optional[ProxyURL], wrap: Wrap) -> None:
        self._reactor = reactor
        self._tls_policy = tls_policy
        self._proxy = proxy
        self._wrap = wrap

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("ascii")
        scheme = uri.scheme.decode("ascii")
        return self._wrap(_endpoint(self._reactor, self._tls_policy, self._proxy, scheme, host, uri.port))


@implementer(IAgent)
class _ProxyingAgent:
    """
    An agent whose ``https`` requests go through ``CONNECT`` tunnels, and
    whose ``http`` requests go to the proxy in absolute form, with the
    proxy's credentials.
    """

    def __init__(self, reactor: Any, tls_policy: Any, pool: HTTPConnectionPool, proxy: ProxyURL, wrap: Wrap) -> None:
        self._tunnels = Agent.usingEndpointFactory(reactor, _Endpoints(reactor, tls_policy, proxy, wrap), pool)
        self._absolute = ProxyAgent(wrap(ProxyEndpoint(reactor, proxy)), reactor, pool)
        self._authorization = proxy.authorization

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Optional[Headers] = None,
        bodyProducer: Optional[IBodyProducer] = None,
    ) -> "Deferred[IResponse]":
        if uri.startswith(b"https:"):
            return self._tunnels.request(method, uri, headers, bodyProducer)  # type: ignore[no-any-return]
        if self._authorization is not None:
            headers = headers.copy() if headers is not None else Headers()
            headers.setRawHeaders(b"Proxy-Authorization", [self._authorization])
        return self._absolute.request(method, uri, headers, bodyProducer)  # type: ignore[no-any-return]


def agent_for(
    reactor: Any, tls_policy: Any, pool: HTTPConnectionPool, proxy: Optional[ProxyURL], wrap: Wrap = _unwrapped
) -> Any:
    """
    :param wrap: Wraps each endpoint (a time limit on connecting).
    :return: The :class:`~twisted.web.iweb.IAgent` for a
        :class:`~txchanges.Server`'s treq client: its
        connections kept in *pool*, through *proxy* when there is one.
    """
    if proxy is None:
        return Agent.usingEndpointFactory(reactor, _Endpoints(reactor, tls_policy, None, wrap), pool)
    return _ProxyingAgent(reactor, tls_policy, pool, proxy, wrap)
