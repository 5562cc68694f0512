"""
The seed's ``wait_once`` example: wait for the next change after the current
position, with a longpoll request. A document is saved a second later so the
wait ends.

    python examples/wait_once.py http://admin:secret@127.0.0.1:5984/ [DBNAME]
"""

import json
import sys

from twisted.internet import defer, task

from txchanges import Consumer, PreconditionFailed, Server


async def main(reactor, url, name="wait-once-example"):
    server = Server(url)
    try:
        try:
            db = await server.create_db(name)
        except PreconditionFailed:
            db = await server.get_db(name)
        c = Consumer(db)
        now = (await c.fetch(since="now"))["last_seq"]
        reactor.callLater(1, db.save_doc, {"written": "later"})
        result = await c.wait_once(since=now, timeout=10000)
        print(json.dumps(result, ensure_ascii=False))
    finally:
        await server.close()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
