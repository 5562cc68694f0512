"""
When to save the resume point: when asked (every N changes done, counted by
the scheduler) or every T seconds, one save at a time, and a last one on stop.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.feed._watchdog import Clock
from txchanges.service.checkpoint import CheckpointStore

__all__ = ["CheckpointSaver"]


class CheckpointSaver:
    """
    Saves a moving resume point to a store.

    :param store: Where to save it.
    :param resume: Returns the current resume point (``None``: nothing to
        save yet).
    :param interval: Seconds between saves made by the clock, besides those
        asked for with :meth:`save_if_moved`.
    :param clock: Time.
    :param saved: What the store holds already.
    """

    log = Logger()

    def __init__(
        self,
        store: CheckpointStore,
        resume: Callable[[], Any],
        interval: float,
        clock: Clock,
        saved: Any,
    ) -> None:
        self._store = store
        self._resume = resume
        self.saved = saved
        self.count = 0
        self._saving: Optional[Deferred[None]] = None
        self._ticker = LoopingCall(self.save_if_moved)
        self._ticker.clock = clock  # type: ignore[assignment]
        self._ticker.start(interval, now=False)

    def save_if_moved(self) -> None:
        """
        Save the resume point if it differs from the saved one; a save
        already in flight saves again when it finishes.
        """
        seq = self._resume()
        if seq is None or seq == self.saved or self._saving is not None:
            return
        self._saving = self._store.save(seq)

        def saved(_: object) -> None:
            self._saving = None
            self.saved = seq
            self.count += 1
            self.save_if_moved()

        def failed(f: Failure) -> None:
            self._saving = None
            self.log.failure("cannot save checkpoint {seq} to {where}", f, seq=seq, where=self._store.describe())

        self._saving.addCallbacks(saved, failed)

    async def flush(self) -> None:
        """
        Stop the timer, then save what is not saved yet.
        """
        if self._ticker.running:
            self._ticker.stop()
        while self._saving is not None:
            await self._saving
        self.save_if_moved()
        while self._saving is not None:
            await self._saving
