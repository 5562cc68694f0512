"""
:class:`MemoryCheckpoint`: a checkpoint store that keeps the resume point in
memory only, for tests and for followers that want no persistence.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from txchanges.service.checkpoint import check_seq

__all__ = ["MemoryCheckpoint"]


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
        check_seq(seq)
        self.seq = seq
        self.saves.append(seq)
        return succeed(None)

    def describe(self) -> str:
        return "memory (not kept across restarts)"

    def check(self) -> "Deferred[None]":
        return succeed(None)
