"""
The data of :class:`txchanges.testing.FakeCouchDB`: databases, documents
with revision trees cut down to their leaves, local documents, and CouchDB-3
style opaque sequences. Pure Python, no Twisted, no HTTP.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from base64 import urlsafe_b64decode, urlsafe_b64encode
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "ErrorResponse",
    "Leaf",
    "DocRecord",
    "FakeDatabase",
    "check_db_name",
    "dumps",
    "encode_seq",
    "decode_seq",
]

# Erlang's "compressed term" header: CouchDB 3 seqs start with "g1AAAA" too.
_SEQ_MAGIC = b"\x83P\x00\x00\x00"
# Not a secret: the check only tells garbage from a sequence this fake made.
_SEQ_KEY = b"txchanges-fakecouchdb-seq"
_DB_NAME = re.compile(r"^[a-z][a-z0-9_$()+/-]*$")
_RESERVED_IDS = ("_design/", "_local/")


class ErrorResponse(Exception):
    """
    A request the fake refuses, with CouchDB's status and error body.

    :ivar status: The HTTP status.
    :ivar error: CouchDB's ``error`` field.
    :ivar reason: CouchDB's ``reason`` field.
    :ivar headers: Extra response headers (``Retry-After``).
    :ivar extra: Extra body fields (the ``ref`` of a 500).
    """

    def __init__(
        self,
        status: int,
        error: str,
        reason: str,
        headers: Optional[Mapping[str, str]] = None,
        extra: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(status, error, reason)
        self.status = status
        self.error = error
        self.reason = reason
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        return dict({"error": self.error, "reason": self.reason}, **self.extra)


def dumps(value: Any) -> str:
    """
    JSON as CouchDB writes it: compact, non-ASCII characters unescaped.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _check(body: bytes) -> bytes:
    return hashlib.blake2b(body, key=_SEQ_KEY, digest_size=8).digest()


def encode_seq(incarnation: bytes, n: int) -> str:
    """
    An opaque sequence ``"N-<base64url>"`` for position *n* of a database
    incarnation.
    """
    body = _SEQ_MAGIC + incarnation + n.to_bytes(8, "big")
    blob = urlsafe_b64encode(body + _check(body)).rstrip(b"=").decode("ascii")
    return f"{n}-{blob}"


def decode_seq(text: str) -> Optional[tuple[bytes, int]]:
    """
    The ``(incarnation, position)`` a sequence stands for, or ``None`` when
    *text* is not a sequence this fake produced. As on CouchDB the ``N-``
    prefix is ignored: the opaque part is the truth.
    """
    match = re.fullmatch(r"(?:\d+-)?([A-Za-z0-9_-]+)", text)
    if match is None:
        return None
    blob = match.group(1)
    try:
        raw = urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
    except ValueError:
        return None
    body, check = raw[:-8], raw[-8:]
    if len(body) != len(_SEQ_MAGIC) + 16 or not body.startswith(_SEQ_MAGIC):
        return None
    if _check(body) != check:
        return None
    start = len(_SEQ_MAGIC)
    return body[start : start + 8], int.from_bytes(body[start + 8 :], "big")


def check_db_name(name: str) -> None:
    """
    :raises ErrorResponse: 400 ``illegal_database_name``, worded as CouchDB does.
    """
    if not _DB_NAME.match(name):
        raise ErrorResponse(
            400,
            "illegal_database_name",
            f"Name: '{name}'. Only lowercase characters (a-z), digits (0-9), and any of "
            "the characters _, $, (, ), +, -, and / are allowed. Must begin with a letter.",
        )


def _conflict() -> ErrorResponse:
    return ErrorResponse(409, "conflict", "Document update conflict.")


def _generation(rev: str) -> int:
    number, _, _ = rev.partition("-")
    return int(number) if number.isdigit() else 0


@dataclass
class Leaf:
    """
    One leaf revision of a document.
    """

    rev: str
    body: dict[str, Any]
    deleted: bool = False

    def sort_key(self) -> tuple[bool, int, str]:
        # CouchDB's winner: a live leaf beats a deleted one, then the longest
        # branch, then the greater revision id.
        return (not self.deleted, _generation(self.rev), self.rev)


