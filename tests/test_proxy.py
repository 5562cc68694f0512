"""HTTP proxies and load balancers between a follower and CouchDB: a forward
proxy (absolute-form requests for http, CONNECT tunnels for https, its
credentials, its refusals), the environment's HTTPS_PROXY, HTTP_PROXY and
NO_PROXY, and a reverse proxy serving CouchDB under a path prefix. The
proxies are tests/httpproxy.py's; the follower goes through them, the writer
writes directly.
"""

from __future__ import annotations

import io
import socket
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from txchanges import ChangesService, CouchError, ProxyError, Server, TLSPolicy
from txchanges.cli._main import run
from txchanges.http._proxy import bypasses_proxy, parse_proxy_url, proxy_from_environment
from txchanges.service._retry import is_terminal

from .httpproxy import HTTPProxy, basic
from .test_tls import ADMIN, follow_all, stopped_with, tls_front
from .tlscerts import make_pki

# -- choosing a proxy (pure) ------------------------------------------------------------


def test_proxy_urls_parse_with_credentials_kept_out_of_the_repr():
    """A proxy URL gives host, port (80 by default, also for a bare host:port) and a basic Proxy-Authorization; the repr hides it."""
    proxy = parse_proxy_url("http://me:p%40ss@proxy.example:3128/")
    assert (proxy.host, proxy.port, proxy.authorization) == ("proxy.example", 3128, basic("me", "p@ss"))
    assert "p@ss" not in repr(proxy) and "with credentials" in repr(proxy)
    assert parse_proxy_url("proxy.example:8080") == parse_proxy_url("http://proxy.example:8080")
    assert parse_proxy_url("http://proxy.example").port == 80


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://proxy.example:443", "must start with http://"),
        ("socks5://proxy.example:1080", "must start with http://"),
        ("http://proxy.example:3128/path", "nothing more"),
        ("http://:3128", "nothing more"),
        ("http://me:secret@proxy.example:99999", "invalid proxy URL"),
    ],
)
def test_bad_proxy_urls_are_refused_without_their_password(text, message):
    """An https or socks proxy, a path, no host or a bad port is a ValueError that never shows the password."""
    with pytest.raises(ValueError, match=message) as raised:
        parse_proxy_url(text)
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "environ", "expected"),
    [
        ("https://couch:6984/", {"HTTPS_PROXY": "http://p:1"}, "http://p:1"),
        ("https://couch:6984/", {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"}, "http://lower:1"),
        ("https://couch:6984/", {"HTTP_PROXY": "http://p:1"}, None),
        ("http://couch:5984/", {"HTTP_PROXY": "http://p:1"}, "http://p:1"),
        ("http://couch:5984/", {"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"}, None),
        ("http://couch:5984/", {"HTTPS_PROXY": "http://p:1"}, None),
        ("http://couch:5984/", {"ALL_PROXY": "http://all:1"}, "http://all:1"),
        ("http://couch:5984/", {"http_proxy": "  "}, None),
        ("https://couch:6984/", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "couch"}, None),
        ("https://db.couch.example/", {"HTTPS_PROXY": "http://p:1", "no_proxy": "other, .couch.example"}, None),
        ("https://couch.example.org/", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "http://p:1"),
    ],
)
def test_the_environment_chooses_the_proxy_by_scheme_and_no_proxy(url, environ, expected):
    """https URLs take HTTPS_PROXY, http ones HTTP_PROXY (not in a CGI program), then ALL_PROXY; NO_PROXY names hosts reached directly."""
    assert proxy_from_environment(url, environ) == expected


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypassed"),
    [
        ("couch", 5984, "*", True),
        ("couch.example.com", 443, "example.com", True),
        ("couch.example.com", 443, ".example.com", True),
        ("notexample.com", 443, "example.com", False),
        ("example.com", 443, "*.example.com", True),
        ("10.1.2.3", 5984, "10.0.0.0/8", True),
        ("192.168.1.1", 5984, "10.0.0.0/8,localhost", False),
        ("::1", 5984, "::1", True),
        ("couch", 5984, "couch:5984", True),
        ("couch", 6984, "couch:5984", False),
        ("couch", 5984, "", False),
    ],
)
def test_no_proxy_matches_domains_addresses_networks_and_ports(host, port, no_proxy, bypassed):
    """NO_PROXY entries match a domain and the names below it, an address, a network, optionally only on one port."""
    assert bypasses_proxy(host, port, no_proxy) is bypassed


