"""``https`` servers: the test server behind a TLS-terminating proxy
(tests/httpproxy.py) with certificates of a CA made by the test
(tests/tlscerts.py). A follower trusts that CA, shows a client certificate
when asked, goes through a proxy's CONNECT tunnel, and stops with one clear
error for a certificate that does not verify.

The follower reaches the database over TLS; the writer writes directly.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from txchanges import (
    CertificateError,
    ChangesService,
    Database,
    LocalDocCheckpoint,
    Server,
    TLSError,
    TLSPolicy,
)

from . import couchserver
from ._service_helpers import wait_for
from .httpproxy import HTTPProxy
from .tlscerts import Issued, make_pki, server_tls

ADMIN = "admin:secret@"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The test's CA and what it issued; a second CA nobody trusts."""
    return make_pki(tmp_path_factory.mktemp("pki"))


async def tls_front(couch_server: couchserver.RunningServer, issued: Issued, client_ca: Optional[Path] = None) -> HTTPProxy:
    """A TLS-terminating proxy in front of the test server, listening."""
    return HTTPProxy(("127.0.0.1", couch_server.port), tls=server_tls(issued, client_ca)).start()


async def follow_all(db: Database, direct: Database, count: int = 30) -> tuple[list[str], ChangesService]:
    """Write *count* documents directly while a service follows *db*; return the ids it handled once all arrived."""
    seen: list[str] = []
    service = ChangesService(db, lambda row: seen.append(row["id"]), checkpoint=LocalDocCheckpoint(db, "tls"),
                             checkpoint_every=5, heartbeat=1000)
    service.startService()
    try:
        await wait_for(lambda: service.state == "streaming", 10, "the feed to open")
        await direct.save_docs([{"_id": f"doc-{n:03}"} for n in range(count)])
        await wait_for(lambda: len(seen) >= count, 10, f"{count} changes")
    finally:
        await service.stopService()
    return seen, service


async def stopped_with(service: ChangesService, seconds: float = 10) -> BaseException:
    """Start *service* and return the error it stops with; fail if it is still running after *seconds*."""
    service.startService()
    stopped = service.when_stopped()
    try:
        await wait_for(lambda: stopped.called, seconds, "the service to stop with an error")
    finally:
        if not stopped.called:
            await service.stopService()
    try:
        await stopped
    except Exception as e:
        return e
    raise AssertionError("the service stopped without an error")


@pytest_twisted.ensureDeferred
async def test_service_follows_over_https_trusting_the_test_ca(couch_server, pki, direct):
    """With cacert naming the test's CA, the feed (the fast reader) and the checkpoint requests (treq) both go over TLS, and every change is handled."""
    front = await tls_front(couch_server, pki["server"])
    server = Server(f"https://{ADMIN}localhost:{front.port}/", tls_policy=TLSPolicy(cacert=pki["ca"].cert))
    try:
        seen, _ = await follow_all(server[direct.name], direct)
        saved = await direct.get("_local/tls")
    finally:
        await server.close()
        await front.stop()
    assert seen == [f"doc-{n:03}" for n in range(30)]
    methods = {(method, target.split("?")[0]) for method, target in front.requests}
    assert ("GET", f"/{direct.name}/_changes") in methods and ("PUT", f"/{direct.name}/_local/tls") in methods
    assert saved["seq"] is not None


@pytest.mark.parametrize(
    ("issued", "host", "trust", "reason"),
    [
        ("stranger", "localhost", "ca", r"no trusted certificate authority issued it \(issuer: CN=unknown CA\)"),
        ("server", "localhost", None, r"no trusted certificate authority issued it \(issuer: CN=txchanges test CA\)"),
        ("elsewhere", "localhost", "ca", r"it is for couch\.example, not for localhost$"),
        ("server", "127.0.0.2", "ca", r"it is for localhost, 127\.0\.0\.1, not for 127\.0\.0\.2$"),
        ("expired", "localhost", "ca", r"it expired on \d{4}-\d\d-\d\d \d\d:\d\d UTC$"),
    ],
    ids=["unknown-ca", "platform-trust-only", "wrong-name", "wrong-address", "expired"],
)
@pytest_twisted.ensureDeferred
async def test_a_certificate_that_does_not_verify_stops_the_service_with_one_clear_error(
    couch_server, pki, db_name, issued, host, trust, reason
):
    """An unknown CA, another host's certificate or an expired one stops the service at its first connection with a CertificateError saying which, never a retry loop."""
    couch_server.create_db(db_name)
    front = HTTPProxy(("127.0.0.1", couch_server.port), tls=server_tls(pki[issued])).start(interface=host)
    policy = TLSPolicy(cacert=pki["ca"].cert) if trust else TLSPolicy()
    server = Server(f"https://{ADMIN}{host}:{front.port}/", tls_policy=policy)
    try:
        error = await stopped_with(ChangesService(server[db_name], print))
    finally:
        await server.close()
        await front.stop()
    assert type(error) is CertificateError
    assert error.host == host and error.port == front.port
    assert re.search(reason, error.reason), error.reason
    assert front.connections == 1 and front.requests == []


