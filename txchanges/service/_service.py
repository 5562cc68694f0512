"""
:class:`ChangesService`: follow a database's continuous feed for as long as
the service runs, through any failure, without losing a change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import Unpack

from txchanges.service._catchup import DEFAULT_PAGE, CatchUp, check_catch_up
from txchanges.service._lifecycle import Lifecycle
from txchanges.service._lifecycle_types import Core, Inputs, State
from txchanges.feed._params import feed_request
from txchanges.service._pending import PendingProbe
from txchanges.service._progress import DedupWindow
from txchanges.feed._protocol import DEFAULT_MAX_LINE_LENGTH
from txchanges.service._retry import Backoff
from txchanges.feed._batches import DEFAULT_MAX_BATCH
from txchanges.service._batches import BatchHandler, choose_handler
from txchanges.service._requests import Attempt, FeedRequests
from txchanges.service._run import Run
from txchanges.service._options import buffer_bounds
from txchanges.service._startup import Steps, resume_steps, start_up
from txchanges.service._stats import ServiceStats
from txchanges._reactor import Clock
from txchanges.service.checkpoint import CheckpointStore, MemoryCheckpoint
from txchanges.http.client import Database
from txchanges.service.shard import Shard
from txchanges.service._identity import identity_of
from txchanges.feed._feedparams import SET_BY_METHOD, FeedParams, check_feed_params
from txchanges._reactor import default_clock

__all__ = ["ChangesService", "ServiceStats", "State"]

Handler = Callable[[dict[str, Any]], Any]

#: How the service catches up by default (see *catch_up*).
CATCH_UP_DEFAULT = "continuous"

# Parameters the service sets itself.
_REFUSED = dict(
    SET_BY_METHOD,
    timeout="the service sends heartbeat, which makes CouchDB ignore timeout; see feed_max_duration",
)

#: The default *feed_max_duration*, in seconds.
FEED_MAX_DURATION = 300.0


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
    :param batch_handler: Instead of *handler*: called with a batch of
        changes, a list of the changes parsed from one read of the feed (at
        most *max_batch*, never two of one document), in feed order. One
        batch at a time: while it runs (its Deferred or coroutine) the feed
        waits; once it is done the checkpoint moves past the batch.
        *on_error* applies to the whole batch. Giving both, or neither, is a
        ``TypeError``; with it, *concurrency*, *max_buffered* and
        *max_ahead* are a ``ValueError``.
    :param max_batch: The most changes in one batch.
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
    :param feed_max_duration: Seconds after which the service ends a
        continuous request itself and asks once for a normal feed from where
        it was, whose ``last_seq`` is then checkpointed; ``None`` never
        does. With a filter (``filter_name``, ``selector``, ``doc_ids``,
        ``view``) that rarely matches, no row may come for hours while the
        database moves on, and a continuous feed tells nothing of it: its
        heartbeats are bare newlines, ``seq_interval`` only thins the seqs
        of rows that are sent, and CouchDB ignores ``timeout`` when
        ``heartbeat`` is given (without it, ``timeout`` counts from the last
        write to the database, filtered or not, and is capped at 60 s, so a
        busy database never ends the request). The normal feed's
        ``last_seq`` lies past every change the filter left out, so the
        resume point moves with the database and a restart reads again at
        most the changes of the last *feed_max_duration* seconds. Each
        renewal costs two requests (the normal one and the next continuous
        one) and the server reads again the changes since the last row
        handed over: nothing for a feed whose rows keep coming, at most
        those of one period for one that rarely matches, whatever the
        period. The default, 300 s, is 24 requests an hour, next to 120
        heartbeats.
    :param catch_up: How to read a backlog: ``"normal"`` reads pages of
        *catch_up_page* changes of the normal feed (with ``seq_interval``)
        at start-up and after a failure, for as long as a page or more is
        pending, then follows the continuous feed; ``"continuous"`` follows
        the continuous feed from the start. Never pages with a filter,
        ``limit`` or ``descending``.
    :param catch_up_page: Changes per page of the normal feed.
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
        handler: Optional[Handler] = None,
        *,
        batch_handler: Optional[BatchHandler] = None,
        max_batch: int = DEFAULT_MAX_BATCH,
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
        feed_max_duration: Optional[float] = FEED_MAX_DURATION,
        catch_up: str = CATCH_UP_DEFAULT,
        catch_up_page: int = DEFAULT_PAGE,
        stop_timeout: float = 30.0,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        clock: Optional[Clock] = None,
        filter_name: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        **feed_params: Unpack[FeedParams],
    ) -> None:
        if not isinstance(db, Database):
            raise TypeError(f"ChangesService needs a Database, not {type(db).__name__}")
        chosen, self._max_batch = choose_handler(handler, batch_handler, max_batch, concurrency, max_buffered, max_ahead)
        if not isinstance(heartbeat, int) or isinstance(heartbeat, bool) or heartbeat <= 0:
            raise ValueError(f"heartbeat must be a positive number of milliseconds, not {heartbeat!r}")
        if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive number of changes, not {checkpoint_every!r}")
        if pending_interval is not None and (
            not isinstance(pending_interval, (int, float)) or isinstance(pending_interval, bool) or not pending_interval > 0
        ):
            raise ValueError(f"pending_interval must be a positive number of seconds or None, not {pending_interval!r}")
        if feed_max_duration is not None and (
            not isinstance(feed_max_duration, (int, float))
            or isinstance(feed_max_duration, bool)
            or not feed_max_duration > 0
        ):
            raise ValueError(
                f"feed_max_duration must be a positive number of seconds or None, not {feed_max_duration!r}"
            )
        if shard is not None and not isinstance(shard, Shard):
            raise TypeError(f"shard must be a Shard, not {shard!r}")
        check_catch_up(catch_up, catch_up_page)
        merged = check_feed_params(ChangesService, feed_params, params, _REFUSED)
        merged["filter_name"] = filter_name
        # Fail on a bad filter or parameter now rather than at start-up.
        feed_request("continuous", since if since != "now" else None, merged)
        clock = default_clock(clock)
        self.db = db
        self._handler = chosen
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
        self._feed_max_duration = feed_max_duration
        self._catch_up = catch_up
        self._catch_up_page = catch_up_page
        self._probe: Optional[PendingProbe] = None
        buffered, ahead = buffer_bounds(concurrency, max_buffered, max_ahead, on_error)
        self._concurrency = concurrency
        self._max_buffered = buffered
        self._max_ahead = ahead
        self._on_error = on_error
        self._stats = ServiceStats()
        self._saved: Any = None
        self._run: Optional[Run] = None
        self._requests: Optional[FeedRequests] = None
        self._backoff = Backoff(self._retry, give_up_after, clock)
        self._lifecycle = Lifecycle(
            Core(
                start_up=lambda machine, startup: start_up(machine, startup, self._start_steps, self._backoff, self.log),
                connect=self._connect, halt=self._halt, finish=lambda: Deferred.fromCoroutine(self._finish()),
                ended=self._ended, retrying=self._retrying, clock=clock,
            )
        )

    def __repr__(self) -> str:
        return f"<ChangesService of {self.db!r} {self.state}>"

    @property
    def state(self) -> State:
        """
        What the service is doing (a :class:`~txchanges.State`, equal to its
        name: ``service.state == "streaming"``).
        """
        return self._lifecycle.state

    @property
    def stats(self) -> ServiceStats:
        """
        What the service has done so far (see :class:`ServiceStats`).
        """
        if self._run is not None:
            self._stats.handled = self._run.scheduler.handled
            self._stats.handler_failures = self._run.scheduler.failures
            self._stats.checkpoints = self._run.saver.count
        return self._stats

    @property
    def resume_seq(self) -> Any:
        """
        The newest sequence before which every change is done: where a
        restart would resume.
        """
        return self._run.progress.resume if self._run is not None else self._saved

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        """
        Load the checkpoint (it wins over *since*) and start following.

        :raises RuntimeError: while a stop is still under way.
        """
        if self.running:
            return
        if self.state is State.STOPPING:
            raise RuntimeError(f"{self!r} is still stopping: start it once stopService() has fired")
        super().startService()
        self._lifecycle.start()

    def stopService(self) -> "Deferred[None]":
        """
        Stop following: cancel the request or the pending retry, wait for
        running handler calls (at most *stop_timeout* seconds), save the
        checkpoint.

        :return: A Deferred that fires when all that is done; it never fails
            (a terminal error is reported by :meth:`when_stopped`).
        """
        # At once, even from a handler called while the lifecycle is busy:
        # no handler call starts after this.
        self._halt()
        super().stopService()
        return self._lifecycle.stop()

    def when_stopped(self) -> "Deferred[None]":
        """
        :return: A new Deferred that fires with ``None`` when the service
            stops because :meth:`stopService` was called, and fails with the
            error that stopped it otherwise (a terminal HTTP error, a handler
            failure with ``on_error="stop"``, or the last error once
            *give_up_after* has passed).
        """
        return self._lifecycle.when_stopped()

    # -- what the lifecycle asks of the service -----------------------------

    def _start_steps(self) -> Steps:
        identity = identity_of(self.db, self._params, self._shard)
        self._saved, since = yield from resume_steps(self.db, self._store, identity, self._since, self.log)
        self._begin(since)

    def _begin(self, since: Any) -> None:
        run = self._run = Run(
            since, self._handler, self._store, self._saved, self._lifecycle.machine, self._dedup,
            interval=self._interval, clock=self._clock, concurrency=self._concurrency,
            max_buffered=self._max_buffered, max_ahead=self._max_ahead, on_error=self._on_error,
            retry_delay=self._retry, checkpoint_every=self._every,
            batches=None if self._max_batch is None else dict(max_batch=self._max_batch, shard=self._shard, stats=self._stats),
        )
        self._requests = FeedRequests(
            self.db, run, self._feed_path(), since, self._params, heartbeat=self._heartbeat,
            max_duration=self._feed_max_duration, max_line_length=self._max_line_length,
            shard=self._shard, dedup=self._dedup, stats=self._stats, backoff=self._backoff, clock=self._clock,
            log=self.log,
            # A sequence as often as a checkpoint may want one.
            pages=CatchUp(self._catch_up if self._max_batch is None else "continuous", self._catch_up_page, self._params, seq_interval=self._every),
        )
        if self._pending_interval is not None:
            self._probe = PendingProbe(
                self.db, lambda: self.resume_seq, lambda: self.stats.handled, self._set_pending, self._clock
            )
            self._probe.start(self._pending_interval)

    def _feed_path(self) -> str:
        # The feed followed: the database's changes.
        return self.db.path("_changes")

    def _connect(self, machine: Inputs) -> Attempt:
        assert self._requests is not None
        return self._requests.connect(machine)

    def _retrying(self) -> None:
        self._stats.reconnects += 1

    def _halt(self) -> None:
        if self._run is not None:
            self._run.scheduler.halt()

    async def _finish(self) -> None:
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        if self._run is not None:
            await self._run.finish(self._stop_timeout, self.log)

    def _ended(self, failure: Optional[Failure]) -> None:
        if failure is not None:
            self.log.failure("stopped following {db}", failure, db=self.db.url)
            Service.stopService(self)
        else:
            self.log.info("stopped following {db} at {seq}", db=self.db.url, seq=self.resume_seq)

    def _set_pending(self, pending: int) -> None:
        self._stats.pending = pending
