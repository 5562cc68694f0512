"""
The exceptions txchanges raises or fails Deferreds with.

Every class carries the data a caller needs to act on the failure (status,
CouchDB's ``error`` and ``reason``, the offending line, the last sequence seen)
as attributes, and none of them ever holds a password: URLs are stored with
their credentials removed before an exception is built.
"""

from __future__ import annotations

from typing import Any

# The exceptions: the package exports exactly these (error_for_status and
# snippet are for txchanges' own modules and fakes).
__all__ = [
    "TxChangesError",
    "CouchError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PreconditionFailed",
    "ServerError",
    "ConnectionFailed",
    "TimedOut",
    "ProxyError",
    "TLSError",
    "CertificateError",
    "UnexpectedResponse",
    "FeedError",
    "ErrorRow",
    "MalformedRow",
    "LineTooLong",
    "UncleanEnd",
    "Stalled",
]

#: How many characters of a body or line an exception keeps.
SNIPPET_LENGTH = 200


def snippet(text: str | bytes, limit: int = SNIPPET_LENGTH) -> str:
    """
    Shorten *text* for inclusion in an error message.

    :param text: A body or line, as received.
    :param limit: The number of characters kept.
    :return: At most *limit* characters, with ``"..."`` appended when cut.
    """
    if isinstance(text, bytes):
        text = text[: limit * 4].decode("utf-8", "replace")
    if len(text) > limit:
        return text[:limit] + "..."
    return text


class TxChangesError(Exception):
    """
    The base class of every error txchanges raises.
    """


class CouchError(TxChangesError):
    """
    The server answered a request with an error status.

    :ivar status: The HTTP status code, e.g. ``404``.
    :ivar error: CouchDB's ``error`` field (``"not_found"``), or ``None`` when
        the body was not a CouchDB error document.
    :ivar reason: CouchDB's ``reason`` field, or a snippet of a non-JSON body
        (an HTML page from a proxy, say).
    :ivar method: The request method.
    :ivar url: The request URL, without credentials.
    :ivar body: The parsed JSON body, or ``None`` when it was not JSON.
    :ivar headers: The response headers that matter for retrying (lower-cased
        names); ``Retry-After`` is kept when present.
    """

    status: int
    error: str | None
    reason: str
    method: str
    url: str
    body: Any
    headers: dict[str, str]

    def __init__(
        self,
        status: int,
        error: str | None,
        reason: str,
        method: str = "",
        url: str = "",
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.error = error
        self.reason = reason
        self.method = method
        self.url = url
        self.body = body
        self.headers = dict(headers or {})
        super().__init__(status, error, reason, method, url)

    def __str__(self) -> str:
        what = f"{self.error}: {self.reason}" if self.error else self.reason
        where = f" ({self.method} {self.url})" if self.method else ""
        return f"HTTP {self.status} {what}{where}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, error={self.error!r}, "
            f"reason={self.reason!r}, method={self.method!r}, url={self.url!r})"
        )


class BadRequest(CouchError):
    """
    400: the server rejected a parameter (a malformed ``since``, a bad
    ``filter`` name, a missing selector).
    """


class Unauthorized(CouchError):
    """
    401: no credentials, or wrong ones.
    """


class Forbidden(CouchError):
    """
    403: the credentials are good but not allowed to do this.
    """


class NotFound(CouchError):
    """
    404: the database, document, design document or filter function does not
    exist.
    """


class Conflict(CouchError):
    """
    409: a document update conflict, or a database that already exists.
    """


class PreconditionFailed(CouchError):
    """
    412: a precondition failed; CouchDB answers it to ``PUT /db`` when the
    database already exists.
    """


class ServerError(CouchError):
    """
    Any 5xx status; CouchDB also uses 500 for some bad parameters
    (``limit=abc``).
    """


_BY_STATUS: dict[int, type[CouchError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
}


def error_for_status(status: int) -> type[CouchError]:
    """
    Choose the exception class for an HTTP error status.

    :param status: An HTTP status code of 400 or more.
    :return: The most specific :class:`CouchError` subclass.
    """
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, CouchError)


class ConnectionFailed(TxChangesError):
    """
    The TCP connection could not be made, or was lost before the response
    was complete.

    :ivar host: The host that was contacted.
    :ivar port: The port that was contacted.
    :ivar reason: What went wrong, in words (from the underlying exception).
    """

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        super().__init__(host, port, reason)

    def __str__(self) -> str:
        return f"cannot reach {self.host}:{self.port}: {self.reason}"


class TimedOut(ConnectionFailed):
    """
    A time limit of the server's :class:`~txchanges.Timeouts` ran out, and
    the connection was dropped: it could not be made, the response head did
    not arrive, or the body did not end in time.

    :ivar what: What took too long: ``"connect"``, ``"headers"`` or
        ``"body"``, the name of the limit.
    :ivar seconds: The limit, in seconds.
    """

    _SAID = {
        "connect": "could not connect to {where} within {seconds:g}s",
        "headers": "no response head from {where} within {seconds:g}s",
        "body": "the response body from {where} did not end within {seconds:g}s",
    }

    def __init__(self, host: str, port: int, what: str, seconds: float) -> None:
        self.what = what
        self.seconds = seconds
        super().__init__(host, port, f"{what} timed out after {seconds:g}s")
        self.args = (host, port, what, seconds)

    def __str__(self) -> str:
        said = self._SAID.get(self.what, "{where}: " + self.what + " timed out after {seconds:g}s")
        return said.format(where=f"{self.host}:{self.port}", seconds=self.seconds)


