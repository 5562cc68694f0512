"""
Follow a database's changes and print each one as a JSON line on stdout.

    python examples/follow.py URL/DB [--since SEQ] [--checkpoint FILE]
                                     [--demo-writes] [--max-changes N]

URL/DB is the database's URL, credentials included if it needs them
(``http://admin:secret@127.0.0.1:5984/mydb``). The follower is a
:class:`~txchanges.ChangesService`: it reconnects after any failure and
resumes where it stopped; with ``--checkpoint FILE`` it also resumes there
after a restart. With ``--demo-writes`` the database is created if missing
and a document is written every two seconds, so that there is something to
see. Ctrl-C stops it cleanly.
"""

import argparse
import itertools
import json
import signal
import sys
from urllib.parse import unquote

from twisted.internet import defer, task

from txchanges import ChangesService, FileCheckpoint, PreconditionFailed, Server


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Print a CouchDB database's changes as JSON lines.")
    parser.add_argument("url", help="the database URL, e.g. http://admin:secret@127.0.0.1:5984/mydb")
    parser.add_argument("--since", default="0", help="where to start without a checkpoint: 0 (default), now, or a sequence")
    parser.add_argument("--checkpoint", help="a file to keep the resume point in")
    parser.add_argument("--demo-writes", action="store_true", help="create the database and keep writing to it")
    parser.add_argument("--max-changes", type=int, default=None, help="exit after this many changes")
    args = parser.parse_args(argv)
    base, _, name = args.url.rstrip("/").rpartition("/")
    if not base or not name:
        parser.error(f"expected URL/DB, got {args.url!r}")
    args.server_url, args.db_name = base + "/", unquote(name)
    return args


async def open_db(server, name, create):
    if not create:
        return await server.get_db(name)
    try:
        return await server.create_db(name)
    except PreconditionFailed:
        return await server.get_db(name)


async def main(reactor, argv):
    args = parse_args(argv)
    server = Server(args.server_url)
    db = await open_db(server, args.db_name, args.demo_writes)
    count = itertools.count(1)

    def show(change):
        print(json.dumps(change, ensure_ascii=False), flush=True)
        if args.max_changes is not None and next(count) == args.max_changes:
            reactor.callLater(0, service.stopService)

    checkpoint = FileCheckpoint(args.checkpoint) if args.checkpoint else None
    service = ChangesService(db, show, since=args.since, checkpoint=checkpoint)
    writer = None
    if args.demo_writes:
        numbers = itertools.count(1)
        writer = task.LoopingCall(lambda: db.save_doc({"demo": next(numbers)}))
        writer.clock = reactor
        writer.start(2.0)
    # Ctrl-C and SIGTERM stop the service, which saves its checkpoint; the
    # reactor stops when main() returns.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: reactor.callFromThread(service.stopService))
    service.startService()
    try:
        await service.when_stopped()
    finally:
        if writer is not None and writer.running:
            writer.stop()
        await server.close()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
