"""
Follow a database's changes and print each one as a JSON line on stdout.

    python examples/follow.py URL/DB [--since SEQ] [--checkpoint FILE]
                                     [--demo-writes] [--max-changes N]

URL/DB is the database's URL, credentials included if it needs them
(``http://admin:secret@127.0.0.1:5984/mydb``). The follower is a
:class:`~txchanges.ChangesService`: it reconnects after any failure and
resumes where it stopped; with ``--checkpoint FILE`` it also resumes there
after a restart. With ``--max-changes N`` it prints N changes and stops, the
checkpoint just past the last one printed. With ``--demo-writes`` the
database is created if missing and a document is written every two
seconds, so that there is something to see.

Ctrl-C (exit status 130) and SIGTERM (0) stop it cleanly, the checkpoint
saved. What retrying cannot fix - a missing database, wrong credentials, a
server that cannot be reached at start - is one line on stderr and exit
status 1.
"""

import argparse
import itertools
import json
import signal
import sys
from urllib.parse import unquote

from twisted.internet import defer, task

from txchanges import ChangesService, FileCheckpoint, PreconditionFailed, Server, TxChangesError, run_until_signal

DEMO_INTERVAL = 2.0


def positive(text):
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return number


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Print a CouchDB database's changes as JSON lines.")
    parser.add_argument("url", help="the database URL, e.g. http://admin:secret@127.0.0.1:5984/mydb")
    parser.add_argument("--since", default="0", help="where to start without a checkpoint: 0 (default), now, or a sequence")
    parser.add_argument("--checkpoint", help="a file to keep the resume point in")
    parser.add_argument("--demo-writes", action="store_true", help="create the database and keep writing to it")
    parser.add_argument("--max-changes", type=positive, default=None, help="exit after this many changes")
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


def demo_writer(reactor, db):
    numbers = itertools.count(1)
    writer = task.LoopingCall(lambda: db.save_doc({"demo": next(numbers)}))
    writer.clock = reactor
    writer.start(DEMO_INTERVAL)
    return writer


async def main(reactor, argv):
    args = parse_args(argv)
    server = Server(args.server_url)
    writer = None
    try:
        db = await open_db(server, args.db_name, args.demo_writes)
        printed = 0

        def show(change):
            nonlocal printed
            print(json.dumps(change, ensure_ascii=False), flush=True)
            printed += 1
            if printed == args.max_changes:
                # Stopped from inside the call: no further change is handed
                # over, and this one counts as done in the checkpoint.
                service.stopService()

        checkpoint = FileCheckpoint(args.checkpoint) if args.checkpoint else None
        service = ChangesService(db, show, since=args.since, checkpoint=checkpoint)
        if args.demo_writes:
            writer = demo_writer(reactor, db)
            print(f"writing a change every {DEMO_INTERVAL:g} s to the {args.db_name} database; Ctrl-C to stop",
                  file=sys.stderr, flush=True)
        # Until Ctrl-C or SIGTERM, or the service stops by itself; either
        # way the checkpoint is saved before this goes on.
        signum = await run_until_signal(service, reactor)
    finally:
        if writer is not None and writer.running:
            writer.stop()
        await server.close()
    if signum == signal.SIGINT:
        raise SystemExit(130)


def one_line(failure):
    # What retrying cannot fix is the user's to fix: say it in one line
    # (errors never contain the password), without a traceback.
    failure.trap(TxChangesError)
    print("follow.py: " + " ".join(str(failure.value).split()), file=sys.stderr)
    raise SystemExit(1)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])).addErrback(one_line))
