"""
What a :class:`~txchanges.ChangesService` works with from the end of its
start-up to its stop: the resume point, the scheduler, the checkpoint
saver, the feed request in flight; and how it winds them down.
"""

from __future__ import annotations

from typing import Any, Optional, Union, cast

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.feed._feed import FeedRun
from txchanges.service._lifecycle_types import Inputs
from txchanges.service._progress import DedupWindow, Progress
from txchanges.service._saver import CheckpointSaver
from txchanges.service._batches import BatchHandler, BatchScheduler
from txchanges.service._scheduler import Scheduler
from txchanges.service._scheduler_types import Handler
from txchanges._reactor import Clock
from txchanges.service.checkpoint import CheckpointStore

__all__ = ["Run"]


class Run:
    """
    One run: it is what the scheduler reports to (a
    :class:`~txchanges.service._scheduler_types.SchedulerListener`).

    :param since: Where it starts.
    :param saved: What the checkpoint store holds.
    :param machine: Told when the handler failed with ``on_error="stop"``.
    :param dedup: Forgets the changes that will not be done.
    :param interval: Seconds between checkpoints saved by the clock.
    :param batches: For a batch handler, the
        :class:`~txchanges.service._batches.BatchScheduler`'s own keyword
        arguments (``max_batch``, ``shard``, ``stats``); it then takes
        *on_error*, *retry_delay* and *checkpoint_every* from *scheduling*.
    :param scheduling: The :class:`Scheduler`'s keyword arguments.
    :ivar feed: The feed request in flight, which backpressure pauses.
    """

    def __init__(
        self,
        since: Any,
        handler: Union[Handler, BatchHandler],
        store: CheckpointStore,
        saved: Any,
        machine: Inputs,
        dedup: DedupWindow,
        *,
        interval: float,
        clock: Clock,
        batches: Optional[dict[str, Any]] = None,
        **scheduling: Any,
    ) -> None:
        self.feed: Optional[FeedRun] = None
        self._machine = machine
        self._dedup = dedup
        self._clock = clock
        progress = self.progress = Progress(since)
        self.saver = CheckpointSaver(store, lambda: progress.resume, interval, clock, saved, self.failed)
        self.scheduler: Union[Scheduler, BatchScheduler]
        if batches is None:
            self.scheduler = Scheduler(cast(Handler, handler), progress, self, clock=clock, **scheduling)
        else:
            self.scheduler = BatchScheduler(
                cast(BatchHandler, handler), progress, self, clock=clock, on_error=scheduling["on_error"],
                retry_delay=scheduling["retry_delay"], checkpoint_every=scheduling["checkpoint_every"],
                dedup=dedup, **batches,
            )

    def passed(self, seq: Any) -> None:
        """
        The feed reached *seq* without a row to handle (the ``last_seq`` of
        a clean end).
        """
        if self.progress.passed(seq):
            self.saver.save_if_moved()

    async def finish(self, stop_timeout: float, log: Logger) -> None:
        """
        Start no handler call, wait for the running ones (at most
        *stop_timeout* seconds, else say so to *log*), then save the
        checkpoint.

        :raises CheckpointError: when that last save could not be made.
        """
        self.scheduler.halt()
        drained = self.scheduler.drain()
        timer = self._clock.callLater(stop_timeout, drained.cancel)
        try:
            await drained
        except CancelledError:
            log.warn("handlers still running after {timeout}s; stopping anyway", timeout=stop_timeout)
        finally:
            if timer.active():
                timer.cancel()
        await self.saver.flush()

    # -- what the scheduler tells the run ---------------------------------------

    def pause(self) -> None:
        if self.feed is not None:
            self.feed.pause()

    def resume(self) -> None:
        if self.feed is not None:
            self.feed.resume()

    def failed(self, failure: Failure) -> None:
        self._machine.crash(failure)

    def dropped(self, row: dict[str, Any]) -> None:
        self._dedup.forget(row)

    def checkpoint(self) -> None:
        self.saver.save_if_moved()
