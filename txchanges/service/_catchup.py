"""
Catching up through the normal feed: a follower far behind reads pages of
``feed=normal`` (``limit``, ``seq_interval``) before it follows the
continuous feed.

With ``seq_interval`` CouchDB computes, and sends, a sequence only every so
many rows, which lightens the server's load (a sequence across many
shards is costly to compute, says CouchDB's reference of ``_changes``); the
client's side is not cheaper: a page's rows go through the scheduler one
by one, where the continuous feed hands a change straight to an idle
handler, and ``benchmarks/backlog.py`` measures pages slower on one
machine, so the continuous feed stays the default. The first
request after start-up, and after every failure, is a page; another page
follows as long as the one before said that a page or more is ``pending``.
Then the follower reads the continuous feed from where the last page ended.

A page is a feed request like any other: its changes go to the scheduler,
backpressure pauses it, a stall aborts it, a failure is retried from the
newest sequence it reached, and its ``last_seq`` moves the resume point once
every change before it is done, so that each page ends with a checkpoint.
"""

from __future__ import annotations

from typing import Any, Optional

from txchanges.feed._params import FeedRequest, feed_request

__all__ = ["CATCH_UP", "DEFAULT_PAGE", "CatchUp", "check_catch_up"]

#: How a follower catches up: ``"normal"`` (pages of the normal feed), or
#: ``"continuous"`` (the continuous feed from the start).
CATCH_UP = ("normal", "continuous")

#: Changes per page of the normal feed.
DEFAULT_PAGE = 10_000

# Parameters under which the normal feed is not used: a filter can scan for
# long without a row to send, and the normal feed sends no heartbeat; with
# limit or descending, the feed is not a backlog to page through.
_NOT_WITH = ("filter", "filter_name", "doc_ids", "selector", "view", "limit", "descending")


def check_catch_up(catch_up: str, page: int) -> None:
    """
    :raises ValueError: for a *catch_up* not in :data:`CATCH_UP`, or a
        *page* that is not a whole number above 0.
    """
    if catch_up not in CATCH_UP:
        raise ValueError(f"catch_up must be one of {CATCH_UP}, not {catch_up!r}")
    if not isinstance(page, int) or isinstance(page, bool) or page < 1:
        raise ValueError(f"catch_up_page must be a positive number of changes, not {page!r}")


class CatchUp:
    """
    Whether the next feed request is a page of the normal feed, and the
    request for one.

    :param catch_up: ``"normal"`` to read pages while far behind.
    :param page: Changes per page.
    :param params: The follower's feed parameters; with a filter, ``limit``
        or ``descending``, no page is ever read.
    :param seq_interval: Every how many rows a page carries a sequence,
        unless *params* say.
    :ivar paging: Whether the next request is a page.
    """

    def __init__(self, catch_up: str, page: int, params: dict[str, Any], seq_interval: int) -> None:
        self._enabled = catch_up == "normal" and not any(params.get(name) for name in _NOT_WITH)
        self._page = page
        self._params = dict(params, limit=page)
        if self._params.get("seq_interval") is None:
            self._params["seq_interval"] = seq_interval
        self.paging = self._enabled

    def request(self, since: Any) -> FeedRequest:
        """
        The next page, from *since*.
        """
        return feed_request("normal", since, self._params)

    def page_ended(self, pending: Optional[int]) -> None:
        """
        A page ended cleanly, saying that *pending* changes follow it
        (``None`` when the server does not say): read another page when a
        page or more is pending, else follow the continuous feed.
        """
        self.paging = isinstance(pending, int) and pending >= self._page

    def failed(self) -> None:
        """
        A request failed: the next one may be far behind again, so it
        starts with a page.
        """
        self.paging = self._enabled
