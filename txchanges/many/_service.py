"""
:class:`DatabasesService`: follow every matching database of a server, with
a bounded number of feeds open, one checkpoint per database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Awaitable, Callable, Optional

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import Unpack

from txchanges._reactor import Clock, default_clock
from txchanges.errors import NotFound
from txchanges.feed._feedparams import SET_BY_METHOD, FeedParams, check_feed_params
from txchanges.feed._params import feed_request
from txchanges.feed._watchdog import idle_limit
from txchanges.http.client import Database, Server
from txchanges.many._catchup import CatchUp, Outcome
from txchanges.many._match import Match, predicate
from txchanges.many._pool import Pool
from txchanges.many._saves import BatchedSaves
from txchanges.many._scan import scan
from txchanges.many._stats import DatabasesStats
from txchanges.many._updates import UpdatesFeed, current_position
from txchanges.many.checkpoints import CheckpointsStore, MemoryCheckpoints
from txchanges.service._identity import feed_identity
from txchanges.service._options import buffer_bounds
from txchanges.service._retry import Backoff, next_try

__all__ = ["DatabasesService", "DatabasesStats"]

Handler = Callable[[str, dict[str, Any]], Any]

_REFUSED = dict(
    SET_BY_METHOD,
    timeout="the service reads each database with a normal feed",
    limit="set page_size= instead",
)

#: The reason CouchDB gives in a 404 for a database that does not exist
#: (a missing design document or filter says "missing" or "deleted").
_NO_DATABASE = "Database does not exist."


class DatabasesService(Service):
    """
    Follows the changes of every matching database of a server.

    It follows the server's ``_db_updates`` feed (which needs a server
    admin) to learn which databases change, and reads each such database
    with a normal feed from its checkpoint, at most *max_connections* at
    once, a page of *page_size* rows at a time; a database with more to read
    waits behind the others for its next page. At start-up, and whenever
    the ``_db_updates`` feed was lost, it scans every database
    (``_all_dbs`` in pages, ``_dbs_info`` in batches) and reads those whose
    ``update_seq`` is not their checkpoint. A server without ``_db_updates``
    is scanned every *rescan_interval* seconds instead.

    Delivery is at least once, as with :class:`~txchanges.ChangesService`.
    The changes of one document run one at a time, in feed order; those of
    different databases run side by side.

    :param server: The server.
    :param handler: Called as ``handler(db_name, change)`` for each change;
        it may return a Deferred or be a coroutine function.
    :param match: Which databases to follow: a regular expression the whole
        name must match, a predicate, or ``None`` for every database whose
        name does not start with ``_``.
    :param checkpoint: Where each database's resume point is kept (a
        :class:`~txchanges.CheckpointsStore`); in memory by default.
    :param since: Where a database with no checkpoint starts: ``None`` (its
        beginning) or ``"now"`` (its current ``update_seq``, for the
        databases that exist at start-up; one created later is read from
        its beginning).
    :param max_connections: The most database feeds open at once (the
        ``_db_updates`` feed aside).
    :param page_size: The most rows read from one database per request.
    :param concurrency: Handler calls at once per database.
    :param on_error: As for :class:`~txchanges.ChangesService`: ``"stop"``,
        ``"retry"`` or ``"skip"``.
    :param on_deleted: Called with the name of each followed database that
        is deleted (its checkpoint is dropped; one created again under the
        same name is read from its beginning). It may return a Deferred; a
        failure is logged.
    :param heartbeat: Milliseconds between the ``_db_updates`` feed's
        keep-alive newlines; silence past it reconnects.
    :param retry_policy: Seconds before retry *n* of a failed request.
    :param give_up_after: Seconds of failing after which the start-up or
        the ``_db_updates`` feed gives up and the service stops.
    :param checkpoint_interval: Seconds between two saves of the
        checkpoints that moved.
    :param rescan_interval: Seconds between scans when the server has no
        ``_db_updates``.
    :param stop_timeout: The longest a stop waits for running handler calls.
    :param clock: Time; the global reactor when omitted.
    :param filter_name: A filter every database has, as for
        :class:`~txchanges.ChangesService`.
    :param params: The filter's own query parameters.
    :param feed_params: The feed parameters of :class:`~txchanges.FeedParams`
        (``include_docs``, ``selector``, ``style``, ...).
    """

    log = Logger()

    def __init__(
        self,
        server: Server,
        handler: Handler,
        *,
        match: Match = None,
        checkpoint: Optional[CheckpointsStore] = None,
        since: Optional[str] = None,
        max_connections: int = 20,
        page_size: int = 1000,
        concurrency: int = 1,
        on_error: str = "stop",
        on_deleted: Optional[Callable[[str], Any]] = None,
        heartbeat: int = 30000,
        retry_policy: Optional[Callable[[int], float]] = None,
        give_up_after: Optional[float] = None,
        checkpoint_interval: float = 5.0,
        rescan_interval: float = 60.0,
        stop_timeout: float = 30.0,
        clock: Optional[Clock] = None,
        filter_name: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        **feed_params: Unpack[FeedParams],
    ) -> None:
        if not isinstance(server, Server):
            raise TypeError(f"DatabasesService needs a Server, not {type(server).__name__}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {handler!r}")
        if on_deleted is not None and not callable(on_deleted):
            raise TypeError(f"on_deleted must be callable or None, not {on_deleted!r}")
        if since not in (None, "now"):
            raise ValueError(f"since must be None or 'now', not {since!r}")
        for name, value in (("max_connections", max_connections), ("page_size", page_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        for name, seconds in (("checkpoint_interval", checkpoint_interval), ("rescan_interval", rescan_interval)):
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {seconds!r}")
        self._match = predicate(match)
        if feed_params.get("limit") is not None:
            raise ValueError(f"DatabasesService(): limit= is not allowed: {_REFUSED['limit']}")
        merged = check_feed_params(DatabasesService, feed_params, params, _REFUSED)
        merged["filter_name"] = filter_name
        # Fail on a bad filter or parameter now rather than at start-up.
        feed_request("normal", None, merged)
        max_buffered, max_ahead = buffer_bounds(concurrency, None, None, on_error)
        self.server = server
        self._handler = handler
        self._on_deleted = on_deleted
        self._store: CheckpointsStore = checkpoint if checkpoint is not None else MemoryCheckpoints()
        self._since = since
        self._params = merged
        self._identity = feed_identity(server.url + "*", merged)
        self._page_size = page_size
        self._heartbeat = heartbeat
        self._retry_policy = retry_policy or backoffPolicy()
        self._give_up_after = give_up_after
        self._checkpoint_interval = checkpoint_interval
        self._rescan_interval = rescan_interval
        self._stop_timeout = stop_timeout
        self._clock: Clock = default_clock(clock)
        self._scheduling = dict(
            concurrency=concurrency, max_buffered=max_buffered, max_ahead=max_ahead, on_error=on_error,
            retry_delay=self._retry_policy, checkpoint_every=100,
        )
        self._pool = Pool(
            self._catch_up, size=max_connections, clock=self._clock, retry_policy=self._retry_policy, log=self.log
        )
        self._stats = DatabasesStats()
        # Each database's resume point, as far as this process knows.
        self._seqs: dict[str, Any] = {}
        self._catch_ups: dict[str, CatchUp] = {}
        # Handled by catch-ups that ended.
        self._handled = 0
        self._failures = 0
        self._saves: Optional[BatchedSaves] = None
        self._updates: Optional[UpdatesFeed] = None
        self._poller: Optional[LoopingCall] = None
        self._tasks: set[Deferred[Any]] = set()
        self._scanning = False
        self._scan_again = False
        # Databases an update told of since the scan under way began.
        self._touched: set[str] = set()
        self._state = "stopped"
        self._stopping: Optional[Deferred[None]] = None
        self._waiters: list[Deferred[None]] = []
        self._outcome: Optional[Failure] = None
        # With since="now", until the first scan is over: the databases
        # _db_updates told of that have no checkpoint yet.
        self._early: Optional[set[str]] = set() if since == "now" else None
        # With since="now" and a store that loads nothing (one _local
        # document per database): where the first scan found each database,
        # its start if the store has no checkpoint for it.
        self._now: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<DatabasesService of {self.server!r} {self._state}>"

    @property
    def state(self) -> str:
        """
        ``"starting"`` (loading checkpoints, opening ``_db_updates``),
        ``"scanning"`` (the first scan), ``"following"``, ``"stopping"`` or
        ``"stopped"``.
        """
        return self._state

    @property
    def stats(self) -> DatabasesStats:
        """
        What the service has done and is doing (see :class:`DatabasesStats`).
        """
        stats = self._stats
        pool = self._pool
        stats.databases = len(pool.names() | self._seqs.keys())
        stats.open_feeds = pool.running
        stats.waiting = pool.waiting
        stats.oldest_wait = pool.oldest_wait()
        active = [c.scheduler for c in self._catch_ups.values()]
        stats.handled = self._handled + sum(s.handled for s in active)
        stats.handler_failures = self._failures + sum(s.failures for s in active)
        stats.checkpoints = self._saves.count if self._saves is not None else 0
        stats.reconnects = self._updates.stats.reconnects if self._updates is not None else 0
        return stats

    def resume_seq(self, name: str) -> Any:
        """
        The newest sequence of database *name* before which every change
        is done (``None`` when none is known).
        """
        catch_up = self._catch_ups.get(name)
        return catch_up.progress.resume if catch_up is not None else self._seqs.get(name)

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        """
        Load the checkpoints, open ``_db_updates``, scan, and follow.

        :raises RuntimeError: once stopped, or while a stop is under way:
            make a new service to start again.
        """
        if self.running:
            return
        if self._state != "stopped" or self._stopping is not None:
            raise RuntimeError(f"{self!r} cannot start again: make a new one")
        super().startService()
        self._state = "starting"
        self._task(self._start())

    def stopService(self) -> "Deferred[None]":
        """
        Stop: close every feed, wait for running handler calls (at most
        *stop_timeout* seconds), save every checkpoint.

        :return: A Deferred that fires when that is done; it never fails (a
            terminal error is reported by :meth:`when_stopped`).
        """
        super().stopService()
        return self._stop(None)

    def when_stopped(self) -> "Deferred[None]":
        """
        :return: A new Deferred that fires with ``None`` when the service is
            stopped by :meth:`stopService`, and fails with the error that
            stopped it otherwise.
        """
        d: Deferred[None] = Deferred()
        if self._state == "stopped" and self._stopping is not None and self._stopping.called:
            # Stopped already: say how at once.
            if self._outcome is None:
                d.callback(None)
            else:
                d.errback(self._outcome)
        else:
            self._waiters.append(d)
        return d

    def _task(self, coroutine: Any) -> None:
        task: Deferred[Any] = Deferred.fromCoroutine(coroutine)
        self._tasks.add(task)
        task.addBoth(self._task_ended, task)

    def _task_ended(self, result: Any, task: "Deferred[Any]") -> None:
        self._tasks.discard(task)
        if isinstance(result, Failure) and not result.check(CancelledError):
            self._crash(result)

    def _crash(self, failure: Failure) -> None:
        if self._stopping is None:
            self.log.failure("stopped following the databases of {server}", failure, server=self.server.url)
            Service.stopService(self)
            self._stop(failure)

    def _stop(self, failure: Optional[Failure]) -> "Deferred[None]":
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._wind_down(failure))
        d: Deferred[None] = Deferred()
        self._stopping.addBoth(lambda _: d.callback(None))
        return d

    async def _wind_down(self, failure: Optional[Failure]) -> None:
        self._state = "stopping"
        for task in list(self._tasks):
            task.cancel()
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        # At once, even from inside a handler: no handler call starts after this.
        closed = self._pool.close()
        for catch_up in list(self._catch_ups.values()):
            catch_up.stop()
        if self._updates is not None:
            await self._updates.stopService()
        await closed
        if self._saves is not None:
            try:
                await self._saves.flush()
            except Exception:
                failure = failure or Failure()
        self._state = "stopped"
        self._outcome = failure
        self.log.info("stopped following the databases of {server}", server=self.server.url)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if failure is None:
                waiter.callback(None)
            else:
                waiter.errback(failure)

    # -- start-up and scans -----------------------------------------------------

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        backoff = Backoff(self._retry_policy, self._give_up_after, self._clock)
        while True:
            try:
                return await attempt()
            except CancelledError:
                raise
            except Exception as e:
                delay = next_try(backoff, e, what, self.log)
                if delay is None:
                    raise
                await deferLater(self._clock, delay)  # type: ignore[arg-type]

    async def _start(self) -> None:
        # A stop may begin during any step, even from inside one (a handler
        # failing with on_error="stop" while the scan starts catch-ups):
        # each step is followed by a look at whether to go on.
        store = self._store
        where = store.describe()
        await self._retrying(f"checking {where}", lambda: store.prepare(self._identity))
        seqs = await self._retrying(f"loading the checkpoints from {where}", store.load)
        if self._stopping is not None:
            return
        self._seqs.update(seqs)
        self.log.info("{count} checkpoints in {where}", count=len(self._seqs), where=where)
        self._saves = BatchedSaves(store, self._checkpoint_interval, self._clock, self._crash)
        # The feed first, from where it is now, then the scan: a database
        # that changes after that moment is in the feed, one that changed
        # before it is in the scan.
        try:
            position = await self._retrying("asking where _db_updates is", lambda: current_position(self.server))
        except NotFound:
            position = None
        if self._stopping is not None:
            return
        if position is None:
            self.log.warn(
                "{server} has no _db_updates; scanning every database every {interval}s",
                server=self.server.url, interval=self._rescan_interval,
            )
            self._poller = LoopingCall(self._rescan)
            self._poller.clock = self._clock  # type: ignore[assignment]
            self._poller.start(self._rescan_interval, now=False)
        else:
            updates = self._updates = UpdatesFeed(
                self.server, self._updated, self._rescan, since=position, heartbeat=self._heartbeat,
                retry_policy=self._retry_policy, give_up_after=self._give_up_after, clock=self._clock,
            )
            updates.startService()
            updates.when_stopped().addErrback(self._crash)
        self._state = "scanning"
        await self._scan(first=True)
        early, self._early = self._early or set(), None
        for name in early:
            self._pool.dirty(name)
        if self._stopping is None:
            self._state = "following"

    def _rescan(self) -> None:
        # Updates may have been missed: scan again, once the scan under way
        # (if any) is over.
        if self._stopping is not None:
            return
        if self._scanning:
            self._scan_again = True
        else:
            self._task(self._scan(first=False))

    async def _scan(self, first: bool) -> None:
        self._scanning = True
        try:
            while True:
                self._scan_again = False
                self._touched = set()
                seen = await self._retrying(
                    "scanning the databases",
                    lambda: Deferred.fromCoroutine(scan(self.server, self._match, lambda n, s: self._found(n, s, first))),
                )
                if self._stopping is not None:
                    return
                # Followed before, absent now: deleted while nobody listened.
                for name in [n for n in self._seqs if n not in seen and n not in self._touched]:
                    self._deleted(name)
                self._stats.scans += 1
                self.log.info("scanned {count} databases; {waiting} to read", count=len(seen), waiting=self._pool.waiting)
                if not self._scan_again:
                    return
                first = False
        finally:
            self._scanning = False

    def _found(self, name: str, info: dict[str, Any], first: bool) -> None:
        update_seq = info.get("update_seq")
        known = self._seqs.get(name)
        if known is None and not self._store.complete:
            if first and self._since == "now":
                self._now[name] = update_seq
            self._pool.dirty(name)
        elif known is not None:
            if known != update_seq:
                self._pool.dirty(name)
        elif (first and self._since == "now") or (info.get("doc_count") == 0 and info.get("doc_del_count") == 0):
            # Nothing to read (or nothing wanted): its checkpoint is where
            # it is, with no request.
            self._record(name, update_seq)
        else:
            self._pool.dirty(name)

    # -- what _db_updates tells -----------------------------------------------

    def _updated(self, row: dict[str, Any]) -> None:
        name = row.get("db_name")
        if not isinstance(name, str) or not self._match(name):
            return
        if self._scanning:
            self._touched.add(name)
        if row.get("type") != "deleted" and self._early is not None and name not in self._seqs:
            # since="now" and the first scan under way: whether this database
            # starts now or from its beginning is known once the scan is over.
            self._early.add(name)
            return
        if row.get("type") == "deleted":
            self._deleted(name)
        else:
            self._pool.dirty(name)

    def _deleted(self, name: str) -> None:
        catch_up = self._catch_ups.pop(name, None)
        if catch_up is not None:
            self._retire(catch_up)
            catch_up.stop()
        self._pool.forget(name)
        self._seqs.pop(name, None)
        if self._saves is not None:
            self._saves.remove(name)
        self._stats.deleted += 1
        self.log.info("database {db} was deleted", db=name)
        if self._on_deleted is not None:
            maybeDeferred(self._on_deleted, name).addErrback(
                lambda f: self.log.failure("on_deleted({db}) failed", f, db=name)
            )

    # -- catch-ups --------------------------------------------------------------

    def _record(self, name: str, seq: Any) -> None:
        if seq is not None and self._seqs.get(name) != seq:
            self._seqs[name] = seq
            if self._saves is not None:
                self._saves.record(name, seq)

    def _retire(self, catch_up: CatchUp) -> None:
        self._handled += catch_up.scheduler.handled
        self._failures += catch_up.scheduler.failures

    async def _catch_up(self, name: str) -> Outcome:
        since = self._seqs.get(name)
        if since is None and not self._store.complete:
            since = await self._store.get(name)
            if self._stopping is not None:
                return Outcome(0, False, True)
            start = self._now.pop(name, None)
            if since is None and start is not None:
                # since="now": no checkpoint yet, so from where the scan found it.
                self._record(name, start)
                since = start
        handler = self._handler
        catch_up: Optional[CatchUp] = None

        def record(seq: Any) -> None:
            # A catch-up ended by a deletion records nothing.
            if catch_up is not None and self._catch_ups.get(name) is catch_up:
                self._record(name, seq)

        catch_up = CatchUp(
            Database(self.server, name), since, lambda change: handler(name, change), record, self._crash,
            params=self._params, page_size=self._page_size, idle_limit=idle_limit(self._heartbeat, None),
            stop_timeout=self._stop_timeout, clock=self._clock, **self._scheduling,
        )
        self._catch_ups[name] = catch_up
        self._stats.catch_ups += 1
        try:
            return await catch_up.run()
        except NotFound as e:
            if e.reason != _NO_DATABASE:
                raise
            # Gone before _db_updates said so.
            if self._catch_ups.get(name) is catch_up:
                self._deleted(name)
            return Outcome(0, False, True)
        except Exception:
            self._stats.catch_up_failures += 1
            raise
        finally:
            if self._catch_ups.get(name) is catch_up:
                del self._catch_ups[name]
                self._retire(catch_up)
