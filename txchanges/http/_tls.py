"""
TLS for ``https`` servers: whom to trust (the platform's trust store, or a
CA bundle of your own), which client certificate to show, and what a
handshake that fails becomes: a :class:`~txchanges.errors.CertificateError`
that says why the certificate does not verify (another host's, expired, not
issued by a trusted authority), or a :class:`~txchanges.errors.TLSError`.

Both of the server's HTTP paths (treq's agent and the feed reader) take
their connections from one :class:`TLSPolicy`.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime
from typing import Any, Optional, Union

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer  # type: ignore[import-untyped]

from txchanges.errors import CertificateError, TLSError

__all__ = ["TLSPolicy", "tls_error"]

Path = Union[str, "os.PathLike[str]"]

_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"

# OpenSSL's X509_V_ERR_* codes (stable across versions) that a person can act
# on, in words; any other is reported by its number.
_NOT_YET_VALID, _EXPIRED = 9, 10
_UNTRUSTED = {
    2: "its issuer's certificate is missing",
    18: "it is self-signed, and not trusted",
    19: "its chain ends in a self-signed certificate that is not trusted",
    20: "no trusted certificate authority issued it",
    27: "its certificate authority is not trusted",
}
_OTHER = {
    4: "its signature cannot be decrypted",
    7: "its signature is wrong",
    21: "its signature cannot be verified: its chain has one certificate only",
    23: "it was revoked",
    24: "an authority in its chain is not a certificate authority",
    26: "it is not meant for a TLS server",
}


def _check_pem(path: Path, what: str, marker: bytes) -> str:
    """
    :return: *path*, as a string, once it is readable and holds *marker*,
        the end of a PEM block's first line.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {name!r}: {e.strerror or e}") from None
    if marker not in data:
        raise ValueError(f"the {what} {name!r} holds no {what} in PEM form")
    return name


@implementer(IPolicyForHTTPS)
class TLSPolicy:
    """
    How a :class:`~txchanges.Server` talks TLS: pass it as
    ``Server(url, tls_policy=TLSPolicy(...))``. Every file is read at once,
    so a missing or broken one is a ``ValueError`` here, not at the first
    request.

    :param cacert: A PEM file of the certificate authorities to trust
        instead of the platform's trust store (whose place ``SSL_CERT_FILE``
        and ``SSL_CERT_DIR`` can change).
    :param cert: A PEM file with the client certificate to show a server
        that asks for one, then any intermediate certificates; its key may
        be in the same file.
    :param key: The PEM file of *cert*'s private key, unencrypted, when it
        is not in *cert*.
    :raises ValueError: when a file cannot be read or holds no usable
        certificate or key, when the key does not belong to *cert*, or when
        *key* is given without *cert*.
    """

    def __init__(self, cacert: Optional[Path] = None, cert: Optional[Path] = None, key: Optional[Path] = None) -> None:
        if key is not None and cert is None:
            raise ValueError("a client key needs its certificate (cert=...)")
        self._context: Optional[SSL.Context] = None
        if cacert is None and cert is None:
            return  # the platform's trust, loaded at the first https connection
        context = CertificateOptions().getContext()
        try:
            if cacert is None:
                context.set_default_verify_paths()
            else:
                context.load_verify_locations(_check_pem(cacert, "CA bundle", _CERTIFICATE))
        except SSL.Error as e:
            raise ValueError(f"cannot load the CA bundle: {_ssl_reason(e)}") from None
        if cert is not None:
            cert_file = _check_pem(cert, "client certificate", _CERTIFICATE)
            key_file = _check_pem(key if key is not None else cert, "client key", b"PRIVATE KEY-----")
            try:
                context.use_certificate_chain_file(cert_file)
                context.use_privatekey_file(key_file)
                context.check_privatekey()
            except SSL.Error as e:
                raise ValueError(
                    f"cannot use the client certificate and key (an encrypted key, or one of another certificate?): "
                    f"{_ssl_reason(e)}"
                ) from None
        self._context = context

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """
        :param hostname: The server's host, IDNA-encoded.
        :param port: The server's port.
        :return: What makes each TLS connection to it, an
            :class:`~twisted.internet.interfaces.IOpenSSLClientConnectionCreator`.
        """
        if self._context is None:
            self._context = _platform_context()
        return _Creator(self._context, hostname.decode("ascii"), port)


@functools.lru_cache(maxsize=1)
def _platform_context() -> SSL.Context:
    """
    The context of every policy that trusts the platform and shows no
    client certificate: Twisted's defaults (protocol versions, ciphers), and
    the platform's trust store, which takes tens of milliseconds to load.
    Verification is set on each connection.
    """
    context = CertificateOptions().getContext()
    context.set_default_verify_paths()
    return context


