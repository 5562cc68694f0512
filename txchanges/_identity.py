"""
What a checkpoint belongs to: one definition, shared by the library's
service, the ``txchanges`` command and the twistd plugin, so that a
checkpoint written by one of them is read by the others, and refused for
another database, filter or shard.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ._params import feed_request
from ._urls import query_string
from .client import Database
from .shard import Shard

__all__ = ["checkpoint_identity"]

# Feed parameters that change what is delivered, not which changes: a
# checkpoint stays valid when they change.
_PRESENTATION = frozenset(
    {"include_docs", "conflicts", "attachments", "att_encoding_info", "limit", "seq_interval"}
)


def checkpoint_identity(db: Database, *, shard: Optional[Shard] = None, **feed_params: Any) -> str:
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
    :param shard: The follower's :class:`~txchanges.Shard`, if any.
    :param feed_params: The feed parameters, as given to the service
        (``filter_name`` and ``filter`` are the same).
    :raises ValueError: for a malformed filter, as the service would.
    :raises TypeError: for a value that cannot be sent.
    :return: The identity, as stored in the checkpoint.
    """
    chosen = {k: v for k, v in feed_params.items() if k not in _PRESENTATION}
    request = feed_request("normal", None, chosen)
    query = [(k, v) for k, v in request.query if k != "feed"]
    identity = db.url + "/_changes"
    if query:
        identity += "?" + query_string(sorted(query))
    if request.body is not None:
        identity += " " + json.dumps(request.body, sort_keys=True, separators=(",", ":"))
    if shard is not None:
        identity += f" shard {shard}"
    return identity
