"""
Follows a database with run_until_signal inside task.react, printing each
change's id, until SIGINT or SIGTERM; then prints a line of its own, which
shows that the code after run_until_signal runs.

    python tests/follow_until_signal.py URL DBNAME CHECKPOINT_FILE
"""

import sys

from twisted.internet import task

from txchanges import ChangesService, FileCheckpoint, Server, run_until_signal


async def main(reactor, url, name, path):
    server = Server(url)
    service = ChangesService(server[name], lambda change: print(change["id"], flush=True), checkpoint=FileCheckpoint(path))
    # Called before the reactor runs, as a script may: the handlers must
    # still win over the reactor's own.
    signum = await run_until_signal(service)
    print(f"stopped by signal {signum} at {service.resume_seq}", flush=True)
    await server.close()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
