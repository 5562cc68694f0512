"""
The seed's ``register_callback`` + ``wait`` example: print every change of
the continuous feed as it arrives. Here the feed is asked to end after one
idle second (``timeout=1000`` without heartbeat), so the script ends; with
the default heartbeat it would follow forever.

    python examples/wait.py http://admin:secret@127.0.0.1:5984/ [DBNAME]
"""

import sys

from twisted.internet import defer, task

from txchanges import Consumer, PreconditionFailed, Server


def print_line(line):
    print(f"got {line}")


async def main(reactor, url, name="wait-example"):
    server = Server(url)
    try:
        try:
            db = await server.create_db(name)
        except PreconditionFailed:
            db = await server.get_db(name)
        await db.save_doc({"n": 1})
        await db.save_doc({"n": 2})
        c = Consumer(db)
        c.register_callback(print_line)
        last_seq = await c.wait(since=0, heartbeat=False, timeout=1000)
        print(f"feed ended at {last_seq}")
    finally:
        await server.close()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
