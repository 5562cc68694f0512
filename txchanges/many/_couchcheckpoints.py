"""
:class:`CouchCheckpoints`: the checkpoints of many databases as documents
of one coordination database, saved in one ``_bulk_docs`` per batch.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any, Optional

from twisted.internet.defer import Deferred

from txchanges.errors import NotFound, PreconditionFailed
from txchanges.http.client import Database
from txchanges.many._batch import check_batch, each_bounded
from txchanges.service.checkpoint import CheckpointError, seq_from_record

__all__ = ["CouchCheckpoints"]

#: Conflicting documents read back at once before the retry.
PARALLEL_READS = 10

# Stands for "delete this database's document" in a batch.
_REMOVE = object()


class CouchCheckpoints:
    """
    The checkpoints of many databases in a coordination database: one
    document per followed database, id ``"{key}:{name}"``, fields ``{"db",
    "seq", "identity"}``.

    The store is the only writer of its documents. It remembers each
    document's revision, not its sequence, to update it: about 110 bytes per
    idle database, and about 130 with the mapping :meth:`load` returns, on
    top of the name and sequence strings (measured for 10,000 databases by
    ``python -m benchmarks.checkpoints_memory``). A save whose revision was
    overtaken (a 409 ``conflict``, or a response lost after the write) reads
    the document's revision and writes once more, so the sequence being
    saved wins.

    :param db: The coordination database, created by :meth:`prepare` when
        missing. It may be a followed database too: its own checkpoint
        documents then show up in its feed.
    :param key: The documents' id prefix: stores of different keys share a
        database without seeing each other's documents.
    :param page_size: Rows per ``_all_docs`` request of :meth:`load`.
    :raises ValueError: when *key* is empty or holds a ``:``, or
        *page_size* is below 1.
    """

    complete = True

    def __init__(self, db: Database, key: str = "txchanges", *, page_size: int = 1000) -> None:
        if not key or ":" in key:
            raise ValueError(f"invalid checkpoints key {key!r}: give a non-empty key without ':'")
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size!r}")
        self.db = db
        self.key = key
        self.page_size = page_size
        self._prefix = key + ":"
        self._identity: Optional[str] = None
        self._revs: dict[str, str] = {}
        self._loaded = False

    def describe(self) -> str:
        return f"documents {self._prefix}* in {self.db.url}"

    def prepare(self, identity: str) -> "Deferred[None]":
        """
        Create the coordination database when it does not exist.

        :return: A Deferred firing with ``None``; failing with a
            :class:`~txchanges.errors.CouchError` (a 401 or 403 when the
            database is missing and may not be created).
        """
        return Deferred.fromCoroutine(self._prepare(identity))

    async def _prepare(self, identity: str) -> None:
        try:
            await self.db.info()
        except NotFound:
            try:
                await self.db.server.create_db(self.db.name)
            except PreconditionFailed:
                pass  # created by another process meanwhile
        self._identity = identity

    def load(self) -> "Deferred[dict[str, Any]]":
        """
        Read every checkpoint document, a page of ``_all_docs`` at a time.

        :raises RuntimeError: at once, before :meth:`prepare`.
        :return: A Deferred firing with each database's sequence by name;
            failing with :class:`~txchanges.CheckpointError` when a document
            has no ``seq`` or was written for another identity.
        """
        identity = self._prepared()
        return Deferred.fromCoroutine(self._load(identity))

    async def _load(self, identity: str) -> dict[str, Any]:
        seqs: dict[str, Any] = {}
        query = [
            ("include_docs", "true"),
            ("end_key", json.dumps(self._prefix + "\ufff0")),
            ("limit", str(self.page_size)),
        ]
        start = [("start_key", json.dumps(self._prefix))]
        while True:
            page = await self.db.server.request_json("GET", self.db.path("_all_docs"), query + start)
            rows = page["rows"]
            for row in rows:
                docid = row["id"]
                name = docid[len(self._prefix) :]
                seqs[name] = self._take(name, row["doc"], identity)
            if len(rows) < self.page_size:
                break
            start = [("start_key", json.dumps(rows[-1]["id"])), ("skip", "1")]
        self._loaded = True
        return seqs

    def get(self, name: str) -> "Deferred[Any]":
        """
        :raises RuntimeError: at once, before :meth:`prepare`.
        :return: A Deferred firing with database *name*'s sequence, or
            ``None``; failing like :meth:`load`.
        """
        identity = self._prepared()
        return Deferred.fromCoroutine(self._get(name, identity))

    async def _get(self, name: str, identity: str) -> Any:
        doc = await self._fetch(name)
        return None if doc is None else self._take(name, doc, identity)

    def _take(self, name: str, doc: dict[str, Any], identity: str) -> Any:
        where = f"document {doc.get('_id')!r} in {self.db.url}"
        seq = seq_from_record(doc, where, identity)
        self._revs[name] = doc["_rev"]
        return seq

    async def _fetch(self, name: str) -> Optional[dict[str, Any]]:
        try:
            doc: dict[str, Any] = await self.db.get(self._prefix + name)
        except NotFound:
            return None
        return doc

    def save(self, seqs: Mapping[str, Any], removed: Collection[str]) -> "Deferred[None]":
        """
        Write the batch in one ``_bulk_docs`` request: a document per saved
        database, a deletion per removed one.

        :raises RuntimeError: at once, before :meth:`prepare`.
        :return: A Deferred firing with ``None`` once every document is
            written; failing with :class:`~txchanges.CheckpointError` naming
            the documents CouchDB refused (other than a conflict, retried
            once), or with a :class:`~txchanges.errors.CouchError`.
        """
        identity = self._prepared()
        check_batch(seqs)
        batch: list[tuple[str, Any]] = list(seqs.items())
        # A database whose document was never seen has none, once load()
        # has read them all.
        batch += [(n, _REMOVE) for n in removed if n in self._revs or not self._loaded]
        return Deferred.fromCoroutine(self._save(batch, identity))

    async def _save(self, batch: list[tuple[str, Any]], identity: str) -> None:
        conflicts, refused = await self._bulk(batch, identity)
        if conflicts:
            await each_bounded(conflicts, self._reread, PARALLEL_READS)
            # A removal whose document is gone already is done.
            retry = [(n, seq) for n, seq in conflicts if seq is not _REMOVE or n in self._revs]
            again, refused_again = await self._bulk(retry, identity)
            refused += refused_again + [f"{self._prefix}{name}: conflict" for name, _ in again]
        if refused:
            shown = "; ".join(refused[:5]) + ("; ..." if len(refused) > 5 else "")
            raise CheckpointError(self.describe(), f"{len(refused)} document(s) not saved: {shown}")

    async def _bulk(
        self, batch: list[tuple[str, Any]], identity: str
    ) -> tuple[list[tuple[str, Any]], list[str]]:
        if not batch:
            return [], []
        docs = [self._doc(name, seq, identity) for name, seq in batch]
        results = await self.db.save_docs(docs)
        conflicts: list[tuple[str, Any]] = []
        refused: list[str] = []
        for (name, seq), result in zip(batch, results):
            error = result.get("error")
            if error is None:
                if seq is _REMOVE:
                    self._revs.pop(name, None)
                else:
                    self._revs[name] = result["rev"]
            elif error == "conflict":
                conflicts.append((name, seq))
            else:
                refused.append(f"{result.get('id')}: {error} ({result.get('reason')})")
        return conflicts, refused

    def _doc(self, name: str, seq: Any, identity: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"_id": self._prefix + name}
        rev = self._revs.get(name)
        if rev is not None:
            doc["_rev"] = rev
        if seq is _REMOVE:
            doc["_deleted"] = True
        else:
            doc.update(db=name, seq=seq, identity=identity)
        return doc

    async def _reread(self, entry: tuple[str, Any]) -> None:
        name, _ = entry
        doc = await self._fetch(name)
        if doc is None:
            # Deleted: a deletion is done, a document is written anew.
            self._revs.pop(name, None)
        else:
            self._revs[name] = doc["_rev"]

    def _prepared(self) -> str:
        if self._identity is None:
            raise RuntimeError(f"{self.describe()}: call prepare() first")
        return self._identity
