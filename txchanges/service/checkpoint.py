"""
Checkpoint stores: where a follower keeps its resume point across restarts.

The checkpoint is an opaque CouchDB sequence (a string, an integer on CouchDB 1
and PouchDB, sometimes a list): stores never parse or compare it, and ``load``
returns exactly what ``save`` was given, type included. A checkpoint that
exists but cannot be trusted (corrupt, or written for another database or
filter) is always an error: a silent fresh start would replay a whole
database, and a wrong resume point would skip changes.

What a checkpoint belongs to is its *identity* (:func:`checkpoint_identity`):
a store made without one is given the identity of the feed by the
:class:`~txchanges.ChangesService` that uses it, so the checkpoints of the
library, the ``txchanges`` command and the twistd plugin are the same.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

from twisted.internet.defer import Deferred, maybeDeferred, succeed

from txchanges.service._identity import checkpoint_identity
from txchanges.service._serialwriter import SerialWriter
from txchanges.feed._watchdog import Clock
from txchanges.http.client import Database
from txchanges.errors import Conflict, NotFound, TxChangesError

__all__ = [
    "CheckpointStore",
    "CheckpointError",
    "MemoryCheckpoint",
    "FileCheckpoint",
    "LocalDocCheckpoint",
    "checkpoint_identity",
    "parse_checkpoint_spec",
]


class CheckpointError(TxChangesError):
    """
    A checkpoint exists but cannot be used, or cannot be written.

    :ivar location: Where the checkpoint lives, as the store's
        :meth:`~CheckpointStore.describe` gives it (no credentials).
    :ivar reason: What is wrong, in words.
    """

    def __init__(self, location: str, reason: str) -> None:
        self.location = location
        self.reason = reason
        super().__init__(location, reason)

    def __str__(self) -> str:
        return f"checkpoint {self.location}: {self.reason}"


@runtime_checkable
class CheckpointStore(Protocol):
    """
    Somewhere a resume point survives a restart.

    A store may also have a ``check()`` method, returning a Deferred that
    fails with :class:`CheckpointError` when the store cannot be written;
    the service calls it at start-up.
    """

    def load(self) -> "Deferred[Any]":
        """
        :return: A Deferred firing with the sequence exactly as saved, or with
            ``None`` when there is no checkpoint yet; failing with
            :class:`CheckpointError` when one exists but cannot be used.
        """

    def save(self, seq: Any) -> "Deferred[None]":
        """
        Store *seq* durably. Saves may overlap: a save made while another
        is being written waits for it, and a sequence is never written after
        a newer one (one superseded while waiting is not written at all).

        :param seq: An opaque, JSON-serialisable sequence; not ``None``.
        :raises TypeError: at once, when *seq* is not JSON-serialisable.
        :raises ValueError: at once, when *seq* is ``None``.
        :return: A Deferred firing with ``None`` once *seq* or a newer one is
            stored; failing with :class:`CheckpointError` or a
            :class:`~txchanges.errors.CouchError`.
        """

    def describe(self) -> str:
        """Where the checkpoint lives, for log lines; never with credentials."""


def _check_seq(seq: Any) -> None:
    # Misuse must surface at the call, not as a failed write much later;
    # NaN is refused because CouchDB and strict JSON parsers refuse it.
    if seq is None:
        raise ValueError("cannot save None as a checkpoint: None means 'no checkpoint'")
    try:
        json.dumps(seq, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"a checkpoint sequence must be JSON-serialisable: {e}") from None


def _seq_from_record(record: Any, location: str, identity: Optional[str]) -> Any:
    if not isinstance(record, dict):
        raise CheckpointError(location, f"not a JSON object but {type(record).__name__}")
    if record.get("seq") is None:
        raise CheckpointError(location, "no 'seq' in the checkpoint")
    if identity is not None and record.get("identity") != identity:
        found = record.get("identity")
        if found is None:
            # Written by a store used on its own, outside any follower.
            reason = (
                f"written with no identity, so it may belong to any feed, not only {identity!r}; "
                "write it with identity=checkpoint_identity(...), or delete it to start over"
            )
        else:
            reason = f"written for {found!r}, not for {identity!r}; delete it to start over"
        raise CheckpointError(location, reason)
    return record["seq"]


class MemoryCheckpoint:
    """
    A checkpoint kept in memory only: for tests, and for followers that
    want no persistence at all.

    :param seq: The sequence :meth:`load` fires with before any save.
    :ivar seq: The current sequence.
    :ivar saves: Every sequence saved, in order.
    """

    def __init__(self, seq: Any = None) -> None:
        self.seq = seq
        self.saves: list[Any] = []

    def load(self) -> "Deferred[Any]":
        return succeed(self.seq)

    def save(self, seq: Any) -> "Deferred[None]":
        _check_seq(seq)
        self.seq = seq
        self.saves.append(seq)
        return succeed(None)

    def describe(self) -> str:
        return "memory (not kept across restarts)"

    def check(self) -> "Deferred[None]":
        return succeed(None)


class FileCheckpoint:
    """
    A checkpoint in a JSON file, ``{"seq": ..., "identity": ..., "saved_at":
    <unix time>}``, replaced atomically so that a crash leaves the old or the
    new checkpoint, never a torn one.

    :param path: The checkpoint file; its directory must exist.
    :param identity: What the checkpoint belongs to; a file written for
        another identity, or with none, fails :meth:`load`. ``None``, the
        default, lets the :class:`~txchanges.ChangesService` using the store
        give it the feed's :func:`checkpoint_identity`, as the command and
        the plugin do; a store used on its own without one reads any file.
        It is stored in clear: never put credentials in it.
    :param missing_ok: ``False`` to make a missing file a
        :class:`CheckpointError` instead of "no checkpoint yet".
    :param clock: Gives ``saved_at``; the system time when omitted.
    """

    # The file is read and written in the reactor thread: it is a few hundred
    # bytes, saved at the pace of checkpoints rather than of changes, and doing
    # it inline keeps saves strictly ordered without a thread pool.

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        identity: Optional[str] = None,
        missing_ok: bool = True,
        clock: Optional[Clock] = None,
    ) -> None:
        self.path = Path(path)
        self.identity = identity
        self.missing_ok = missing_ok
        self._seconds = clock.seconds if clock is not None else time.time
        self._writer = SerialWriter(self._write)

    def describe(self) -> str:
        return f"file {self.path}"

    def check(self) -> "Deferred[None]":
        """
        Check that the file can be written: its directory exists and a
        temporary file can be created and removed there.

        :return: A Deferred firing with ``None``, or failing with
            :class:`CheckpointError` saying what is wrong.
        """
        return maybeDeferred(self._check)

    def _check(self) -> None:
        directory = self.path.parent
        if not directory.is_dir():
            raise CheckpointError(self.describe(), f"the directory {directory} does not exist")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".check", dir=directory)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise CheckpointError(self.describe(), f"cannot write in {directory}: {e.strerror or e}") from None

    def load(self) -> "Deferred[Any]":
        """
        :return: A Deferred firing with the saved sequence, or ``None`` when
            the file is missing and *missing_ok*; failing with
            :class:`CheckpointError` when it is missing otherwise, unreadable,
            not a JSON object with a ``seq``, or of another identity.
        """
        return maybeDeferred(self._read)

    def _read(self) -> Any:
        where = self.describe()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if self.missing_ok:
                return None
            raise CheckpointError(where, "the file does not exist") from None
        except OSError as e:
            raise CheckpointError(where, f"cannot read it: {e.strerror or e}") from None
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError as e:
            raise CheckpointError(where, f"corrupt, not JSON: {e}") from None
        return _seq_from_record(record, where, self.identity)

    def save(self, seq: Any) -> "Deferred[None]":
        """
        Replace the file with one holding *seq*.

        :return: A Deferred firing with ``None`` once the file and its
            directory entry are on disk; failing with :class:`CheckpointError`,
            the previous file intact, when they cannot be written.
        """
        _check_seq(seq)
        return self._writer.save(seq)

    async def _write(self, seq: Any) -> None:
        record = {"seq": seq, "identity": self.identity, "saved_at": self._seconds()}
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        try:
            self._replace(data)
        except OSError as e:
            raise CheckpointError(self.describe(), f"cannot write it: {e}") from None

    def _replace(self, data: bytes) -> None:
        # The temporary file must be in the same directory for the rename to
        # be atomic; the data is fsynced before the rename so the new name
        # never points at blocks not yet on disk.
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    # Until the directory is synced, the rename itself can be lost in a power
    # cut. Windows cannot open a directory, and needs no such step.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        lets the service give it the feed's :func:`checkpoint_identity`, as
        for :class:`FileCheckpoint`. Stored in clear.
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
            :class:`CheckpointError` when the document has no ``seq`` or
            another identity, or another :class:`~txchanges.errors.CouchError`.
        """
        return Deferred.fromCoroutine(self._load())

    async def _load(self) -> Any:
        doc = await self._fetch()
        if doc is None:
            return None
        self._rev = doc.get("_rev")
        return _seq_from_record(doc, self.describe(), self.identity)

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
        _check_seq(seq)
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


def parse_checkpoint_spec(
    spec: str, db: Database, *, identity: Optional[str] = None
) -> CheckpointStore:
    """
    Build a store from a command-line spec.

    :param spec: ``memory``; ``file:PATH`` (``~`` is expanded); or
        ``local:NAME`` for a ``_local/NAME`` document in *db*.
    :param db: The followed database.
    :param identity: Passed to file and local-document stores.
    :raises ValueError: for any other spec, naming it and the accepted forms.
    :return: The store; nothing is read or written yet.
    """
    usage = "expected 'memory', 'file:PATH' or 'local:NAME'"
    if spec == "memory":
        return MemoryCheckpoint()
    kind, sep, value = spec.partition(":")
    if not sep or kind not in ("file", "local"):
        raise ValueError(f"unknown checkpoint spec {spec!r}: {usage}")
    if not value:
        raise ValueError(f"checkpoint spec {spec!r} has nothing after '{kind}:': {usage}")
    if kind == "file":
        return FileCheckpoint(os.path.expanduser(value), identity=identity)
    return LocalDocCheckpoint(db, value, identity=identity)
