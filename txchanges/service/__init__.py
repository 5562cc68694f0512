"""
The service layer: :class:`ChangesService` follows a feed for as long as it
runs; around it the scheduler (concurrency, ordering, backpressure), the
resume point, retries, checkpoint stores and shards.
"""

from txchanges.service._service import ChangesService, ServiceStats, State
from txchanges.service._signals import run_until_signal
from txchanges.service.checkpoint import (
    CheckpointError,
    CheckpointStore,
    FileCheckpoint,
    LocalDocCheckpoint,
    MemoryCheckpoint,
    checkpoint_identity,
)
from txchanges.service.shard import Shard

__all__ = [
    "ChangesService",
    "ServiceStats",
    "State",
    "run_until_signal",
    "Shard",
    "CheckpointStore",
    "MemoryCheckpoint",
    "FileCheckpoint",
    "LocalDocCheckpoint",
    "CheckpointError",
    "checkpoint_identity",
]
