"""
``--all-dbs``: the options that turn the command's and the plugin's follower
of one database into a follower of every matching database of a server (a
:class:`~txchanges.DatabasesService`), and what they check.

The options of the one-database follower that have no meaning for many
databases (``--shard``, ``--feed``, ``--since SEQ``...) are refused with
``--all-dbs``, and the many-database ones without it, so that no option is
silently ignored.
"""

from __future__ import annotations

import getopt
from collections.abc import Mapping, Sequence
from typing import Any, Optional
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.python import usage

from txchanges.cli._options import FollowerOptions, check_db_name, check_server_url, positive_int
from txchanges.errors import Forbidden, NotFound, Unauthorized
from txchanges.http._urls import redact
from txchanges.group._service import GroupService
from txchanges.http.client import Server
from txchanges.many._match import predicate
from txchanges.many._service import DatabasesService
from txchanges.many.checkpoints import CheckpointsStore, parse_checkpoints_spec

__all__ = [
    "ADMIN_NEEDED",
    "AllDatabasesOptions",
    "check_server",
    "explain",
    "given_options",
    "split_server_url",
]

#: Added to a 401 or 403 of a follower of every database.
ADMIN_NEEDED = ": --all-dbs needs a server admin's credentials (_db_updates and _all_dbs are for server admins only)"

#: Added to a 404 of the first request.
NO_SERVER_ROOT = ": with --all-dbs, URL is the server's (http://127.0.0.1:5984/) or a path prefix ending in /"

#: Where ``--since`` may start the databases that have no checkpoint.
_SINCE = {None: None, "0": None, "now": "now"}


def _regex(value: str) -> str:
    try:
        predicate(value)
    except ValueError as e:
        raise usage.UsageError(f"--match: {e}") from None
    return value


def given_options(options: usage.Options, argv: Sequence[str]) -> set[str]:
    """
    :return: The long names of the options that *argv* gives (``"shard"``,
        ``"verbose"`` for ``-v``), whatever their values; empty when *argv*
        cannot be parsed, which the parse proper reports.
    """
    try:
        pairs, _ = getopt.gnu_getopt(list(argv), options.shortOpt, options.longOpt)
    except getopt.error:
        return set()
    names = set()
    for option, _ in pairs:
        name = option.lstrip("-")
        names.add(options.synonyms.get(name, options.synonyms.get(name.replace("_", "-"), name)))
    return names


