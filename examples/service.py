"""
A ChangesService in a standalone script: follow a database until Ctrl-C or
SIGTERM, hand each change to a handler that returns a Deferred, keep the
resume point in the database itself (a ``_local`` document), stop cleanly,
and go on with the script.

    python examples/service.py http://admin:secret@127.0.0.1:5984/ DBNAME

It writes 20 documents first, so that there is something to follow. Here
the handler only prints each document's id; a real one would update an
index or a cache, idempotently: delivery is at least once. Under twistd,
``service.setServiceParent(application)`` takes the place of
``run_until_signal``: twistd stops its services on SIGTERM.
"""

import signal
import sys

from twisted.internet import defer, task

from txchanges import ChangesService, LocalDocCheckpoint, PreconditionFailed, Server, run_until_signal


async def main(reactor, url, name):
    server = Server(url)
    try:
        db = await server.create_db(name)
    except PreconditionFailed:
        db = await server.get_db(name)
    await db.save_docs([{"_id": f"doc-{i}", "n": i} for i in range(20)])
    handled = []

    def done(docid):
        handled.append(docid)
        print("handled", docid, flush=True)

    def handler(change):
        # Pretend each change needs a little I/O.
        return task.deferLater(reactor, 0.01, done, change["id"])

    service = ChangesService(
        db,
        handler,
        checkpoint=LocalDocCheckpoint(db, "example-follower"),
        concurrency=4,
        heartbeat=10000,
    )
    # Starts the service and fires once a SIGINT or SIGTERM has stopped it,
    # the checkpoint saved; the reactor keeps running for what follows.
    signum = await run_until_signal(service)
    print(f"stopped by {signal.Signals(signum).name}: handled {len(handled)} changes; checkpoint {service.resume_seq}")
    await server.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
