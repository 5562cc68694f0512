"""
Fakes for testing code that uses txchanges, without a CouchDB server.

:class:`FakeCouchDB` is an in-memory server shaped like CouchDB 3: opaque
string sequences, ``pending``, ``last_seq`` ends, heartbeats, the normal,
longpoll, continuous and eventsource feeds with CouchDB's framing, its
filters, and its error statuses and bodies. Give its :meth:`~FakeCouchDB.client`
to :class:`~txchanges.Server` and everything in txchanges works unchanged::

    from twisted.internet import task
    from txchanges import ChangesService, Server
    from txchanges.testing import FakeCouchDB

    clock = task.Clock()
    fake = FakeCouchDB(clock=clock)
    fake.create_db("orders")
    server = Server(fake.url, http=fake.client())
    seen = []
    service = ChangesService(server["orders"], seen.append, clock=clock)
    service.startService()
    fake.save("orders", {"_id": "o1", "total": 12})   # reaches the feed at once
    assert [row["id"] for row in seen] == ["o1"]

Nothing waits on the wall clock: heartbeats and timeouts run on the clock
given (advance a :class:`twisted.internet.task.Clock` to make them happen),
and bytes move between client and fake as soon as either side writes.

To break things on purpose: :meth:`~FakeCouchDB.send_heartbeats`,
:meth:`~FakeCouchDB.cut_feeds` (optionally mid-line),
:meth:`~FakeCouchDB.stall_feeds`, :meth:`~FakeCouchDB.send_error_row`,
:meth:`~FakeCouchDB.fail_next` (any status, ``Retry-After``) and
:meth:`~FakeCouchDB.rewind`; :attr:`~FakeCouchDB.requests` records what
the code under test asked.

**Delivery is at least once.** CouchDB may send changes again, after a node
failure or when a ``since`` from a re-created database rewinds the feed;
handlers must be idempotent (or use the service's ``dedup_window``).
:meth:`FakeCouchDB.rewind` makes the next feed start from an earlier
position so that tests can prove a handler copes.

Where the fake differs from CouchDB: one shard, so rows come in write
order; design-document filters and views are Python functions registered
with :meth:`~FakeCouchDB.register_filter` and
:meth:`~FakeCouchDB.register_view` (JavaScript is never run); ``_selector``
supports the operators listed in :func:`selector_matches`; revision hashes
differ from CouchDB's (same ``N-<32 hex>`` form); endpoints txchanges does
not use answer ``501 not_implemented``.
"""

from txchanges.testing._fake import (
    FakeCouchDB,
    FilterFunction,
    RecordedRequest,
    ViewFunction,
    selector_matches,
)

__all__ = ["FakeCouchDB", "RecordedRequest", "FilterFunction", "ViewFunction", "selector_matches"]
