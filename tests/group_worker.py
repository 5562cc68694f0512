"""
One worker of a group, as a process, for the process tests: it follows a
database with :class:`~txchanges.GroupService` and writes one JSON line per
event on stdout, with wall-clock times (all workers of a test run on one
machine): ``{"e": "granted" | "ended", "unit", "t"}`` for its ownership of
a unit, ``{"e": "handled", "id", "rev", "unit", "t"}`` for each change, and
``{"e": "left"}`` once it has left the group after SIGTERM.

``python -m tests.group_worker SERVER_URL DB COORD_DB NAME TTL UNITS``
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from typing import Any

from twisted.internet import defer, task

from txchanges import GroupService, Server, run_until_signal
from txchanges.group._service import boottime


def emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def main(reactor: Any, url: str, db: str, coord: str, name: str, ttl: str, units: str) -> None:
    server = Server(url)
    count = int(units)

    def handler(change: dict[str, Any]) -> None:
        unit = zlib.crc32(change["id"].encode()) % count
        emit(e="handled", id=change["id"], rev=change["changes"][0]["rev"], unit=str(unit), t=time.time())

    def ownership(unit: str, what: str, at: float) -> None:
        # The monotonic time, as wall-clock time on this machine.
        emit(e=what, unit=unit, t=time.time() - (boottime() - at))

    worker = GroupService(
        server[db], handler, group="test", coordination=server[coord], units=count, ttl=float(ttl),
        worker=name, on_ownership=ownership, checkpoint_interval=0.5, stop_timeout=2.0,
    )
    await run_until_signal(worker, reactor)
    emit(e="left")
    await server.close()


if __name__ == "__main__":
    task.react(lambda reactor, *args: defer.ensureDeferred(main(reactor, *args)), sys.argv[1:])
