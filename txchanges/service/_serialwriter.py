"""
One write at a time, for the checkpoint stores: saves may overlap, and a
sequence is never written after a newer one.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["SerialWriter"]


class SerialWriter:
    """
    One write at a time; while one runs, only the newest waiting sequence is
    written next, and its outcome answers every caller it superseded.
    """

    def __init__(self, write: Callable[[Any], Coroutine[Any, Any, None]]) -> None:
        self._write = write
        self._running = False
        self._next: Optional[tuple[Any]] = None
        self._waiters: list[Deferred[None]] = []

    def save(self, seq: Any) -> "Deferred[None]":
        d: Deferred[None] = Deferred()
        self._next = (seq,)
        self._waiters.append(d)
        if not self._running:
            Deferred.fromCoroutine(self._drain())
        return d

    async def _drain(self) -> None:
        self._running = True
        try:
            while self._next is not None:
                (seq,), waiters = self._next, self._waiters
                self._next, self._waiters = None, []
                failure: Optional[Failure] = None
                try:
                    await self._write(seq)
                except BaseException:
                    # Even an interrupt must reach the callers, or they wait
                    # forever; Twisted would wrap it in a Failure anyway.
                    failure = Failure()
                for d in waiters:
                    if d.called:  # cancelled by its caller; the write went on
                        continue
                    if failure is None:
                        d.callback(None)
                    else:
                        d.errback(failure)
        finally:
            self._running = False
