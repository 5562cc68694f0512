"""
The ``_db_updates`` feed, followed with a :class:`~txchanges.ChangesService`'s
machinery: reconnects, backoff, the idle watchdog.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred

from txchanges._reactor import Clock
from txchanges.http.client import Database, Server
from txchanges.service import ChangesService

__all__ = ["UpdatesFeed", "GLOBAL_CHANGES"]

#: Where CouchDB keeps what ``_db_updates`` serves; the name the feed's log
#: lines show.
GLOBAL_CHANGES = "_global_changes"


class UpdatesFeed(ChangesService):
    """
    Follows a server's ``_db_updates`` feed and hands each row
    (``{"db_name": ..., "type": "created" | "updated" | "deleted", "seq": ...}``)
    to *on_update*.

    Its position lives in memory only: a follower of many databases scans
    them all when it starts, so it needs no older position than the one it
    starts from.

    :param on_update: Called with each row; it must not fail.
    :param on_lost: Called each time a request failed and is retried after
        a delay: updates may have been missed, so it is time for a scan.
    :param since: Where to start: a seq the server gave (``"now"`` is
        resolved by the caller first, so that nothing between the two
        moments is missed).
    """

    def __init__(
        self,
        server: Server,
        on_update: Callable[[dict[str, Any]], None],
        on_lost: Callable[[], None],
        *,
        since: Any,
        heartbeat: int,
        retry_policy: Optional[Callable[[int], float]],
        give_up_after: Optional[float],
        clock: Optional[Clock],
    ) -> None:
        super().__init__(
            Database(server, GLOBAL_CHANGES), on_update, since=since, heartbeat=heartbeat,
            retry_policy=retry_policy, give_up_after=give_up_after, clock=clock, stop_timeout=0,
            # No filter: the feed's position moves with every row it sends.
            feed_max_duration=None, catch_up="continuous",
        )
        self._on_lost = on_lost

    def __repr__(self) -> str:
        return f"<UpdatesFeed of {self.db.server!r} {self.state}>"

    def _feed_path(self) -> str:
        return "_db_updates"

    def _retrying(self) -> None:
        super()._retrying()
        self._on_lost()


def current_position(server: Server) -> "Deferred[Any]":
    """
    Ask where the ``_db_updates`` feed is now.

    :return: A Deferred firing with the feed's ``last_seq`` for
        ``since=now``: a feed started from it reports every database
        created, updated or deleted from this moment on.
    """
    d: Deferred[Any] = server.request_json("GET", "_db_updates", [("feed", "normal"), ("since", "now")])
    return d.addCallback(lambda body: body["last_seq"])
