"""
The checkpoints of many databases, saved in batches: what moved since the
last save, written by one call of the store, with a single-database
follower's rules for retrying and giving up.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txchanges._reactor import Clock
from txchanges.many.checkpoints import CheckpointsStore
from txchanges.service._saver import CheckpointSaver

__all__ = ["BatchedSaves"]

#: Checkpoints recorded and not saved after which a save starts at once,
#: without waiting for the interval: a batch stays one reasonable request.
BATCH_LIMIT = 1000


class BatchedSaves:
    """
    Collects each database's newest resume point and saves them in batches.

    A :class:`~txchanges.service._saver.CheckpointSaver` drives it (it is
    the saver's store, and its "sequence" is a count of what was recorded),
    so a batch is saved every *interval* seconds, a failed one is merged
    into the next, and saves that keep failing for a lasting reason stop
    the follower through *failed*.

    :param store: Where the checkpoints go.
    :param interval: Seconds between saves.
    :param failed: Called with the :class:`~txchanges.CheckpointError` when
        saving is given up.
    """

    def __init__(
        self, store: CheckpointsStore, interval: float, clock: Clock, failed: Callable[[Failure], object]
    ) -> None:
        self._store = store
        self._seqs: dict[str, Any] = {}
        self._removed: set[str] = set()
        self._recorded = 0
        self._saver = CheckpointSaver(self, lambda: self._recorded, interval, clock, 0, failed)

    @property
    def count(self) -> int:
        """Batches saved."""
        return self._saver.count

    def record(self, name: str, seq: Any) -> None:
        """
        Note a database's new resume point.
        """
        self._seqs[name] = seq
        self._removed.discard(name)
        self._recorded += 1
        if len(self._seqs) >= BATCH_LIMIT:
            self._saver.save_if_moved()

    def remove(self, name: str) -> None:
        """
        Forget a database's checkpoint (the database was deleted).
        """
        self._seqs.pop(name, None)
        self._removed.add(name)
        self._recorded += 1

    async def flush(self) -> None:
        """
        Save what is not saved yet, and stop the timer.

        :raises CheckpointError: when that save failed for a lasting reason.
        """
        await self._saver.flush()

    # -- the store the saver sees ---------------------------------------------

    def describe(self) -> str:
        return self._store.describe()

    def save(self, recorded: Any) -> "Deferred[None]":
        seqs, removed = self._seqs, self._removed
        self._seqs, self._removed = {}, set()
        saving = self._store.save(seqs, removed)

        def not_saved(failure: Failure) -> Failure:
            # Back into the next batch, unless recorded anew meanwhile.
            for name, seq in seqs.items():
                if name not in self._seqs and name not in self._removed:
                    self._seqs[name] = seq
            for name in removed:
                if name not in self._seqs:
                    self._removed.add(name)
            return failure

        return saving.addErrback(not_saved)
