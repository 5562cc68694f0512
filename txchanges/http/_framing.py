"""
The framing of an HTTP/1.1 response body, for :mod:`txchanges.http._http11`:
whether it is chunked, ``Content-Length`` bytes long, or read until the
connection closes, and the decoder that takes it a whole socket read at a
time.
"""

from __future__ import annotations

from typing import Union

from twisted.web.http_headers import Headers

from txchanges.http._chunked import ChunkedDecoder
from txchanges.http._wire import BadResponse

__all__ = ["LengthDecoder", "UntilClose", "Decoder", "body_framing"]


class LengthDecoder:
    """
    A body of ``Content-Length`` bytes.
    """

    def __init__(self, length: int) -> None:
        #: The body's length.
        self.length = length
        self._remaining = length
        self.done = not length

    def feed(self, data: bytes) -> list[Union[bytes, list[bytes]]]:
        if len(data) < self._remaining:
            self._remaining -= len(data)
            return [data]
        data = data[: self._remaining]
        self._remaining = 0
        self.done = True
        return [data] if data else []


class UntilClose:
    """
    A body without framing: everything until the server closes.
    """

    done = False

    def feed(self, data: bytes) -> list[Union[bytes, list[bytes]]]:
        return [data]


#: What decodes a body.
Decoder = Union["ChunkedDecoder", "LengthDecoder", "UntilClose"]


def body_framing(code: int, headers: Headers) -> Decoder:
    """
    Choose how the body ends: chunked, a length, nothing, or the close.

    :raises BadResponse: for a contradictory or malformed ``Content-Length``.
    """
    if code in (204, 304):
        return LengthDecoder(0)
    codings = b",".join(headers.getRawHeaders(b"transfer-encoding", []))
    if codings:
        if codings.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
            return ChunkedDecoder()
        return UntilClose()
    lengths = {v.strip() for v in b",".join(headers.getRawHeaders(b"content-length", [])).split(b",") if v.strip()}
    if not lengths:
        return UntilClose()
    if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
        raise BadResponse(f"bad Content-Length {sorted(lengths)!r}")
    return LengthDecoder(int(lengths.pop()))
