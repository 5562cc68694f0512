"""
What every request to one CouchDB server sends, whichever client sends it
(treq, or :mod:`txchanges.http._http11` for feeds): the full URL, the
headers (``Accept`` and the credentials: basic auth, or the value of an
authorization function asked anew for each request) and the JSON body.
"""

from __future__ import annotations

import json
from base64 import b64encode
from typing import Any, Callable, Optional

from twisted.web.http_headers import Headers

from txchanges.http._urls import ServerURL, query_string

__all__ = ["NO_BODY", "RequestPreparer"]

#: The default of a ``json_body`` argument: send no body.
NO_BODY: Any = object()


class RequestPreparer:
    """
    Prepare the requests to one server.

    :param url: The server's URL; its credentials, if any, are sent as basic
        auth.
    :param authorization: A function returning the ``Authorization``
        header's value, or ``None``.
    :raises TypeError: when *authorization* is not callable.
    :raises ValueError: when both *url* has credentials and *authorization*
        is given.
    """

    def __init__(self, url: ServerURL, authorization: Optional[Callable[[], str]]) -> None:
        if authorization is not None:
            if not callable(authorization):
                raise TypeError(f"authorization must be a function returning the header's value, not {authorization!r}")
            if url.credentials is not None:
                raise ValueError("give either credentials (in the URL or as an argument) or authorization, not both")
        self._base = url.base
        self._authorization = authorization
        self._headers = {b"Accept": [b"application/json"]}
        if url.credentials is not None:
            user, password = url.credentials
            token = b64encode(f"{user}:{password}".encode("utf-8"))
            self._headers[b"Authorization"] = [b"Basic " + token]

    def prepare(
        self, path: str, query: list[tuple[str, str]], json_body: Any
    ) -> tuple[str, Headers, Optional[bytes]]:
        """
        :param path: The already-encoded path below the server's URL.
        :param query: Query pairs.
        :param json_body: A value to send as JSON, or :data:`NO_BODY`.
        :return: The full URL, the headers, and the encoded JSON body
            (``None`` without one).
        :raises ValueError: when the authorization function returns a value
            no header can carry.
        """
        url = self._base + path
        if query:
            url += "?" + query_string(query)
        headers = self._current_headers()
        if json_body is NO_BODY:
            return url, headers, None
        headers.setRawHeaders(b"Content-Type", [b"application/json"])
        return url, headers, json.dumps(json_body).encode("utf-8")

    def _current_headers(self) -> Headers:
        """
        A new header set, with the authorization function's current value:
        it may give a renewed token every time.

        :raises ValueError: when the authorization function returns a value
            no header can carry.
        """
        headers = Headers(dict(self._headers))
        if self._authorization is not None:
            value = self._authorization()
            if not isinstance(value, str) or not value.strip() or "\r" in value or "\n" in value:
                raise ValueError("the authorization function must return a one-line, non-empty str")
            try:
                raw = value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("the authorization function returned characters HTTP headers cannot carry") from None
            headers.setRawHeaders(b"Authorization", [raw])
        return headers
