"""
Several ChangesServices share one database's feed by shard, against the
project's test server: every change is handled by the one service whose
shard owns its document, none twice, and each service's checkpoint passes
the other shards' changes, so that a restarted shard repeats nothing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import pytest_twisted

from txchanges import ChangesService, LocalDocCheckpoint, MemoryCheckpoint, Shard

from ._service_helpers import Recorder, change_key, feed_rows, wait_for, write_docs

SHARDS = 3


async def end_seq(db: Any) -> Any:
    return (await db.server.request_json("GET", db.path("_changes"), [("since", "now"), ("limit", "0")]))["last_seq"]


async def update_some(db: Any, ids: list[str], delete: bool = False) -> None:
    for docid in ids:
        doc = await db.get(docid)
        if delete:
            await db.delete_doc(doc)
        else:
            doc["updated"] = True
            await db.save_doc(doc)


@pytest_twisted.ensureDeferred
async def test_shards_split_the_feed_and_each_checkpoint_passes_the_others(db):
    """Three shards handle every latest change exactly once between them; a restarted shard picks up only its own new ones."""
    ids = [f"doc-{i:03d}" for i in range(150)]
    await write_docs(db, ids)
    await update_some(db, ids[:20])
    await update_some(db, ids[140:], delete=True)
    recorders = [Recorder(delay=0.002) for _ in range(SHARDS)]
    stores = [LocalDocCheckpoint(db, f"follower-{i}-of-{SHARDS}") for i in range(SHARDS)]
    services = [
        ChangesService(db, recorders[i], checkpoint=stores[i], shard=Shard(i, SHARDS), concurrency=2, checkpoint_every=5)
        for i in range(SHARDS)
    ]
    for svc in services:
        svc.startService()
    try:
        final = await end_seq(db)
        await wait_for(lambda: all(svc.resume_seq == final for svc in services), 20, "every shard to reach the end")
    finally:
        for svc in services:
            await svc.stopService()

    everything = {change_key(r) for r in await feed_rows(db)}
    handled = Counter(key for r in recorders for key in r.handled)
    assert set(handled) == everything and set(handled.values()) == {1}
    for i, recorder in enumerate(recorders):
        assert recorder.handled, f"shard {i} got nothing"
        assert all(Shard(i, SHARDS).owns(docid) for docid, _ in recorder.handled)
        stats = services[i].stats
        assert stats.handled == len(recorder.handled)
        assert stats.other_shards == len(everything) - len(recorder.handled)
        assert await stores[i].load() == final

    # Shard 1 again, from its checkpoint, after more writes: only its own new changes.
    new_ids = [f"new-{i:03d}" for i in range(60)]
    await write_docs(db, new_ids)
    again = Recorder(delay=0.0)
    svc = ChangesService(db, again, checkpoint=stores[1], shard=Shard(1, SHARDS))
    svc.startService()
    try:
        final = await end_seq(db)
        await wait_for(lambda: svc.resume_seq == final, 10, "the restarted shard to reach the end")
    finally:
        await svc.stopService()
    mine = sorted(i for i in new_ids if Shard(1, SHARDS).owns(i))
    assert mine and sorted(docid for docid, _ in again.handled) == mine
    assert svc.stats.other_shards == len(new_ids) - len(mine)


@pytest_twisted.ensureDeferred
async def test_a_shard_with_dedup_and_one_shard_of_one(db):
    """Shard 0 of 1 owns everything; the dedup window still works beside a shard."""
    await write_docs(db, [f"d{i}" for i in range(30)])
    handled: list[str] = []
    svc = ChangesService(db, lambda row: handled.append(row["id"]), shard=Shard(0, 1), dedup_window=100)
    svc.startService()
    try:
        await wait_for(lambda: len(handled) == 30, 10, "every change")
        final = await end_seq(db)
        await wait_for(lambda: svc.resume_seq == final, 5, "the end")
    finally:
        await svc.stopService()
    assert sorted(handled) == sorted(f"d{i}" for i in range(30))
    assert svc.stats.other_shards == 0 and svc.stats.duplicates == 0


def test_shard_must_be_a_shard(db):
    """A shard given as text or a tuple is refused at once rather than misread."""
    for wrong in ("0/2", (0, 2)):
        with pytest.raises(TypeError, match="shard must be a Shard"):
            ChangesService(db, lambda row: None, shard=wrong, checkpoint=MemoryCheckpoint())  # type: ignore[arg-type]
