"""
:class:`LocalDocCheckpoints`: each followed database keeps its own
checkpoint, in a ``_local`` document, as CouchDB's replicator does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed

from txchanges.errors import Conflict, NotFound
from txchanges.http.client import Database, Server
from txchanges.many._batch import check_batch, each_bounded
from txchanges.service.checkpoint import seq_from_record

__all__ = ["LocalDocCheckpoints"]

#: Documents written at once by a save.
PARALLEL_WRITES = 10


class LocalDocCheckpoints:
    """
    A ``_local/{key}`` document in each followed database, ``{"seq",
    "identity"}``. Local documents never appear in ``_changes``, and a
    deleted database takes its checkpoint with it.

    The store is not :attr:`complete`: :meth:`load` knows nothing and
    :meth:`get` reads one database's document. So a follower that starts
    reads every database once (one request for the document, one for the
    changes), and cannot tell which databases were deleted while it was
    stopped (no ``on_deleted`` for those); the other stores can. It remembers each document's
    revision (a few bytes per database) to update it; a conflict reads the
    revision and writes once more, so the sequence being saved wins.

    :param server: The followed server.
    :param key: The document's name, without the ``_local/`` prefix.
    :raises ValueError: when *key* is empty or starts with ``_local/``.
    """

    complete = False

    def __init__(self, server: Server, key: str = "txchanges") -> None:
        if not key or key.startswith("_local/"):
            raise ValueError(
                f"invalid checkpoint document name {key!r}: give a non-empty "
                "name without the _local/ prefix"
            )
        self.server = server
        self.docid = "_local/" + key
        self._identity: Optional[str] = None
        self._revs: dict[str, str] = {}

    def describe(self) -> str:
        return f"{self.docid} in each database of {self.server.url}"

    def prepare(self, identity: str) -> "Deferred[None]":
        # Each database's document is checked when get() reads it.
        self._identity = identity
        return succeed(None)

    def load(self) -> "Deferred[dict[str, Any]]":
        """
        :return: A Deferred firing with ``{}``: ask :meth:`get` per database.
        """
        return succeed({})

    def get(self, name: str) -> "Deferred[Any]":
        """
        :raises RuntimeError: at once, before :meth:`prepare`.
        :raises ValueError: at once, for an invalid database name.
        :return: A Deferred firing with database *name*'s sequence, or
            ``None`` when it has no document (or no longer exists); failing
            with :class:`~txchanges.CheckpointError` when the document has no
            ``seq`` or was written for another identity, or with a
            :class:`~txchanges.errors.CouchError`.
        """
        identity = self._prepared()
        return Deferred.fromCoroutine(self._get(self.server[name], identity))

    async def _get(self, db: Database, identity: str) -> Any:
        doc = await self._fetch(db)
        if doc is None:
            return None
        seq = seq_from_record(doc, f"{self.docid} in {db.url}", identity)
        self._revs[db.name] = doc["_rev"]
        return seq

    async def _fetch(self, db: Database) -> Optional[dict[str, Any]]:
        try:
            doc: dict[str, Any] = await db.get(self.docid)
        except NotFound:
            return None
        return doc

    def save(self, seqs: Mapping[str, Any], removed: Collection[str]) -> "Deferred[None]":
        """
        Write each database's document, at most
        :data:`PARALLEL_WRITES` at once. A database that no longer exists
        is passed over; a removed one is forgotten (its document went with
        it).

        :raises RuntimeError: at once, before :meth:`prepare`.
        :raises ValueError: at once, for an invalid database name.
        :return: A Deferred firing with ``None`` once every document is
            written; failing, once every write has ended, with the first
            :class:`~txchanges.errors.CouchError` (a
            :class:`~txchanges.errors.Conflict` when the retry conflicts
            too).
        """
        identity = self._prepared()
        check_batch(seqs)
        writes = [(self.server[name], seq) for name, seq in seqs.items()]
        for name in removed:
            self._revs.pop(name, None)

        async def write(entry: tuple[Database, Any]) -> None:
            await self._write(entry[0], entry[1], identity)

        return Deferred.fromCoroutine(each_bounded(writes, write, PARALLEL_WRITES))

    async def _write(self, db: Database, seq: Any, identity: str) -> None:
        try:
            try:
                await self._put(db, seq, identity)
            except Conflict:
                current = await self._fetch(db)
                self._revs.pop(db.name, None)
                if current is not None:
                    self._revs[db.name] = current["_rev"]
                await self._put(db, seq, identity)
        except NotFound:
            # The database was deleted; its checkpoint went with it.
            self._revs.pop(db.name, None)

    async def _put(self, db: Database, seq: Any, identity: str) -> None:
        doc: dict[str, Any] = {"_id": self.docid, "seq": seq, "identity": identity}
        rev = self._revs.get(db.name)
        if rev is not None:
            doc["_rev"] = rev
        result = await db.save_doc(doc)
        self._revs[db.name] = result["rev"]

    def _prepared(self) -> str:
        if self._identity is None:
            raise RuntimeError(f"{self.describe()}: call prepare() first")
        return self._identity
