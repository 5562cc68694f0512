"""
A database on a CouchDB server: :class:`Database`, reached through a
:class:`~txchanges.http.client.Server` (``server["name"]``), and the
document calls on it.

Like the server's, every I/O method returns a
:class:`~twisted.internet.defer.Deferred` that fails with a
:class:`~txchanges.errors.CouchError` subclass for an error response.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred

from txchanges.http._query import encode_params
from txchanges.http import _urls

if TYPE_CHECKING:
    from txchanges.http.client import Server

__all__ = ["Database"]


class Database:
    """
    A CouchDB database on a :class:`~txchanges.http.client.Server`.

    :param server: The server it lives on.
    :param name: Its name.
    :raises ValueError: for a name CouchDB would reject.
    """

    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.name = _urls.validate_db_name(name)
        self._path = _urls.quote_db_name(name)

    @property
    def url(self) -> str:
        """
        The database's URL, without credentials.
        """
        return self.server.url + self._path

    def __repr__(self) -> str:
        return f"<Database {self.name!r} on {self.server!r}>"

    def path(self, *segments: str) -> str:
        """
        The encoded path of something inside the database.

        :param segments: Already-encoded path segments, e.g. ``"_changes"``.
        """
        return "/".join((self._path,) + segments)

    def info(self) -> "Deferred[dict[str, Any]]":
        """
        :return: A Deferred firing with the database's info document.
        """
        return self.server.request_json("GET", self._path)

    def get(self, docid: str, **params: Any) -> "Deferred[dict[str, Any]]":
        """
        Fetch a document.

        :param docid: The document id, e.g. ``"apple"`` or ``"_design/app"``.
        :param params: Query parameters (``rev``, ``conflicts=True``, ...).
        :return: A Deferred firing with the document, or failing with
            :class:`~txchanges.errors.NotFound`.
        """
        return self.server.request_json(
            "GET", self.path(_urls.quote_doc_id(docid)), encode_params(params)
        )

    def save_doc(self, doc: dict[str, Any], **params: Any) -> "Deferred[dict[str, Any]]":
        """
        Create or update a document, as couchdbkit does: a POST when it has no
        ``_id``, else a PUT.

        :param doc: The document; its ``_id`` and ``_rev`` are set from the
            server's answer.
        :param params: Query parameters (``batch="ok"``, ...).
        :return: A Deferred firing with ``{"ok": True, "id": ..., "rev": ...}``,
            or failing with :class:`~txchanges.errors.Conflict`.
        """
        if not isinstance(doc, dict):
            raise TypeError(f"a document must be a dict, not {type(doc).__name__}")
        query = encode_params(params)
        if "_id" in doc:
            d = self.server.request_json(
                "PUT", self.path(_urls.quote_doc_id(doc["_id"])), query, doc
            )
        else:
            d = self.server.request_json("POST", self._path, query, doc)

        def saved(result: dict[str, Any]) -> dict[str, Any]:
            doc["_id"] = result["id"]
            doc["_rev"] = result["rev"]
            return result

        return d.addCallback(saved)

    def save_docs(
        self, docs: list[dict[str, Any]], **params: Any
    ) -> "Deferred[list[dict[str, Any]]]":
        """
        Save several documents in one ``_bulk_docs`` request.

        :param docs: The documents; each one saved gets its ``_id`` and
            ``_rev`` set.
        :param params: Fields of the request body, e.g. ``new_edits=False``.
        :return: A Deferred firing with CouchDB's per-document results, in
            order: ``{"ok": True, "id", "rev"}`` or ``{"id", "error",
            "reason"}`` for each document that was not saved (nothing is
            raised for those: check each result).
        """
        body = dict(params, docs=docs)

        def saved(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for doc, result in zip(docs, results):
                if "rev" in result and "error" not in result:
                    doc["_id"] = result["id"]
                    doc["_rev"] = result["rev"]
            return results

        d = self.server.request_json("POST", self.path("_bulk_docs"), (), body)
        return d.addCallback(saved)

    def delete_doc(
        self, doc_or_id: Mapping[str, Any] | str, rev: Optional[str] = None
    ) -> "Deferred[dict[str, Any]]":
        """
        Delete a document.

        :param doc_or_id: The document (its ``_id`` and ``_rev`` are used) or
            its id.
        :param rev: The revision to delete; when neither it nor the document
            gives one, the current revision is fetched first.
        :return: A Deferred firing with ``{"ok": True, "id", "rev"}``.
        """
        if isinstance(doc_or_id, str):
            docid = doc_or_id
        else:
            docid = doc_or_id["_id"]
            rev = rev or doc_or_id.get("_rev")
        path = self.path(_urls.quote_doc_id(docid))
        return Deferred.fromCoroutine(self._delete(path, docid, rev))

    async def _delete(self, path: str, docid: str, rev: Optional[str]) -> dict[str, Any]:
        if rev is None:
            rev = (await self.get(docid))["_rev"]
        result: dict[str, Any] = await self.server.request_json(
            "DELETE", path, [("rev", rev)]
        )
        return result

