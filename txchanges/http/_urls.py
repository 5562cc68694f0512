"""
URL handling: server URLs with and without credentials, database names and
document ids as path segments, and query strings.

Pure functions, no Twisted: everything that decides what goes on the wire as a
URL is here so that it can be tested exhaustively without a network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

# CouchDB's own rule for database names (``couch_db:validate_dbname``); names
# of system databases (``_users``, ``_replicator``, ``_global_changes``) are
# the only ones allowed to start with an underscore.
_DB_NAME = re.compile(r"^[a-z][a-z0-9_$()+/-]*$")
_SYSTEM_DBS = frozenset({"_users", "_replicator", "_global_changes"})

# Document ids with these prefixes are addressed as two path segments.
_PREFIXED_IDS = ("_design/", "_local/")


@dataclass(frozen=True)
class ServerURL:
    """
    A server's base URL split from its credentials.

    :ivar base: The URL without userinfo, query or fragment, ending in ``/``.
    :ivar host: The host name, for error messages.
    :ivar port: The port, explicit or the scheme's default.
    :ivar credentials: ``(username, password)``, or ``None``.
    """

    base: str
    host: str
    port: int
    credentials: tuple[str, str] | None

    def __repr__(self) -> str:
        # The password must never reach a repr, a log line or an error.
        user = self.credentials[0] if self.credentials else None
        return f"ServerURL(base={self.base!r}, user={user!r})"


def parse_server_url(
    url: str, credentials: tuple[str, str] | None = None
) -> ServerURL:
    """
    Split a server URL into its credential-free base and its credentials.

    :param url: ``http://user:password@host:port/optional/prefix/``; the
        userinfo is percent-decoded.
    :param credentials: ``(username, password)`` that override any in *url*.
    :raises ValueError: when *url* is not an ``http`` or ``https`` URL with a
        host; the message names the URL without its password.
    :return: The parsed :class:`ServerURL`.
    """
    if not isinstance(url, str):
        raise TypeError(f"server URL must be a str, not {type(url).__name__}")
    parts = urlsplit(url.strip())
    shown = redact(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"server URL must start with http:// or https://: {shown!r}")
    try:
        host = parts.hostname
        port = parts.port
    except ValueError as e:
        raise ValueError(f"invalid server URL {shown!r}: {e}") from None
    if not host:
        raise ValueError(f"server URL has no host: {shown!r}")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if credentials is None and parts.username is not None:
        credentials = (unquote(parts.username), unquote(parts.password or ""))
    netloc = parts.netloc.rpartition("@")[2]
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    base = urlunsplit((parts.scheme, netloc, path, "", ""))
    return ServerURL(base=base, host=host, port=port, credentials=credentials)


def redact(url: str) -> str:
    """
    Remove the password from a URL, for display.

    :param url: Any URL, possibly with ``user:password@``.
    :return: The same URL with the password replaced by ``***``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hostport}{slash}{tail}"


def validate_db_name(name: str) -> str:
    """
    Check a database name against CouchDB's rule.

    :param name: The database name, unencoded.
    :raises ValueError: naming *name* when CouchDB would reject it.
    :raises TypeError: when *name* is not a string.
    :return: *name*, unchanged.
    """
    if not isinstance(name, str):
        raise TypeError(f"database name must be a str, not {type(name).__name__}")
    if name in _SYSTEM_DBS or _DB_NAME.match(name):
        return name
    raise ValueError(
        f"invalid database name {name!r}: it must start with a lower-case letter "
        "and contain only a-z, 0-9, _, $, (, ), +, - and /"
    )


def quote_db_name(name: str) -> str:
    """
    Encode a database name as one path segment (``a/b`` becomes ``a%2Fb``).

    :param name: A database name, validated first.
    :return: The percent-encoded segment.
    """
    return quote(validate_db_name(name), safe="")


def quote_doc_id(docid: str) -> str:
    """
    Encode a document id as a path; ``_design/`` and ``_local/`` keep their
    slash, everything else is one segment.

    :param docid: The document id, unencoded (any Unicode).
    :raises ValueError: when *docid* is empty.
    :return: The percent-encoded path.
    """
    if not isinstance(docid, str):
        raise TypeError(f"document id must be a str, not {type(docid).__name__}")
    if not docid:
        raise ValueError("document id must not be empty")
    for prefix in _PREFIXED_IDS:
        if docid.startswith(prefix) and len(docid) > len(prefix):
            return prefix + quote(docid[len(prefix) :], safe="")
    return quote(docid, safe="")


def query_string(pairs: Iterable[tuple[str, str]]) -> str:
    """
    Build a query string from already-encoded-as-text parameter values.

    Every character outside the unreserved set but ``/`` (which a query may
    hold as it is) is percent-encoded, so opaque sequences containing ``=``,
    ``+`` or ``&`` reach the server unchanged.

    :param pairs: ``(name, value)`` pairs in the order to send.
    :return: ``name=value&...`` without a leading ``?``; empty for no pairs.
    """
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='/')}" for k, v in pairs)
