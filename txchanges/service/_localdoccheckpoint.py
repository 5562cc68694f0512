"""
:class:`LocalDocCheckpoint`: a checkpoint store that keeps the resume point
in a CouchDB ``_local`` document, as the replicator keeps its own.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed

from txchanges.errors import Conflict, NotFound
from txchanges._reactor import Clock
from txchanges.http.client import Database
from txchanges.service._serialwriter import SerialWriter
from txchanges.service.checkpoint import check_seq, seq_from_record

__all__ = ["LocalDocCheckpoint"]


class LocalDocCheckpoint:
    """
    A checkpoint in a ``_local/<name>`` document, as CouchDB's replicator
    keeps its own: ``{"_id": ..., "seq": ..., "identity": ..., "saved_at":
    ...}``. Local documents never appear in ``_changes``, so saving one does
    not feed the follower its own writes.

    :param db: The database holding the document: the followed one, or another.
    :param name: The document's name, without the ``_local/`` prefix.
    :param identity: What the checkpoint belongs to; a document written
        with another identity, or with none, fails :meth:`load`. ``None``
        lets the service give it the feed's
        :func:`~txchanges.checkpoint_identity`, as for
        :class:`~txchanges.FileCheckpoint`. Stored in clear.
    :param clock: Gives ``saved_at``; the system time when omitted.
    :raises ValueError: when *name* is empty or starts with ``_local/``.
    """

    def __init__(
        self,
        db: Database,
        name: str,
        *,
        identity: Optional[str] = None,
        clock: Optional[Clock] = None,
    ) -> None:
        if not name or name.startswith("_local/"):
            raise ValueError(
                f"invalid checkpoint document name {name!r}: give a non-empty "
                "name without the _local/ prefix"
            )
        self.db = db
        self.docid = "_local/" + name
        self.identity = identity
        self._seconds = clock.seconds if clock is not None else time.time
        self._rev: Optional[str] = None
        self._writer = SerialWriter(self._write)

    def describe(self) -> str:
        return f"{self.docid} in {self.db.url}"

    def check(self) -> "Deferred[None]":
        # Only a write would tell, and it would add a revision at every
        # start; load() has reached the database already.
        return succeed(None)

    def load(self) -> "Deferred[Any]":
        """
        :return: A Deferred firing with the saved sequence, or ``None`` when
            the document does not exist; failing with
            :class:`~txchanges.errors.NotFound` when the database does not,
            :class:`~txchanges.CheckpointError` when the document has no ``seq`` or
            another identity, or another :class:`~txchanges.errors.CouchError`.
        """
        return Deferred.fromCoroutine(self._load())

    async def _load(self) -> Any:
        doc = await self._fetch()
        if doc is None:
            return None
        self._rev = doc.get("_rev")
        return seq_from_record(doc, self.describe(), self.identity)

    async def _fetch(self) -> Optional[dict[str, Any]]:
        try:
            doc: dict[str, Any] = await self.db.get(self.docid)
            return doc
        except NotFound:
            # A missing database must not read as "no checkpoint yet", and
            # the 404 reasons differ between CouchDB versions: ask the
            # database itself, which raises NotFound when it is gone.
            await self.db.info()
            return None

    def save(self, seq: Any) -> "Deferred[None]":
        """
        Write *seq* to the document; on a conflict with another writer, read
        the document's current revision and try once more.

        :return: A Deferred firing with ``None`` once the document is saved;
            failing with :class:`~txchanges.errors.NotFound` when the database
            does not exist, :class:`~txchanges.errors.Conflict` when the retry
            conflicts too, or another :class:`~txchanges.errors.CouchError`.
        """
        check_seq(seq)
        return self._writer.save(seq)

    async def _write(self, seq: Any) -> None:
        try:
            await self._put(seq)
        except Conflict:
            current = await self._fetch()
            self._rev = current.get("_rev") if current is not None else None
            await self._put(seq)

    async def _put(self, seq: Any) -> None:
        now = self._seconds()
        doc = {"_id": self.docid, "seq": seq, "identity": self.identity, "saved_at": now}
        if self._rev is not None:
            doc["_rev"] = self._rev
        result = await self.db.save_doc(doc)
        self._rev = result["rev"]
