"""
``async for`` over a database's changes: print the existing changes, then
stop after a fixed number. The feed is paused while the loop body runs and
closed when the loop ends.

    python examples/async_for.py http://admin:secret@127.0.0.1:5984/ DBNAME [COUNT]
"""

import sys

from twisted.internet import defer, task

from txchanges import Consumer, PreconditionFailed, Server


async def main(reactor, url, name, count="3"):
    server = Server(url)
    try:
        try:
            db = await server.create_db(name)
        except PreconditionFailed:
            db = await server.get_db(name)
        await db.save_docs([{"_id": f"item-{i}"} for i in range(int(count))])
        seen = 0
        async with Consumer(db).changes(since=0, include_docs=True) as changes:
            async for change in changes:
                print(change["id"], change["doc"]["_rev"])
                seen += 1
                if seen == int(count):
                    break
        print(f"resume from {changes.last_seq}")
    finally:
        await server.close()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
