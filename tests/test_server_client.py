"""Server, Database and Consumer.fetch against the project's CouchDB-compatible test server."""

import pytest
import pytest_twisted

from txchanges import Consumer, NotFound, PreconditionFailed, Server, Unauthorized



@pytest_twisted.ensureDeferred
async def test_server_info_and_all_dbs(server, db_name):
    """info() returns the welcome document and all_dbs() lists a new database."""
    info = await server.info()
    assert info["couchdb"] == "Welcome"
    await server.create_db(db_name)
    assert db_name in await server.all_dbs()


@pytest_twisted.ensureDeferred
async def test_seed_fetch_example(server, db_name):
    """The seed's example: two saved documents come back from fetch(since=0) with last_seq."""
    db = await server.create_db(db_name)
    r1 = await db.save_doc({})
    r2 = await db.save_doc({})
    assert r1["ok"] and r2["ok"] and r1["id"] != r2["id"]
    result = await Consumer(db).fetch(since=0)
    assert sorted(r["id"] for r in result["results"]) == sorted([r1["id"], r2["id"]])
    assert {r["changes"][0]["rev"] for r in result["results"]} == {r1["rev"], r2["rev"]}
    assert isinstance(result["last_seq"], str) and result["pending"] == 0


@pytest_twisted.ensureDeferred
async def test_documents_of_every_kind(server, db_name):
    """Documents with and without _id, a design doc and a non-ASCII id are saved, read and listed."""
    db = await server.create_db(db_name)
    generated = {"kind": "no id"}
    await db.save_doc(generated)
    named = {"_id": "a/b c", "kind": "slash and space"}
    await db.save_doc(named)
    ddoc = {"_id": "_design/app", "filters": {"all": "function(doc, req) { return true; }"}}
    await db.save_doc(ddoc)
    accented = {"_id": "café-ümläut", "kind": "non-ascii"}
    await db.save_doc(accented)
    assert (await db.get("a/b c"))["kind"] == "slash and space"
    assert (await db.get("café-ümläut"))["_rev"] == accented["_rev"]
    assert "all" in (await db.get("_design/app"))["filters"]
    result = await Consumer(db).fetch(since=0)
    ids = {r["id"] for r in result["results"]}
    assert ids == {generated["_id"], "a/b c", "_design/app", "café-ümläut"}
    again = await Consumer(db).fetch(since=result["last_seq"])
    assert again["results"] == []


@pytest_twisted.ensureDeferred
async def test_update_delete_and_bulk(server, db_name):
    """Updates replace a document's change, deletes show as deleted rows, and _bulk_docs saves all."""
    db = await server.create_db(db_name)
    doc = {"_id": "x", "v": 1}
    await db.save_doc(doc)
    doc["v"] = 2
    await db.save_doc(doc)
    assert doc["_rev"].startswith("2-")
    results = await db.save_docs([{"_id": "y"}, {"_id": "z"}])
    assert [r["id"] for r in results] == ["y", "z"]
    await db.delete_doc("y")
    rows = {r["id"]: r for r in (await Consumer(db).fetch(since=0))["results"]}
    assert rows["x"]["changes"] == [{"rev": doc["_rev"]}]
    assert rows["y"].get("deleted") is True and "deleted" not in rows["z"]


@pytest_twisted.ensureDeferred
async def test_limit_pages_through_everything(server, db_name):
    """Paging with limit and since=last_seq returns every document exactly once."""
    db = await server.create_db(db_name)
    await db.save_docs([{"_id": f"doc-{i:02d}"} for i in range(23)])
    c = Consumer(db)
    seen, since, pages = [], 0, 0
    while True:
        page = await c.fetch(since=since, limit=5)
        pages += 1
        seen.extend(r["id"] for r in page["results"])
        since = page["last_seq"]
        if not page["results"]:
            break
        assert page["pending"] == 23 - len(seen)
    assert sorted(seen) == [f"doc-{i:02d}" for i in range(23)]
    assert pages == 6


@pytest_twisted.ensureDeferred
async def test_fetch_parameters_reach_the_server(server, db_name):
    """include_docs, descending and limit change what fetch returns as CouchDB would."""
    db = await server.create_db(db_name)
    await db.save_docs([{"_id": "a", "n": 1}, {"_id": "b", "n": 2}])
    c = Consumer(db)
    with_docs = await c.fetch(since=0, include_docs=True)
    assert {r["doc"]["n"] for r in with_docs["results"]} == {1, 2}
    newest = await c.fetch(descending=True, limit=1)
    assert [r["id"] for r in newest["results"]] == ["b"]
    assert newest["pending"] == 1


@pytest_twisted.ensureDeferred
async def test_missing_database_is_not_found(server):
    """fetch on a database that does not exist fails with NotFound and CouchDB's reason."""
    with pytest.raises(NotFound) as e:
        await Consumer(server["no-such-db"]).fetch()
    assert e.value.reason == "Database does not exist."
    with pytest.raises(NotFound):
        await server.get_db("no-such-db")


@pytest_twisted.ensureDeferred
async def test_create_existing_database(server, db_name):
    """Creating a database twice fails with PreconditionFailed."""
    await server.create_db(db_name)
    with pytest.raises(PreconditionFailed):
        await server.create_db(db_name)


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_are_unauthorized(couch_server, server, db_name):
    """A wrong password fails with Unauthorized, and the password appears nowhere in the error."""
    await server.create_db(db_name)
    user, _ = couch_server.admin
    bad = Server(couch_server.url, (user, "wrong-password-xyz"))
    try:
        with pytest.raises(Unauthorized) as e:
            await Consumer(bad[db_name]).fetch()
    finally:
        await bad.close()
    assert e.value.status == 401
    assert "wrong-password-xyz" not in str(e.value) + repr(e.value)


@pytest_twisted.ensureDeferred
async def test_no_credentials_are_unauthorized(couch_server, server, db_name):
    """Without credentials an admin-only database answers 401 Unauthorized."""
    await server.create_db(db_name)
    anonymous = Server(couch_server.url)
    try:
        with pytest.raises(Unauthorized):
            await Consumer(anonymous[db_name]).fetch()
    finally:
        await anonymous.close()
