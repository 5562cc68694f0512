"""A thousand databases followed at once, against the project's test server.

Writes are spread so that about fifty databases change each second, one
"hot" database takes a thousand changes a second among them, and the
follower is restarted in the middle. Every final revision must be handled,
never more feeds be open than allowed, and the quiet databases must be
served while the hot one runs.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest_twisted
from twisted.internet import defer

from tests._service_helpers import sleep, testserver_counts, wait_for
from tests.test_many_service import Seen, Tenants, tenants  # noqa: F401 - the fixture
from txchanges import DatabasesService, MemoryCheckpoints, Server

DATABASES = 1000
MAX_CONNECTIONS = 20
SECONDS = 4.0
TICK = 0.1


class Timed(Seen):
    """A handler that also notes when each (database, id) was first handled."""

    def __init__(self) -> None:
        super().__init__()
        self.handled_at: dict[tuple[str, str], float] = {}

    def __call__(self, db: str, change: dict[str, Any]) -> None:
        super().__call__(db, change)
        self.handled_at.setdefault((db, change["id"]), time.monotonic())


@pytest_twisted.ensureDeferred
async def test_a_thousand_databases_with_a_hot_one_and_a_restart(
    couch_server: Any, server: Server, tenants: Tenants  # noqa: F811
) -> None:
    limit = defer.DeferredSemaphore(20)
    await defer.gatherResults([limit.run(tenants.create, n) for n in range(DATABASES)])
    hot = tenants.name(0)
    quiet_names = [tenants.name(n) for n in range(1, DATABASES)]
    status, _ = couch_server.request("POST", "/_testserver/reset_peak")
    assert status == 200

    store = MemoryCheckpoints()
    seen = Timed()

    def start() -> DatabasesService:
        s = DatabasesService(
            server, seen, match=tenants.match, checkpoint=store, max_connections=MAX_CONNECTIONS,
            heartbeat=1000, checkpoint_interval=0.5,
        )
        s.startService()
        return s

    s = start()
    await wait_for(lambda: s.state == "following", 30, "the first scan")
    # Quiet writes: (database, id) -> when written. A random sample of
    # databases each tick; the assertions hold whichever they are.
    written: dict[tuple[str, str], float] = {}
    hot_docs = 0
    ticks = int(SECONDS / TICK)
    restarted = False
    for tick in range(ticks):
        batch = [{"_id": f"h{hot_docs + i:06d}"} for i in range(int(1000 * TICK))]
        hot_docs += len(batch)
        writes = [server[hot].save_docs(batch)]
        for name in random.sample(quiet_names, 5):
            doc_id = f"q{tick:03d}"
            writes.append(server[name].save_doc({"_id": doc_id}))
            written[(name, doc_id)] = time.monotonic()
        await defer.gatherResults(writes)
        if tick == ticks // 2 and not restarted:
            await s.stopService()
            s = start()
            restarted = True
        await sleep(TICK)
    try:
        wanted = await tenants.final_revisions()
        await wait_for(lambda: wanted <= seen.pairs(), 60, f"{len(wanted)} final revisions handled")
        peak = testserver_counts(couch_server)["peak_open_feeds"]["changes"]
        assert peak <= MAX_CONNECTIONS
        assert len({db for db, _, _ in seen.calls}) == 1 + len({db for db, _ in written})
        # The quiet databases were not starved by the hot one: each quiet
        # change was handled within a few seconds of its write, while the
        # hot database kept a thousand changes a second coming.
        waits = sorted(seen.handled_at[key] - at for key, at in written.items())
        assert waits[-1] < 5.0, f"slowest quiet change handled {waits[-1]:.1f}s after its write"
    finally:
        await s.stopService()
