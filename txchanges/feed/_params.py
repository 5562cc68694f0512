"""
Turn keyword arguments into what CouchDB expects on the wire.

Pure functions, no Twisted: for ``_changes``, the query and the choice
between a GET and a POST with a JSON body (``_doc_ids``, ``_selector``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from txchanges.http._query import encode_params, encode_value

__all__ = ["FeedRequest", "feed_request"]

#: Filters CouchDB implements itself; every other filter is ``ddoc/name``.
BUILTIN_FILTERS = frozenset({"_doc_ids", "_selector", "_view", "_design"})

FEEDS = frozenset({"normal", "longpoll", "continuous"})


@dataclass
class FeedRequest:
    """
    How to ask for a changes feed.

    :ivar method: ``"GET"``, or ``"POST"`` when a filter needs a body.
    :ivar query: The query pairs, ``feed`` and ``since`` first.
    :ivar body: The JSON body of a POST, else ``None``.
    """

    method: str
    query: list[tuple[str, str]] = field(default_factory=list)
    body: dict[str, Any] | None = None


def encode_since(since: Any) -> str:
    """
    Encode a ``since`` value without interpreting it.

    :param since: An opaque sequence string as the server sent it, ``"now"``,
        or an integer (CouchDB 1.x and PouchDB use integers).
    :raises TypeError: for anything else.
    :return: The text to send.
    """
    if isinstance(since, str):
        return since
    if isinstance(since, int) and not isinstance(since, bool):
        return str(since)
    # Lists appear as sequences in CouchDB 1.x/BigCouch; they are opaque too.
    if isinstance(since, list):
        return json.dumps(since, separators=(",", ":"))
    raise TypeError(f"since must be a sequence string, 'now' or an int, not {since!r}")


def check_filter_name(name: str) -> str:
    """
    Check that a filter name is a built-in or has the ``ddoc/name`` form.

    :raises ValueError: naming the filter when it is neither.
    :return: *name*, unchanged.
    """
    if not isinstance(name, str):
        raise TypeError(f"filter name must be a str, not {type(name).__name__}")
    if name in BUILTIN_FILTERS:
        return name
    ddoc, slash, func = name.partition("/")
    if not (slash and ddoc and func):
        raise ValueError(
            f"invalid filter name {name!r}: use 'designname/filtername' or one of "
            + ", ".join(sorted(BUILTIN_FILTERS))
        )
    return name


def _choose_filter(params: dict[str, Any]) -> str | None:
    alias = params.pop("filter_name", None)
    name = params.pop("filter", None)
    if alias is not None and name is not None and alias != name:
        raise ValueError(f"filter={name!r} and filter_name={alias!r} disagree")
    chosen = name if name is not None else alias
    return None if chosen is None else check_filter_name(chosen)


def feed_request(feed: str, since: Any = None, params: Mapping[str, Any] = {}) -> FeedRequest:
    """
    Decide the method, query and body of a ``_changes`` request.

    :param feed: ``"normal"``, ``"longpoll"`` or ``"continuous"``.
    :param since: Where to start; ``None`` leaves it to the server (``0``).
    :param params: Every other parameter, as
        :func:`~txchanges.feed._feedparams.check_feed_params` merged them:
        ``filter``/``filter_name``, ``doc_ids``, ``selector`` (with
        ``fields``), ``view``, ``heartbeat`` (``True`` for the server's
        default interval, or milliseconds), ``timeout`` (milliseconds), and
        anything else, passed through: the ``params={...}`` of a call, which
        reach a design document filter as ``req.query``.
    :raises ValueError: for a malformed filter name, a built-in filter without
        what it needs, or parameters that contradict each other.
    :raises TypeError: for values that cannot be encoded.
    :return: The :class:`FeedRequest`.
    """
    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {sorted(FEEDS)}, not {feed!r}")
    rest = dict(params)
    if "feed" in rest:
        raise ValueError("the feed type is chosen by the method called, not by feed=")
    filter_name = _choose_filter(rest)
    doc_ids = rest.pop("doc_ids", None)
    selector = rest.pop("selector", None)
    fields = rest.pop("fields", None)
    view = rest.pop("view", None)

    body: dict[str, Any] | None = None
    if doc_ids is not None:
        if isinstance(doc_ids, str) or not all(isinstance(d, str) for d in doc_ids):
            raise TypeError(f"doc_ids must be a list of str, not {doc_ids!r}")
        filter_name = _implied(filter_name, "_doc_ids", "doc_ids")
        body = {"doc_ids": list(doc_ids)}
    if selector is not None:
        if not isinstance(selector, dict):
            raise TypeError(f"selector must be a dict, not {selector!r}")
        filter_name = _implied(filter_name, "_selector", "selector")
        body = {"selector": selector}
        if fields is not None:
            body["fields"] = list(fields)
    elif fields is not None:
        raise ValueError("fields= only applies with selector=")
    if view is not None:
        if not isinstance(view, str):
            raise TypeError(f"view must be a str, not {type(view).__name__}")
        ddoc, slash, name = view.partition("/")
        if not (slash and ddoc and name):
            raise ValueError(f"invalid view name {view!r}: use 'designname/viewname'")
        filter_name = _implied(filter_name, "_view", "view")

    if filter_name == "_doc_ids" and doc_ids is None:
        raise ValueError("filter '_doc_ids' needs doc_ids=[...]")
    if filter_name == "_selector" and selector is None:
        raise ValueError("filter '_selector' needs selector={...}")
    if filter_name == "_view" and view is None:
        raise ValueError("filter '_view' needs view='designname/viewname'")

    heartbeat = rest.pop("heartbeat", None)
    if heartbeat is False:
        heartbeat = None
    query = [("feed", feed)]
    if since is not None:
        query.append(("since", encode_since(since)))
    if filter_name is not None:
        query.append(("filter", filter_name))
    if view is not None:
        query.append(("view", view))
    if heartbeat is not None:
        query.append(("heartbeat", encode_value("heartbeat", heartbeat)))
    query.extend(encode_params(rest))
    return FeedRequest("POST" if body is not None else "GET", query, body)


def _implied(current: str | None, builtin: str, argument: str) -> str:
    if current is not None and current != builtin:
        raise ValueError(f"{argument}= implies filter {builtin!r}, but filter {current!r} was given")
    return builtin
