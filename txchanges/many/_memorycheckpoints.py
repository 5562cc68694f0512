"""
:class:`MemoryCheckpoints`: the checkpoints of many databases kept in memory
only, for tests and for followers that want no persistence.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed

from txchanges.many._batch import check_batch
from txchanges.service._memorycheckpoint import KEPT_SAVES
from txchanges.service.checkpoint import CheckpointError

__all__ = ["MemoryCheckpoints"]


class MemoryCheckpoints:
    """
    Checkpoints kept in memory only: a restart starts every database afresh.

    :param seqs: The sequences :meth:`load` fires with before any save.
    :ivar seqs: The current sequence of each database, by name.
    :ivar saves: The batches saved, in order, as ``(seqs, removed)``: the
        last :data:`~txchanges.service._memorycheckpoint.KEPT_SAVES` at
        least, so that a follower that runs for months with this store does
        not grow without bound.
    :ivar identity: The identity given to :meth:`prepare`, or ``None``.
    """

    complete = True

    def __init__(self, seqs: Optional[Mapping[str, Any]] = None) -> None:
        self.seqs: dict[str, Any] = dict(seqs or {})
        self.saves: list[tuple[dict[str, Any], frozenset[str]]] = []
        self.identity: Optional[str] = None

    def describe(self) -> str:
        return "memory (not kept across restarts)"

    def prepare(self, identity: str) -> "Deferred[None]":
        """
        :return: A Deferred firing with ``None``; failing with
            :class:`~txchanges.CheckpointError` when the store already holds
            checkpoints saved for another identity.
        """
        if self.identity is not None and self.identity != identity and self.seqs:
            reason = f"written for {self.identity!r}, not for {identity!r}"
            return fail(CheckpointError(self.describe(), reason))
        self.identity = identity
        return succeed(None)

    def load(self) -> "Deferred[dict[str, Any]]":
        return succeed(dict(self.seqs))

    def get(self, name: str) -> "Deferred[Any]":
        return succeed(self.seqs.get(name))

    def save(self, seqs: Mapping[str, Any], removed: Collection[str]) -> "Deferred[None]":
        check_batch(seqs)
        self.seqs.update(seqs)
        for name in removed:
            self.seqs.pop(name, None)
        saves = self.saves
        saves.append((dict(seqs), frozenset(removed)))
        if len(saves) > 2 * KEPT_SAVES:
            del saves[:-KEPT_SAVES]
        return succeed(None)

