"""
HTTP/1.1 heads on the wire, for :mod:`txchanges.http._http11`: the bytes of
a request, and the head of a response (where it ends, whether an unfinished
one can still become valid, its status line and headers). The body's
framing is :mod:`txchanges.http._framing`'s.
"""

from __future__ import annotations

import re
from typing import Optional, Union

from twisted.web.http_headers import Headers

__all__ = [
    "render_request",
    "host_header",
    "END_OF_HEAD",
    "check_unfinished_head",
    "parse_head",
    "BadResponse",
    "MAX_HEAD",
]

#: The longest status line plus headers, and trailer section, accepted:
#: more means a broken or hostile server.
MAX_HEAD = 64 * 1024

#: The blank line that ends a head.
END_OF_HEAD = re.compile(rb"\r?\n\r?\n")


class BadResponse(Exception):
    """
    The response is not valid HTTP/1.1: a broken status line or header, or
    broken chunked framing.

    :ivar decoded: For broken framing, the body data that
        :meth:`~txchanges.http._framing.ChunkedDecoder.feed` decoded from the
        same read before it, in its usual form.
    """

    decoded: "list[Union[bytes, list[bytes]]]" = []


def render_request(
    method: str, target: str, host: bytes, headers: Headers, body: Optional[bytes] = None
) -> bytes:
    """
    The bytes of one HTTP/1.1 request that asks the server to close the
    connection after answering.

    :param target: The path and query, already encoded.
    :param host: The ``Host`` header: the URL's host and port, encoded.
    :param headers: Other headers (``Accept``, ``Authorization``,
        ``Content-Type``); ``Host``, ``Content-Length`` and ``Connection``
        are set here.
    """
    lines = [f"{method} {target} HTTP/1.1".encode("ascii"), b"Host: " + host]
    for name, values in headers.getAllRawHeaders():
        if name.lower() in (b"host", b"content-length", b"connection"):
            continue
        lines.extend(name + b": " + value for value in values)
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def host_header(netloc: str, host: str) -> bytes:
    """
    The ``Host`` header for a URL's authority (without userinfo), with an
    international host name in its IDNA form.
    """
    try:
        return netloc.encode("ascii")
    except UnicodeEncodeError:
        port = netloc.rpartition(":")[2]
        return host.encode("idna") + (b":" + port.encode("ascii") if port.isdigit() else b"")


def check_unfinished_head(buffer: bytes) -> None:
    """
    Fail early on the start of a head that can no longer become a valid
    one, rather than wait for more from a server that is not answering in
    HTTP/1.x.

    :raises BadResponse: when *buffer*, still without its blank line, is
        longer than :data:`MAX_HEAD` plus the 3 bytes of an unfinished blank
        line, or when its first bytes or first line are not an HTTP/1.x
        status line.
    """
    if len(buffer) > MAX_HEAD + 3:
        raise BadResponse(f"response head longer than {MAX_HEAD} bytes")
    line, newline, _ = buffer.lstrip(b"\r\n").partition(b"\n")
    if newline:
        parse_head(line)
    elif line[:7] != b"HTTP/1."[: len(line)]:
        raise BadResponse(f"bad status line {line[:80]!r}")


def parse_head(head: bytes) -> tuple[tuple[bytes, int, int], int, bytes, Headers]:
    """
    Parse a status line and headers.

    :raises BadResponse: when they are not HTTP/1.x.
    """
    lines = head.split(b"\n")
    status = lines[0].rstrip(b"\r").split(b" ", 2)
    if (
        len(status) < 2
        or status[0] not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(status[1]) != 3
        or not status[1].isdigit()
    ):
        raise BadResponse(f"bad status line {lines[0][:80]!r}")
    version = (b"HTTP", 1, int(status[0][-1:]))
    headers = Headers()
    last: Optional[tuple[bytes, bytes]] = None
    fields: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and last is not None:
            # Obsolete line folding continues the previous field.
            last = (last[0], last[1] + b" " + line.strip(b" \t"))
            fields[-1] = last
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name.strip(b" \t") != name:
            raise BadResponse(f"bad header line {line[:80]!r}")
        last = (name, value.strip(b" \t"))
        fields.append(last)
    for name, value in fields:
        headers.addRawHeader(name, value)
    return version, int(status[1]), status[2] if len(status) > 2 else b"", headers
