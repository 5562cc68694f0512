"""
The service layer: :class:`ChangesService` follows a feed for as long as it
runs; around it the scheduler (concurrency, ordering, backpressure), the
resume point, retries, checkpoint stores and shards.
"""

from txchanges.service._service import ChangesService
from txchanges.service._stats import ServiceStats
from txchanges.service.checkpoint import (
    CheckpointError,
    CheckpointStore,
    FileCheckpoint,
    LocalDocCheckpoint,
    MemoryCheckpoint,
)
from txchanges.service.shard import Shard

__all__ = [
    "ChangesService",
    "ServiceStats",
    "Shard",
    "CheckpointStore",
    "MemoryCheckpoint",
    "FileCheckpoint",
    "LocalDocCheckpoint",
    "CheckpointError",
]
