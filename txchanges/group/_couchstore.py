"""
:class:`CouchLeaseStore`: a group's documents in a CouchDB database, read
with one ``_all_docs`` request and written one document at a time over the
revision last read, so that CouchDB's 409 decides every race.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.internet.defer import Deferred

from txchanges.errors import NotFound, PreconditionFailed
from txchanges.group._lease import Doc
from txchanges.http.client import Database

__all__ = ["CouchLeaseStore"]


class CouchLeaseStore:
    """
    The documents of group *group* (ids ``"{group}:..."``) in *db*.

    :param db: The coordination database; :meth:`prepare` creates it.
    :param group: The group's name.
    """

    def __init__(self, db: Database, group: str) -> None:
        self.db = db
        self.group = group
        self._prefix = group + ":"

    def describe(self) -> str:
        return f"group {self.group!r} in {self.db.url}"

    def prepare(self) -> "Deferred[None]":
        """Create the coordination database when it does not exist."""
        return Deferred.fromCoroutine(self._prepare())

    async def _prepare(self) -> None:
        try:
            await self.db.info()
        except NotFound:
            try:
                await self.db.server.create_db(self.db.name)
            except PreconditionFailed:
                pass  # created by another worker meanwhile

    def read(self) -> "Deferred[dict[str, Doc]]":
        """Every document of the group, by id (a group has a few dozen)."""
        return Deferred.fromCoroutine(self._read())

    async def _read(self) -> dict[str, Doc]:
        query = [
            ("include_docs", "true"),
            ("start_key", json.dumps(self._prefix)),
            ("end_key", json.dumps(self._prefix + "\ufff0")),
        ]
        page = await self.db.server.request_json("GET", self.db.path("_all_docs"), query)
        docs: dict[str, Doc] = {}
        for row in page["rows"]:
            doc = row.get("doc")
            if not isinstance(doc, dict):
                continue
            body = {k: v for k, v in doc.items() if not k.startswith("_")}
            docs[row["id"]] = Doc(doc["_rev"], body)
        return docs

    def write(self, doc: str, body: dict[str, Any], rev: Optional[str]) -> "Deferred[str]":
        """
        Write *body* over *rev*: a :class:`~txchanges.errors.Conflict` when
        the document has another revision (or exists, for ``rev=None``).
        """
        record = dict(body, _id=doc)
        if rev is not None:
            record["_rev"] = rev
        return self.db.save_doc(record).addCallback(lambda result: str(result["rev"]))

    def delete(self, doc: str, rev: str) -> "Deferred[None]":
        return self.db.delete_doc(doc, rev).addCallback(lambda _: None)
