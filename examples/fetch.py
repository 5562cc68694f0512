"""
The seed's ``fetch`` example on Twisted: create a database, save two
documents, and print every change since the beginning.

    python examples/fetch.py http://admin:secret@127.0.0.1:5984/ [DBNAME]
"""

import json
import sys

from twisted.internet import defer, task

from txchanges import Consumer, PreconditionFailed, Server


async def main(reactor, url, name="fetch-example"):
    server = Server(url)
    try:
        try:
            db = await server.create_db(name)
        except PreconditionFailed:
            db = await server.get_db(name)
        print(json.dumps(await db.save_doc({})))
        print(json.dumps(await db.save_doc({})))
        c = Consumer(db)
        result = await c.fetch(since=0)
        print(json.dumps(result, ensure_ascii=False, indent=1))
    finally:
        await server.close()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
