"""
:class:`Consumer`: couchdbkit's changes API on Twisted.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ._params import feed_request
from .client import Database

__all__ = ["Consumer"]


class Consumer:
    """
    Reads the ``_changes`` feed of one database.

    The names are couchdbkit's: :meth:`fetch` reads the normal feed.

    Sequences are opaque: whatever the server sent as ``seq`` or ``last_seq``
    is passed back verbatim as ``since``, never parsed or compared.

    :param db: The database to follow.
    """

    log = Logger()

    def __init__(self, db: Database) -> None:
        if not isinstance(db, Database):
            raise TypeError(f"Consumer needs a Database, not {type(db).__name__}")
        self.db = db

    def __repr__(self) -> str:
        return f"<Consumer of {self.db!r}>"

    def fetch(self, since: Any = None, **params: Any) -> "Deferred[dict[str, Any]]":
        """
        Read the changes since *since* in one request (``feed=normal``).

        :param since: An opaque sequence string from an earlier answer,
            ``0``, ``"now"``, or an integer for CouchDB 1.x and PouchDB;
            ``None`` starts at the beginning.
        :param params: Feed parameters, passed through: ``limit``,
            ``descending``, ``include_docs``, ``conflicts``, ``style``,
            ``seq_interval``, ``filter`` (or its alias ``filter_name``) with
            extra parameters for the filter, ``doc_ids=[...]``,
            ``selector={...}`` (and ``fields``), ``view="ddoc/view"``.
            Booleans are sent as ``true``/``false``; unknown parameters are
            sent unchanged.
        :raises ValueError: at once, for a malformed filter name or
            contradicting filter parameters.
        :return: A Deferred firing with the body exactly as the server sent
            it, ``{"results": [...], "last_seq": ..., "pending": ...}``; it
            fails with a :class:`~txchanges.errors.CouchError` subclass (e.g.
            :class:`~txchanges.errors.NotFound` for a missing database) or
            :class:`~txchanges.errors.ConnectionFailed`.
        """
        request = feed_request("normal", since, params)
        return self.db.server.request_json(
            request.method,
            self.db.path("_changes"),
            request.query,
            *(() if request.body is None else (request.body,)),
        )
