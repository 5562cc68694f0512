"""
The twistd plugin: ``twistd -n txchanges --url URL --db NAME --handler
MODULE:NAME``, or ``--url URL --all-dbs [--match REGEX] --handler
MODULE:NAME`` to follow every matching database of the server (a
:class:`~txchanges.DatabasesService`; the handler is called as
``handler(db_name, change)``, and ``--on-deleted MODULE:NAME`` is told of
each followed database that is deleted).

The handler is chosen by one of two options:

- ``--handler MODULE:NAME`` names a callable that is called with each change
  (a dict); it may return a Deferred or be a coroutine function. A class is
  refused here: use ``--handler-factory`` to build an object once.
- ``--handler-factory MODULE:NAME`` names a callable that is called once,
  when the service is made, as ``factory(db, **handler_args)`` with the
  followed :class:`~txchanges.Database` (with ``--all-dbs``, the
  :class:`~txchanges.Server`) and the ``--handler-arg KEY=VALUE`` pairs
  (strings); it returns the per-change callable.

With ``--batch N`` the handler is called with a list of changes instead
(at most N, those of one read of the feed, never two of one document), one
batch at a time: the service's ``batch_handler``.

twistd does not put the current directory on ``sys.path``: a handler in the
project folder needs ``PYTHONPATH=.`` (the usage error says so). A usage
error is printed as two lines on stderr, with status 2.

When the follower stops by itself with an error (HTTP 400/401/403/404, a
handler failure with ``--on-error stop``, an unusable checkpoint, or
``--give-up-after`` passing), or the metrics port cannot be bound, the error
is logged, the reactor is stopped, and the process exits with status 1 once
twistd has finished its own shutdown, so that a supervisor sees the failure. A stop asked for by a signal
saves the checkpoint, then twistd ends the process with that same signal
(as a shell sees it: 143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Callable, Optional, cast

from twisted.application.service import MultiService, Service
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from txchanges.cli._alldbs import AllDatabasesOptions, explain
from txchanges.cli._loading import load_object
from txchanges.cli._options import (
    authorization_from,
    check_db_name,
    check_server_url,
    check_session,
    credentials_from,
    open_database,
    open_server,
)
from txchanges.service._onerror import ON_ERROR
from txchanges.service._options import buffer_bounds
from txchanges._reactor import default_reactor
from txchanges.http.client import Database, Server
from txchanges.group._service import GroupService
from txchanges.many import DatabasesService
from txchanges.service._service import ChangesService

__all__ = ["Options", "makeService", "ExitOnFailure", "load_object"]


class Options(AllDatabasesOptions):
    """
    The plugin's options: :class:`~txchanges.cli._alldbs.AllDatabasesOptions`
    plus the server, the database and the handler.
    """

    synopsis = (
        "--url URL (--db NAME | --all-dbs) (--handler MODULE:NAME | --handler-factory MODULE:NAME) [options]"
    )
    longdesc = (
        "Follow a CouchDB database's continuous _changes feed and hand every change to a "
        "Python handler, reconnecting after failures and resuming from a checkpoint. "
        "Credentials come from the URL or from the TXCHANGES_USER and TXCHANGES_PASSWORD "
        "environment variables, or a bearer token from TXCHANGES_TOKEN; they are never logged. Delivery is at least once: make "
        "the handler idempotent. The process exits with status 1 when the follower stops "
        "on an error it cannot retry. With --all-dbs, every matching database of the server "
        "is followed and the handler is called as NAME(db_name, change)."
    )
    optParameters: list[list[Any]] = [
        ["url", None, None, "The CouchDB server, e.g. http://127.0.0.1:5984/ (credentials allowed)."],
        ["db", None, None, "The database to follow."],
        ["handler", None, None, "MODULE:NAME of a callable called with each change (a dict)."],
        ["handler-factory", None, None,
         "MODULE:NAME of a callable called once as NAME(db, **handler_args), "
         "returning the per-change callable."],
        ["concurrency", None, 1, "Handler calls running at once (one at a time per document).",
         lambda v: _int_at_least(v, 1, "--concurrency")],
        ["max-buffered", None, None,
         "Changes held (running or waiting) before the feed is paused; default 2 x concurrency.",
         lambda v: _int_at_least(v, 1, "--max-buffered")],
        ["max-ahead", None, None,
         "Changes that may arrive past the oldest unfinished one before the feed is paused "
         "(a hung handler call cannot make memory grow); default max(1000, 50 x max-buffered).",
         lambda v: _int_at_least(v, 1, "--max-ahead")],
        ["on-error", None, "stop",
         "When the handler fails: stop (exit, checkpoint before that change), retry "
         "(with backoff), or skip (log it and go on)."],
        ["on-deleted", None, None,
         "With --all-dbs: MODULE:NAME of a callable called with the name of each followed "
         "database that is deleted."],
        ["batch", None, None,
         "Call the handler with a list of at most N changes (those of one read of the feed, "
         "never two of one document) instead of each change; one batch at a time, and "
         "--on-error applies to the whole batch.",
         lambda v: _int_at_least(v, 1, "--batch")],
    ]

    single_db_only = dict(
        AllDatabasesOptions.single_db_only,
        db="--all-dbs follows every matching database of --url (see --match)",
        **{"max-buffered": "it is a one-database option", "max-ahead": "it is a one-database option",
           "batch": "it is a one-database option"},
    )
    all_dbs_only = (*AllDatabasesOptions.all_dbs_only, "on-deleted")

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        super().__init__()
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self["handler-args"] = {}

    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        """
        Parse *options*; under twistd, a usage error is printed as two lines
        on stderr and the process exits with status 2, instead of twistd's
        whole help followed by the error.

        :raises usage.UsageError: when parsed on its own, not under twistd.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            sys.stderr.write(f"twistd txchanges: {e}\nRun 'twistd txchanges --help' for usage.\n")
            raise SystemExit(2) from None

    def opt_handler_arg(self, value: str) -> None:
        """
        KEY=VALUE passed to the --handler-factory as a keyword argument; repeatable.
        """
        key, sep, text = value.partition("=")
        if not sep or not key.isidentifier():
            raise usage.UsageError(f"--handler-arg expects KEY=VALUE with KEY a Python name, got {value!r}")
        self["handler-args"][key] = text

    def postOptions(self) -> None:
        super().postOptions()
        if not self["url"]:
            raise usage.UsageError("--url is required")
        if not self["all-dbs"] and not self["db"]:
            raise usage.UsageError("--db is required (or --all-dbs, to follow every matching database)")
        check_server_url(self["url"], "--url")
        if self["db"]:
            check_db_name(self["db"])
        credentials_from(self["url"], self.environ)
        authorization_from(self["url"], self.environ)
        check_session(self["url"], self.environ, self["auth"])
        self.server_options(self["url"], self.environ)
        if self["on-error"] not in ON_ERROR:
            raise usage.UsageError(f"--on-error must be one of {', '.join(ON_ERROR)}, not {self['on-error']!r}")
        try:
            buffer_bounds(self["concurrency"], self["max-buffered"], self["max-ahead"], self["on-error"])
        except ValueError as e:
            message = str(e).replace("max_buffered", "--max-buffered").replace("max_ahead", "--max-ahead")
            raise usage.UsageError(message) from None
        if self["batch"] is not None and (
            self["concurrency"] != 1 or self["max-buffered"] is not None or self["max-ahead"] is not None
        ):
            raise usage.UsageError(
                "--batch takes one batch at a time: --concurrency, --max-buffered and --max-ahead do not apply"
            )
        self._check_handler()
        self["on-deleted-object"] = None
        if self["on-deleted"] is not None:
            on_deleted = load_object(self["on-deleted"], "--on-deleted")
            if not callable(on_deleted):
                raise usage.UsageError(f"--on-deleted {self['on-deleted']!r} is not callable")
            self["on-deleted-object"] = on_deleted

    def _check_handler(self) -> None:
        plain, factory = self["handler"], self["handler-factory"]
        if (plain is None) == (factory is None):
            raise usage.UsageError("give exactly one of --handler and --handler-factory")
        if self["handler-args"] and factory is None:
            raise usage.UsageError("--handler-arg only goes with --handler-factory")
        option = "--handler" if factory is None else "--handler-factory"
        spec = plain if factory is None else factory
        obj = load_object(spec, option)
        if not callable(obj):
            raise usage.UsageError(f"{option} {spec!r} is not callable (it is a {type(obj).__name__})")
        if factory is None:
            if inspect.isclass(obj):
                raise usage.UsageError(
                    f"--handler {spec!r} is a class; use --handler-factory to build the handler once"
                )
        else:
            try:
                inspect.signature(obj).bind(None, **self["handler-args"])
            except TypeError as e:
                raise usage.UsageError(f"--handler-factory {spec!r} cannot be called with (db, "
                                       f"{', '.join(self['handler-args'])}): {e}") from None
            except ValueError:
                pass  # no signature to check (a builtin); the call will tell
        self["handler-object"] = obj

    def build_handler(self, db: "Database | Server") -> Callable[..., Any]:
        """
        :param db: The followed database, or the server with ``--all-dbs``.
        :return: The callable called with each change (with each batch,
            with ``--batch``): the ``--handler`` object, or what the
            ``--handler-factory`` returns for *db*.
        :raises TypeError: when the factory returns something not callable.
        """
        obj = self["handler-object"]
        if self["handler-factory"] is None:
            return obj  # type: ignore[no-any-return]
        handler = obj(db, **self["handler-args"])
        if not callable(handler):
            raise TypeError(f"--handler-factory {self['handler-factory']!r} returned {handler!r}, not a callable")
        return handler  # type: ignore[no-any-return]


