"""
The ``txchanges`` command (also ``python -m txchanges``).

- ``txchanges follow URL/DB`` prints every change as one JSON line on
  stdout, through reconnects, resuming from ``--checkpoint``;
- ``txchanges follow URL --all-dbs`` does so for every matching database
  of a server, each line with the database's name in ``"db"``;
- ``txchanges fetch URL/DB`` prints the normal feed's body and exits;
- ``txchanges group status URL --group NAME`` prints a worker group's
  members, units, owners and checkpoint ages.

Data goes to stdout, logs and progress to stderr, so the output pipes into
``jq``. Exit status: 0 after a normal end (``--limit`` reached, ``fetch``
done, SIGTERM, or stdout closed by its reader), 130 after Ctrl-C (SIGINT),
1 after an error (one line on stderr), 2 for a usage error. SIGINT and
SIGTERM stop cleanly, the checkpoint saved; one arriving twice within a
second (``timeout`` signals the process and then its group) is one request,
and a second one after that ends the process at once.
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, NoReturn, Optional, TextIO, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from twisted.python import usage
from twisted.python.failure import Failure

from txchanges.cli._alldbs import AllDatabasesOptions, split_server_url
from txchanges.cli._command import Command, describe
from txchanges.cli._connection import ConnectionOptions
from txchanges.cli._options import FeedOptions, check_db_name, check_server_url, positive_int, split_database_url
from txchanges._reactor import default_reactor

__all__ = ["main", "run", "CommandOptions", "FetchOptions", "FollowOptions"]


class _Verbosity(usage.Options):
    """
    ``-v`` and ``-q``, accepted before and after the command's name.
    """

    def __init__(self) -> None:
        super().__init__()
        self["verbose"] = 0
        self["quiet"] = False

    def opt_verbose(self) -> None:
        """Log more on stderr: -v adds progress messages, -vv debug messages and tracebacks."""
        self["verbose"] += 1

    opt_v = opt_verbose

    def opt_quiet(self) -> None:
        """Log only errors on stderr."""
        self["quiet"] = True

    opt_q = opt_quiet

    def opt_version(self) -> NoReturn:
        """Print the version and exit."""
        from txchanges import __version__

        print(f"txchanges {__version__}")
        raise SystemExit(0)


class _DatabaseArgument(_Verbosity):
    """
    The ``URL/DB`` positional argument of the command's subcommands, which
    options may follow (``txchanges follow URL --limit 3``).
    """

    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        # usage.Options stops at the first argument, as getopt does; put
        # the options first, as GNU getopt would.
        try:
            pairs, args = getopt.gnu_getopt(options or [], self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        flat = [f"{o}={v}" if o[2:] + "=" in self.longOpt else f"{o}{v}" for o, v in pairs]
        super().parseOptions([*flat, "--", *args])

    def parseArgs(self, *args: str) -> None:
        every = self.get("all-dbs")
        if len(args) != 1:
            got = "none" if not args else " ".join(repr(a) for a in args)
            example = "server URL argument (http://host:5984/)" if every else "URL/DB argument (http://host:5984/mydb)"
            raise usage.UsageError(f"expected one {example}, got {got}")
        if every:
            self["server_url"], self["db_name"] = split_server_url(args[0]), None
        else:
            self["server_url"], self["db_name"] = split_database_url(args[0])


class FetchOptions(_DatabaseArgument, FeedOptions):
    """
    ``txchanges fetch URL/DB``: print one normal-feed answer.
    """

    synopsis = "URL/DB [options]"
    longdesc = "Print the changes since --since as one JSON document (the normal feed's body) and exit."
    optParameters: list[list[Any]] = [["limit", None, None, "At most this many changes.", positive_int]]

    def postOptions(self) -> None:
        super().postOptions()
        if self["limit"] is not None:
            self["feed_params"]["limit"] = self["limit"]


class FollowOptions(_DatabaseArgument, AllDatabasesOptions):
    """
    ``txchanges follow URL/DB``: print every change as a JSON line;
    ``txchanges follow URL --all-dbs``: those of every matching database,
    each with a ``"db"`` field.
    """

    synopsis = "URL/DB [options], or: txchanges follow URL --all-dbs [options]"
    longdesc = (
        "Print every change of the database as one JSON line, reconnecting after failures "
        "and resuming from --checkpoint. Progress goes to stderr when it is a terminal and "
        "stdout is not. With --all-dbs, URL is a server's and every matching database is "
        "followed: each line has a \"db\" field with the database's name, and a followed "
        "database that is deleted prints {\"db\": NAME, \"db_deleted\": true}. It needs a server "
        "admin; --since is 0 or now there, and --shard, --feed, --limit, --checkpoint-every, "
        "--dedup-window and --pending-interval do not go with it."
    )
    optParameters: list[list[Any]] = [
        ["limit", None, None, "Exit after this many changes, once the checkpoint is saved.", positive_int],
        ["feed", None, "continuous",
         "continuous: one long request, through the reconnecting service; longpoll: one "
         "request per batch of changes, each waiting at most --heartbeat ms (for a proxy that "
         "buffers responses)."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if self["feed"] not in ("continuous", "longpoll"):
            raise usage.UsageError(f"--feed must be continuous or longpoll, not {self['feed']!r}")
        if self["feed"] == "longpoll" and self["group"] is not None:
            raise usage.UsageError("--group follows with the continuous feed: drop --feed longpoll")


class GroupOptions(_Verbosity, ConnectionOptions):
    """
    ``txchanges group status URL --group NAME``: show a worker group.
    """

    synopsis = "status URL --group NAME [options]"
    longdesc = "Print a worker group's members, its units, their owners and checkpoint ages."
    optParameters: list[list[Any]] = [
        ["group", None, None, "The group's name."],
        ["group-db", None, "txchanges-groups", "The database of the group's documents."],
    ]

    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        try:
            pairs, args = getopt.gnu_getopt(options or [], self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        flat = [f"{o}={v}" if o[2:] + "=" in self.longOpt else f"{o}{v}" for o, v in pairs]
        super().parseOptions([*flat, "--", *args])

    def parseArgs(self, *args: str) -> None:
        if len(args) != 2 or args[0] != "status":
            raise usage.UsageError("expected: status URL (the server, http://host:5984/)")
        self["server_url"] = check_server_url(args[1], "URL")

    def postOptions(self) -> None:
        if not self["group"]:
            raise usage.UsageError("--group NAME is required")
        check_db_name(self["group-db"])
        self.check_connection()


class CommandOptions(_Verbosity):
    """
    The ``txchanges`` command line.
    """

    longdesc = (
        "Read a CouchDB database's _changes feed. Credentials come from the URL or from the "
        "TXCHANGES_USER and TXCHANGES_PASSWORD environment variables, or a bearer token from "
        "TXCHANGES_TOKEN. Run "
        "'txchanges COMMAND --help' for a command's options."
    )
    subCommands = [
        ["follow", None, FollowOptions, "Print every change as a JSON line, following the feed."],
        ["fetch", None, FetchOptions, "Print the changes since a point as one JSON document."],
        ["group", None, GroupOptions, "group status URL --group NAME: show a worker group."],
    ]

    def getSynopsis(self) -> str:
        # A subcommand's help shows "Usage: txchanges [-v|-q] follow URL/DB [options]".
        return "Usage: txchanges [-v|-q]" + ("" if self.subCommand else " COMMAND URL/DB [options]")

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("expected a command: follow, fetch or group")


_LEVELS = {-1: LogLevel.error, 0: LogLevel.warn, 1: LogLevel.info}


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """
    The console script: run the command line and exit with its status.
    """
    sys.exit(run(sys.argv[1:] if argv is None else argv))


def run(
    argv: Sequence[str],
    *,
    stdout: Optional[BinaryIO] = None,
    stderr: Optional[TextIO] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> int:
    """
    Run one command line in this process, on the global reactor.

    :return: The exit status.
    """
    out = sys.stdout.buffer if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    options = CommandOptions()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        command = f"txchanges {options.subCommand}" if options.subCommand else "txchanges"
        err.write(f"txchanges: {e}\nRun '{command} --help' for usage.\n")
        return 2
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    sub = options.subOptions
    verbosity = -1 if options["quiet"] or sub["quiet"] else options["verbose"] + sub["verbose"]
    level = LogLevelFilterPredicate(_LEVELS.get(verbosity, LogLevel.debug))
    observer = FilteringLogObserver(
        cast(ILogObserver, _StderrObserver(err, verbosity)), [cast(ILogFilterPredicate, level)]
    )
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, observer)], redirectStandardIO=False)
    runner = Command(default_reactor(), str(options.subCommand), sub, out, err, os.environ if environ is None else environ)
    return runner.run()


class _StderrObserver:
    """
    Writes log events as ``txchanges: LEVEL: message`` lines; a failure
    adds its one-line description, and its traceback at -vv.
    """

    def __init__(self, stream: TextIO, verbosity: int) -> None:
        self._stream = stream
        self._verbosity = verbosity

    def __call__(self, event: Mapping[str, Any]) -> None:
        failure = event.get("log_failure")
        level = event.get("log_level", LogLevel.info)
        if self._verbosity < 1 and _reported_at_exit(event):
            return
        if self._verbosity < 2 and isinstance(failure, Failure) and failure.check(BrokenPipeError):
            return  # stdout closed by its reader: a normal end
        if self._verbosity < 2 and level < LogLevel.warn and not event.get("log_namespace", "").startswith("txchanges"):
            return  # Twisted's own chatter ("Starting factory ...")
        text = formatEvent(dict(event))
        if isinstance(failure, Failure):
            text += f": {describe(cast(BaseException, failure.value))}"
            if self._verbosity >= 2:
                text += "\n" + failure.getTraceback()
        try:
            self._stream.write(f"txchanges: {level.name}: {text}\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass


#: The line each follower logs when an error stops it, by its class.
_STOPPED_ON_ERROR = {
    "ChangesService": "stopped following {db}",
    "DatabasesService": "stopped following the databases of {server}",
}


def _reported_at_exit(event: Mapping[str, Any]) -> bool:
    # The service logs the error that stopped it; the command prints that
    # same error as its last line, so the log line would only repeat it.
    follower = event.get("log_namespace", "").rpartition(".")[2]
    return follower in _STOPPED_ON_ERROR and event.get("log_format") == _STOPPED_ON_ERROR[follower]

