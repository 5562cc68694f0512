"""DatabasesService against the project's test server: discovery, catch-up, deletions, restarts, bounds."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted

from txchanges import (
    CouchCheckpoints,
    Database,
    DatabasesService,
    FileCheckpoints,
    LocalDocCheckpoints,
    MemoryCheckpoints,
    Server,
)
from tests._service_helpers import testserver_counts, wait_for, write_docs
from tests.faultproxy import FaultProxy


class Seen:
    """A handler that records every (database, id, rev) it is given, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.deleted: list[str] = []

    def __call__(self, db: str, change: dict[str, Any]) -> None:
        self.calls.append((db, change["id"], change["changes"][0]["rev"]))

    def on_deleted(self, db: str) -> None:
        self.deleted.append(db)

    def pairs(self) -> set[tuple[str, str, str]]:
        return set(self.calls)

    def count(self, db: str) -> int:
        return sum(1 for name, _, _ in self.calls if name == db)


@pytest_twisted.async_yield_fixture
async def tenants(server: Server) -> AsyncIterator["Tenants"]:
    t = Tenants(server)
    yield t
    await t.clean()


class Tenants:
    """Databases of one test, named with a prefix of its own."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.prefix = f"t{uuid.uuid4().hex[:8]}-"
        self.match = f"{self.prefix}.*"

    def name(self, n: int) -> str:
        return f"{self.prefix}{n:04d}"

    async def create(self, n: int) -> Database:
        return await self.server.create_db(self.name(n))

    async def clean(self) -> None:
        for name in await self.server.all_dbs():
            if name.startswith(self.prefix):
                await self.server.delete_db(name)

    async def final_revisions(self) -> set[tuple[str, str, str]]:
        """(database, id, rev) of every document's newest revision, as the server has them."""
        wanted = set()
        for name in await self.server.all_dbs():
            if name.startswith(self.prefix):
                body = await self.server.request_json("GET", f"{name}/_all_docs")
                wanted |= {(name, row["id"], row["value"]["rev"]) for row in body["rows"]}
        return wanted


def service(server: Server, seen: Seen, tenants: Tenants, **kwargs: Any) -> DatabasesService:
    kwargs.setdefault("heartbeat", 1000)
    kwargs.setdefault("checkpoint_interval", 0.2)
    return DatabasesService(server, seen, match=tenants.match, on_deleted=seen.on_deleted, **kwargs)


def idle(s: DatabasesService) -> bool:
    stats = s.stats
    return s.state == "following" and stats.open_feeds == 0 and stats.waiting == 0


async def handled_all(seen: Seen, tenants: Tenants, timeout: float = 20.0, since: Seen | None = None) -> None:
    """Wait until every final revision is handled (but those *since* handled already)."""
    wanted = await tenants.final_revisions()
    if since is not None:
        wanted -= since.pairs()
    await wait_for(lambda: wanted <= seen.pairs(), timeout, f"{len(wanted)} final revisions handled")


@pytest_twisted.ensureDeferred
async def test_existing_and_new_databases_are_followed(server: Server, tenants: Tenants) -> None:
    """Databases there at start-up are read from their beginning; one created later is found through _db_updates."""
    for n in range(5):
        db = await tenants.create(n)
        await write_docs(db, [f"d{i}" for i in range(n + 1)])
    other = await server.create_db(f"other{uuid.uuid4().hex[:8]}")
    await write_docs(other, ["x"])
    seen = Seen()
    s = service(server, seen, tenants)
    s.startService()
    try:
        await handled_all(seen, tenants)
        await wait_for(lambda: s.state == "following", 10, "the first scan")
        late = await tenants.create(99)
        await write_docs(late, ["a", "b"])
        await handled_all(seen, tenants)
        assert len(seen.calls) == 1 + 2 + 3 + 4 + 5 + 2
        assert all(db.startswith(tenants.prefix) for db, _, _ in seen.calls)
        assert s.stats.databases == 6
    finally:
        await s.stopService()
        await server.delete_db(other.name)


@pytest.mark.parametrize("kind", ["memory", "file", "couch", "local"])
@pytest_twisted.ensureDeferred
async def test_a_restart_resumes_every_database_where_it_was(
    server: Server, tenants: Tenants, tmp_path: Path, kind: str
) -> None:
    """With each store: what changed while stopped is read, nothing else; a database deleted meanwhile is told
    (but with _local checkpoints, which go with their database)."""
    coordination = f"coord{uuid.uuid4().hex[:8]}"
    memory = MemoryCheckpoints()

    def store() -> Any:
        # A new store each time, as after a restart (but in memory).
        return {
            "memory": lambda: memory,
            "file": lambda: FileCheckpoints(tmp_path / "checkpoints.json"),
            "couch": lambda: CouchCheckpoints(server[coordination]),
            "local": lambda: LocalDocCheckpoints(server),
        }[kind]()

    dbs = [await tenants.create(n) for n in range(4)]
    for db in dbs:
        await write_docs(db, ["a", "b", "c"])
    first = Seen()
    s = service(server, first, tenants, checkpoint=store())
    s.startService()
    await handled_all(first, tenants)
    await s.stopService()
    # While nobody listens: two databases change, one is deleted, one is created.
    await write_docs(dbs[0], ["d"])
    await write_docs(dbs[2], ["e", "f"])
    await server.delete_db(dbs[3].name)
    await write_docs(await tenants.create(7), ["g"])
    second = Seen()
    s = service(server, second, tenants, checkpoint=store())
    s.startService()
    try:
        await handled_all(second, tenants, since=first)
        if kind != "local":
            # A _local checkpoint goes with its database: that store cannot
            # tell which databases were followed before.
            await wait_for(lambda: dbs[3].name in second.deleted, 10, "the deletion seen by the scan")
        await wait_for(lambda: idle(s), 10, "every catch-up over")
        assert len(second.calls) == 4
        assert {(db, doc) for db, doc, _ in second.calls} == {
            (dbs[0].name, "d"), (dbs[2].name, "e"), (dbs[2].name, "f"), (tenants.name(7), "g")
        }
    finally:
        await s.stopService()
        if kind == "couch":
            await server.delete_db(coordination)


