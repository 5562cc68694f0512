"""
A DatabasesService in a standalone script: follow every database of a
server whose name starts with a prefix (one per tenant, say), hand each
change to a handler with its database's name, keep one checkpoint per
database in a file, stop cleanly on Ctrl-C or SIGTERM, and go on with the
script.

    python examples/all_dbs.py http://admin:secret@127.0.0.1:5984/ PREFIX CHECKPOINT_FILE

It needs a server admin (``_db_updates`` and ``_all_dbs`` are for admins).
It creates the databases PREFIX-0, PREFIX-1 and PREFIX-2 if they are
missing and writes 5 new documents to each, so that there is something to
follow; run it again and it prints only the documents that run wrote: each
database resumes from its checkpoint in CHECKPOINT_FILE. Delivery is at
least once: a real handler updates something idempotently.
"""

import signal
import sys

from twisted.internet import defer, task

from txchanges import DatabasesService, FileCheckpoints, PreconditionFailed, Server, run_until_signal


async def main(reactor, url, prefix, path):
    server = Server(url)
    for n in range(3):
        try:
            db = await server.create_db(f"{prefix}-{n}")
        except PreconditionFailed:
            db = server[f"{prefix}-{n}"]
        await db.save_docs([{"n": i} for i in range(5)])
    databases = set()

    def handler(db_name, change):
        # Called with the database's name and its change, as the service
        # of one database calls its handler with the change alone.
        databases.add(db_name)
        print(db_name, change["id"], flush=True)

    service = DatabasesService(
        server,
        handler,
        match=prefix + "-[0-9]+",              # a regular expression the whole name must match
        checkpoint=FileCheckpoints(path),      # or CouchCheckpoints, LocalDocCheckpoints
        max_connections=10,                    # database feeds open at once
    )
    # Starts the service and fires once a SIGINT or SIGTERM has stopped it,
    # every database's checkpoint saved.
    signum = await run_until_signal(service)
    print(
        f"stopped by {signal.Signals(signum).name}: "
        f"handled {service.stats.handled} changes of {len(databases)} databases"
    )
    await server.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
