"""
:class:`MemoryCheckpoint`: a checkpoint store that keeps the resume point in
memory only, for tests and for followers that want no persistence.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from txchanges.service.checkpoint import check_seq

__all__ = ["MemoryCheckpoint", "KEPT_SAVES"]

#: How many of the latest saves :attr:`MemoryCheckpoint.saves` keeps.
KEPT_SAVES = 1000


class MemoryCheckpoint:
    """
    A checkpoint kept in memory only: for tests, and for followers that
    want no persistence at all.

    :param seq: The sequence :meth:`load` fires with before any save.
    :ivar seq: The current sequence.
    :ivar saves: The sequences saved, in order: the last
        :data:`KEPT_SAVES` at least, so that a follower that runs for
        months with this store does not grow without bound.
    """

    def __init__(self, seq: Any = None) -> None:
        self.seq = seq
        self.saves: list[Any] = []

    def load(self) -> "Deferred[Any]":
        return succeed(self.seq)

    def save(self, seq: Any) -> "Deferred[None]":
        check_seq(seq)
        self.seq = seq
        saves = self.saves
        saves.append(seq)
        if len(saves) > 2 * KEPT_SAVES:
            del saves[:-KEPT_SAVES]
        return succeed(None)

    def describe(self) -> str:
        return "memory (not kept across restarts)"

    def check(self) -> "Deferred[None]":
        return succeed(None)
