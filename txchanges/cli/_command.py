"""
How the ``txchanges`` command runs (the entry point and its options are in
:mod:`txchanges.cli._main` and :mod:`txchanges.cli._options`): one subcommand on
the reactor and the signals that stop it. What it prints is in
:mod:`txchanges.cli._printer` and :mod:`txchanges.cli._progressline`, the
``--feed longpoll`` follower in :mod:`txchanges.cli._longpoll`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any, BinaryIO, Callable, Optional, TextIO, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.cli._alldbs import check_server, explain
from txchanges.cli._longpoll import LongpollFollower
from txchanges.cli._options import open_database, open_server
from txchanges.cli._printer import DatabasesPrinter, Printer, silence_stdout
from txchanges.cli._progressline import ProgressLine, show_progress
from txchanges.http.client import Database, Server
from txchanges.feed.consumer import Consumer
from txchanges.errors import TxChangesError
from txchanges.group._couchstore import CouchLeaseStore
from txchanges.group._status import group_status
from txchanges.service._signals import AGAIN, ECHO_WINDOW, FIRST, StopSignals

__all__ = ["Command", "describe"]


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

    :param name: ``"follow"`` (of one database, or of many with
        ``--all-dbs``), ``"fetch"`` or ``"group"``.
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
        options = self._options
        try:
            url = options["server_url"]
            connection = dict(auth=options.get("auth", "basic"), **options.server_options(url, self._environ))
            if options.get("all-dbs"):
                work = self._follow_all(open_server(url, self._environ, self._reactor, **connection))
            else:
                name = options["group-db"] if self._name == "group" else options["db_name"]
                db = open_database(url, name, self._environ, self._reactor, **connection)
                work = {"fetch": self._fetch, "group": self._group_status}.get(self._name, self._follow)(db)
        except Exception:
            self._finished(Failure())
            return
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
            silence_stdout(self._out)
            return 0
        hint = explain(error) if self._options.get("all-dbs") else ""
        self._err.write(f"txchanges: {describe(error)}{hint}\n")
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

    async def _group_status(self, db: Database) -> None:
        try:
            text = await group_status(CouchLeaseStore(db, self._options["group"]), time.time())
            self._out.write(text.encode("utf-8"))
            self._out.flush()
        finally:
            await db.server.close()

    async def _follow(self, db: Database) -> None:
        options = self._options
        printer = Printer(self._out, options["limit"], lambda: self.stop())
        follower: Any
        if options["feed"] == "longpoll":
            follower = LongpollFollower(
                db, printer, since=options["since"], checkpoint=options.checkpoint_store(db), heartbeat=options["heartbeat"],
                give_up_after=options["give-up-after"], limit=options["limit"], shard=options["shard"],
                clock=self._reactor, params=options["params"],
                **options["feed_params"],
            )
            self.stop, start = follower.stop, follower.start
        else:
            follower = options.follower(db, printer, self._reactor)
            self.stop, start = follower.stopService, follower.startService
        metrics = self._start_metrics(follower)  # first: a port in use fails before any change is read
        start()
        grouped = options["group"] is not None
        progress = ProgressLine(self._err, self._reactor, follower) if show_progress(self._out, self._err) and not grouped else None
        try:
            await follower.when_stopped()
        finally:
            if progress is not None:
                progress.stop()
            if metrics is not None:
                await metrics.stopService()
            await db.server.close()

    async def _follow_all(self, server: Server) -> None:
        options = self._options
        printer = DatabasesPrinter(self._out, lambda: self.stop())
        try:
            await check_server(server)
            follower = options.databases_follower(server, printer.change, self._reactor, on_deleted=printer.deleted)
            self.stop = follower.stopService
            metrics = self._start_metrics(follower)
            # Asked first: a store that cannot be used stops it inside startService().
            stopped = follower.when_stopped()
            follower.startService()
            try:
                await stopped
            finally:
                if metrics is not None:
                    await metrics.stopService()
        finally:
            await server.close()

    def _start_metrics(self, follower: Any) -> Any:
        if self._options["metrics-port"] is None:
            return None
        from txchanges.metrics import MetricsServer

        metrics = MetricsServer(
            [follower], self._options["metrics-port"], self._options["metrics-interface"], reactor=self._reactor
        )
        metrics.startService()
        return metrics
