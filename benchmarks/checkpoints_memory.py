#!/usr/bin/env python3
"""
What the checkpoints of idle databases cost in memory, with
:class:`~txchanges.many.checkpoints.CouchCheckpoints`:

    python -m benchmarks.checkpoints_memory               # 10,000 databases
    python -m benchmarks.checkpoints_memory --databases 1000

It starts the project's CouchDB-compatible test server (which needs
``testserver/node_modules``), writes one checkpoint document per database
there, then measures with :mod:`tracemalloc` what a new store and the mapping
its ``load()`` returns keep once the load is over. It prints the bytes per
database in all, and on top of the name and sequence strings (which any
follower keeps), with and without the returned mapping itself.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from tests import couchserver
from txchanges import Server
from txchanges.many.checkpoints import CouchCheckpoints

IDENTITY = "http://127.0.0.1:5984/_changes?filter=app/paid"
# A CouchDB 3 sequence is an opaque string of about this length.
SEQ_TAIL = "-g1AAAACbeJzLYWBgYMpgTmHgz8tPSTV0MDQy1zMAQsMcoARTIkOS_P___7MSGQg"


def fill(server: couchserver.RunningServer, databases: int) -> None:
    """One checkpoint document per database, a thousand per request."""
    server.create_db("coordination")
    docs = [
        {"_id": f"txchanges:tenant-{i:06}", "db": f"tenant-{i:06}", "seq": f"{i}{SEQ_TAIL}", "identity": IDENTITY}
        for i in range(databases)
    ]
    for start in range(0, databases, 1000):
        status, body = server.request("POST", "coordination/_bulk_docs", {"docs": docs[start : start + 1000]})
        if status != 201:
            raise RuntimeError(f"_bulk_docs answered {status}: {body}")


async def measure(url: str, databases: int) -> dict[str, float]:
    server = Server(url)
    # A first load opens the connection and warms every code path, so what
    # the second one adds is the store's and the mapping's alone.
    warm = CouchCheckpoints(server["coordination"])
    await warm.prepare(IDENTITY)
    await warm.load()
    del warm
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    store = CouchCheckpoints(server["coordination"])
    await store.prepare(IDENTITY)
    seqs: dict[str, Any] = await store.load()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert len(seqs) == databases, len(seqs)
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    strings = sum(sys.getsizeof(name) + sys.getsizeof(seq) for name, seq in seqs.items())
    mapping = sys.getsizeof(seqs)
    await server.close()
    return {
        "total": total / databases,
        "beyond_names_and_seqs": (total - strings) / databases,
        "store_alone": (total - strings - mapping) / databases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--databases", type=int, default=10_000)
    args = parser.parse_args()
    server = couchserver.start()
    try:
        fill(server, args.databases)
        figures: dict[str, float] = {}

        async def run(reactor: Any) -> None:
            figures.update(await measure(server.admin_url, args.databases))

        try:
            react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
        except SystemExit as e:
            if e.code:
                raise
    finally:
        server.stop()
    print(f"{args.databases} idle databases, bytes per database kept after CouchCheckpoints.load():")
    print(f"  in all (store, returned mapping, name and seq strings): {figures['total']:.0f}")
    print(f"  on top of the name and seq strings:                     {figures['beyond_names_and_seqs']:.0f}")
    print(f"  the store alone (its revisions):                        {figures['store_alone']:.0f}")


if __name__ == "__main__":
    main()