def test_proxy_refusals_stop_a_follower_as_the_same_answer_from_a_server_would():
    """A proxy that wants credentials (407) or refuses the destination (403) is terminal; one that cannot reach the server (502) or cannot be reached is retried."""
    assert is_terminal(ProxyError("p", 1, "CONNECT answered 407", 407))
    assert is_terminal(ProxyError("p", 1, "CONNECT answered 403", 403))
    assert not is_terminal(ProxyError("p", 1, "CONNECT answered 502", 502))
    assert not is_terminal(ProxyError("p", 1, "cannot reach the proxy"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--proxy", "https://proxy.example:443"], "proxy URL must start with http://"),
        (["--cacert", "/no/such/ca.pem"], "cannot read the CA bundle '/no/such/ca.pem'"),
        (["--key", "/no/such/key.pem"], "a client key needs its certificate"),
    ],
)
def test_command_connection_options_are_checked_as_usage_errors(args, message):
    """A bad --proxy, a missing --cacert or --key without --cert is a usage error: status 2, one line naming it."""
    err = io.StringIO()
    status = run(["fetch", "http://127.0.0.1:1/db", *args], stdout=io.BytesIO(), stderr=err, environ={})
    assert status == 2
    first, hint = err.getvalue().splitlines()
    assert first.startswith("txchanges: ") and message in first and hint.startswith("Run 'txchanges fetch --help'")


# -- through proxies --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def targets(proxy: HTTPProxy) -> set[tuple[str, str]]:
    """The proxy's requests, without their query strings."""
    return {(method, target.split("?")[0]) for method, target in proxy.requests}


@pytest_twisted.ensureDeferred
async def test_http_through_a_forward_proxy_in_absolute_form(couch_server, direct):
    """Through a forward proxy, http requests (feed and checkpoints) are absolute-form requests with the proxy's credentials, not tunnels."""
    forward = HTTPProxy(credentials=basic("me", "pw")).start()
    server = Server(couch_server.admin_url, proxy=forward.url(userinfo="me:pw"))
    try:
        seen, _ = await follow_all(server[direct.name], direct, 10)
    finally:
        await server.close()
        await forward.stop()
    assert len(seen) == 10 and forward.tunnels == [] and forward.refused == 0
    base = f"http://127.0.0.1:{couch_server.port}/{direct.name}"
    assert {("GET", f"{base}/_changes"), ("PUT", f"{base}/_local/tls")} <= targets(forward)


@pytest_twisted.ensureDeferred
async def test_wrong_proxy_credentials_stop_the_service_on_both_paths(couch_server, pki, db_name):
    """Wrong proxy credentials stop the service at once: a CouchError 407 for http (the proxy answers the request), a ProxyError 407 for https (it answers CONNECT)."""
    couch_server.create_db(db_name)
    forward = HTTPProxy(credentials=basic("me", "pw")).start()
    front = await tls_front(couch_server, pki["server"])
    plain = Server(couch_server.admin_url, proxy=forward.url(userinfo="me:wrong"))
    tls = Server(f"https://{ADMIN}localhost:{front.port}/", tls_policy=TLSPolicy(cacert=pki["ca"].cert),
                 proxy=forward.url(userinfo="me:wrong"))
    try:
        http_error = await stopped_with(ChangesService(plain[db_name], print))
        https_error = await stopped_with(ChangesService(tls[db_name], print))
    finally:
        await plain.close()
        await tls.close()
        await forward.stop()
        await front.stop()
    assert type(http_error) is CouchError and http_error.status == 407
    assert type(https_error) is ProxyError and https_error.status == 407
    assert str(https_error) == f"proxy 127.0.0.1:{forward.port}: CONNECT answered 407 Proxy Authentication Required"
    assert forward.refused == 2 and front.connections == 0