def _int_at_least(value: str, low: int, option: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if number < low:
        raise usage.UsageError(f"{option} expects a whole number of at least {low}, got {value!r}")
    return number


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """
    Build the follower from parsed options.

    :param reactor: The reactor; the global one when omitted.
    :return: A :class:`~twisted.application.service.MultiService` holding
        the :class:`~txchanges.ChangesService` (with ``--all-dbs``, the
        :class:`~txchanges.DatabasesService`) named ``"follower"``, the
        service that stops the process when it fails (``"exit-on-failure"``)
        and, with ``--metrics-port``, the metrics endpoint (``"metrics"``).
    """
    reactor = default_reactor(reactor)
    follower: "ChangesService | DatabasesService | GroupService"
    if options["all-dbs"]:
        server = open_server(
            options["url"], options.environ, reactor, options["auth"],
            **options.server_options(options["url"], options.environ),
        )
        follower = options.databases_follower(
            server, options.build_handler(server), reactor,
            concurrency=options["concurrency"], on_error=options["on-error"], on_deleted=options["on-deleted-object"],
        )
    else:
        follower = _changes_service(options, reactor)
    top = _Process(reactor)
    if options["metrics-port"] is not None:
        from txchanges.metrics import MetricsServer

        # Started first: a port in use fails the start before any change is read.
        metrics = MetricsServer([follower], options["metrics-port"], options["metrics-interface"], reactor=reactor)
        metrics.setName("metrics")
        metrics.setServiceParent(top)
    # The watcher starts before the follower, so that it also hears of a
    # failure inside the follower's startService() (an unusable checkpoint).
    watcher = ExitOnFailure(follower, reactor)
    watcher.setName("exit-on-failure")
    watcher.setServiceParent(top)
    follower.setName("follower")
    follower.setServiceParent(top)
    return top


def _changes_service(options: Options, reactor: Any) -> "ChangesService | GroupService":
    db = open_database(
        options["url"], options["db"], options.environ, reactor, options["auth"],
        **options.server_options(options["url"], options.environ),
    )
    handler: Any = options.build_handler(db)
    if options["batch"] is None:
        handling: dict[str, Any] = dict(
            concurrency=options["concurrency"],
            max_buffered=options["max-buffered"],
            max_ahead=options["max-ahead"],
        )
    else:
        handling = dict(batch_handler=handler, max_batch=options["batch"])
        handler = None
    # A ChangesService with the --checkpoint store, or with --group a worker.
    follower: "ChangesService | GroupService" = options.follower(
        db, handler, reactor, on_error=options["on-error"], **handling,
    )
    return follower


class _Process(MultiService):
    """
    The plugin's services. A metrics port that cannot be bound (one in use)
    is logged on one line and makes the process exit with status 1, as a
    follower's terminal error does, instead of a traceback out of twistd.
    """

    log = Logger()

    def __init__(self, reactor: Any, set_exit_status: Optional[Callable[[int], object]] = None) -> None:
        super().__init__()
        self._reactor = reactor
        self._set_exit_status = set_exit_status or exit_status_at_exit

    def startService(self) -> None:
        try:
            super().startService()
        except CannotListenError as e:
            # The metrics service is started first, so no change was read.
            reason = e.socketError.strerror if isinstance(e.socketError, OSError) else e.socketError
            self.log.critical(
                "cannot serve metrics on {interface}:{port} ({reason}); exiting with status 1",
                interface=e.interface or "0.0.0.0", port=e.port, reason=reason,
            )
            self._set_exit_status(1)
            self._reactor.callWhenRunning(self._reactor.stop)


class ExitOnFailure(Service):
    """
    Stops the reactor when a follower stops by itself with an error, and
    makes the process exit with status 1 afterwards.

    :param follower: The watched service.
    :param reactor: The reactor to stop.
    :param set_exit_status: Called with ``1`` on failure; by default it
        arranges for the process to exit with that status once twistd is
        done (see :func:`exit_status_at_exit`).
    """

    log = Logger()

    def __init__(
        self,
        follower: "ChangesService | DatabasesService | GroupService",
        reactor: Any,
        set_exit_status: Optional[Callable[[int], object]] = None,
    ) -> None:
        self.follower = follower
        self._reactor = reactor
        self._set_exit_status = set_exit_status or exit_status_at_exit

    def startService(self) -> None:
        super().startService()
        self.follower.when_stopped().addErrback(self._failed)

    def _where(self) -> str:
        # A worker group's follower has no single database.
        db: Any = getattr(self.follower, "db", None)
        return str(db.url) if db is not None else repr(self.follower)

    def _failed(self, failure: Failure) -> None:
        follower, error = self.follower, failure.getErrorMessage()
        if isinstance(follower, DatabasesService):
            what = f"the databases of {follower.server.url}"
            error += explain(cast(BaseException, failure.value))
        else:
            what = self._where()
        self.log.critical(
            "the follower of {db} stopped on an error ({error}); exiting with status 1", db=what, error=error,
        )
        self._set_exit_status(1)
        # At once, or once running when it failed inside startService().
        self._reactor.callWhenRunning(self._stop_reactor)

    def _stop_reactor(self) -> None:
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass


_exit_status: list[int] = []


def exit_status_at_exit(status: int) -> None:
    """
    Make the process exit with *status* when the interpreter exits.

    twistd always exits with status 0 after a clean reactor stop and offers
    no way to change that, so an :mod:`atexit` hook, registered now and so
    run before the hooks registered earlier, flushes the standard streams
    and the :mod:`logging` handlers and ends the process with *status*.
    """
    if not _exit_status:
        atexit.register(_exit_now)
    _exit_status[:] = [status]


def _exit_now() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(_exit_status[0])