class ProxyError(ConnectionFailed):
    """
    The HTTP proxy could not be reached, or would not open a tunnel to the
    server (its answer to ``CONNECT``).

    :ivar host: The proxy's host.
    :ivar port: The proxy's port.
    :ivar reason: What went wrong, in words.
    :ivar status: The proxy's HTTP status for ``CONNECT`` (``407``: it wants
        credentials; ``403``: it refuses that destination; ``502``: it cannot
        reach the server), or ``None`` when it never answered.
    """

    def __init__(self, host: str, port: int, reason: str, status: int | None = None) -> None:
        super().__init__(host, port, reason)
        self.status = status

    def __str__(self) -> str:
        return f"proxy {self.host}:{self.port}: {self.reason}"


class TLSError(TxChangesError):
    """
    The TLS handshake with an ``https`` server failed: the server refused
    it (it wants a client certificate, say, or speaks no TLS on that port),
    or its certificate does not verify (:class:`CertificateError`). Retrying
    cannot fix it, so a follower stops.

    :ivar host: The server's host.
    :ivar port: The server's port.
    :ivar reason: What went wrong, in words.
    """

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        super().__init__(host, port, reason)

    def __str__(self) -> str:
        return f"TLS with {self.host}:{self.port} failed: {self.reason}"


class CertificateError(TLSError):
    """
    The server's certificate does not verify: it is for another host name,
    it expired (or is not valid yet), or no trusted certificate authority
    issued it. :attr:`reason` says which, naming the certificate.
    """

    def __str__(self) -> str:
        return f"the certificate of {self.host}:{self.port} does not verify: {self.reason}"


class UnexpectedResponse(TxChangesError):
    """
    The server answered with a success status but a body that is not what
    CouchDB sends (an HTML page from a proxy, say, or a cut-off JSON document).

    :ivar status: The HTTP status code.
    :ivar method: The request method.
    :ivar url: The request URL, without credentials.
    :ivar content_type: The response's ``Content-Type``, or ``None``.
    :ivar body: A snippet of the body.
    """

    def __init__(
        self, status: int, method: str, url: str, content_type: str | None, body: str
    ) -> None:
        self.status = status
        self.method = method
        self.url = url
        self.content_type = content_type
        self.body = snippet(body)
        super().__init__(status, method, url, content_type, self.body)

    def __str__(self) -> str:
        return (
            f"unexpected response to {self.method} {self.url}: HTTP {self.status} "
            f"{self.content_type or 'no content type'}: {self.body!r}"
        )


class FeedError(TxChangesError):
    """
    The base class of the errors met while reading a changes feed after its
    response headers arrived.

    :ivar last_seq: The last sequence the feed delivered before the error,
        or ``None`` when it delivered none.
    """

    last_seq: Any = None


class ErrorRow(FeedError):
    """
    The feed carried an ``{"error": ..., "reason": ...}`` row.

    :ivar error: The row's ``error`` field.
    :ivar reason: The row's ``reason`` field.
    :ivar row: The whole row.
    """

    def __init__(self, error: str, reason: str, row: dict[str, Any]) -> None:
        self.error = error
        self.reason = reason
        self.row = row
        super().__init__(error, reason)

    def __str__(self) -> str:
        return f"error row in feed: {self.error}: {self.reason}"


class MalformedRow(FeedError):
    """
    A line of the feed was not a JSON object of a known shape.

    :ivar line: The offending line, shortened to a snippet.
    :ivar detail: Why it was rejected.
    """

    def __init__(self, line: str | bytes, detail: str) -> None:
        self.line = snippet(line)
        self.detail = detail
        super().__init__(self.line, detail)

    def __str__(self) -> str:
        return f"malformed feed line ({self.detail}): {self.line!r}"


class LineTooLong(FeedError):
    """
    A line of the feed grew past the configured bound without ending.

    :ivar limit: The bound, in bytes.
    :ivar line: The start of the line, shortened to a snippet.
    """

    def __init__(self, limit: int, line: str | bytes = b"") -> None:
        self.limit = limit
        self.line = snippet(line)
        super().__init__(limit, self.line)

    def __str__(self) -> str:
        return f"feed line longer than {self.limit} bytes: {self.line!r}"


class UncleanEnd(FeedError):
    """
    The feed's connection ended without the ``last_seq`` row that marks a
    clean end, or a JSON body was cut short.

    :ivar reason: What ended it, in words.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    def __str__(self) -> str:
        return f"changes feed ended uncleanly: {self.reason}"


class Stalled(FeedError):
    """
    Nothing arrived on the feed (not even a heartbeat) for longer than the
    watchdog allows, so the connection was aborted.

    :ivar idle: The seconds of silence that tripped the watchdog.
    """

    def __init__(self, idle: float) -> None:
        self.idle = idle
        super().__init__(idle)

    def __str__(self) -> str:
        return f"changes feed stalled: nothing received for {self.idle:g}s"