@dataclass
class DocRecord:
    """
    A document: its leaf revisions and the position of its latest change.
    """

    id: str
    leaves: dict[str, Leaf] = field(default_factory=dict)
    seq: int = 0

    def winner(self) -> Leaf:
        return max(self.leaves.values(), key=Leaf.sort_key)

    def others(self) -> list[Leaf]:
        """The losing leaves, best first."""
        win = self.winner()
        rest = [leaf for leaf in self.leaves.values() if leaf is not win]
        return sorted(rest, key=Leaf.sort_key, reverse=True)

    def as_doc(self, leaf: Optional[Leaf] = None, conflicts: bool = False) -> dict[str, Any]:
        """
        The document as CouchDB returns it: ``_id``, ``_rev``, ``_deleted``,
        the body, then ``_conflicts`` when asked for and present.
        """
        leaf = leaf or self.winner()
        doc: dict[str, Any] = {"_id": self.id, "_rev": leaf.rev}
        if leaf.deleted:
            doc["_deleted"] = True
        doc.update(leaf.body)
        if conflicts:
            live = [other.rev for other in self.others() if not other.deleted]
            if live:
                doc["_conflicts"] = live
        return doc


def _new_rev(parent: Optional[str], deleted: bool, body: dict[str, Any]) -> str:
    generation = _generation(parent) + 1 if parent else 1
    digest = hashlib.md5(dumps([parent, deleted, body]).encode("utf-8")).hexdigest()
    return f"{generation}-{digest}"


