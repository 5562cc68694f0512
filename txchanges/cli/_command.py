"""
How the ``txchanges`` command runs (the entry point and its options are in
:mod:`txchanges.cli._main` and :mod:`txchanges.cli._options`): one subcommand on
the reactor, the signals that stop it, the handler that prints, the progress
line, and the longpoll follower.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping
from types import FrameType
from typing import Any, BinaryIO, Callable, Optional, TextIO, cast

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.service._lifecycle import Core, Inputs, Lifecycle, State
from txchanges.cli._options import open_database
from txchanges.service._pending import PendingProbe
from txchanges.service._retry import Backoff, next_try
from txchanges.service._startup import Step, Steps, start_up
from txchanges._reactor import Clock
from txchanges.service.checkpoint import CheckpointStore
from txchanges.http.client import Database
from txchanges.feed.consumer import Consumer
from txchanges.errors import TxChangesError
from txchanges.service._service import ChangesService, ServiceStats
from txchanges.service.shard import Shard
from txchanges.service._signals import AGAIN, ECHO_WINDOW, FIRST, StopSignals

__all__ = ["Command", "LongpollFollower", "describe"]


def describe(error: BaseException) -> str:
    """
    :return: *error* in one line, without credentials.
    """
    if isinstance(error, TxChangesError):
        return " ".join(str(error).split())
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Command:
    """
    Runs one subcommand on the reactor, with the signals that stop it: the
    first SIGINT or SIGTERM stops it cleanly, the checkpoint saved; the same
    request arriving again within a second is ignored (see
    :class:`~txchanges.service._signals.StopSignals`); a later one ends the process
    at once.

    :param name: ``"follow"`` or ``"fetch"``.
    :param options: Its parsed options.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, name: str, options: Any, out: BinaryIO, err: TextIO, environ: Mapping[str, str]
    ) -> None:
        self._reactor = reactor
        self._name = name
        self._options = options
        self._out = out
        self._err = err
        self._environ = environ
        self._signal: Optional[int] = None
        self._signals = StopSignals(reactor)
        self._result: Any = None
        self._running: Optional[Deferred[Any]] = None
        #: Stops the command cleanly; set once there is something to stop.
        self.stop: Callable[[], object] = self._cancel

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._signalled) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._reactor.callWhenRunning(self._start)
        try:
            self._reactor.run(installSignalHandlers=False)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._status(self._result)

    def _start(self) -> None:
        if self._signal is not None:  # stopped before it began
            self._finished(None)
            return
        try:
            db = open_database(self._options["server_url"], self._options["db_name"], self._environ, self._reactor)
        except Exception:
            self._finished(Failure())
            return
        work = self._fetch(db) if self._name == "fetch" else self._follow(db)
        self._running = Deferred.fromCoroutine(work)
        self._running.addBoth(self._finished)

    def _finished(self, result: Any) -> None:
        self._result = result
        self._reactor.stop()

    def _signalled(self, signum: int, frame: Optional[FrameType]) -> None:
        heard = self._signals.receive()
        if heard == AGAIN:
            # A second request, not an echo of the first: the user does not
            # want to wait.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        elif heard == FIRST:
            self._signal = signum
            self._reactor.callFromThread(self._stop_on, signum)

    def _stop_on(self, signum: int) -> None:
        self.log.info(
            "{signal} received: stopping cleanly (another one after {window:g} s exits at once)",
            signal=signal.Signals(signum).name, window=ECHO_WINDOW,
        )
        self.stop()

    def _cancel(self) -> None:
        if self._running is not None:
            self._running.cancel()

    def _status(self, result: Any) -> int:
        stopped = 130 if self._signal == signal.SIGINT else 0
        if not isinstance(result, Failure):
            return stopped
        error = cast(BaseException, result.value)
        if isinstance(error, CancelledError) and self._signal is not None:
            return stopped
        if isinstance(error, BrokenPipeError):
            _silence_stdout(self._out)
            return 0
        self._err.write(f"txchanges: {describe(error)}\n")
        return 1

    async def _fetch(self, db: Database) -> None:
        try:
            body = await Consumer(db, clock=self._reactor).fetch(
                self._options["since"], params=self._options["params"], **self._options["feed_params"]
            )
            self._out.write(json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n")
            self._out.flush()
        finally:
            await db.server.close()

    async def _follow(self, db: Database) -> None:
        options = self._options
        printer = _Printer(self._out, options["limit"], lambda: self.stop())
        store = options.checkpoint_store(db)
        follower: Any
        if options["feed"] == "longpoll":
            follower = LongpollFollower(
                db, printer, since=options["since"], checkpoint=store, heartbeat=options["heartbeat"],
                give_up_after=options["give-up-after"], limit=options["limit"], shard=options["shard"],
                clock=self._reactor, params=options["params"],
                **options["feed_params"],
            )
            self.stop, start = follower.stop, follower.start
        else:
            follower = ChangesService(db, printer, checkpoint=store, clock=self._reactor, **options.service_kwargs())
            self.stop, start = follower.stopService, follower.startService
        metrics = self._start_metrics(follower)  # first: a port in use fails before any change is read
        start()
        progress = _ProgressLine(self._err, self._reactor, follower) if _show_progress(self._out, self._err) else None
        try:
            await follower.when_stopped()
        finally:
            if progress is not None:
                progress.stop()
            if metrics is not None:
                await metrics.stopService()
            await db.server.close()

    def _start_metrics(self, follower: Any) -> Any:
        if self._options["metrics-port"] is None:
            return None
        from txchanges.metrics import MetricsServer

        metrics = MetricsServer(
            [follower], self._options["metrics-port"], self._options["metrics-interface"], reactor=self._reactor
        )
        metrics.startService()
        return metrics


class _Printer:
    """
    The follower's handler: writes each change as a JSON line and flushes
    it before the change counts as done; after *limit* changes, or when
    stdout is closed, it stops the follower from inside the call, so that
    no further change is printed.
    """

    def __init__(self, out: BinaryIO, limit: Optional[int], stop: Callable[[], object]) -> None:
        self._out = out
        self._left = limit
        self._stop = stop

    def __call__(self, change: dict[str, Any]) -> None:
        if self._left is not None and self._left <= 0:
            raise RuntimeError("a change arrived after --limit was reached")
        try:
            self._out.write(json.dumps(change, ensure_ascii=False).encode("utf-8") + b"\n")
            self._out.flush()
        except BrokenPipeError:
            # The reader is gone: a normal end. Stopping first makes the
            # failure below quiet, and it keeps this change unacknowledged.
            _silence_stdout(self._out)
            self._stop()
            raise
        if self._left is not None:
            self._left -= 1
            if self._left == 0:
                self._stop()


def _show_progress(out: BinaryIO, err: TextIO) -> bool:
    # When stdout is the terminal too, the printed changes are the progress.
    return _isatty(err) and not _isatty(out)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _silence_stdout(out: BinaryIO) -> None:
    # The reader is gone: send what is left to /dev/null, so that the final
    # flush at exit does not fail a second time.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class _ProgressLine:
    """
    A one-line progress report on a terminal while catching up: changes
    handled, changes pending (asked of the server with ``limit=0``), and
    the rate; the line is cleared once nothing is pending.
    """

    def __init__(self, stream: TextIO, clock: Clock, follower: Any, interval: float = 1.0) -> None:
        self._stream = stream
        self._clock = clock
        self._follower = follower
        self._last = (clock.seconds(), follower.stats.handled)
        self._rate = 0.0
        self._shown = False
        # The line is drawn when the answer arrives, so that the pending
        # count is as fresh as the number handled beside it.
        self._probe = PendingProbe(
            follower.db, lambda: follower.resume_seq, lambda: follower.stats.handled, self._draw, clock
        )
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock  # type: ignore[assignment]
        self._loop.start(interval, now=False)

    def _tick(self) -> None:
        now, handled = self._clock.seconds(), self._follower.stats.handled
        then, before = self._last
        self._rate = (handled - before) / (now - then) if now > then else 0.0
        self._last = (now, handled)
        self._probe.ask()

    def _draw(self, pending: int) -> None:
        if pending and self._loop.running:
            self._write(f"\r{self._follower.stats.handled} changes, {pending} pending, {self._rate:.0f}/s\x1b[K")
            self._shown = True
        elif self._shown:
            self._clear()

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def _clear(self) -> None:
        self._write("\r\x1b[K")
        self._shown = False

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self._probe.stop()
        if self._shown:
            self._clear()


class LongpollFollower:
    """
    Follows a feed with one longpoll request per batch: each batch's
    changes go to *handler*, then its ``last_seq`` is checkpointed. It runs
    the service's lifecycle: the same states, the same retries (with
    backoff, honouring ``Retry-After``), the same terminal errors; a handler
    that fails stops it. It has the service's ``db``, ``state``, ``stats``
    (where ``reconnects`` counts requests retried after a failure) and
    ``resume_seq``.

    :param limit: Stop after this many changes; requests ask for no more.
    :param shard: Hand over only the changes of this shard's documents.
    :param params: The filter's own parameters, and *feed_params* the feed
        parameters, as :meth:`~txchanges.Consumer.wait_once` takes and checks them.
    """

    log = Logger()

    def __init__(
        self,
        db: Database,
        handler: Callable[[dict[str, Any]], Any],
        *,
        since: Any,
        checkpoint: CheckpointStore,
        heartbeat: int,
        give_up_after: Optional[float],
        limit: Optional[int],
        clock: Clock,
        shard: Optional[Shard] = None,
        params: Optional[Mapping[str, Any]] = None,
        **feed_params: Any,
    ) -> None:
        self.db = db
        self.stats = ServiceStats()
        self.resume_seq: Any = None
        self._handler = handler
        self._since = since
        self._store = checkpoint
        self._heartbeat = heartbeat
        self._limit = limit
        self._shard = shard
        self._clock = clock
        self._feed_params = feed_params
        self._params = params
        self._consumer = Consumer(db, clock=clock)
        self._backoff = Backoff(backoffPolicy(), give_up_after, clock)
        self._lifecycle = Lifecycle(
            Core(
                start_up=lambda machine, startup: start_up(machine, startup, self._start_steps, self._backoff, self.log),
                connect=self._connect, halt=lambda: None, finish=lambda: succeed(None), ended=lambda failure: None,
                retrying=self._retrying, clock=clock,
            )
        )

    @property
    def state(self) -> State:
        """What the follower is doing."""
        return self._lifecycle.state

    def start(self) -> None:
        self._lifecycle.start()

    def when_stopped(self) -> "Deferred[None]":
        """
        :return: A new Deferred that fires once stopped, and fails with the
            error that stopped it.
        """
        return self._lifecycle.when_stopped()

    def stop(self) -> "Deferred[None]":
        """:return: A Deferred that fires once stopped, a batch being saved saved."""
        return self._lifecycle.stop()

    def _start_steps(self) -> Steps:
        saved = yield Step(f"loading the checkpoint from {self._store.describe()}", self._store.load)
        self.resume_seq = saved if saved is not None else self._since

    def _connect(self, machine: Inputs) -> _Batch:
        feed_params = dict(self._feed_params)
        if self._limit is not None:
            feed_params["limit"] = self._limit - self.stats.handled
        batch = _Batch(self._consumer)
        # A longpoll response says nothing until it is whole: reading it
        # begins with the request.
        machine.opened(batch)
        batch.done = Deferred.fromCoroutine(self._read(self.resume_seq, feed_params))
        batch.done.addBoth(self._batch_over, machine, batch)
        return batch

    async def _read(self, since: Any, feed_params: dict[str, Any]) -> None:
        body = await self._consumer.wait_once(
            since, timeout=None, heartbeat=self._heartbeat, cb=self._handle, params=self._params, **feed_params)
        self.stats.last_activity = self._clock.seconds()
        self.stats.pending = body.get("pending")
        since = body["last_seq"]
        await self._store.save(since)
        self.resume_seq = since
        self.stats.checkpoints += 1

    def _handle(self, change: dict[str, Any]) -> Any:
        if self._shard is not None and not self._shard.owns(change["id"]):
            self.stats.other_shards += 1
            return None
        result = self._handler(change)
        self.stats.handled += 1
        return result

    def _batch_over(self, result: Any, machine: Inputs, batch: _Batch) -> None:
        if batch.stopped:
            return
        if isinstance(result, Failure):
            error = result.value
            # Only the feed's own errors are retried: a handler that raised
            # stops the follower.
            delay = next_try(self._backoff, error, "longpoll", self.log) if isinstance(error, TxChangesError) else None
            if delay is None:
                machine.crash(result)
            else:
                machine.lost(delay)
            return
        self._backoff.reset()
        if self._limit is not None and self.stats.handled >= self._limit:
            machine.stop(Deferred())
        else:
            machine.ended()

    def _retrying(self) -> None:
        self.stats.reconnects += 1


class _Batch:
    """One longpoll request and the checkpoint after it: the lifecycle's data while it runs."""

    done: "Deferred[None]"

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        self._consumer.stop()
