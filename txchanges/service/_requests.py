"""
The feed requests of a :class:`~txchanges.ChangesService`, one at a time:
each sent from the newest position the feed reached, its changes handed to
the scheduler (or passed over), and how it ended told to the lifecycle.
They are continuous feed requests, but while the follower catches up (see
:mod:`txchanges.service._catchup`), pages of the normal feed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.feed._body import BodyReader
from txchanges.feed._feed import FeedRun
from txchanges.feed._normal import RowsProtocol
from txchanges.feed._params import feed_request
from txchanges.feed._protocol import ChangesProtocol
from txchanges.feed._rows import LastSeq
from txchanges._reactor import Clock
from txchanges.feed._watchdog import idle_limit
from txchanges.http.client import Database
from txchanges.service._catchup import CatchUp
from txchanges.service._lifecycle_types import Inputs
from txchanges.service._progress import DedupWindow
from txchanges.service._retry import Backoff, next_try
from txchanges.service._run import Run
from txchanges.service._stats import ServiceStats
from txchanges.service.shard import Shard

__all__ = ["Attempt", "FeedRequests"]


class Attempt:
    """
    One feed request: the lifecycle's data while connecting and streaming.

    :ivar started: Clock time it was sent.
    :ivar stopped: Whether a stop ended it.
    :ivar page: Whether it is a page of the normal feed.
    """

    feed: FeedRun
    #: Fires with what the feed ended with, or fails with its error.
    done: "Deferred[Any]"

    def __init__(self, started: float, page: bool = False) -> None:
        self.started = started
        self.stopped = False
        self.page = page

    def run(self, feed: FeedRun) -> "Deferred[Any]":
        """
        Send it.

        :return: :attr:`done`.
        """
        self.feed = feed
        self.done = Deferred.fromCoroutine(feed.run())
        return self.done

    def stop(self) -> None:
        self.stopped = True
        self.feed.stop()


class FeedRequests:
    """
    The feed requests of one run (the lifecycle's ``connect`` hook).

    :param run: Where the changes go.
    :param since: Where the first request starts.
    :param params: The requests' parameters, but ``heartbeat``.
    :param heartbeat: Milliseconds between the server's keep-alive
        newlines; a response that lasted that long was a good one.
    :param shard: Pass over the changes of the documents it does not own.
    :param dedup: Pass over the changes seen before (when its size is not 0).
    :param stats: Where what the requests see is counted.
    :param backoff: Times the retries; reset after a good response.
    :param log: Where each request and its end are told.
    :param catch_up: Whether a request is a page of the normal feed.
    """

    def __init__(
        self,
        db: Database,
        run: Run,
        since: Any,
        params: dict[str, Any],
        *,
        heartbeat: int,
        max_line_length: int,
        shard: Optional[Shard],
        dedup: DedupWindow,
        stats: ServiceStats,
        backoff: Backoff,
        clock: Clock,
        log: Logger,
        catch_up: CatchUp,
    ) -> None:
        self._db = db
        self._run = run
        self._scheduler = run.scheduler
        self._params = params
        self._heartbeat = heartbeat
        self._max_line_length = max_line_length
        self._shard = shard
        self._dedup = dedup
        # Whether a change may be passed over before the scheduler sees it.
        self._sifting = shard is not None or dedup.size > 0
        self._stats = stats
        self._backoff = backoff
        self._clock = clock
        self._log = log
        # Where the next request starts: the newest position the feed reached.
        self._position = since
        self._catch_up = catch_up

    def connect(self, machine: Inputs) -> Attempt:
        """
        Send the next request; tell *machine* when its response arrives
        (``opened``) and how it ended (``ended``, ``lost`` or ``crash``),
        unless a stop ended it.

        :return: The request, the lifecycle's data while it runs.
        """
        run = self._run
        since = self._position
        page = self._catch_up.paging
        if page:
            self._log.info("catching up: requesting a page of changes of {db} since {since}", db=self._db.url, since=since)
            request = self._catch_up.request(since)
        else:
            self._log.info("requesting changes of {db} since {since}", db=self._db.url, since=since)
            request = feed_request("continuous", since, dict(self._params, heartbeat=self._heartbeat))
        attempt = Attempt(self._clock.seconds(), page)
        feed = FeedRun(
            self._db.server,
            self._db.path("_changes"),
            request,
            self._clock,
            idle_limit(self._heartbeat, None),
            lambda on_activity: self._make_protocol(machine, attempt, on_activity),
        )
        run.feed = feed
        if run.scheduler.paused:
            feed.pause()
        attempt.run(feed).addBoth(self._feed_over, machine, attempt)
        return attempt

    def _make_protocol(self, machine: Inputs, attempt: Attempt, on_activity: Callable[[], None]) -> BodyReader:
        stats, clock = self._stats, self._clock

        def activity() -> None:
            stats.last_activity = clock.seconds()
            on_activity()

        if not attempt.stopped:
            machine.opened(attempt)
        # Once per change: straight to the scheduler, unless some changes
        # are passed over.
        on_change = self._sift if self._sifting else self._scheduler.take
        if attempt.page:
            return RowsProtocol(on_change, activity, self._max_line_length)
        return ChangesProtocol(on_change, activity, self._max_line_length)

    def _sift(self, row: dict[str, Any]) -> None:
        # Pass over another shard's change, or a replay.
        scheduler = self._scheduler
        if self._shard is not None and not self._shard.owns(row["id"]):
            self._stats.other_shards += 1
            scheduler.discard(row)
        elif self._dedup.seen(row):
            self._stats.duplicates += 1
            scheduler.discard(row)
        else:
            scheduler.take(row)

    def _feed_over(self, result: Any, machine: Inputs, attempt: Attempt) -> None:
        # Tell the lifecycle how the request ended, unless a stop ended it.
        run = self._run
        if run.feed is attempt.feed:
            run.feed = None
        protocol = attempt.feed.protocol
        moved = protocol is not None and protocol.last_seq is not None
        if moved:
            self._position = protocol.last_seq  # type: ignore[union-attr]
        if attempt.stopped:
            return
        if attempt.page and isinstance(result, dict):
            self._page_ended(result, machine)
            return
        if isinstance(result, LastSeq):
            self._stats.pending = result.pending
            run.passed(result.last_seq)
            self._log.info("feed ended at {seq}; reconnecting", seq=result.last_seq)
            self._backoff.reset()
            self._stats.reconnects += 1
            machine.ended()
            return
        assert isinstance(result, Failure), result
        # A response that moved the feed on, or lasted, was a good one.
        if moved or self._clock.seconds() - attempt.started >= self._heartbeat / 1000:
            self._backoff.reset()
        error = result.value
        assert error is not None
        self._catch_up.failed()
        delay = next_try(self._backoff, error, f"changes feed from {self._position}", self._log)
        if delay is None:
            machine.crash(result)
        else:
            machine.lost(delay)

    def _page_ended(self, rest: dict[str, Any], machine: Inputs) -> None:
        # A page of the normal feed ended cleanly: its last_seq passes the
        # changes it holds; ask at once for the next page, or follow the
        # continuous feed. Not a reconnect: the feed goes on.
        pending = rest.get("pending")
        self._stats.pending = pending if isinstance(pending, int) else None
        last_seq = rest.get("last_seq")
        if last_seq is not None:
            self._run.passed(last_seq)
        self._catch_up.page_ended(pending)
        if not self._catch_up.paging:
            self._log.info("caught up at {seq}; following the continuous feed", seq=self._position)
        self._backoff.reset()
        machine.ended()
