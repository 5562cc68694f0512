"""
:class:`FileCheckpoint`: a checkpoint store that keeps the resume point in a
JSON file, replaced atomically and synced to disk at every save.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from twisted.internet.defer import Deferred, maybeDeferred

from txchanges._reactor import Clock
from txchanges.service._serialwriter import SerialWriter
from txchanges.service.checkpoint import CheckpointError, check_seq, seq_from_record

__all__ = ["FileCheckpoint", "check_directory", "replace_file"]


class FileCheckpoint:
    """
    A checkpoint in a JSON file, ``{"seq": ..., "identity": ..., "saved_at":
    <unix time>}``, replaced atomically so that a crash leaves the old or the
    new checkpoint, never a torn one.

    :param path: The checkpoint file; its directory must exist.
    :param identity: What the checkpoint belongs to; a file written for
        another identity, or with none, fails :meth:`load`. ``None``, the
        default, lets the :class:`~txchanges.ChangesService` using the store
        give it the feed's :func:`~txchanges.checkpoint_identity`, as the
        command and the plugin do; a store used on its own without one reads
        any file.
        It is stored in clear: never put credentials in it.
    :param missing_ok: ``False`` to make a missing file a
        :class:`~txchanges.CheckpointError` instead of "no checkpoint yet".
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
            :class:`~txchanges.CheckpointError` saying what is wrong.
        """
        return maybeDeferred(check_directory, self.path, self.describe())

    def load(self) -> "Deferred[Any]":
        """
        :return: A Deferred firing with the saved sequence, or ``None`` when
            the file is missing and *missing_ok*; failing with
            :class:`~txchanges.CheckpointError` when it is missing otherwise,
            unreadable, not a JSON object with a ``seq``, or of another
            identity.
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
        return seq_from_record(record, where, self.identity)

    def save(self, seq: Any) -> "Deferred[None]":
        """
        Replace the file with one holding *seq*.

        :return: A Deferred firing with ``None`` once the file and its
            directory entry are on disk; failing with
            :class:`~txchanges.CheckpointError`, the previous file intact,
            when they cannot be written.
        """
        check_seq(seq)
        return self._writer.save(seq)

    async def _write(self, seq: Any) -> None:
        record = {"seq": seq, "identity": self.identity, "saved_at": self._seconds()}
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        try:
            replace_file(self.path, data)
        except OSError as e:
            raise CheckpointError(self.describe(), f"cannot write it: {e}") from None


def check_directory(path: Path, location: str) -> None:
    """
    Check that *path* can be written: its directory exists and a temporary
    file can be created and removed there.

    :param path: The file to be written.
    :param location: Where the checkpoint lives, for the error.
    :raises CheckpointError: saying what is wrong.
    """
    directory = path.parent
    if not directory.is_dir():
        raise CheckpointError(location, f"the directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise CheckpointError(location, f"cannot write in {directory}: {e.strerror or e}") from None


def replace_file(path: Path, data: bytes) -> None:
    """
    Replace the file at *path* with *data* atomically: a crash leaves the
    old file or the new one, never a torn one.

    :raises OSError: when it cannot be written; the old file is intact and
        no temporary file is left behind.
    """
    # The temporary file must be in the same directory for the rename to
    # be atomic; the data is fsynced before the rename so the new name
    # never points at blocks not yet on disk.
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
