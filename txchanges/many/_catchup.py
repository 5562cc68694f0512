"""
One catch-up of one database: a normal feed read from its checkpoint, at
most a page of rows, each handed to the scheduler as it is parsed; the
database's resume point moves as its changes are done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from txchanges._reactor import Clock
from txchanges.feed._ends import Stopped
from txchanges.feed._feed import FeedRun
from txchanges.feed._normal import RowsProtocol
from txchanges.feed._params import feed_request
from txchanges.http.client import Database
from txchanges.service._progress import Progress
from txchanges.service._scheduler import Scheduler

__all__ = ["CatchUp", "Outcome"]


@dataclass
class Outcome:
    """
    How a catch-up ended.

    :ivar rows: Rows the feed held.
    :ivar more: Whether the database may have more to read (the page was
        full): it goes back in the queue.
    :ivar stopped: Whether :meth:`CatchUp.stop` ended it.
    """

    rows: int
    more: bool
    stopped: bool


class CatchUp:
    """
    Reads one page of a database's changes from *since*.

    It is the listener of its own :class:`~txchanges.service._scheduler.Scheduler`.

    :param handler: Called with each change (already bound to the database).
    :param record: Called with the database's new resume point each time it
        moves past changes that are done.
    :param failed: Called when the handler failed with ``on_error="stop"``.
    :param params: The feed parameters, ``limit`` aside.
    :param page_size: The most rows read (``limit``).
    :param idle_limit: Seconds without a byte after which the request is
        aborted.
    :param scheduling: The scheduler's keyword arguments.
    """

    def __init__(
        self,
        db: Database,
        since: Any,
        handler: Callable[[dict[str, Any]], Any],
        record: Callable[[Any], None],
        failed: Callable[[Failure], None],
        *,
        params: dict[str, Any],
        page_size: int,
        idle_limit: float,
        stop_timeout: float,
        clock: Clock,
        **scheduling: Any,
    ) -> None:
        self.db = db
        self._record = record
        self._failed = failed
        self._page_size = page_size
        self._stop_timeout = stop_timeout
        self._clock = clock
        self._stopped = False
        self._draining: Optional[Deferred[None]] = None
        self._stop_timer: Any = None
        self._rows = 0
        self.progress = Progress(since)
        self.scheduler = Scheduler(handler, self.progress, self, clock=clock, **scheduling)
        request = feed_request("normal", since, dict(params, limit=page_size))
        self._feed = FeedRun(
            db.server, db.path("_changes"), request, clock, idle_limit,
            lambda on_activity: RowsProtocol(self._take, on_activity),
        )

    def _take(self, row: dict[str, Any]) -> None:
        self._rows += 1
        self.scheduler.take(row)

    async def run(self) -> Outcome:
        """
        Read the page, wait until every change taken is done, and record
        where the database is.

        :return: How it ended.
        :raises: what the request failed with; the changes taken before are
            done first, and the resume point stays at the last one done in
            order.
        """
        try:
            result = await self._feed.run()
        except BaseException:
            await self._wind_down()
            raise
        more = False
        if not isinstance(result, Stopped):
            # The rest of the body: {"last_seq": ..., "pending": N}.
            pending = result.get("pending")
            more = pending > 0 if isinstance(pending, int) else self._rows >= self._page_size
            if self.progress.passed(result.get("last_seq")):
                self._record(self.progress.resume)
        await self._wind_down()
        return Outcome(self._rows, more and not self._stopped, self._stopped)

    async def _wind_down(self) -> None:
        # Wait for the handler calls still running (once stopped, at most
        # stop_timeout seconds from the stop), then record where the changes
        # done reached.
        if self._stopped:
            self.scheduler.halt()
        self._draining = self.scheduler.drain()
        try:
            await self._draining
        except CancelledError:
            pass
        finally:
            self._draining = None
            if self._stop_timer is not None and self._stop_timer.active():
                self._stop_timer.cancel()
        self._record(self.progress.resume)

    def stop(self) -> None:
        """
        End it now: close the feed, start no more handler calls; the
        running ones get *stop_timeout* seconds.
        """
        if self._stopped:
            return
        self._stopped = True
        self.scheduler.halt()
        self._feed.stop()
        self._stop_timer = self._clock.callLater(self._stop_timeout, self._abandon)

    def _abandon(self) -> None:
        if self._draining is not None:
            self._draining.cancel()

    # -- what the scheduler tells the catch-up --------------------------------

    def pause(self) -> None:
        self._feed.pause()

    def resume(self) -> None:
        self._feed.resume()

    def failed(self, failure: Failure) -> None:
        self._failed(failure)

    def dropped(self, row: dict[str, Any]) -> None:
        pass

    def checkpoint(self) -> None:
        self._record(self.progress.resume)