@pytest_twisted.ensureDeferred
async def test_a_refused_tunnel_is_terminal_and_an_unreachable_proxy_is_retried(couch_server, db_name):
    """A proxy that answers CONNECT with 403 stops the service with a ProxyError at once; a proxy that cannot be reached is a ProxyError retried until give_up_after."""
    couch_server.create_db(db_name)
    forward = HTTPProxy(connect_status="403 Forbidden").start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]
    refused = Server(f"https://{ADMIN}localhost:1/", proxy=forward.url())
    unreachable = Server(f"https://{ADMIN}localhost:1/", proxy=f"http://127.0.0.1:{nobody}")
    service = ChangesService(unreachable[db_name], print, retry_policy=lambda attempt: 0.05, give_up_after=0.5)
    try:
        error = await stopped_with(ChangesService(refused[db_name], print))
        last = await stopped_with(service)
    finally:
        await refused.close()
        await unreachable.close()
        await forward.stop()
    assert type(error) is ProxyError and error.status == 403 and "CONNECT answered 403 Forbidden" in str(error)
    assert type(last) is ProxyError and last.status is None and str(last).startswith(
        f"proxy 127.0.0.1:{nobody}: cannot reach the proxy: ConnectionRefusedError")
    assert service.stats.reconnects >= 3


@pytest_twisted.ensureDeferred
async def test_couchdb_under_a_path_prefix(couch_server, direct):
    """Behind a reverse proxy serving CouchDB under /couch/, every request (feed, _local checkpoint) keeps the prefix: all changes are handled and the checkpoint is saved on the server."""
    reverse = HTTPProxy(("127.0.0.1", couch_server.port), prefix="/couch").start()
    server = Server(reverse.url(userinfo="admin:secret"))
    try:
        seen, _ = await follow_all(server[direct.name], direct, 10)
        saved = await direct.get("_local/tls")
    finally:
        await server.close()
        await reverse.stop()
    assert len(seen) == 10 and saved["seq"] is not None
    assert {("GET", f"/couch/{direct.name}/_changes"), ("PUT", f"/couch/{direct.name}/_local/tls")} <= targets(reverse)


@pytest_twisted.ensureDeferred
async def test_command_takes_its_proxy_from_the_environment(couch_server, pki, db_name):
    """txchanges fetch goes through HTTP_PROXY for http and HTTPS_PROXY's tunnel for https, and straight to a host NO_PROXY names."""
    couch_server.create_db(db_name)
    forward = HTTPProxy().start()
    front = await tls_front(couch_server, pki["server"])
    base = {"PATH": "/usr/bin:/bin", "TXCHANGES_USER": "admin", "TXCHANGES_PASSWORD": "secret"}

    async def fetch(url: str, **environ: str) -> bytes:
        args = ["-m", "txchanges", "fetch", url, "--cacert", str(pki["ca"].cert)]
        out, err, status = await getProcessOutputAndValue(sys.executable, args, env={**base, **environ})
        assert (status, err) == (0, b""), err
        return out  # type: ignore[no-any-return]

    plain_url = f"http://127.0.0.1:{couch_server.port}/{db_name}"
    try:
        await fetch(plain_url, HTTP_PROXY=forward.url())
        absolute = list(forward.requests)
        await fetch(f"https://localhost:{front.port}/{db_name}", HTTPS_PROXY=forward.url(), HTTP_PROXY="http://unused:1")
        tunnels = list(forward.tunnels)
        await fetch(plain_url, HTTP_PROXY=forward.url(), NO_PROXY="localhost,127.0.0.1")
    finally:
        await forward.stop()
        await front.stop()
    assert absolute == [("GET", f"{plain_url}/_changes?feed=normal")]
    assert tunnels == [f"localhost:{front.port}"]
    assert len(forward.requests) == 2