class AllDatabasesOptions(FollowerOptions):
    """
    :class:`~txchanges.cli._options.FollowerOptions` plus ``--all-dbs`` and
    its options, and the checks that go with them.

    After parsing, ``self["all-dbs"]`` says which follower to make;
    :meth:`databases_kwargs` and :meth:`checkpoints_store` give what a
    :class:`~txchanges.DatabasesService` needs.
    """

    optFlags: list[list[Any]] = [
        ["all-dbs", None,
         "Follow every database of the server at URL (a server URL, no database): _db_updates "
         "tells which databases change, and each is read from its own checkpoint. Needs a "
         "server admin."],
    ]
    optParameters: list[list[Any]] = [
        ["match", None, None,
         "With --all-dbs: a regular expression the whole database name must match; default: "
         "every database whose name does not start with _.", _regex],
        ["max-connections", None, 20,
         "With --all-dbs: the most database feeds open at once (_db_updates aside).", positive_int],
        ["page-size", None, 1000,
         "With --all-dbs: the most changes read from one database per request.", positive_int],
    ]

    #: Options that ``--all-dbs`` refuses, with the reason.
    single_db_only: Mapping[str, str] = {
        "shard": "shards split the documents of one database",
        "feed": "each database is read in pages of a normal feed",
        "limit": "it follows until stopped",
        "checkpoint-every": "each database's checkpoint is saved every 5 s and on stop",
        "dedup-window": "it is a one-database option",
        "pending-interval": "it is a one-database option",
    }
    #: Options that go with ``--all-dbs`` only.
    all_dbs_only: Sequence[str] = ("match", "max-connections", "page-size")

    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        self.given = given_options(self, options or [])
        super().parseOptions(options)

    def postOptions(self) -> None:
        super().postOptions()
        if not self["all-dbs"]:
            for name in self.all_dbs_only:
                if name in self.given:
                    raise usage.UsageError(f"--{name} only goes with --all-dbs")
            return
        for name, reason in self.single_db_only.items():
            if name in self.given:
                raise usage.UsageError(f"--{name} does not go with --all-dbs: {reason}")
        if self["since"] not in _SINCE:
            raise usage.UsageError(
                f"--since with --all-dbs must be 0 or now, not {self['since']!r}: each database has "
                "sequences of its own"
            )

    def check_checkpoint_spec(self) -> None:
        if not self["all-dbs"]:
            super().check_checkpoint_spec()
            return
        spec = self["checkpoint"]
        kind, sep, where = spec.partition(":")
        if spec in ("memory", "local") or (kind == "file" and sep and where):
            return
        if kind == "couch" and sep and where:
            check_db_name(where)
            return
        raise usage.UsageError(
            f"--checkpoint with --all-dbs: expected memory, file:PATH, couch:DBNAME or local, got {spec!r}"
        )

    def databases_kwargs(self) -> dict[str, Any]:
        """
        :return: Keyword arguments for :class:`~txchanges.DatabasesService`:
            ``match``, ``since``, ``max_connections``, ``page_size``,
            ``heartbeat``, ``give_up_after``, the feed parameters and
            ``params``, the filter's own.
        """
        return dict(
            self["feed_params"],
            params=self["params"],
            match=self["match"],
            since=_SINCE[self["since"]],
            max_connections=self["max-connections"],
            page_size=self["page-size"],
            heartbeat=self["heartbeat"],
            give_up_after=self["give-up-after"],
        )

    def databases_follower(self, server: Server, handler: Any, clock: Any, **more: Any) -> Any:
        """
        :return: The follower of *server*'s databases these options
            describe: a :class:`~txchanges.DatabasesService` with the
            ``--checkpoint`` store, or with ``--group`` a
            :class:`~txchanges.GroupService` whose units are buckets of the
            databases.
        """
        kwargs = dict(self.databases_kwargs(), clock=clock, **more)
        if self["group"] is None:
            return DatabasesService(server, handler, checkpoint=self.checkpoints_store(server), **kwargs)
        return GroupService(
            server, handler, group=self["group"], coordination=server[self["group-db"]],
            units=self["group-units"], ttl=self["group-ttl"], **kwargs,
        )

    def checkpoints_store(self, server: Server) -> CheckpointsStore:
        """
        :return: The store ``--checkpoint`` names, on *server* for
            ``couch:`` and ``local``.
        """
        return parse_checkpoints_spec(self["checkpoint"], server)


def split_server_url(url: str) -> str:
    """
    :return: *url* as a server URL: its path empty or ending in ``/`` (a
        path prefix of a proxy).
    :raises usage.UsageError: when *url* is not an http(s) URL or names a
        database.
    """
    check_server_url(url, "URL")
    parts = urlsplit(url.strip())
    if parts.path and not parts.path.endswith("/"):
        name = unquote(parts.path.rpartition("/")[2])
        raise usage.UsageError(
            f"--all-dbs follows every database of a server, but {redact(url)} names the database "
            f"{name!r}: give the server's URL, e.g. http://127.0.0.1:5984/"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


async def check_server(server: Server) -> None:
    """
    Ask for one database name, so that a server that cannot be reached or
    credentials that are not a server admin's fail at once, before anything
    is followed.

    :raises TxChangesError: the request's error.
    """
    await server.all_dbs(limit=1)


def explain(error: BaseException) -> str:
    """
    :return: What to add to the one-line message of *error* met by a
        follower of every database: that it needs an admin, or the server's
        root URL.
    """
    if isinstance(error, (Unauthorized, Forbidden)):
        return ADMIN_NEEDED
    if isinstance(error, NotFound) and "_all_dbs" in (error.url or ""):
        return NO_SERVER_ROOT
    return ""
