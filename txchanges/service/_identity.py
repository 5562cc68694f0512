"""
What a checkpoint belongs to: one definition, shared by the library's
service, the ``txchanges`` command and the twistd plugin, so that a
checkpoint written by one of them is read by the others, and refused for
another database, filter or shard.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional

from typing_extensions import Unpack

from txchanges.feed._feedparams import FeedParams, check_feed_params
from txchanges.feed._params import feed_request
from txchanges.http._urls import query_string
from txchanges.http.client import Database
from txchanges.service.shard import Shard

__all__ = ["checkpoint_identity", "identity_of", "feed_identity"]

# Feed parameters that change what is delivered, not which changes: a
# checkpoint stays valid when they change.
_PRESENTATION = frozenset(
    {"include_docs", "conflicts", "attachments", "att_encoding_info", "limit", "seq_interval"}
)


def checkpoint_identity(
    db: Database,
    *,
    filter_name: Optional[str] = None,
    shard: Optional[Shard] = None,
    params: Optional[Mapping[str, Any]] = None,
    **feed_params: Unpack[FeedParams],
) -> str:
    """
    The identity of the checkpoint of a feed: the database's URL (without
    credentials) and whatever chooses which changes are delivered - the
    filter, view, ids or selector, the filter's parameters, and the shard
    (shards pass over each other's changes, so one shard's resume point is
    none for another) - but not how they are presented (``include_docs``,
    ``conflicts``, ``attachments``, ``att_encoding_info``, ``limit``,
    ``seq_interval``).

    For example ``http://127.0.0.1:5984/orders/_changes?filter=app/paid
    shard 1/3``. :class:`~txchanges.ChangesService` gives it to a
    :class:`~txchanges.FileCheckpoint` or
    :class:`~txchanges.LocalDocCheckpoint` made without an identity; the
    command and the plugin compute it the same way.

    :param db: The followed database; its URL is compared as written
        (``localhost`` and ``127.0.0.1`` are two identities).
    :param filter_name: The filter, as given to the service.
    :param shard: The follower's :class:`~txchanges.Shard`, if any.
    :param params: The filter's own parameters, as given to the service.
    :param feed_params: The feed parameters, as given to the service
        (``filter_name`` and ``filter`` are the same).
    :raises ValueError: for a malformed filter, as the service would.
    :raises TypeError: for a value that cannot be sent.
    :return: The identity, as stored in the checkpoint.
    """
    merged = check_feed_params(checkpoint_identity, feed_params, params)
    merged["filter_name"] = filter_name
    return identity_of(db, merged, shard)


def identity_of(db: Database, request_params: Mapping[str, Any], shard: Optional[Shard] = None) -> str:
    """
    :func:`checkpoint_identity` of parameters already checked and merged
    (feed parameters and ``params`` in one mapping, as the service keeps
    them).
    """
    return feed_identity(db.url, request_params, shard)


def feed_identity(url: str, request_params: Mapping[str, Any], shard: Optional[Shard] = None) -> str:
    """
    :func:`identity_of` a feed named by the URL of its database, or by a
    pattern for many (``http://host:5984/*``).
    """
    chosen = {k: v for k, v in request_params.items() if k not in _PRESENTATION}
    request = feed_request("normal", None, chosen)
    query = [(k, v) for k, v in request.query if k != "feed"]
    identity = url + "/_changes"
    if query:
        identity += "?" + query_string(sorted(query))
    if request.body is not None:
        identity += " " + json.dumps(request.body, sort_keys=True, separators=(",", ":"))
    if shard is not None:
        identity += f" shard {shard}"
    return identity
