"""
Follow the CouchDB ``_changes`` feed from Twisted.

Every public name is importable from this package (``__all__`` lists them);
modules whose names start with an underscore are private, even though
``help()`` lists them under PACKAGE CONTENTS.

What to use for what:

``Server``, ``Database``
    The HTTP client: ``Server(url)``, then ``server[name]``, ``create_db``,
    ``get_db``, ``db.save_doc``; each request returns a Deferred, within
    the time limits of ``Timeouts``.
    ``TLSPolicy`` chooses whom an ``https`` server's certificate must be
    issued by and the client certificate to show; ``proxy=`` a proxy.
``Consumer``
    couchdbkit's API with Deferreds: ``fetch`` (the normal feed),
    ``wait_once`` (longpoll), ``register_callback`` and ``wait`` (the
    continuous feed), and ``changes()``, a ``ChangeStream`` for ``async for``;
    ``register_batch_callback`` and ``batches()``, a ``BatchStream``, hand
    over the changes of one read at once.
    Their feed parameters (and the service's) are the keywords of
    ``FeedParams``; a filter's own parameters go in ``params={...}``.
``ChangesService``
    A Twisted ``Service`` that follows a feed for as long as it runs:
    reconnects and resumes with no change lost, detects stalls, applies
    backpressure, saves checkpoints. ``service.state`` is a ``State``,
    ``service.stats`` a ``ServiceStats``; a ``Shard`` splits one feed between several followers.
    In a script, ``run_until_signal`` runs it until SIGINT or
    SIGTERM, then stops it cleanly and lets the script go on.
``MemoryCheckpoint``, ``FileCheckpoint``, ``LocalDocCheckpoint``
    Where the service keeps its resume point; implement ``CheckpointStore``
    for another store. ``checkpoint_identity`` names what a checkpoint
    belongs to, the same for the service, the command and the plugin.
``DatabasesService``
    Follows every matching database of a server at once, through
    ``_db_updates``, with a bounded number of feeds open and one checkpoint
    per database in a ``CheckpointsStore``: ``MemoryCheckpoints`` by
    default, ``FileCheckpoints`` (one JSON file), ``CouchCheckpoints`` (a
    coordination database) or ``LocalDocCheckpoints`` (a ``_local``
    document in each database); ``service.stats`` is a ``DatabasesStats``.
``GroupService``
    One worker of a group: any number of processes, anywhere, share a
    database's shards (or a server's databases) through leases kept in a
    coordination database, and take over a crashed worker's share;
    ``service.stats`` is a ``GroupStats``. A worker that cannot join fails
    with ``GroupError``; ``LeaseExpired`` and ``LeaseLost`` are what a
    change or a checkpoint meets once the worker's lease has ended.
``txchanges.testing``
    ``FakeCouchDB``, an in-memory CouchDB 3 with fault controls, for testing
    handlers with a ``task.Clock``.
``txchanges.metrics``
    ``MetricsServer``: Prometheus metrics of running services (the
    ``metrics`` extra).
``TxChangesError`` and its subclasses, in ``txchanges.errors``
    What Deferreds fail with: ``CouchError`` (``NotFound``, ``Unauthorized``
    and the other HTTP statuses), ``ConnectionFailed`` (``ProxyError``),
    ``TLSError`` (``CertificateError``),
    ``UnexpectedResponse``, ``FeedError`` (``Stalled``, ``ErrorRow``, ...)
    and ``CheckpointError``.

The command line follower is ``txchanges follow URL/DB`` (or ``python -m
txchanges``); the twistd plugin is ``twistd -n txchanges``.
"""

from txchanges import errors, group, many, service
from txchanges.errors import *  # noqa: F403
from txchanges.feed._aiter import BatchStream, ChangeStream
from txchanges.feed._feedparams import FeedParams
from txchanges.feed.consumer import Consumer
from txchanges.http._timeouts import Timeouts
from txchanges.http._tls import TLSPolicy
from txchanges.http.client import Database, Server
from txchanges.group import *  # noqa: F403
from txchanges.many import *  # noqa: F403
from txchanges.service import *  # noqa: F403

#: The version, read by the packaging tools too (pyproject.toml has none).
__version__ = "0.1.0.dev0"

__all__ = [
    "Server",
    "Database",
    "Timeouts",
    "TLSPolicy",
    "Consumer",
    "ChangeStream",
    "BatchStream",
    "FeedParams",
]
__all__ += service.__all__
__all__ += many.__all__
__all__ += group.__all__
__all__ += errors.__all__
