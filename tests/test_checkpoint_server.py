"""LocalDocCheckpoint against the project's CouchDB-compatible test server."""

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from txchanges import Consumer, NotFound
from txchanges.service.checkpoint import CheckpointError, LocalDocCheckpoint

SEQ = "10-g1AAAACbeJzLYWBgYMpgTmHgz8tPSTV0MDQy1zMAQsMcoARTIkOS_P___7MSGQgqy2MB/+x=-"



@pytest_twisted.ensureDeferred
async def test_round_trip_in_a_new_store(server, db_name):
    """Sequences of every shape saved by one store load back equal, same type, in another."""
    db = await server.create_db(db_name)
    for seq in (SEQ, 42, [3, "g1AAAA"], "3-ünïcødé"):
        await LocalDocCheckpoint(db, "follower").save(seq)
        loaded = await LocalDocCheckpoint(db, "follower").load()
        assert loaded == seq and type(loaded) is type(seq)


@pytest_twisted.ensureDeferred
async def test_second_save_updates_the_document(server, db_name):
    """A second save by the same store updates the _local document to a new revision."""
    db = await server.create_db(db_name)
    store = LocalDocCheckpoint(db, "follower", identity=db.url)
    await store.save("1-a")
    await store.save("2-b")
    doc = await db.get("_local/follower")
    assert doc["_rev"] == "0-2"
    assert doc["seq"] == "2-b" and doc["identity"] == db.url
    assert isinstance(doc["saved_at"], float)


@pytest_twisted.ensureDeferred
async def test_conflict_from_another_writer_is_retried(server, db_name):
    """A save whose known rev was overtaken by another writer is retried and wins."""
    db = await server.create_db(db_name)
    mine = LocalDocCheckpoint(db, "follower")
    await mine.save("1-mine")
    await LocalDocCheckpoint(db, "follower").save("2-theirs")
    assert (await db.get("_local/follower"))["_rev"] == "0-2"
    await mine.save("3-mine")
    doc = await db.get("_local/follower")
    assert doc["seq"] == "3-mine" and doc["_rev"] == "0-3"
    await mine.save("4-mine")
    assert (await db.get("_local/follower"))["_rev"] == "0-4"


@pytest_twisted.ensureDeferred
async def test_overlapping_saves_end_with_newest(server, db_name):
    """Ten saves started without waiting all succeed and the document ends with the last seq."""
    db = await server.create_db(db_name)
    store = LocalDocCheckpoint(db, "follower")
    await gatherResults([store.save(f"{i}-x") for i in range(10)])
    assert await LocalDocCheckpoint(db, "follower").load() == "9-x"


@pytest_twisted.ensureDeferred
async def test_missing_document_is_none(server, db_name):
    """load fires with None when the database exists but the document does not."""
    db = await server.create_db(db_name)
    assert await LocalDocCheckpoint(db, "follower").load() is None


@pytest_twisted.ensureDeferred
async def test_missing_database_is_not_found(server, db_name):
    """load and save fail with NotFound when the database does not exist, and nothing creates it."""
    store = LocalDocCheckpoint(server[db_name], "follower")
    with pytest.raises(NotFound):
        await store.load()
    with pytest.raises(NotFound):
        await store.save("1-a")
    assert db_name not in await server.all_dbs()


@pytest_twisted.ensureDeferred
async def test_checkpoint_does_not_show_in_changes(server, db_name):
    """Saving a _local checkpoint adds no row to _changes and does not move last_seq."""
    db = await server.create_db(db_name)
    await db.save_doc({"_id": "real"})
    store = LocalDocCheckpoint(db, "follower")
    before = await Consumer(db).fetch(since=0)
    await store.save(before["last_seq"])
    await store.save(before["last_seq"])
    after = await Consumer(db).fetch(since=0)
    assert [r["id"] for r in after["results"]] == ["real"]
    assert after["last_seq"] == before["last_seq"]
    assert (await Consumer(db).fetch(since=before["last_seq"]))["results"] == []


@pytest_twisted.ensureDeferred
async def test_identity_mismatch_is_an_error(server, db_name):
    """A document saved for one identity fails load for another with CheckpointError naming it."""
    db = await server.create_db(db_name)
    await LocalDocCheckpoint(db, "follower", identity="db?filter=a/b").save("5-x")
    with pytest.raises(CheckpointError) as e:
        await LocalDocCheckpoint(db, "follower", identity="db?filter=c/d").load()
    assert "_local/follower" in str(e.value) and db.url in e.value.location
    assert "db?filter=a/b" in e.value.reason
    assert await LocalDocCheckpoint(db, "follower", identity="db?filter=a/b").load() == "5-x"


@pytest_twisted.ensureDeferred
async def test_document_without_seq_is_an_error(server, db_name):
    """A _local document with no seq fails load with CheckpointError rather than starting over."""
    db = await server.create_db(db_name)
    await db.save_doc({"_id": "_local/follower", "something": "else"})
    with pytest.raises(CheckpointError):
        await LocalDocCheckpoint(db, "follower").load()


@pytest_twisted.ensureDeferred
async def test_store_in_another_database(server, db_name):
    """A store in a second database keeps the checkpoint there, not in the followed one."""
    followed = await server.create_db(db_name)
    other_name = db_name + "-checkpoints"
    other = await server.create_db(other_name)
    try:
        await LocalDocCheckpoint(other, "follower").save(SEQ)
        assert await LocalDocCheckpoint(other, "follower").load() == SEQ
        assert await LocalDocCheckpoint(followed, "follower").load() is None
        assert (await other.get("_local/follower"))["seq"] == SEQ
    finally:
        await server.delete_db(other_name)
