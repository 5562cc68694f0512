"""
:class:`ChangesService`: follow a database's continuous feed for as long as
the service runs, through any failure, without losing a change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import Unpack

from txchanges.feed._feed import FeedRun, Stopped
from txchanges.feed._params import feed_request
from txchanges.service._pending import PendingProbe
from txchanges.service._progress import DedupWindow, Progress
from txchanges.feed._protocol import DEFAULT_MAX_LINE_LENGTH, ChangesProtocol
from txchanges.feed._rows import LastSeq
from txchanges.service._retry import Backoff, is_terminal
from txchanges.service._saver import CheckpointSaver, prepare_store
from txchanges.service._scheduler import Scheduler, buffer_bounds
from txchanges.service._stats import ServiceStats
from txchanges.feed._watchdog import Clock, idle_limit
from txchanges.service.checkpoint import CheckpointStore, MemoryCheckpoint
from txchanges.service._identity import identity_of
from txchanges.http.client import Database
from txchanges.service.shard import Shard
from txchanges.feed._feedparams import SET_BY_METHOD, FeedParams, check_feed_params
from txchanges._reactor import default_clock

__all__ = ["ChangesService", "ServiceStats"]

Handler = Callable[[dict[str, Any]], Any]

# Parameters the service sets itself.
_REFUSED = dict(SET_BY_METHOD, timeout="the service sets timeout itself (it sends heartbeat)")


class ChangesService(Service):
    """
    Follows a database's continuous feed and hands every change to a handler.

    Delivery is at least once: a change is handed over again after a
    restart if it was in flight, and CouchDB itself may replay changes;
    write handlers to be idempotent, or set *dedup_window*.

    :param db: The database to follow.
    :param handler: Called with each change (a dict, as the server sent it).
        It may return a Deferred or be a coroutine function; the change is
        done when it returns or its result fires.
    :param since: Where to start when the checkpoint store has nothing:
        ``0``/``None`` (the beginning), ``"now"``, or an opaque sequence.
    :param checkpoint: Where the resume point is kept; in memory by default.
    :param heartbeat: Milliseconds between the server's keep-alive
        newlines; silence for 1.25 times that plus a grace period aborts the
        connection and reconnects.
    :param concurrency: How many handler calls may run at once; changes of
        one document always run one at a time, in feed order.
    :param max_buffered: How many changes may be held, running or waiting,
        before the feed is paused; ``2 * concurrency`` by default.
    :param max_ahead: How many changes may have arrived past the oldest
        unfinished one before the feed is paused, so that one handler call
        that hangs cannot let memory grow with the feed; the larger of 1000
        and ``50 * max_buffered`` by default.
    :param on_error: When the handler fails: ``"stop"`` the service (the
        checkpoint stays before that change), ``"retry"`` it with backoff, or
        ``"skip"`` it after logging it.
    :param retry_policy: Seconds to wait before retry *n* (from 0) of a
        request or a handler call; Twisted's capped exponential backoff with
        jitter by default.
    :param give_up_after: Seconds of failing without a good response after
        which the service stops with the last error; ``None`` retries forever.
    :param checkpoint_every: Save after this many changes are done...
    :param checkpoint_interval: ...or this many seconds, whichever first.
    :param dedup_window: Remember this many ``(id, rev)`` pairs and hand a
        change seen among them to nobody.
    :param shard: Hand over only the changes of the documents this
        :class:`~txchanges.Shard` owns, and pass over the rest: run one
        service per shard, each with a checkpoint of its own, to share a
        feed's work between processes.
    :param pending_interval: Ask the server every this many seconds how
        many of the database's changes lie past the resume point, for
        :attr:`ServiceStats.pending` (a continuous feed tells only when it
        ends); ``None``, the default, never asks. The question carries no
        filter: with one, the answer counts changes that will not match.
    :param stop_timeout: The longest :meth:`stopService` waits for running
        handler calls.
    :param clock: Time; the global reactor when omitted.
    :param filter_name: A filter, as for :meth:`~txchanges.Consumer.wait`;
        ``filter=`` is its alias.
    :param params: Any other query parameter, sent unchanged: above all a
        filter function's own, which it reads in ``req.query``. A key that
        is a feed parameter, or one the service sets (``feed``, ``since``,
        ``heartbeat``, ``timeout``), is a ``ValueError``.
    :param feed_params: The feed parameters of
        :class:`~txchanges.FeedParams`, as for
        :meth:`~txchanges.Consumer.wait`: ``doc_ids``, ``selector``,
        ``view``, ``include_docs``, ``style``, ... An unknown keyword (a
        misspelled option too) is a ``TypeError`` naming the closest known
        name.
    """

    log = Logger()

    def __init__(
        self,
        db: Database,
        handler: Handler,
        *,
        since: Any = None,
        checkpoint: Optional[CheckpointStore] = None,
        heartbeat: int = 30000,
        concurrency: int = 1,
        max_buffered: Optional[int] = None,
        max_ahead: Optional[int] = None,
        on_error: str = "stop",
        retry_policy: Optional[Callable[[int], float]] = None,
        give_up_after: Optional[float] = None,
        checkpoint_every: int = 100,
        checkpoint_interval: float = 5.0,
        dedup_window: int = 0,
        shard: Optional[Shard] = None,
        pending_interval: Optional[float] = None,
        stop_timeout: float = 30.0,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        clock: Optional[Clock] = None,
        filter_name: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        **feed_params: Unpack[FeedParams],
    ) -> None:
        if not isinstance(db, Database):
            raise TypeError(f"ChangesService needs a Database, not {type(db).__name__}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {handler!r}")
        if not isinstance(heartbeat, int) or isinstance(heartbeat, bool) or heartbeat <= 0:
            raise ValueError(f"heartbeat must be a positive number of milliseconds, not {heartbeat!r}")
        if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive number of changes, not {checkpoint_every!r}")
        if pending_interval is not None and (
            not isinstance(pending_interval, (int, float)) or isinstance(pending_interval, bool) or not pending_interval > 0
        ):
            raise ValueError(f"pending_interval must be a positive number of seconds or None, not {pending_interval!r}")
        if shard is not None and not isinstance(shard, Shard):
            raise TypeError(f"shard must be a Shard, not {shard!r}")
        merged = check_feed_params(ChangesService, feed_params, params, _REFUSED)
        merged["filter_name"] = filter_name
        # Fail on a bad filter or parameter now rather than at start-up.
        feed_request("continuous", since if since != "now" else None, merged)
        clock = default_clock(clock)
        self.db = db
        self._handler = handler
        self._since = since
        self._store: CheckpointStore = checkpoint if checkpoint is not None else MemoryCheckpoint()
        self._heartbeat = heartbeat
        self._params = merged
        self._clock: Clock = clock
        self._retry = retry_policy or backoffPolicy()
        self._give_up_after = give_up_after
        self._every = checkpoint_every
        self._interval = checkpoint_interval
        self._stop_timeout = stop_timeout
        self._max_line_length = max_line_length
        self._dedup = DedupWindow(dedup_window)
        self._shard = shard
        self._pending_interval = pending_interval
        self._probe: Optional[PendingProbe] = None
        # Whether a change may be passed over before the scheduler sees it.
        self._sifting = shard is not None or dedup_window > 0
        buffered, ahead = buffer_bounds(concurrency, max_buffered, max_ahead, on_error)
        self._concurrency = concurrency
        self._max_buffered = buffered
        self._max_ahead = ahead
        self._on_error = on_error
        self._stats = ServiceStats()
        self._good = False
        self.state = "stopped"
        self._progress: Optional[Progress] = None
        self._scheduler: Optional[Scheduler] = None
        self._feed: Optional[FeedRun] = None
        self._waiting: Optional[Deferred[Any]] = None
        self._stopping = False
        self._terminal: Optional[Failure] = None
        self._loop: Optional[Deferred[None]] = None
        self._waiters: list[Deferred[None]] = []
        self._saved: Any = None
        self._saver: Optional[CheckpointSaver] = None

    def __repr__(self) -> str:
        return f"<ChangesService of {self.db!r} {self.state}>"

    @property
    def stats(self) -> ServiceStats:
        """
        What the service has done so far (see :class:`ServiceStats`).
        """
        if self._scheduler is not None:
            self._stats.handled = self._scheduler.handled
            self._stats.handler_failures = self._scheduler.failures
        if self._saver is not None:
            self._stats.checkpoints = self._saver.count
        return self._stats

    @property
    def resume_seq(self) -> Any:
        """
        The newest sequence before which every change is done: where a
        restart would resume.
        """
        return self._progress.resume if self._progress is not None else self._saved

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        """
        Load the checkpoint (it wins over *since*) and start following.
        """
        if self.running:
            return
        super().startService()
        self._stopping = False
        self._terminal = None
        self._loop = Deferred.fromCoroutine(self._main())

    def stopService(self) -> "Deferred[None]":
        """
        Stop following: cancel the request or the pending retry, wait for
        running handler calls (at most *stop_timeout* seconds), save the
        checkpoint.

        :return: A Deferred that fires when all that is done; it never fails
            (a terminal error is reported by :meth:`when_stopped`).
        """
        if not self.running or self._loop is None:
            return succeed(None)
        super().stopService()
        self._stopping = True
        self._interrupt()
        done: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            done.callback(None)
            return result

        self._loop.addBoth(fire)
        return done

    def when_stopped(self) -> "Deferred[None]":
        """
        :return: A new Deferred that fires with ``None`` when the service
            stops because :meth:`stopService` was called, and fails with the
            error that stopped it otherwise (a terminal HTTP error, a handler
            failure with ``on_error="stop"``, or the last error once
            *give_up_after* has passed).
        """
        d: Deferred[None] = Deferred()
        if self.state in ("stopped", "failed") and self._loop is not None and self._loop.called:
            self._notify(d)
        else:
            self._waiters.append(d)
        return d

    def _notify(self, d: "Deferred[None]") -> None:
        if self._terminal is not None:
            d.errback(self._terminal)
        else:
            d.callback(None)

    def _interrupt(self) -> None:
        if self._feed is not None:
            self._feed.stop()
        if self._waiting is not None:
            self._waiting.cancel()
        if self._scheduler is not None:
            self._scheduler.halt()

    # -- the loop -----------------------------------------------------------

    async def _main(self) -> None:
        try:
            await self._follow()
        except Exception:
            # Whatever stopService() interrupted (a cancelled request fails
            # with a wrapped CancelledError) is part of a clean stop; and a
            # handler failure set _terminal already, which wins over the
            # cancellation it caused.
            if self._terminal is None and not self._stopping:
                self._terminal = Failure()
        try:
            await self._finish()
        finally:
            self.state = "failed" if self._terminal is not None else "stopped"
            if self._terminal is not None:
                self.log.failure("stopped following {db}", self._terminal, db=self.db.url)
                Service.stopService(self)
            else:
                self.log.info("stopped following {db} at {seq}", db=self.db.url, seq=self.resume_seq)
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                self._notify(d)

    async def _io(self, d: "Deferred[Any]") -> Any:
        # Whatever the loop waits for can be cancelled by stopService().
        self._waiting = d
        try:
            return await d
        finally:
            self._waiting = None

    async def _follow(self) -> None:
        self.state = "starting"
        identity = identity_of(self.db, self._params, self._shard)
        await self._start_step(f"checking {self._store.describe()}", lambda: prepare_store(self._store, identity))
        saved = await self._start_step(f"loading the checkpoint from {self._store.describe()}", self._store.load)
        self._saved = saved
        if saved is not None:
            since = saved
            self.log.info("resuming from checkpoint {seq} in {where}", seq=since, where=self._store.describe())
        else:
            since = self._since
            self.log.info(
                "no checkpoint in {where}; starting from {seq}", where=self._store.describe(), seq=since
            )
        if since == "now":
            # A concrete position, so that every checkpoint is a real seq.
            body = await self._start_step(
                "asking for the current seq",
                lambda: self.db.server.request_json(
                    "GET", self.db.path("_changes"), [("since", "now"), ("limit", "0")]
                ),
            )
            since = body["last_seq"]
            # Saved at once: after a crash before the first checkpoint, a
            # restart must not take a later "now" and skip what came between.
            await self._start_step("saving the first checkpoint", lambda: self._store.save(since))
            self._saved = since
        self._progress = Progress(since)
        scheduler = self._scheduler = Scheduler(
            self._handler,
            self._progress,
            concurrency=self._concurrency,
            max_buffered=self._max_buffered,
            max_ahead=self._max_ahead,
            on_error=self._on_error,
            clock=self._clock,
            retry_delay=self._retry,
            checkpoint_every=self._every,
        )
        scheduler.pause = self._pause
        scheduler.resume = self._resume
        scheduler.failed = self._handler_failed
        scheduler.dropped = self._dedup.forget
        progress = self._progress
        saver = self._saver = CheckpointSaver(
            self._store, lambda: progress.resume, self._interval, self._clock, self._saved, self._handler_failed
        )
        scheduler.checkpoint = saver.save_if_moved
        if self._pending_interval is not None:
            self._probe = PendingProbe(
                self.db, lambda: self.resume_seq, lambda: self.stats.handled, self._set_pending, self._clock
            )
            self._probe.start(self._pending_interval)
        await self._connect_loop(since)

    async def _wait_to_retry(self, backoff: Backoff, error: Exception, what: str) -> bool:
        """
        Log a transient failure and wait before the next attempt.

        :raises Exception: *error* itself, once *give_up_after* has passed.
        :return: ``False`` when stopService() ended the wait.
        """
        delay = backoff.next_delay(error)
        if delay is None:
            self.log.error("giving up on {what} after {seconds:.0f}s of failures", what=what, seconds=backoff.failing_for)
            raise error
        self.state = "waiting"
        self.log.warn(
            "{what} failed ({error}); retry {attempt} in {delay:.1f}s",
            what=what, error=error, attempt=backoff.attempt, delay=delay,
        )
        try:
            await self._io(deferLater(self._clock, delay, lambda: None))  # type: ignore[arg-type]
        except CancelledError:
            return False
        return True

    async def _start_step(self, what: str, step: Callable[[], "Deferred[Any]"]) -> Any:
        # Start-up requests are retried like feed requests: a passing 503 or
        # a refused connection must not end the service.
        backoff = Backoff(self._retry, self._give_up_after, self._clock)
        while True:
            try:
                return await self._io(step())
            except Exception as error:
                if self._stopping or is_terminal(error):
                    raise
                if not await self._wait_to_retry(backoff, error, what):
                    raise CancelledError() from None

    async def _connect_loop(self, since: Any) -> None:
        backoff = Backoff(self._retry, self._give_up_after, self._clock)
        first = True
        while not self._stopping:
            if not first:
                self._stats.reconnects += 1
            first = False
            self.state = "connecting"
            self.log.info("requesting changes of {db} since {since}", db=self.db.url, since=since)
            started = self._clock.seconds()
            self._good = False
            feed = self._feed = FeedRun(
                self.db.server,
                self.db.path("_changes"),
                feed_request("continuous", since, dict(self._params, heartbeat=self._heartbeat)),
                self._clock,
                idle_limit(self._heartbeat, None),
                self._make_protocol,
            )
            if self._scheduler is not None and self._scheduler.paused:
                feed.pause()
            try:
                end: Any = await feed.run()
                error: Optional[Exception] = None
            except Exception as e:
                end, error = None, e
            finally:
                self._feed = None
            protocol = feed.protocol
            if isinstance(protocol, ChangesProtocol) and protocol.last_seq is not None:
                since = protocol.last_seq
            if self._terminal is not None:
                self._terminal.raiseException()
            if self._stopping or isinstance(end, Stopped):
                return
            if isinstance(end, LastSeq):
                self._stats.pending = end.pending
                self._passed(end.last_seq)
                self.log.info("feed ended at {seq}; reconnecting", seq=end.last_seq)
                backoff.reset()
                continue
            assert error is not None
            if is_terminal(error):
                raise error
            if self._good or self._clock.seconds() - started >= self._heartbeat / 1000:
                backoff.reset()
            if not await self._wait_to_retry(backoff, error, f"changes feed from {since}"):
                return

    def _make_protocol(self, on_activity: Callable[[], None]) -> ChangesProtocol:
        def activity() -> None:
            self._stats.last_activity = self._clock.seconds()
            on_activity()

        self.state = "streaming"
        return ChangesProtocol(self._on_change, activity, self._max_line_length)

    def _on_change(self, row: dict[str, Any]) -> None:
        # Once per change: kept lean.
        self._good = True
        if self._sifting:
            if self._shard is not None and not self._shard.owns(row["id"]):
                self._stats.other_shards += 1
                self._scheduler.discard(row)  # type: ignore[union-attr]
                return
            if self._dedup.seen(row):
                self._stats.duplicates += 1
                self._scheduler.discard(row)  # type: ignore[union-attr]
                return
        self._scheduler.take(row)  # type: ignore[union-attr]

    def _pause(self) -> None:
        if self._feed is not None:
            self._feed.pause()

    def _resume(self) -> None:
        if self._feed is not None:
            self._feed.resume()

    def _handler_failed(self, failure: Failure) -> None:
        self._terminal = failure
        if self._feed is not None:
            self._feed.stop()
        if self._waiting is not None:
            self._waiting.cancel()

    # -- progress and checkpoints -------------------------------------------

    def _passed(self, seq: Any) -> None:
        assert self._progress is not None and self._saver is not None
        if self._progress.passed(seq):
            self._saver.save_if_moved()

    def _set_pending(self, pending: int) -> None:
        self._stats.pending = pending

    async def _finish(self) -> None:
        self.state = "stopping"
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        if self._scheduler is not None:
            self._scheduler.halt()
            drained = self._scheduler.drain()
            timer = self._clock.callLater(self._stop_timeout, drained.cancel)
            try:
                await drained
            except CancelledError:
                self.log.warn("handlers still running after {timeout}s; stopping anyway", timeout=self._stop_timeout)
            finally:
                if timer.active():
                    timer.cancel()
        if self._saver is not None:
            await self._saver.flush()
