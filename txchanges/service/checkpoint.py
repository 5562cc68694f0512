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

This module holds what every store shares: the :class:`CheckpointStore`
protocol, :class:`CheckpointError`, the rules for a sequence and a stored
record, and :func:`parse_checkpoint_spec`. Each store has a module of its
own and is re-exported here.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Protocol, runtime_checkable

from twisted.internet.defer import Deferred

from txchanges.service._identity import checkpoint_identity
from txchanges.http.client import Database
from txchanges.errors import TxChangesError

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


def check_seq(seq: Any) -> None:
    """
    Refuse, at the call, what no store may save.

    :raises ValueError: when *seq* is ``None``.
    :raises TypeError: when *seq* is not JSON-serialisable.
    """
    # Misuse must surface at the call, not as a failed write much later;
    # NaN is refused because CouchDB and strict JSON parsers refuse it.
    if seq is None:
        raise ValueError("cannot save None as a checkpoint: None means 'no checkpoint'")
    try:
        json.dumps(seq, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"a checkpoint sequence must be JSON-serialisable: {e}") from None


def seq_from_record(record: Any, location: str, identity: Optional[str]) -> Any:
    """
    The sequence of a stored checkpoint record, checked.

    :param record: The parsed file or document.
    :param location: Where it was read, for the error.
    :param identity: The identity it must have been written with; ``None``
        accepts any.
    :raises CheckpointError: when *record* is not an object with a ``seq``,
        or was written for another identity or for none.
    """
    if not isinstance(record, dict):
        raise CheckpointError(location, f"not a JSON object but {type(record).__name__}")
    if record.get("seq") is None:
        raise CheckpointError(location, "no 'seq' in the checkpoint")
    check_identity(record, location, identity)
    return record["seq"]


def check_identity(record: dict[str, Any], location: str, identity: Optional[str]) -> None:
    """
    Refuse a stored record written for another identity, or for none.

    :param record: The parsed file or document, a JSON object.
    :param location: Where it was read, for the error.
    :param identity: The identity it must have been written with; ``None``
        accepts any.
    :raises CheckpointError: saying what it was written for.
    """
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


# The stores build on CheckpointError and the record rules above: they are
# imported once those are defined, and re-exported from here.
from txchanges.service._memorycheckpoint import MemoryCheckpoint  # noqa: E402
from txchanges.service._filecheckpoint import FileCheckpoint  # noqa: E402
from txchanges.service._localdoccheckpoint import LocalDocCheckpoint  # noqa: E402


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
