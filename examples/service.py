"""
A ChangesService in a twistd-style application: follow a database for as
long as the process runs, hand each change to a handler that returns a
Deferred, keep the resume point in the database itself (a ``_local``
document), and stop cleanly.

    python examples/service.py http://admin:secret@127.0.0.1:5984/ DBNAME [SECONDS]

Here the handler only counts; a real one would update an index or a cache,
idempotently: delivery is at least once.
"""

import sys

from twisted.internet import defer, task

from txchanges import ChangesService, LocalDocCheckpoint, PreconditionFailed, Server


async def main(reactor, url, name, seconds="3"):
    server = Server(url)
    try:
        db = await server.create_db(name)
    except PreconditionFailed:
        db = await server.get_db(name)
    await db.save_docs([{"_id": f"doc-{i}", "n": i} for i in range(20)])
    handled = []

    def handler(change):
        # Pretend each change needs a little I/O.
        return task.deferLater(reactor, 0.01, handled.append, change["id"])

    service = ChangesService(
        db,
        handler,
        checkpoint=LocalDocCheckpoint(db, "example-follower"),
        concurrency=4,
        heartbeat=10000,
    )
    service.startService()
    await task.deferLater(reactor, float(seconds), lambda: None)
    await service.stopService()
    print(f"handled {len(handled)} changes; checkpoint {service.resume_seq}")
    await server.close()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
