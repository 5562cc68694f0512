"""
The feed requests of a :class:`~txchanges.ChangesService`, one at a time:
each sent from the newest position the feed reached, its changes handed to
the scheduler (or passed over), and how it ended told to the lifecycle.

While the follower catches up (see :mod:`txchanges.service._catchup`), they
are pages of the normal feed.

They are continuous requests, but for one kind: a continuous request that
has run for *max_duration* seconds is ended by the service, and the next
request is a normal feed from the same position (a catch-up), which hands
over the changes that came since and ends with the server's ``last_seq``.
With a filter that position lies past every change the filter left out, so
the resume point moves with the database even when no row matches for
hours; then the continuous requests go on from it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.feed._body import BodyReader
from txchanges.feed._feed import FeedRun
from txchanges.feed._normal import RowsProtocol
from txchanges.feed._params import feed_request
from txchanges.feed._protocol import ChangesProtocol
from txchanges.feed._rows import LastSeq
from txchanges.errors import Stalled
from txchanges._reactor import Clock
from txchanges.feed._watchdog import idle_limit
from txchanges.http.client import Database
from txchanges.service._catchup import CatchUp
from txchanges.service._lifecycle_types import Cancellable, Inputs
from txchanges.service._progress import DedupWindow
from txchanges.service._retry import Backoff, next_try
from txchanges.service._batches import BatchScheduler
from txchanges.service._run import Run
from txchanges.service._scheduler import Scheduler
from txchanges.service._stats import ServiceStats
from txchanges.service.shard import Shard

__all__ = ["Attempt", "FeedRequests", "HELD_BACK"]

#: Continuous requests in a row that stall before any byte of their body
#: (heartbeats included) arrives, after which a service follows with
#: longpoll requests that end within a heartbeat: what a proxy that holds
#: responses back until they end lets through.
HELD_BACK = 2


class Attempt:
    """
    One request of the continuous feed: the lifecycle's data while
    connecting and streaming.

    :ivar started: Clock time it was sent.
    :ivar catch_up: Whether its body is read whole, as a normal feed's: the
        normal feed that follows a renewal, a page, or a longpoll request.
    :ivar page: Whether it is a page of the catch-up.
    :ivar stopped: Whether a stop ended it.
    :ivar renewed: Whether the service ended it after *max_duration*.
    :ivar heard: Whether any byte of its body arrived (a heartbeat counts).
    """

    feed: FeedRun
    #: Fires with what the feed ended with, or fails with its error.
    done: "Deferred[Any]"

    def __init__(self, started: float, catch_up: bool = False) -> None:
        self.started = started
        self.catch_up = catch_up
        self.page = False
        self.stopped = False
        self.renewed = False
        self.heard = False
        #: The clock's call that will end it after *max_duration*.
        self.renewal: Optional[Cancellable] = None

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
    :param path: The feed's encoded path: the database's ``_changes``, or
        ``_db_updates``.
    :param since: Where the first request starts.
    :param params: The requests' parameters, but ``heartbeat``.
    :param heartbeat: Milliseconds between the server's keep-alive
        newlines; a response that lasted that long was a good one.
    :param max_duration: Seconds after which a continuous request's response
        is ended and a catch-up asked for; ``None``: never.
    :param shard: Pass over the changes of the documents it does not own.
    :param dedup: Pass over the changes seen before (when its size is not 0).
    :param stats: Where what the requests see is counted.
    :param backoff: Times the retries; reset after a good response.
    :param log: Where each request and its end are told.
    :param pages: Whether a request is a page of the normal feed.
    """

    def __init__(
        self,
        db: Database,
        run: Run,
        path: str,
        since: Any,
        params: dict[str, Any],
        *,
        heartbeat: int,
        max_duration: Optional[float],
        max_line_length: int,
        shard: Optional[Shard],
        dedup: DedupWindow,
        stats: ServiceStats,
        backoff: Backoff,
        clock: Clock,
        log: Logger,
        pages: CatchUp,
    ) -> None:
        self._db = db
        self._run = run
        self._path = path
        # A batch handler's scheduler, or the per-change one.
        self._batches = run.scheduler
        self._scheduler = cast(Scheduler, run.scheduler)
        self._params = params
        self._heartbeat = heartbeat
        self._max_duration = max_duration
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
        # Whether the next request is a catch-up.
        self._catch_up = False
        # Continuous requests in a row that stalled before a byte of body
        # came, heartbeats included; at HELD_BACK, every request is a
        # longpoll that ends by itself.
        self._held_back = 0
        self._pages = pages

    def connect(self, machine: Inputs) -> Attempt:
        """
        Send the next request; tell *machine* when its response arrives
        (``opened``) and how it ended (``ended``, ``lost`` or ``crash``),
        unless a stop ended it.

        :return: The request, the lifecycle's data while it runs.
        """
        run = self._run
        since = self._position
        # A catch-up that fails is not tried again: the retry is continuous.
        catch_up, self._catch_up = self._catch_up, False
        attempt = Attempt(self._clock.seconds(), catch_up)
        if self._pages.paging:
            self._log.info("catching up: requesting a page of changes of {db} since {since}", db=self._db.url, since=since)
            attempt.catch_up = attempt.page = True
            request = self._pages.request(since)
            limit = idle_limit(None, None)
        elif catch_up:
            self._log.info("asking for the changes of {db} since {since} once", db=self._db.url, since=since)
            request = feed_request("normal", since, self._params)
            limit = idle_limit(None, None)
        elif self._held_back >= HELD_BACK:
            # Something between here and CouchDB holds a response back until
            # it ends: ask for responses that end within a heartbeat.
            attempt.catch_up = True
            request = feed_request("longpoll", since, dict(self._params, timeout=self._heartbeat))
            limit = idle_limit(None, self._heartbeat)
        else:
            self._log.info("requesting changes of {db} since {since}", db=self._db.url, since=since)
            request = feed_request("continuous", since, dict(self._params, heartbeat=self._heartbeat))
            limit = idle_limit(self._heartbeat, None)
        feed = FeedRun(
            self._db.server,
            self._path,
            request,
            self._clock,
            limit,
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
            attempt.heard = True
            stats.last_activity = clock.seconds()
            on_activity()

        if not attempt.stopped:
            machine.opened(attempt)
            if self._max_duration is not None and not attempt.catch_up:
                attempt.renewal = clock.callLater(self._max_duration, self._renew, attempt)
        # Once per change: straight to the scheduler, unless some changes
        # are passed over.
        if isinstance(self._batches, BatchScheduler):
            return self._batches.protocol(attempt.catch_up, activity, self._max_line_length)
        on_change = self._sift if self._sifting else self._scheduler.take
        if attempt.catch_up:
            return RowsProtocol(on_change, activity, self._max_line_length)
        protocol = ChangesProtocol(on_change, activity, self._max_line_length)
        if not self._sifting:
            # The handler is called from the feed itself while it can be.
            self._scheduler.watch(protocol)
        return protocol

    def _note_held_back(self, attempt: Attempt, result: Failure) -> None:
        # A continuous response whose body never brought a byte, not even a
        # heartbeat, is held back on the way (a proxy that buffers
        # responses): after HELD_BACK of them in a row, follow with requests
        # that end by themselves, which such a proxy passes on.
        if attempt.catch_up:
            return
        if not (result.check(Stalled) and not attempt.heard):
            self._held_back = 0
            return
        self._held_back += 1
        if self._held_back == HELD_BACK:
            self._log.warn(
                "no byte of {db}'s feed came through in {count} requests in a row: something holds responses "
                "back until they end (a buffering proxy?); following with longpoll requests that end within "
                "{heartbeat} ms",
                db=self._db.url, count=HELD_BACK, heartbeat=self._heartbeat,
            )

    def _renew(self, attempt: Attempt) -> None:
        # The response has run for max_duration: end it here, and let a
        # catch-up find out how far the feed is.
        attempt.renewal = None
        attempt.renewed = True
        attempt.feed.stop()

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
        if attempt.renewal is not None:
            attempt.renewal.cancel()
            attempt.renewal = None
        protocol = attempt.feed.protocol
        moved = isinstance(protocol, BodyReader) and protocol.last_seq is not None
        if moved:
            self._position = protocol.last_seq  # type: ignore[union-attr]
        if attempt.stopped:
            return
        if attempt.renewed:
            self._catch_up = True
            self._log.info(
                "renewing the feed of {db} after {duration}s, from {since}",
                db=self._db.url, duration=self._max_duration, since=self._position,
            )
            self._backoff.reset()
            self._stats.reconnects += 1
            machine.ended()
            return
        if attempt.page and isinstance(result, dict):
            self._page_ended(result, machine)
            return
        if attempt.catch_up and isinstance(result, dict):
            # A normal feed's end: the rest of its body.
            result = LastSeq(result.get("last_seq"), result.get("pending"), result)
        if isinstance(result, LastSeq):
            self._stats.pending = result.pending
            run.passed(result.last_seq)
            self._log.info("feed ended at {seq}; reconnecting", seq=result.last_seq)
            self._backoff.reset()
            self._stats.reconnects += 1
            machine.ended()
            return
        assert isinstance(result, Failure), result
        self._note_held_back(attempt, result)
        # A response that moved the feed on, or lasted, was a good one.
        if moved or self._clock.seconds() - attempt.started >= self._heartbeat / 1000:
            self._backoff.reset()
        error = result.value
        assert error is not None
        self._pages.failed()
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
        self._pages.page_ended(pending)
        if not self._pages.paging:
            self._log.info("caught up at {seq}; following the continuous feed", seq=self._position)
        self._backoff.reset()
        machine.ended()
