"""
Follow many databases of one server: discovery through ``_db_updates``, a
bounded number of feeds open at once, and one checkpoint per database.
"""

from txchanges.many._service import DatabasesService, DatabasesStats
from txchanges.many.checkpoints import (
    CheckpointsStore,
    CouchCheckpoints,
    FileCheckpoints,
    LocalDocCheckpoints,
    MemoryCheckpoints,
)

__all__ = [
    "DatabasesService",
    "DatabasesStats",
    "CheckpointsStore",
    "MemoryCheckpoints",
    "FileCheckpoints",
    "CouchCheckpoints",
    "LocalDocCheckpoints",
]
