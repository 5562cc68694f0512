"""GroupService against the test server, in one process: workers share the shards, a clean leave hands them over."""

from __future__ import annotations

import pytest_twisted

from txchanges import Database, GroupError, GroupService, Server, Shard

from txchanges.metrics import render_metrics

from ._service_helpers import wait_for, write_docs
from .test_metrics import samples


def _worker(db: Database, coord: Database, seen: list[tuple[str, str]], name: str, **kw) -> GroupService:
    def handler(change: dict) -> None:
        seen.append((name, change["id"]))

    return GroupService(db, handler, group="g", coordination=coord, units=8, ttl=2.0, worker=name, **kw)


@pytest_twisted.ensureDeferred
async def test_two_workers_split_the_units_and_a_leaver_hands_its_own_over(server: Server, db: Database):
    """Both workers own four units each; after one leaves, the other owns all and every change is handled once."""
    coord = await server.create_db(db.name + "-coord")
    seen: list[tuple[str, str]] = []
    a, b = _worker(db, coord, seen, "a"), _worker(db, coord, seen, "b")
    a.startService()
    b.startService()
    try:
        await wait_for(lambda: a.stats.units_owned == 4 and b.stats.units_owned == 4, 15, "an even split")
        found = samples(render_metrics([a, b]))
        assert found[("txchanges_group_units_owned", (("group", "g"), ("worker", "b")))] == 4
        assert found[("txchanges_group_members", (("group", "g"), ("worker", "a")))] == 2
        ids = [f"doc-{i:03d}" for i in range(60)]
        await write_docs(db, ids)
        await wait_for(lambda: len(seen) >= 60, 15, "every change handled")
        assert {w for w, _ in seen} == {"a", "b"}
        await b.stopService()
        await wait_for(lambda: a.stats.units_owned == 8, 5, "a taking b's units at once")
        more = [f"late-{i:03d}" for i in range(40)]
        await write_docs(db, more)
        await wait_for(lambda: len({i for _, i in seen}) == 100, 15, "the new changes handled")
        # b saved each unit's checkpoint before releasing it: a repeats nothing.
        assert sorted(i for _, i in seen) == sorted(ids + more)
        assert b.stats.units_owned == 0
    finally:
        await a.stopService()
        await b.stopService()
    docs = (await coord.server.request_json("GET", coord.path("_all_docs")))["rows"]
    assert not [r["id"] for r in docs if ":member:" in r["id"]], "heartbeats left behind"


@pytest_twisted.ensureDeferred
async def test_a_worker_with_another_unit_count_is_refused(server: Server, db: Database):
    """The group's settings are written by the first worker; one that splits the work otherwise stops with GroupError."""
    coord = await server.create_db(db.name + "-coord")
    seen: list[tuple[str, str]] = []
    a = _worker(db, coord, seen, "a")
    a.startService()
    other = GroupService(db, lambda c: None, group="g", coordination=coord, units=4, ttl=2.0, worker="b")
    try:
        await wait_for(lambda: a.stats.units_owned == 8, 15, "a owning the units")
        other.startService()
        try:
            await other.when_stopped()
        except GroupError as e:
            assert "units 8 (not 4)" in str(e)
        else:
            raise AssertionError("a worker with 4 units joined a group of 8")
    finally:
        await a.stopService()
        await other.stopService()


@pytest_twisted.ensureDeferred
async def test_two_workers_share_a_servers_databases(server: Server, db_name: str):
    """Given a server, the units are buckets of databases: each database's changes go to one worker, once."""
    coord = await server.create_db(db_name + "-coord")
    names = [f"{db_name}-d{i}" for i in range(6)]
    for name in names:
        db = await server.create_db(name)
        await write_docs(db, [f"{name}-x{i}" for i in range(5)])
    seen: list[tuple[str, str, str]] = []

    def worker(me: str) -> GroupService:
        return GroupService(
            server, lambda name, change: seen.append((me, name, change["id"])), group="dbs", coordination=coord,
            units=4, ttl=2.0, worker=me, match=rf"{db_name}-d\d", checkpoint_interval=0.2,
        )

    a, b = worker("a"), worker("b")
    a.startService()
    b.startService()
    try:
        await wait_for(lambda: len({(n, i) for _, n, i in seen}) == 30, 20, "every database's changes handled")
        await wait_for(lambda: a.stats.units_owned == 2 and b.stats.units_owned == 2, 15, "an even split")
    finally:
        await a.stopService()
        await b.stopService()
    by_db: dict[str, set[str]] = {}
    for me, name, _ in seen:
        by_db.setdefault(name, set()).add(me)
    assert sorted(by_db) == names
    # A database that moved to the other worker moved with its checkpoint: no change twice.
    assert len(seen) == 30


@pytest_twisted.ensureDeferred
async def test_a_worker_with_a_batch_handler_gets_each_units_changes_as_lists(server: Server, db: Database):
    """With batch_handler (and no handler) each unit's service hands over lists, each of one shard's documents, every change once."""
    coord = await server.create_db(db.name + "-coord")
    batches: list[list[str]] = []
    worker = GroupService(
        db, None, group="g", coordination=coord, units=4, ttl=2.0, worker="a",
        batch_handler=lambda changes: batches.append([c["id"] for c in changes]), max_batch=50,
    )
    worker.startService()
    try:
        await wait_for(lambda: worker.stats.units_owned == 4, 15, "the worker owning every unit")
        ids = [f"doc-{i:03d}" for i in range(40)]
        await write_docs(db, ids)
        await wait_for(lambda: sum(map(len, batches)) >= 40, 15, "every change handled")
    finally:
        await worker.stopService()
    assert sorted(i for batch in batches for i in batch) == ids
    for batch in batches:
        assert len({next(n for n in range(4) if Shard(n, 4).owns(i)) for i in batch}) == 1, batch
