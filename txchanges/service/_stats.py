"""
:class:`ServiceStats`: what a follower has done, for monitoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["ServiceStats"]


@dataclass
class ServiceStats:
    """
    What a running service has done, for monitoring.

    :ivar handled: Changes the handler finished.
    :ivar duplicates: Changes suppressed by the de-duplication window.
    :ivar other_shards: Changes of documents another shard owns, passed over.
    :ivar handler_failures: Handler calls that failed.
    :ivar reconnects: Requests made after the first.
    :ivar checkpoints: Checkpoints saved.
    :ivar pending: Changes after the resume point, as the server last said:
        in the ``last_seq`` row that ends a feed, or in the answer to the
        probe *pending_interval* sets up; ``None`` until then.
    :ivar last_activity: Clock time of the last byte received.
    """

    handled: int = 0
    duplicates: int = 0
    other_shards: int = 0
    handler_failures: int = 0
    reconnects: int = 0
    checkpoints: int = 0
    pending: Optional[int] = None
    last_activity: Optional[float] = None