def _split_doc(doc: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    deleted = bool(doc.get("_deleted", False))
    body = {k: v for k, v in doc.items() if not k.startswith("_")}
    return body, deleted


class FakeDatabase:
    """
    One database incarnation: deleting and re-creating a database makes a
    new incarnation, whose sequences differ, as on CouchDB.

    :ivar name: The database's name.
    :ivar incarnation: Random bytes identifying this incarnation.
    :ivar update_seq: The position of the latest change (0 when empty).
    :ivar deleted: ``True`` once the database was deleted.
    :ivar rewind_to: When set, the next ``_changes`` request starts there,
        whatever its ``since`` (see :meth:`FakeCouchDB.rewind`).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.incarnation = secrets.token_bytes(8)
        self.update_seq = 0
        self.docs: dict[str, DocRecord] = {}
        self.local: dict[str, dict[str, Any]] = {}
        self.deleted = False
        self.rewind_to: Optional[int] = None
        self._listeners: list[Callable[[], None]] = []

    @staticmethod
    def new_id() -> str:
        """A fresh document id, as CouchDB's ``uuids`` makes them."""
        return secrets.token_hex(16)

    # -- sequences ------------------------------------------------------------

    def seq(self, n: int) -> str:
        """The opaque sequence for position *n*."""
        return encode_seq(self.incarnation, n)

    def since_position(self, since: str) -> int:
        """
        The position a ``since`` parameter stands for.

        :raises ErrorResponse: 400 for anything but ``0``, ``now`` or a
            sequence this fake made; a sequence of another incarnation or
            database rewinds to 0, as CouchDB does.
        """
        if since == "0":
            return 0
        if since == "now":
            return self.update_seq
        decoded = decode_seq(since)
        if decoded is None:
            raise ErrorResponse(400, "bad_request", "Malformed sequence supplied in 'since' parameter.")
        incarnation, n = decoded
        return n if incarnation == self.incarnation and n <= self.update_seq else 0

    # -- change notification --------------------------------------------------

    def listen(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def notify(self) -> None:
        """Wake every open feed; called once per write batch."""
        for listener in list(self._listeners):
            listener()

    # -- documents -------------------------------------------------------------

    def changes_after(self, position: int) -> list[DocRecord]:
        """The documents changed after *position*, oldest change first."""
        return sorted((d for d in self.docs.values() if d.seq > position), key=lambda d: d.seq)

    @property
    def doc_count(self) -> int:
        return sum(1 for d in self.docs.values() if not d.winner().deleted)

    @property
    def doc_del_count(self) -> int:
        return len(self.docs) - self.doc_count

    def get(self, docid: str, rev: Optional[str] = None, conflicts: bool = False) -> dict[str, Any]:
        """
        :raises ErrorResponse: 404 ``missing`` or ``deleted``.
        """
        if docid.startswith("_local/"):
            if docid not in self.local:
                raise ErrorResponse(404, "not_found", "missing")
            return dict(self.local[docid])
        record = self.docs.get(docid)
        if record is None:
            raise ErrorResponse(404, "not_found", "missing")
        if rev is not None:
            if rev not in record.leaves:
                raise ErrorResponse(404, "not_found", "missing")
            return record.as_doc(record.leaves[rev], conflicts)
        if record.winner().deleted:
            raise ErrorResponse(404, "not_found", "deleted")
        return record.as_doc(conflicts=conflicts)

    def put(self, docid: str, doc: Mapping[str, Any], new_edits: bool = True) -> str:
        """
        Store a revision of a document; the caller calls :meth:`notify`.

        :param docid: The document's id.
        :param doc: Its body, with ``_rev`` when it updates a revision and
            ``_deleted`` to delete it.
        :param new_edits: ``False`` to store ``_rev`` as given, as
            replication does, possibly creating a conflict.
        :raises ErrorResponse: 409 on a conflict, 400 for a bad id or body.
        :return: The new revision.
        """
        self._check_id(docid)
        if docid.startswith("_local/"):
            return self._put_local(docid, doc)
        body, deleted = _split_doc(doc)
        given = doc.get("_rev")
        if given is not None and not isinstance(given, str):
            raise ErrorResponse(400, "bad_request", "Invalid rev format")
        record = self.docs.get(docid)
        if not new_edits:
            if not given:
                raise ErrorResponse(400, "bad_request", "Document rev is missing")
            record = record or DocRecord(docid)
            if given in record.leaves:
                return given
            record.leaves[given] = Leaf(given, body, deleted)
            return self._changed(record, given)
        if record is None or record.winner().deleted:
            parent = record.winner().rev if record is not None else None
            if given is not None and given != parent:
                raise _conflict()
        elif given is None or given not in record.leaves or record.leaves[given].deleted:
            raise _conflict()
        else:
            parent = given
        record = record or DocRecord(docid)
        rev = _new_rev(parent, deleted, body)
        if parent is not None:
            del record.leaves[parent]
        record.leaves[rev] = Leaf(rev, body, deleted)
        return self._changed(record, rev)

    def _changed(self, record: DocRecord, rev: str) -> str:
        self.update_seq += 1
        record.seq = self.update_seq
        self.docs[record.id] = record
        return rev

    def _put_local(self, docid: str, doc: Mapping[str, Any]) -> str:
        current = self.local.get(docid)
        given = doc.get("_rev")
        if current is not None and given != current["_rev"]:
            raise _conflict()
        if current is None and given is not None:
            raise _conflict()
        body, deleted = _split_doc(doc)
        if deleted:
            self.local.pop(docid, None)
            return "0-0"
        number = int(current["_rev"].split("-")[1]) + 1 if current else 1
        rev = f"0-{number}"
        self.local[docid] = dict({"_id": docid, "_rev": rev}, **body)
        return rev

    def delete(self, docid: str, rev: Optional[str]) -> str:
        """
        Delete a document's revision *rev*.

        :raises ErrorResponse: 404 when there is nothing to delete, 409 when
            *rev* is not its current revision.
        """
        if docid.startswith("_local/"):
            if docid not in self.local:
                raise ErrorResponse(404, "not_found", "missing")
            return self._put_local(docid, {"_rev": rev, "_deleted": True})
        record = self.docs.get(docid)
        if record is None:
            raise ErrorResponse(404, "not_found", "missing")
        if record.winner().deleted:
            raise ErrorResponse(404, "not_found", "deleted")
        return self.put(docid, {"_rev": rev, "_deleted": True})

    @staticmethod
    def _check_id(docid: str) -> None:
        if not isinstance(docid, str) or not docid:
            raise ErrorResponse(400, "bad_request", "Document id must be a string")
        if docid.startswith("_") and not any(
            docid.startswith(p) and len(docid) > len(p) for p in _RESERVED_IDS
        ):
            raise ErrorResponse(400, "illegal_docid", "Only reserved document ids may start with underscore.")
