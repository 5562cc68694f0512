"""
What a failed request becomes: the typed error for an error response, and
the exceptions that mean the server could not be talked to. Shared by
:class:`~txchanges.Server`'s requests through treq and its feeds through
:mod:`txchanges.http._http11`.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.internet.error import ConnectError, DNSLookupError
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers

from txchanges.http._tls import tls_error
from txchanges.errors import ConnectionFailed, CouchError, TxChangesError, error_for_status, snippet

__all__ = ["CONNECTION_ERRORS", "describe", "connection_failed", "couch_error"]

# Exceptions from the agent that mean "the server could not be talked to"; they
# become ConnectionFailed so callers handle one class. ResponseNeverReceived
# and RequestTransmissionFailed are subclasses of _WrapperException, like
# ResponseFailed, and carry the real reasons.
try:
    from twisted.web._newclient import (
        RequestTransmissionFailed,
        ResponseNeverReceived,
    )
except ImportError:  # pragma: no cover - they have lived there for years
    ResponseNeverReceived = RequestTransmissionFailed = ResponseFailed  # type: ignore[misc, assignment]

CONNECTION_ERRORS = (
    ConnectError,
    DNSLookupError,
    ResponseNeverReceived,
    RequestTransmissionFailed,
    ResponseFailed,
)


def describe(exc: BaseException) -> str:
    """
    Say in words why a request failed, naming the real reasons inside
    Twisted's wrapper exceptions.
    """
    reasons = getattr(exc, "reasons", None)
    if reasons:
        return "; ".join(describe(f.value) for f in reasons)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def connection_failed(host: str, port: int, exc: BaseException) -> TxChangesError:
    """
    What a request that could not talk to the server fails with: the
    :class:`~txchanges.errors.TLSError` (or
    :class:`~txchanges.errors.CertificateError`) behind it when the TLS
    handshake failed, else :class:`~txchanges.errors.ConnectionFailed`.

    :param exc: One of :data:`CONNECTION_ERRORS`.
    """
    return tls_error(exc, host, port) or ConnectionFailed(host, port, describe(exc))


def couch_error(
    code: int, phrase: bytes, headers: Headers, raw: bytes, method: str, url: str
) -> CouchError:
    """
    The typed error for an error response, from its status and body.

    :param raw: The response body as received (CouchDB's JSON error, a
        proxy's HTML page, or nothing).
    :param url: The request URL, without credentials.
    """
    kept = {}
    retry_after = headers.getRawHeaders(b"retry-after")
    if retry_after:
        kept["retry-after"] = retry_after[0].decode("latin-1")
    body: Any = None
    error: Optional[str] = None
    try:
        body = json.loads(raw)
    except ValueError:
        pass
    if isinstance(body, dict) and "error" in body:
        error = str(body["error"])
        reason = str(body.get("reason", ""))
    elif raw.strip():
        reason = snippet(raw)
    else:
        reason = phrase.decode("latin-1") or "empty response body"
    cls = error_for_status(code)
    return cls(code, error, reason, method, url, body, kept)
