"""
txchanges: follow the CouchDB ``_changes`` feed from Twisted.

The public names are re-exported here; modules with a leading underscore are
private.
"""

from ._aiter import ChangeStream
from .checkpoint import (
    CheckpointError,
    CheckpointStore,
    FileCheckpoint,
    LocalDocCheckpoint,
    MemoryCheckpoint,
)
from .client import Database, Server
from .consumer import Consumer
from .errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    CouchError,
    ErrorRow,
    FeedError,
    Forbidden,
    LineTooLong,
    MalformedRow,
    NotFound,
    PreconditionFailed,
    ServerError,
    Stalled,
    TxChangesError,
    Unauthorized,
    UncleanEnd,
    UnexpectedResponse,
)
from .service import ChangesService, ServiceStats, State
from .shard import Shard

__version__ = "0.1.0.dev0"

__all__ = [
    "Server",
    "Database",
    "Consumer",
    "ChangeStream",
    "ChangesService",
    "ServiceStats",
    "State",
    "Shard",
    "CheckpointStore",
    "MemoryCheckpoint",
    "FileCheckpoint",
    "LocalDocCheckpoint",
    "CheckpointError",
    "TxChangesError",
    "CouchError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PreconditionFailed",
    "ServerError",
    "ConnectionFailed",
    "UnexpectedResponse",
    "FeedError",
    "ErrorRow",
    "MalformedRow",
    "LineTooLong",
    "UncleanEnd",
    "Stalled",
]
