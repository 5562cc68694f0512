"""
txchanges: follow the CouchDB ``_changes`` feed from Twisted.

The public names are re-exported here; modules with a leading underscore are
private.
"""

from txchanges.feed._aiter import ChangeStream
from txchanges.service.checkpoint import (
    CheckpointError,
    CheckpointStore,
    FileCheckpoint,
    LocalDocCheckpoint,
    MemoryCheckpoint,
)
from txchanges.http.client import Database, Server
from txchanges.feed.consumer import Consumer
from txchanges.errors import (
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
from txchanges.service._service import ChangesService, ServiceStats
from txchanges.service.shard import Shard

__version__ = "0.1.0.dev0"

__all__ = [
    "Server",
    "Database",
    "Consumer",
    "ChangeStream",
    "ChangesService",
    "ServiceStats",
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
