"""
The follower's command-line options, shared by the twistd plugin and the
``txchanges`` command: one definition, so that ``twistd txchanges`` and
``txchanges follow`` take the same flags and check them the same way.

Every check happens while the options are parsed and fails with a
:class:`~twisted.python.usage.UsageError` naming the option, never later
with a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.python import usage

from txchanges.cli._connection import ConnectionOptions
from txchanges.feed._params import feed_request
from txchanges.http._session import AUTH_MODES
from txchanges.http._urls import parse_server_url, redact, validate_db_name
from txchanges.service.checkpoint import CheckpointStore, checkpoint_identity, parse_checkpoint_spec
from txchanges.http.client import Database, Server
from txchanges.service.shard import Shard
from txchanges.service._service import FEED_MAX_DURATION
from txchanges.feed._feedparams import KNOWN, check_feed_params, feed_param_from_text
from txchanges.feed.consumer import Consumer
from txchanges.group._service import GroupService
from txchanges.service._service import ChangesService

__all__ = [
    "FeedOptions",
    "FollowerOptions",
    "USER_VARIABLE",
    "PASSWORD_VARIABLE",
    "TOKEN_VARIABLE",
    "authorization_from",
    "check_session",
    "credentials_from",
    "open_database",
    "open_server",
    "split_database_url",
]

#: Environment variables holding credentials, so that they stay out of ``ps``.
USER_VARIABLE = "TXCHANGES_USER"
PASSWORD_VARIABLE = "TXCHANGES_PASSWORD"
#: A bearer token (CouchDB's JWT authentication, a cloud provider's token),
#: instead of a user and password.
TOKEN_VARIABLE = "TXCHANGES_TOKEN"

# Parameters with an option of their own, or that the follower sets itself.
_NOT_PARAMS = {
    "since": "--since",
    "feed": "the command",
    "heartbeat": "--heartbeat",
    "timeout": "--heartbeat",
    "filter": "--filter",
    "filter_name": "--filter",
    "doc_ids": "--doc-ids",
    "selector": "--selector",
    "view": "--view",
    "include_docs": "--include-docs",
}

def _coercer(kind: Callable[[str], Any], check: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not check(number):
            raise usage.UsageError(f"expected {what}, got {value!r}")
        return number

    return coerce


positive_int = _coercer(int, lambda n: n > 0, "a whole number above 0")
non_negative_int = _coercer(int, lambda n: n >= 0, "a whole number, 0 or more")
positive_float = _coercer(float, lambda n: n > 0, "a number of seconds above 0")
seconds_or_zero = _coercer(float, lambda n: n >= 0, "a number of seconds, 0 or more")
port_number = _coercer(int, lambda n: 0 <= n <= 65535, "a port number from 0 to 65535")


def shard_spec(value: str) -> Shard:
    try:
        return Shard.parse(value)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def _key_value(option: str, value: str) -> tuple[str, str]:
    key, sep, text = value.partition("=")
    if not sep or not key.strip():
        raise usage.UsageError(f"{option} expects KEY=VALUE, got {value!r}")
    return key.strip(), text


def _read_selector(value: str) -> dict[str, Any]:
    text = value
    if value.startswith("@"):
        try:
            with open(os.path.expanduser(value[1:]), encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise usage.UsageError(f"cannot read the selector file {value[1:]!r}: {e.strerror or e}") from None
    try:
        selector = json.loads(text)
    except ValueError as e:
        raise usage.UsageError(f"--selector is not valid JSON ({e}): {text[:80]!r}") from None
    if not isinstance(selector, dict):
        raise usage.UsageError(f"--selector must be a JSON object, not {type(selector).__name__}")
    return selector


class FeedOptions(ConnectionOptions):
    """
    Which changes to read: where to start and which filter to apply (and,
    from :class:`~txchanges.cli._connection.ConnectionOptions`, how to
    connect).

    After parsing, ``self["feed_params"]`` holds the feed parameters (the
    keyword arguments of :meth:`~txchanges.Consumer.fetch` or the service)
    and ``self["params"]`` the filter's own parameters (their ``params=``),
    already checked.
    """

    optParameters: list[list[Any]] = [
        ["since", None, None,
         "Where to start: 0 (the beginning, the default), now, or a sequence exactly as the "
         "server sent it; a follower's checkpoint wins over it."],
        ["filter", None, None,
         "A filter: designname/filtername, or _design, _doc_ids, _selector, _view."],
        ["selector", None, None,
         'A Mango selector as JSON (\'{"type": "order"}\'), or @FILE to read it from a file; '
         "implies the _selector filter."],
        ["view", None, None,
         "designname/viewname: only changes of documents the view's map function emits; "
         "implies the _view filter."],
        ["auth", None, "basic",
         "How the user and password are sent: basic (on every request) or session (CouchDB's "
         "cookie authentication: one login, then the AuthSession cookie, logging in again "
         "when it expires)."],
    ]
    optFlags: list[list[Any]] = [["include-docs", None, "Include each changed document in its change."]]

    #: Feed parameters a subclass refuses in ``--param``, with the reason.
    reserved_params: Mapping[str, str] = {}

    def __init__(self) -> None:
        super().__init__()
        self["params"] = {}
        self["feed_params"] = {}
        self["doc_ids"] = []

    def opt_param(self, value: str) -> None:
        """KEY=VALUE for the filter (its req.query) or a feed parameter without an option (style=all_docs); repeatable."""
        key, text = _key_value("--param", value)
        owner = _NOT_PARAMS.get(key)
        if owner is not None:
            raise usage.UsageError(f"--param {key}=... is not allowed: use {owner}")
        if key in self.reserved_params:
            raise usage.UsageError(f"--param {key}=... is not allowed: {self.reserved_params[key]}")
        if key in KNOWN:
            # A feed parameter keeps its type (conflicts=true is a bool) and
            # its check; only the filter's own parameters go to params.
            try:
                self["feed_params"][key] = feed_param_from_text(key, text)
            except ValueError as e:
                raise usage.UsageError(f"--param {e}") from None
        else:
            self["params"][key] = text

    def opt_doc_ids(self, value: str) -> None:
        """Only changes of these document ids, comma-separated; repeatable; implies _doc_ids."""
        ids = [i for i in value.split(",") if i]
        if not ids:
            raise usage.UsageError(f"--doc-ids expects comma-separated ids, got {value!r}")
        self["doc_ids"].extend(ids)

    def postOptions(self) -> None:
        self.check_connection()
        if self["auth"] not in AUTH_MODES:
            raise usage.UsageError(f"--auth must be {' or '.join(AUTH_MODES)}, not {self['auth']!r}")
        params: dict[str, Any] = self["feed_params"]
        if self["filter"] is not None:
            params["filter"] = self["filter"]
        if self["doc_ids"]:
            params["doc_ids"] = list(self["doc_ids"])
        if self["selector"] is not None:
            params["selector"] = _read_selector(self["selector"])
        if self["view"] is not None:
            params["view"] = self["view"]
        if self["include-docs"]:
            params["include_docs"] = True
        try:
            feed_request("normal", self["since"], check_feed_params(Consumer.fetch, params, self["params"]))
        except (ValueError, TypeError) as e:
            raise usage.UsageError(str(e)) from None


class FollowerOptions(FeedOptions):
    """
    :class:`FeedOptions` plus how to follow: heartbeat, checkpoints,
    de-duplication, giving up, and the metrics endpoint.

    After parsing, :meth:`service_kwargs` gives the keyword arguments for
    :class:`~txchanges.ChangesService` other than the database, the handler
    and the checkpoint store (see :meth:`checkpoint_store`).
    """

    optParameters: list[list[Any]] = [
        ["heartbeat", None, 30000,
         "Milliseconds between the server's keep-alive newlines; silence for 1.25 times "
         "that plus 5 s reconnects.", positive_int],
        ["checkpoint", None, "memory",
         "Where the resume point is kept: memory (lost at exit), file:PATH, or local:NAME "
         "(a _local/NAME document in the followed database); with --all-dbs: memory, "
         "file:PATH, couch:DBNAME (a database of the same server) or local (a _local document "
         "in each followed database)."],
        ["checkpoint-every", None, 100,
         "Save the checkpoint after this many changes (and at least every 5 s, and on stop).",
         positive_int],
        ["dedup-window", None, 0,
         "Remember this many (id, rev) pairs and skip a change seen among them; 0: off.",
         non_negative_int],
        ["give-up-after", None, None,
         "Stop with an error after this many seconds of failed requests; default: retry forever.",
         positive_float],
        ["shard", None, None,
         "I/N: hand over only the changes of the documents shard I (from 0) of N owns; run one "
         "follower per shard, each with its own checkpoint, to share the work.", shard_spec],
        ["feed-max-duration", None, FEED_MAX_DURATION,
         "End a continuous request after this many seconds and ask once for a normal feed from "
         "where it was, so that the checkpoint moves past the changes a filter leaves out; "
         "0: never.", seconds_or_zero],
        ["pending-interval", None, None,
         "Ask the server every this many seconds how many changes lie past the resume point, "
         "for the pending count in stats and metrics; default: only when a feed ends.", positive_float],
        ["group", None, None,
         "NAME: join worker group NAME, whose workers (any number, on any machines) share the "
         "database's shards, with leases and checkpoints in --group-db; instead of --shard "
         "and --checkpoint."],
        ["group-db", None, "txchanges-groups",
         "The database of the group's leases, heartbeats and checkpoints, on the same server."],
        ["group-units", None, 16, "How many shards a group splits the work into (the same for every worker).",
         positive_int],
        ["group-ttl", None, 15.0,
         "Seconds a lease lasts without renewal: a crashed worker's shards move after about this long.",
         positive_float],
        ["metrics-port", None, None,
         "Serve Prometheus metrics at http://INTERFACE:PORT/metrics (needs the 'metrics' extra).",
         port_number],
        ["metrics-interface", None, "127.0.0.1", "The address the metrics endpoint listens on."],
    ]

    reserved_params = {"limit": "a follower's feed has no end (txchanges follow has --limit)"}

    def postOptions(self) -> None:
        super().postOptions()
        self.check_checkpoint_spec()
        if self["group"] is not None:
            if ":" in self["group"] or not self["group"]:
                raise usage.UsageError(f"--group: a name without ':', not {self['group']!r}")
            check_db_name(self["group-db"])
            if self["shard"] is not None or self["checkpoint"] != "memory":
                raise usage.UsageError(
                    "--group splits the work and keeps the checkpoints itself: drop --shard and --checkpoint"
                )
        if self["metrics-port"] is not None and not have_prometheus_client():
            raise usage.UsageError(
                "--metrics-port needs the prometheus_client package: "
                "pip install 'txchanges[metrics]'"
            )

    def check_checkpoint_spec(self) -> None:
        """
        :raises usage.UsageError: when ``--checkpoint`` is not a store's spec.
        """
        spec = self["checkpoint"]
        kind, sep, where = spec.partition(":")
        if spec != "memory" and not (sep and where and kind in ("file", "local")):
            raise usage.UsageError(
                f"--checkpoint: expected memory, file:PATH or local:NAME, got {spec!r}"
            )

    def service_kwargs(self) -> dict[str, Any]:
        """
        :return: Keyword arguments for :class:`~txchanges.ChangesService`:
            ``since``, ``heartbeat``, ``checkpoint_every``, ``dedup_window``,
            ``give_up_after``, ``shard``, ``pending_interval``,
            ``feed_max_duration`` (``None`` for 0), the feed parameters and
            ``params``, the filter's own.
        """
        return dict(
            self["feed_params"],
            params=self["params"],
            since=self["since"],
            heartbeat=self["heartbeat"],
            checkpoint_every=self["checkpoint-every"],
            dedup_window=self["dedup-window"],
            give_up_after=self["give-up-after"],
            shard=self["shard"],
            pending_interval=self["pending-interval"],
            feed_max_duration=self["feed-max-duration"] or None,
        )

    def follower(self, db: Database, handler: Optional[Callable[[dict[str, Any]], Any]], clock: Any, **more: Any) -> Any:
        """
        :return: The follower these options describe: a
            :class:`~txchanges.ChangesService` with the ``--checkpoint`` store,
            or with ``--group`` a :class:`~txchanges.GroupService`.
        """
        kwargs = dict(self.service_kwargs(), clock=clock, **more)
        if self["group"] is None:
            if handler is not None:  # else a batch_handler is in *more*
                kwargs["handler"] = handler
            return ChangesService(db, checkpoint=self.checkpoint_store(db), **kwargs)
        del kwargs["shard"]
        return GroupService(
            db, handler, group=self["group"], coordination=db.server[self["group-db"]],
            units=self["group-units"], ttl=self["group-ttl"], **kwargs,
        )

    def checkpoint_store(self, db: Database) -> CheckpointStore:
        """
        :return: The store ``--checkpoint`` names, bound to *db*, the filter
            and the shard, so that a checkpoint written for another database,
            filter or shard is refused rather than trusted.
        """
        identity = checkpoint_identity(db, shard=self["shard"], params=self["params"], **self["feed_params"])
        return parse_checkpoint_spec(self["checkpoint"], db, identity=identity)


def have_prometheus_client() -> bool:
    """
    Whether the optional ``prometheus_client`` package can be imported.
    """
    return importlib.util.find_spec("prometheus_client") is not None


def credentials_from(url: str, environ: Mapping[str, str]) -> Optional[tuple[str, str]]:
    """
    The credentials to use: those in *url* when it has some, else
    ``TXCHANGES_USER`` and ``TXCHANGES_PASSWORD`` from *environ*.

    :raises usage.UsageError: when only the password variable is set.
    """
    if urlsplit(url).username is not None:
        return None  # Server takes them from the URL
    user = environ.get(USER_VARIABLE)
    password = environ.get(PASSWORD_VARIABLE)
    if user is None:
        if password is not None:
            raise usage.UsageError(f"{PASSWORD_VARIABLE} is set but {USER_VARIABLE} is not")
        return None
    return (user, password or "")


def authorization_from(url: str, environ: Mapping[str, str]) -> Optional[Callable[[], str]]:
    """
    The ``Authorization`` header for a bearer token in ``TXCHANGES_TOKEN``,
    as :class:`~txchanges.Server` takes it, or ``None`` without one.

    :raises usage.UsageError: when the token is empty or spans lines, or
        credentials are given too (in the URL or the environment).
    """
    token = environ.get(TOKEN_VARIABLE)
    if token is None:
        return None
    token = token.strip()
    if not token or "\n" in token or "\r" in token:
        raise usage.UsageError(f"{TOKEN_VARIABLE} must hold one token on one line")
    if urlsplit(url).username is not None or environ.get(USER_VARIABLE) is not None:
        raise usage.UsageError(
            f"{TOKEN_VARIABLE} is set, and credentials too (in the URL or {USER_VARIABLE}): give one of them"
        )
    header = "Bearer " + token
    return lambda: header


def check_server_url(url: str, option: str) -> str:
    """
    :raises usage.UsageError: when *url* is not a usable server URL; the
        message never shows its password.
    :return: *url*.
    """
    try:
        parse_server_url(url)
    except (ValueError, TypeError) as e:
        raise usage.UsageError(f"{option}: {e}") from None
    return url


def check_db_name(name: str) -> str:
    """
    :raises usage.UsageError: when CouchDB would refuse *name*.
    :return: *name*.
    """
    try:
        return validate_db_name(name)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def split_database_url(url: str) -> tuple[str, str]:
    """
    Split ``http://host:5984/[prefix/]DB`` into the server URL and the
    database name (percent-decoded: ``a%2Fb`` is the database ``a/b``).

    :raises usage.UsageError: when the URL is not an http(s) URL or names
        no database.
    """
    check_server_url(url, "URL")
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    prefix, _, name = path.rpartition("/")
    if not name:
        raise usage.UsageError(f"{redact(url)} names no database: expected URL/DB, e.g. http://127.0.0.1:5984/mydb")
    server = urlunsplit((parts.scheme, parts.netloc, prefix + "/", "", ""))
    return server, check_db_name(unquote(name))


def open_server(
    server_url: str, environ: Mapping[str, str], reactor: Any = None, auth: str = "basic", **server_options: Any
) -> Server:
    """
    :param auth: How the credentials are sent (``--auth``): ``"basic"`` or
        ``"session"``.
    :param server_options: More keyword arguments of
        :class:`~txchanges.Server`, e.g. those of
        :meth:`~txchanges.cli._connection.ConnectionOptions.server_options`.
    :return: The :class:`~txchanges.Server` at *server_url*, with the
        credentials of :func:`credentials_from` or the token of
        :func:`authorization_from`; nothing is sent yet.
    :raises usage.UsageError: for ``--auth session`` without a user and
        password, or with a token.
    """
    check_session(server_url, environ, auth)
    return Server(
        server_url,
        credentials_from(server_url, environ),
        authorization=authorization_from(server_url, environ),
        auth=None if auth == "basic" else auth,
        reactor=reactor,
        **server_options,
    )


def open_database(
    server_url: str, name: str, environ: Mapping[str, str], reactor: Any = None, auth: str = "basic",
    **server_options: Any,
) -> Database:
    """
    :return: The :class:`~txchanges.Database` *name* on the server of
        :func:`open_server`; nothing is sent yet.
    """
    return open_server(server_url, environ, reactor, auth, **server_options)[name]


def check_session(url: str, environ: Mapping[str, str], auth: str) -> None:
    """
    :raises usage.UsageError: for ``--auth session`` without a user and
        password (in *url* or the environment), or with a token.
    """
    if auth != "session":
        return
    token = environ.get(TOKEN_VARIABLE) is not None
    if token or (urlsplit(url).username is None and environ.get(USER_VARIABLE) is None):
        raise usage.UsageError(
            f"--auth session needs a user and password (in the URL, or {USER_VARIABLE} and {PASSWORD_VARIABLE})"
            + (f", not {TOKEN_VARIABLE}" if token else "")
        )