@implementer(IOpenSSLClientConnectionCreator)
class _Creator:
    """
    Makes the TLS connections to one host: the server name sent, the peer
    verified against the trust root and the host name, and any failure
    reported to the connection as a :class:`CertificateError`.
    """

    def __init__(self, context: SSL.Context, host: str, port: int) -> None:
        self._context = context
        self._host = host
        self._port = port
        self._is_address = bool(isIPAddress(host) or isIPv6Address(host))

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tls_protocol)
        if not self._is_address:
            connection.set_tlsext_host_name(self._host.encode("ascii"))
        verifier = _Verifier(tls_protocol, self._host, self._port, self._is_address)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verifier)
        return connection


class _Verifier:
    """
    OpenSSL's verification callback for one connection: OpenSSL's verdict on
    each certificate of the chain, then the host name on the server's own.
    """

    def __init__(self, tls_protocol: Any, host: str, port: int, is_address: bool) -> None:
        self._protocol: Any = tls_protocol
        self._host = host
        self._port = port
        self._is_address = is_address

    def __call__(self, connection: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
        # An exception must not escape into OpenSSL: whatever goes wrong
        # fails the handshake, with a reason.
        try:
            certificate = cert.to_cryptography()
            if not ok:
                return self._fail(_problem(errno, depth, certificate))
            if depth == 0:
                problem = _host_problem(certificate, self._host, self._is_address)
                if problem is not None:
                    return self._fail(problem)
                self._protocol = None  # verified: no reference left to the connection
            return True
        except Exception as e:
            return self._fail(f"cannot check it: {type(e).__name__}: {e}")

    def _fail(self, problem: str) -> bool:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.failVerification(Failure(CertificateError(self._host, self._port, problem)))
        return False


def _name(name: x509.Name) -> str:
    return name.rfc4514_string() or "(no name)"


def _utc(certificate: x509.Certificate, field: str) -> datetime:
    value: datetime = getattr(certificate, field + "_utc", None) or getattr(certificate, field)
    return value


def _problem(errno: int, depth: int, certificate: x509.Certificate) -> str:
    """
    Why OpenSSL refused a certificate of the chain, naming it.
    """
    which = "it" if depth == 0 else f"a certificate of its chain ({_name(certificate.subject)})"
    if errno == _EXPIRED:
        return f"{which} expired on {_utc(certificate, 'not_valid_after'):%Y-%m-%d %H:%M} UTC"
    if errno == _NOT_YET_VALID:
        return f"{which} is valid only from {_utc(certificate, 'not_valid_before'):%Y-%m-%d %H:%M} UTC"
    if errno in _UNTRUSTED:
        words = _UNTRUSTED[errno]
        return (
            f"{words if depth == 0 else which + ': ' + words} (issuer: {_name(certificate.issuer)}); "
            "trust its certificate authority with cacert (--cacert)"
        )
    words = _OTHER.get(errno, f"OpenSSL verification error {errno}")
    return words if depth == 0 else f"{which}: {words}"


def _host_problem(certificate: x509.Certificate, host: str, is_address: bool) -> Optional[str]:
    """
    Why the server's certificate is not for *host*, or ``None`` when it is.
    """
    from service_identity import CertificateError as NoNames, VerificationError
    from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

    try:
        if is_address:
            verify_certificate_ip_address(certificate, host)
        else:
            verify_certificate_hostname(certificate, host)
        return None
    except (VerificationError, NoNames):
        pass
    return f"it is for {', '.join(_names_of(certificate)) or 'no host name'}, not for {host}"


def _names_of(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found: list[str] = list(names.get_values_for_type(x509.DNSName))
    found += [str(address) for address in names.get_values_for_type(x509.IPAddress)]
    return found


def tls_error(error: BaseException, host: str, port: int) -> Optional[TLSError]:
    """
    The TLS failure behind a failed request, if there is one.

    :param error: What the request failed with, possibly one of Twisted's
        wrappers carrying the real reasons.
    :param host: The server's host.
    :param port: The server's port.
    :return: The :class:`CertificateError` the verification reported, a
        :class:`TLSError` for any other handshake failure (the server
        refused the handshake, or does not speak TLS), or ``None``.
    """
    from service_identity import VerificationError

    if isinstance(error, TLSError):
        return error
    if isinstance(error, VerificationError):
        # Another policy's host name check (Twisted's own).
        return CertificateError(host, port, f"it is not for {host}")
    if isinstance(error, SSL.Error):
        return TLSError(host, port, _ssl_reason(error))
    for reason in getattr(error, "reasons", None) or ():
        found = tls_error(reason.value, host, port)
        if found is not None:
            return found
    return None


def _ssl_reason(error: SSL.Error) -> str:
    details = [str(part[-1]) for part in (error.args[0] if error.args and isinstance(error.args[0], list) else [])]
    text = "; ".join(d for d in details if d) or str(error) or "handshake failed"
    if "certificate required" in text or "handshake failure" in text:
        text += " (does the server want a client certificate? cert and key, --cert and --key)"
    elif "wrong version number" in text or "packet length too long" in text:
        text += " (is this port speaking TLS? an http:// URL, perhaps)"
    elif "certificate verify failed" in text:
        text += " (trust its certificate authority with cacert, --cacert)"
    return text
