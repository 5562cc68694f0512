"""
Checkpoint stores for many databases: one resume point per followed
database, kept in one place.

A checkpoint is an opaque sequence, as for a single database (see
:mod:`txchanges.service.checkpoint`): stores never parse or compare it but
for equality, and give back exactly what they were given. Every checkpoint of
a store belongs to one *identity*, what the feeds choose (filter, parameters,
...) and the same for every database: a store written for another identity
is an error, never a silent fresh start.

This module holds the :class:`CheckpointsStore` protocol and
:func:`parse_checkpoints_spec`; each store has a module of its own and is
re-exported here: :class:`MemoryCheckpoints`, :class:`FileCheckpoints`,
:class:`CouchCheckpoints` and :class:`LocalDocCheckpoints`. Errors are
:class:`~txchanges.CheckpointError`, as for a single database.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any, Protocol, runtime_checkable

from twisted.internet.defer import Deferred

from txchanges.http.client import Server
from txchanges.many._couchcheckpoints import CouchCheckpoints
from txchanges.many._filecheckpoints import FileCheckpoints
from txchanges.many._localcheckpoints import LocalDocCheckpoints
from txchanges.many._memorycheckpoints import MemoryCheckpoints
from txchanges.service.checkpoint import CheckpointError

__all__ = [
    "CheckpointsStore",
    "CheckpointError",
    "MemoryCheckpoints",
    "FileCheckpoints",
    "CouchCheckpoints",
    "LocalDocCheckpoints",
    "parse_checkpoints_spec",
]


@runtime_checkable
class CheckpointsStore(Protocol):
    """
    Where the resume points of many databases survive a restart.

    The caller calls :meth:`prepare` once, then :meth:`load` (when
    :attr:`complete`) or :meth:`get` (per database), then :meth:`save`
    batches, never two at once.
    """

    #: ``True`` when :meth:`load` returns every database's checkpoint;
    #: ``False`` when :meth:`get` must be asked per database (each database
    #: holds its own).
    complete: bool

    def describe(self) -> str:
        """Where the checkpoints live, for errors and logs; never with credentials."""

    def prepare(self, identity: str) -> "Deferred[None]":
        """
        Check that the store can be used for *identity* (what the feeds
        choose, the same for every database), creating what it needs.

        :return: A Deferred firing with ``None``; failing with
            :class:`~txchanges.CheckpointError` when the store was written for
            another identity or cannot be used, or with a
            :class:`~txchanges.errors.CouchError`.
        """

    def load(self) -> "Deferred[dict[str, Any]]":
        """
        :return: A Deferred firing with every known database's sequence by
            name (``{}`` for a store that is not :attr:`complete`); failing
            with :class:`~txchanges.CheckpointError` when a checkpoint exists
            but cannot be used.
        """

    def get(self, name: str) -> "Deferred[Any]":
        """
        :return: A Deferred firing with database *name*'s sequence, or
            ``None`` when it has none; failing like :meth:`load`.
        """

    def save(self, seqs: Mapping[str, Any], removed: Collection[str]) -> "Deferred[None]":
        """
        Store one batch: set the sequences of *seqs*, forget the databases
        in *removed*. Saving the same batch again after a failure is safe.

        :raises ValueError: at once, when a sequence is ``None``.
        :raises TypeError: at once, when a sequence is not JSON-serialisable.
        :return: A Deferred firing with ``None`` once the batch is stored;
            failing with :class:`~txchanges.CheckpointError`, a
            :class:`~txchanges.errors.CouchError` or an :class:`OSError`, in
            which case the caller saves the batch again later.
        """


def parse_checkpoints_spec(spec: str, server: Server) -> CheckpointsStore:
    """
    Build a store from a command-line spec.

    :param spec: ``memory``; ``file:PATH`` (``~`` is expanded);
        ``couch:DBNAME`` for documents in database *DBNAME* of *server*; or
        ``local`` for a ``_local`` document in each followed database.
    :param server: The followed server.
    :raises ValueError: for any other spec (or an invalid database name),
        naming it and the accepted forms.
    :return: The store; nothing is read or written yet.
    """
    usage = "expected 'memory', 'file:PATH', 'couch:DBNAME' or 'local'"
    if spec == "memory":
        return MemoryCheckpoints()
    if spec == "local":
        return LocalDocCheckpoints(server)
    kind, sep, value = spec.partition(":")
    if not sep or kind not in ("file", "couch"):
        raise ValueError(f"unknown checkpoints spec {spec!r}: {usage}")
    if not value:
        raise ValueError(f"checkpoints spec {spec!r} has nothing after '{kind}:': {usage}")
    if kind == "file":
        return FileCheckpoints(os.path.expanduser(value))
    try:
        db = server[value]
    except ValueError as e:
        raise ValueError(f"checkpoints spec {spec!r}: {e}") from None
    return CouchCheckpoints(db)