@pytest_twisted.ensureDeferred
async def test_client_certificate_required_and_given(couch_server, pki, direct):
    """A server that requires a client certificate of its CA sees the follower's (cert and key in two files), and every change is handled."""
    front = await tls_front(couch_server, pki["server"], client_ca=pki["ca"].cert)
    client = pki["client"]
    policy = TLSPolicy(cacert=pki["ca"].cert, cert=client.cert, key=client.key)
    server = Server(f"https://{ADMIN}localhost:{front.port}/", tls_policy=policy)
    try:
        seen, _ = await follow_all(server[direct.name], direct, 10)
    finally:
        await server.close()
        await front.stop()
    assert len(seen) == 10
    assert set(front.client_certificates) == {"follower"}


@pytest_twisted.ensureDeferred
async def test_client_certificate_required_and_missing_is_a_terminal_tls_error(couch_server, pki, db_name):
    """Without the client certificate the server requires, the service stops with a TLSError that points at cert and key."""
    couch_server.create_db(db_name)
    front = await tls_front(couch_server, pki["server"], client_ca=pki["ca"].cert)
    server = Server(f"https://{ADMIN}localhost:{front.port}/", tls_policy=TLSPolicy(cacert=pki["ca"].cert))
    try:
        error = await stopped_with(ChangesService(server[db_name], print))
    finally:
        await server.close()
        await front.stop()
    assert type(error) is TLSError
    assert "client certificate" in error.reason and front.requests == []


@pytest_twisted.ensureDeferred
async def test_https_through_a_forward_proxys_connect_tunnel(couch_server, pki, direct):
    """With proxy=, https requests (feed and checkpoints alike) go through the proxy's CONNECT tunnels, TLS end to end."""
    front = await tls_front(couch_server, pki["server"])
    forward = HTTPProxy().start()
    server = Server(
        f"https://{ADMIN}localhost:{front.port}/", tls_policy=TLSPolicy(cacert=pki["ca"].cert), proxy=forward.url()
    )
    try:
        seen, _ = await follow_all(server[direct.name], direct, 10)
    finally:
        await server.close()
        await forward.stop()
        await front.stop()
    assert len(seen) == 10
    assert forward.tunnels and set(forward.tunnels) == {f"localhost:{front.port}"}
    assert {method for method, _ in forward.requests} == {"CONNECT"}
    assert front.connections == len(forward.tunnels)


@pytest_twisted.ensureDeferred
async def test_command_trusts_cacert_and_reports_a_bad_certificate_in_one_line(couch_server, pki, db_name):
    """txchanges fetch with --cacert reads over https; with another host's certificate it exits 1 with one line naming the names it is for."""
    couch_server.create_db(db_name)
    good = await tls_front(couch_server, pki["server"])
    bad = await tls_front(couch_server, pki["elsewhere"])
    env = {"PATH": "/usr/bin:/bin", "TXCHANGES_USER": "admin", "TXCHANGES_PASSWORD": "secret"}

    async def fetch(front: HTTPProxy) -> tuple[bytes, bytes, int]:
        url = f"https://localhost:{front.port}/{db_name}"
        args = ["-m", "txchanges", "fetch", url, "--cacert", str(pki["ca"].cert)]
        return await getProcessOutputAndValue(sys.executable, args, env=env)  # type: ignore[no-any-return]

    try:
        out, err, status = await fetch(good)
        bad_out, bad_err, bad_status = await fetch(bad)
    finally:
        await good.stop()
        await bad.stop()
    assert (status, err) == (0, b"") and b'"results": []' in out
    assert bad_status == 1 and bad_out == b""
    assert bad_err.decode().splitlines() == [
        f"txchanges: the certificate of localhost:{bad.port} does not verify: it is for couch.example, not for localhost"
    ]


def test_tls_policy_refuses_files_it_cannot_use(pki, tmp_path):
    """A missing CA bundle, a file without certificates, a key of another certificate or a key without its certificate is a ValueError at once."""
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(ValueError, match="cannot read the CA bundle"):
        TLSPolicy(cacert=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="holds no CA bundle in PEM form"):
        TLSPolicy(cacert=empty)
    with pytest.raises(ValueError, match="cannot use the client certificate and key"):
        TLSPolicy(cert=pki["client"].cert, key=pki["server"].key)
    with pytest.raises(ValueError, match="needs its certificate"):
        TLSPolicy(key=pki["client"].key)


@pytest_twisted.ensureDeferred
async def test_https_to_a_port_without_tls_is_a_terminal_tls_error(couch_server, db_name):
    """An https URL for the test server's plain HTTP port stops the service with a TLSError that asks whether the port speaks TLS."""
    couch_server.create_db(db_name)
    server = Server(f"https://{ADMIN}127.0.0.1:{couch_server.port}/")
    try:
        error = await stopped_with(ChangesService(server[db_name], print))
    finally:
        await server.close()
    assert type(error) is TLSError and "is this port speaking TLS?" in error.reason, error
