"""A certificate authority made by the tests: server certificates (for the
names asked, valid or expired) and client certificates it issues, written as
PEM files, and the TLS context a test server listens with.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

__all__ = ["TestCA", "Issued", "make_pki", "server_tls"]

_DAY = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


class TestCA:
    """
    A certificate authority of the test's own, its certificate in
    :attr:`cert` (the file to trust).

    :param directory: Where the PEM files go.
    :param name: The CA's common name.
    """

    __test__ = False  # not a test class, despite the name

    def __init__(self, directory: Path, name: str = "txchanges test CA") -> None:
        self._directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(name)
        now = datetime.datetime.now(datetime.timezone.utc)
        self._certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / f"{name.replace(' ', '-')}.pem"
        self.cert.write_bytes(self._certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        file_name: str,
        names: tuple[str, ...] = ("localhost", "127.0.0.1"),
        *,
        client: bool = False,
        expired: bool = False,
    ) -> Issued:
        """
        A certificate for *names* (host names or addresses), valid from
        yesterday for a week, or *expired* a day ago; a *client* one is for
        TLS clients, its common name ``names[0]``.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = (now - 10 * _DAY, now - _DAY) if expired else (now - _DAY, now + 7 * _DAY)
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        issued = Issued(self._directory / f"{file_name}.pem", self._directory / f"{file_name}.key")
        issued.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(_key_pem(key))
        return issued


@implementer(IOpenSSLContextFactory)
class _ServerContext:
    """A context factory (``getContext``) for ``listenSSL`` or ``TLSMemoryBIOFactory``."""

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


def server_tls(issued: Issued, client_ca: Optional[Path] = None) -> Any:
    """
    The TLS a test server listens with: *issued*'s certificate; with
    *client_ca*, clients must show a certificate that CA issued.
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate_chain_file(str(issued.cert))
    context.use_privatekey_file(str(issued.key))
    if client_ca is not None:
        context.load_verify_locations(str(client_ca))
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda conn, cert, errno, depth, ok: bool(ok))
    return _ServerContext(context)


def make_pki(directory: Path) -> dict[str, Any]:
    """
    The test's CA (``"ca"``) and what it issued: ``"server"`` (localhost and
    127.0.0.1), ``"expired"``, ``"elsewhere"`` (couch.example), ``"client"``
    (follower); and ``"stranger"``, a server certificate of a CA nobody trusts.
    """
    ca = TestCA(directory)
    stranger = TestCA(directory, "unknown CA")
    return {
        "ca": ca,
        "server": ca.issue("server"),
        "expired": ca.issue("expired", expired=True),
        "elsewhere": ca.issue("elsewhere", ("couch.example",)),
        "stranger": stranger.issue("stranger"),
        "client": ca.issue("client", ("follower",), client=True),
    }
