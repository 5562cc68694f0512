"""
:class:`FileCheckpoints`: the checkpoints of many databases in one JSON
file, replaced atomically and synced to disk at every save.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Optional

from twisted.internet.defer import Deferred, maybeDeferred

from txchanges.many._batch import check_batch
from txchanges.service._filecheckpoint import check_directory, replace_file
from txchanges.service.checkpoint import CheckpointError, check_identity

__all__ = ["FileCheckpoints"]


class FileCheckpoints:
    """
    The checkpoints of many databases in one JSON file, ``{"identity": ...,
    "seqs": {name: seq, ...}}``, replaced atomically (temporary file, fsync,
    rename, directory fsync) so that a crash leaves the old file or the new
    one, never a torn one.

    The store keeps each database's name and sequence in memory, read by
    :meth:`prepare`, and writes them all at every :meth:`save`.

    :param path: The file; its directory must exist. A missing file is a
        store with no checkpoint yet.
    """

    # The file is read and written in the reactor thread, as FileCheckpoint
    # does: saves come at the pace of checkpoints, not of changes, and the
    # caller never runs two at once. At 10,000 databases the file is about
    # a megabyte, written in tens of milliseconds.

    complete = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._identity: Optional[str] = None
        self._seqs: dict[str, Any] = {}

    def describe(self) -> str:
        return f"file {self.path}"

    def prepare(self, identity: str) -> "Deferred[None]":
        """
        Check that the file can be written, and read it.

        :return: A Deferred firing with ``None``; failing with
            :class:`~txchanges.CheckpointError` when the directory is missing
            or not writable, or the file is unreadable, corrupt or written for
            another identity.
        """
        return maybeDeferred(self._prepare, identity)

    def _prepare(self, identity: str) -> None:
        check_directory(self.path, self.describe())
        self._seqs = self._read(identity)
        self._identity = identity

    def _read(self, identity: str) -> dict[str, Any]:
        where = self.describe()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise CheckpointError(where, f"cannot read it: {e.strerror or e}") from None
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError as e:
            raise CheckpointError(where, f"corrupt, not JSON: {e}") from None
        if not isinstance(record, dict):
            raise CheckpointError(where, f"not a JSON object but {type(record).__name__}")
        seqs = record.get("seqs")
        if not isinstance(seqs, dict):
            raise CheckpointError(where, "no 'seqs' object in the file")
        check_identity(record, where, identity)
        # A database saved with a null sequence is no checkpoint at all.
        return {name: seq for name, seq in seqs.items() if seq is not None}

    def load(self) -> "Deferred[dict[str, Any]]":
        """
        :return: A Deferred firing with the sequences read by :meth:`prepare`
            and saved since.
        :raises RuntimeError: at once, before :meth:`prepare`.
        """
        self._prepared()
        return maybeDeferred(dict, self._seqs)

    def get(self, name: str) -> "Deferred[Any]":
        """
        :return: A Deferred firing with database *name*'s sequence, or ``None``.
        :raises RuntimeError: at once, before :meth:`prepare`.
        """
        self._prepared()
        return maybeDeferred(self._seqs.get, name)

    def save(self, seqs: Mapping[str, Any], removed: Collection[str]) -> "Deferred[None]":
        """
        Replace the file with one holding every sequence known.

        :raises RuntimeError: at once, before :meth:`prepare`.
        :return: A Deferred firing with ``None`` once the file and its
            directory entry are on disk; failing with
            :class:`~txchanges.CheckpointError`, the previous file intact,
            when they cannot be written.
        """
        self._prepared()
        check_batch(seqs)
        # Memory moves ahead of the file on a failed write; the caller saves
        # the batch again, and the next write carries both.
        self._seqs.update(seqs)
        for name in removed:
            self._seqs.pop(name, None)
        return maybeDeferred(self._write)

    def _write(self) -> None:
        record = {"identity": self._identity, "seqs": self._seqs}
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        try:
            replace_file(self.path, data)
        except OSError as e:
            raise CheckpointError(self.describe(), f"cannot write it: {e}") from None

    def _prepared(self) -> None:
        if self._identity is None:
            raise RuntimeError(f"{self.describe()}: call prepare() first")