@pytest_twisted.ensureDeferred
async def test_a_deleted_database_is_told_and_one_created_again_is_read_from_its_beginning(
    server: Server, tenants: Tenants
) -> None:
    db = await tenants.create(1)
    await write_docs(db, ["a", "b"])
    seen = Seen()
    s = service(server, seen, tenants)
    s.startService()
    try:
        await handled_all(seen, tenants)
        await server.delete_db(db.name)
        await wait_for(lambda: seen.deleted == [db.name], 10, "the deletion told")
        again = await tenants.create(1)
        await write_docs(again, ["a"])
        await wait_for(lambda: seen.count(db.name) == 3, 10, "the new database's change")
        assert s.stats.deleted == 1
    finally:
        await s.stopService()


@pytest.mark.parametrize("kind", ["memory", "local"])
@pytest_twisted.ensureDeferred
async def test_since_now_skips_what_is_there_at_start_up(server: Server, tenants: Tenants, kind: str) -> None:
    """Also with _local checkpoints, which load nothing at start-up."""
    db = await tenants.create(1)
    await write_docs(db, ["old1", "old2"])
    seen = Seen()
    store = MemoryCheckpoints() if kind == "memory" else LocalDocCheckpoints(server)
    s = service(server, seen, tenants, since="now", checkpoint=store)
    s.startService()
    try:
        await wait_for(lambda: s.state == "following", 10, "the first scan")
        await write_docs(db, ["new"])
        created = await tenants.create(2)
        await write_docs(created, ["fresh"])
        await wait_for(lambda: len(seen.calls) >= 2, 10, "the new changes")
        assert {doc for _, doc, _ in seen.calls} == {"new", "fresh"}
    finally:
        await s.stopService()


@pytest_twisted.ensureDeferred
async def test_never_more_feeds_open_than_max_connections(couch_server: Any, server: Server, tenants: Tenants) -> None:
    for n in range(12):
        await write_docs(await tenants.create(n), [f"d{i}" for i in range(30)])
    status, _ = couch_server.request("POST", "/_testserver/reset_peak")
    assert status == 200
    seen = Seen()
    s = service(server, seen, tenants, max_connections=3, page_size=5)
    s.startService()
    try:
        await handled_all(seen, tenants)
        assert testserver_counts(couch_server)["peak_open_feeds"]["changes"] == 3
        assert s.stats.catch_ups >= 12 * 6
    finally:
        await s.stopService()


@pytest_twisted.ensureDeferred
async def test_a_quiet_database_is_served_while_a_busy_one_has_a_backlog(server: Server, tenants: Tenants) -> None:
    """With one feed at a time, a quiet database waits at most two pages of the busy one."""
    busy = await tenants.create(0)
    await write_docs(busy, [f"b{i:04d}" for i in range(400)])
    quiet = await tenants.create(1)
    seen = Seen()
    s = service(server, seen, tenants, max_connections=1, page_size=10)
    s.startService()
    try:
        await wait_for(lambda: seen.count(busy.name) >= 20, 10, "the busy database being read")
        await write_docs(quiet, ["q"])
        written = len(seen.calls)
        await wait_for(lambda: seen.count(quiet.name) == 1, 10, "the quiet database's change")
        handled = next(i for i, call in enumerate(seen.calls) if call[0] == quiet.name)
        # Between the write and its handling, the busy database's pages read
        # while _db_updates told of it, and the one under way: far from the
        # 380 rows of its backlog left.
        assert handled - written <= 60, f"the quiet change waited for {handled - written} busy changes"
        await handled_all(seen, tenants)
    finally:
        await s.stopService()


@pytest_twisted.ensureDeferred
async def test_the_db_updates_feed_cut_then_stalled_loses_nothing(
    couch_server: Any, server: Server, proxy: FaultProxy, tenants: Tenants
) -> None:
    """Every connection cut, then every byte held back: the service reconnects, scans again and misses nothing."""
    dbs = [await tenants.create(n) for n in range(3)]
    seen = Seen()
    through = Server(proxy.url_for(couch_server.admin_url))
    s = DatabasesService(
        through, seen, match=tenants.match, heartbeat=300, retry_policy=lambda attempt: 0.1, checkpoint_interval=0.2
    )
    s.startService()
    try:
        await wait_for(lambda: s.state == "following", 10, "the first scan")
        assert s.stats.scans == 1
        await write_docs(dbs[0], ["a"])
        await handled_all(seen, tenants)
        assert proxy.cut_all() >= 1
        await write_docs(dbs[1], ["b"])
        await handled_all(seen, tenants)
        await wait_for(lambda: s.stats.scans >= 2, 10, "a scan after the feed was lost")
        proxy.stall()
        await write_docs(dbs[2], ["c"])
        await wait_for(lambda: s.stats.reconnects >= 2, 10, "the stalled feed given up")
        proxy.unstall()
        await handled_all(seen, tenants)
        assert len(seen.calls) == 3
    finally:
        await s.stopService()
        await through.close()
