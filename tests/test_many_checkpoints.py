"""Checkpoint stores for many databases: memory, file, coordination database and _local documents."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._write_order import record_write_order
import pytest_twisted
from treq.testing import StubTreq
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txchanges import Server, ServerError
from txchanges.many.checkpoints import (
    CheckpointError,
    CheckpointsStore,
    CouchCheckpoints,
    FileCheckpoints,
    LocalDocCheckpoints,
    MemoryCheckpoints,
    parse_checkpoints_spec,
)
from txchanges.testing import FakeCouchDB

from .fakecouch import Answer, stub
from .fakecouch import result_of as stub_result_of
from .test_testing import failure_of, result_of

IDENTITY = "_changes?filter=app/paid"
OTHER = "_changes?filter=app/all"
SEQ = "10-g1AAAACbeJzLYWBgYMpgTmHgz8tPSTV0MDQy1zMAQsMcoARTIkOS_P___7MSGQgqy2MB/+x=-"
# Every shape a server sends; the names hold every character CouchDB allows.
SEQS = {"orders": SEQ, "a/b+c$(d)-e_f": 42, "users/2024": [3, "g1AAAA"], "zz": "3-ünïcødé"}


def file_store(path: Path, identity: str = IDENTITY) -> FileCheckpoints:
    store = FileCheckpoints(path)
    result_of(store.prepare(identity))
    return store


# -- memory and specs ---------------------------------------------------------


def test_memory_round_trip():
    """MemoryCheckpoints loads what was saved, forgets removed databases and lists every batch."""
    store = MemoryCheckpoints()
    result_of(store.prepare(IDENTITY))
    result_of(store.save(SEQS, ()))
    result_of(store.save({"orders": "11-x"}, {"zz"}))
    assert result_of(store.load()) == {k: v for k, v in SEQS.items() if k != "zz"} | {"orders": "11-x"}
    assert result_of(store.get("orders")) == "11-x" and result_of(store.get("zz")) is None
    assert store.saves == [(SEQS, frozenset()), ({"orders": "11-x"}, frozenset({"zz"}))]


def test_memory_refuses_another_identity():
    """A memory store holding checkpoints of one identity refuses to be prepared for another."""
    store = MemoryCheckpoints()
    result_of(store.prepare(IDENTITY))
    result_of(store.save({"orders": SEQ}, ()))
    err = failure_of(store.prepare(OTHER))
    assert isinstance(err, CheckpointError) and IDENTITY in err.reason


def test_a_bad_sequence_is_refused_at_the_call(tmp_path):
    """A None or unserialisable sequence raises at save(), naming its database, and nothing is written."""
    store = file_store(tmp_path / "cp.json")
    with pytest.raises(ValueError, match="'orders'"):
        store.save({"orders": None}, ())
    with pytest.raises(TypeError, match="'users'"):
        store.save({"users": object()}, ())
    assert not (tmp_path / "cp.json").exists()


def test_parse_spec(tmp_path):
    """Each spec form builds its store; anything else is a ValueError listing the accepted forms."""
    server = Server("http://admin:secret@couch.example:5984/")
    assert isinstance(parse_checkpoints_spec("memory", server), MemoryCheckpoints)
    file = parse_checkpoints_spec(f"file:{tmp_path}/cp.json", server)
    assert isinstance(file, FileCheckpoints) and file.path == tmp_path / "cp.json"
    couch = parse_checkpoints_spec("couch:coord/x", server)
    assert isinstance(couch, CouchCheckpoints) and couch.db.url == "http://couch.example:5984/coord%2Fx"
    local = parse_checkpoints_spec("local", server)
    assert isinstance(local, LocalDocCheckpoints) and local.complete is False
    for store in (file, couch, local):
        assert isinstance(store, CheckpointsStore) and "secret" not in store.describe()
    for bad in ("", "file", "file:", "couch:", "local:x", "mem", "sqlite:x"):
        with pytest.raises(ValueError, match="'memory', 'file:PATH', 'couch:DBNAME' or 'local'"):
            parse_checkpoints_spec(bad, server)
    with pytest.raises(ValueError, match="invalid database name 'Bad'"):
        parse_checkpoints_spec("couch:Bad", server)


# -- file -----------------------------------------------------------------------


def test_file_round_trip(tmp_path):
    """A new store loads what another saved, seqs of every type and names of every shape, minus removed ones."""
    path = tmp_path / "cp.json"
    result_of(file_store(path).save(SEQS, ()))
    store = file_store(path)
    assert result_of(store.load()) == SEQS
    assert [type(v) for v in result_of(store.load()).values()] == [type(v) for v in SEQS.values()]
    result_of(store.save({"orders": "11-x"}, {"zz", "never-saved"}))
    expected = {k: v for k, v in SEQS.items() if k != "zz"} | {"orders": "11-x"}
    again = file_store(path)
    assert result_of(again.load()) == expected
    assert result_of(again.get("users/2024")) == [3, "g1AAAA"] and result_of(again.get("zz")) is None
    assert json.loads(path.read_text("utf-8")) == {"identity": IDENTITY, "seqs": expected}


def test_file_missing_file_is_an_empty_store(tmp_path):
    """A file that does not exist yet is a store with no checkpoint."""
    store = file_store(tmp_path / "cp.json")
    assert result_of(store.load()) == {} and result_of(store.get("orders")) is None


def test_file_of_another_identity_is_refused(tmp_path):
    """prepare fails with CheckpointError naming the file and the identity it was written for."""
    path = tmp_path / "cp.json"
    result_of(file_store(path).save({"orders": SEQ}, ()))
    err = failure_of(FileCheckpoints(path).prepare(OTHER))
    assert isinstance(err, CheckpointError) and str(path) in str(err) and repr(IDENTITY) in err.reason


@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b'{"identity": "%s"}' % IDENTITY.encode(), b'{"identity": "%s", "seqs": [1]}' % IDENTITY.encode()]
)
def test_file_corrupt_is_refused(tmp_path, content):
    """A file that is not JSON, not an object, or holds no seqs fails prepare rather than starting over."""
    path = tmp_path / "cp.json"
    path.write_bytes(content)
    assert isinstance(failure_of(FileCheckpoints(path).prepare(IDENTITY)), CheckpointError)


def test_file_missing_directory_is_named(tmp_path):
    """prepare fails with CheckpointError naming the directory that does not exist."""
    missing = tmp_path / "no-such-dir"
    err = failure_of(FileCheckpoints(missing / "cp.json").prepare(IDENTITY))
    assert isinstance(err, CheckpointError) and f"the directory {missing} does not exist" in err.reason


def test_file_write_is_synced_then_renamed_then_dir_synced(tmp_path, monkeypatch):
    """save fsyncs a temporary file, renames it over the old one, then fsyncs the directory."""
    store = file_store(tmp_path / "cp.json")
    events = record_write_order(monkeypatch)
    result_of(store.save({"orders": SEQ}, ()))
    assert events == ["fsync file", "replace within the directory", "fsync dir"]


@pytest.fixture
def file_size_limit() -> Iterator[Any]:
    """Sets the largest file this process may write, as a full disk would cut a write short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit(size: int) -> Any:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
        return restore

    def restore() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    yield limit
    restore()
    signal.signal(signal.SIGXFSZ, previous)


def test_file_write_cut_short_keeps_the_previous_file(tmp_path, file_size_limit):
    """A write that fails half-way leaves the previous file whole and no temp file; the same batch saves later."""
    path = tmp_path / "cp.json"
    store = file_store(path)
    result_of(store.save({"orders": SEQ}, ()))
    before = path.read_bytes()
    batch = {f"db-{i}": f"{i}-{SEQ}" for i in range(200)}
    restore = file_size_limit(len(before) + 100)
    try:
        d = store.save(batch, ())
    finally:
        restore()
    err = failure_of(d)
    assert isinstance(err, CheckpointError) and str(path) in str(err)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cp.json"]
    result_of(store.save(batch, ()))
    assert result_of(file_store(path).load()) == dict(batch, orders=SEQ)


def test_file_save_before_prepare_is_refused(tmp_path):
    """A save before prepare raises at once: the store does not know what it would overwrite."""
    with pytest.raises(RuntimeError, match="prepare"):
        FileCheckpoints(tmp_path / "cp.json").save({"orders": SEQ}, ())


# -- a coordination database, on the test server ---------------------------------


async def couch_store(server: Server, name: str, key: str = "txchanges", identity: str = IDENTITY) -> CouchCheckpoints:
    store = CouchCheckpoints(server[name], key)
    await store.prepare(identity)
    return store


@pytest_twisted.ensureDeferred
async def test_couch_round_trip(server, db_name):
    """prepare creates the database; a new store loads what another saved; removed databases' documents go."""
    store = await couch_store(server, db_name)
    assert db_name in await server.all_dbs()
    await store.save(SEQS, ())
    again = await couch_store(server, db_name)
    assert await again.load() == SEQS
    assert await again.get("a/b+c$(d)-e_f") == 42 and await again.get("missing") is None
    await again.save({"orders": "11-x"}, {"zz", "never-saved"})
    expected = {k: v for k, v in SEQS.items() if k != "zz"} | {"orders": "11-x"}
    assert await (await couch_store(server, db_name)).load() == expected
    doc = await server[db_name].get("txchanges:a/b+c$(d)-e_f")
    assert {k: doc[k] for k in ("db", "seq", "identity")} == {"db": "a/b+c$(d)-e_f", "seq": 42, "identity": IDENTITY}


def test_couch_database_created_meanwhile_is_fine():
    """prepare succeeds when the database it found missing was created by another process before its PUT (412)."""
    client, couch = stub(
        Answer(404, {"error": "not_found", "reason": "Database does not exist."}),
        Answer(412, {"error": "file_exists", "reason": "The database could not be created, the file already exists."}),
    )
    store = CouchCheckpoints(Server("http://couch.example:5984/", http=client)["coord"])
    assert stub_result_of(store.prepare(IDENTITY), client) is None
    assert [(s.method, s.uri) for s in couch.seen] == [("GET", "/coord"), ("PUT", "/coord")]


@pytest.mark.parametrize("count", [5, 6])
@pytest_twisted.ensureDeferred
async def test_couch_load_pages_and_keeps_to_its_key(server, db_name, count):
    """load reads every page of documents (the last one short or empty), and none of another key."""
    db = await server.create_db(db_name)
    seqs = {f"db{i}": f"{i}-x" for i in range(count)}
    await (await couch_store(server, db_name)).save(seqs, ())
    await (await couch_store(server, db_name, key="txchange")).save({"near": "1-a"}, ())
    await (await couch_store(server, db_name, key="txchangesx")).save({"after": "1-b"}, ())
    await db.save_doc({"_id": "unrelated"})
    store = CouchCheckpoints(db, page_size=2)
    await store.prepare(IDENTITY)
    assert await store.load() == seqs


def test_couch_load_goes_on_after_the_last_row():
    """The next page starts after the last row read: at its id, skipping it."""
    def row(name: str) -> dict[str, Any]:
        doc = {"_id": "txchanges:" + name, "_rev": "1-a", "db": name, "seq": SEQ, "identity": IDENTITY}
        return {"id": doc["_id"], "doc": doc}

    pages = [Answer(200, {"rows": [row("a"), row("b")]}), Answer(200, {"rows": [row("c")]})]
    client, couch = stub(Answer(200, {"db_name": "coord"}), *pages)
    store = CouchCheckpoints(Server("http://couch.example:5984/", http=client)["coord"], page_size=2)
    stub_result_of(store.prepare(IDENTITY), client)
    assert stub_result_of(store.load(), client) == {"a": SEQ, "b": SEQ, "c": SEQ}
    second = dict(parse_qsl(couch.seen[-1].uri.partition("?")[2]))
    assert (json.loads(second["start_key"]), second["skip"], second["limit"]) == ("txchanges:b", "1", "2")


def test_couch_load_asks_for_its_key_range():
    """load asks _all_docs for the documents of its key, with their bodies, a thousand at a time."""
    client, couch = stub(Answer(200, {"db_name": "coord"}), Answer(200, {"rows": []}))
    store = CouchCheckpoints(Server("http://couch.example:5984/", http=client)["coord"])
    stub_result_of(store.prepare(IDENTITY), client)
    assert stub_result_of(store.load(), client) == {}
    path, _, query = couch.seen[-1].uri.partition("?")
    assert path == "/coord/_all_docs"
    params = dict(parse_qsl(query))
    assert (params.pop("include_docs"), params.pop("limit")) == ("true", "1000")
    assert {k: json.loads(v) for k, v in params.items()} == {"start_key": "txchanges:", "end_key": "txchanges:\ufff0"}


@pytest_twisted.ensureDeferred
async def test_couch_other_identity_is_refused(server, db_name):
    """load fails with CheckpointError naming the document written for another identity."""
    await (await couch_store(server, db_name)).save({"orders": SEQ}, ())
    store = await couch_store(server, db_name, identity=OTHER)
    with pytest.raises(CheckpointError) as e:
        await store.load()
    assert "txchanges:orders" in str(e.value) and repr(IDENTITY) in e.value.reason


@pytest_twisted.ensureDeferred
async def test_couch_conflict_is_retried_and_our_seq_wins(server, db_name):
    """A document updated behind the store's back conflicts; the store re-reads it and writes its seq."""
    store = await couch_store(server, db_name)
    await store.save({"orders": "1-ours", "users": "1-ours"}, ())
    db = server[db_name]
    theirs = await db.get("txchanges:orders")
    await db.save_doc(dict(theirs, seq="2-theirs"))
    await store.save({"orders": "3-ours", "users": "3-ours"}, ())
    assert await (await couch_store(server, db_name)).load() == {"orders": "3-ours", "users": "3-ours"}


@pytest_twisted.ensureDeferred
async def test_couch_document_deleted_behind_its_back_is_written_anew(server, db_name):
    """A document deleted by someone else conflicts; the store finds it gone and writes it again."""
    store = await couch_store(server, db_name)
    await store.save({"orders": "1-ours"}, ())
    await server[db_name].delete_doc("txchanges:orders")
    await store.save({"orders": "2-ours"}, ())
    assert await (await couch_store(server, db_name)).load() == {"orders": "2-ours"}


@pytest_twisted.ensureDeferred
async def test_couch_removal_done_elsewhere_succeeds(server, db_name):
    """Removing a database whose document is already deleted (a retried batch) succeeds."""
    first = await couch_store(server, db_name)
    await first.save({"orders": SEQ, "users": SEQ}, ())
    second = await couch_store(server, db_name)
    await second.load()
    await first.save({}, {"orders"})
    await second.save({"users": "2-x"}, {"orders"})
    assert await (await couch_store(server, db_name)).load() == {"users": "2-x"}


@pytest_twisted.ensureDeferred
async def test_couch_removal_without_load_deletes_the_document(server, db_name):
    """A store that has not loaded still deletes a removed database's document it never saw."""
    await (await couch_store(server, db_name)).save({"orders": SEQ, "users": SEQ}, ())
    await (await couch_store(server, db_name)).save({}, {"orders"})
    assert await (await couch_store(server, db_name)).load() == {"users": SEQ}


def test_couch_removal_of_a_database_without_document_sends_nothing():
    """Once load has read every document, removing a database that had none makes no request."""
    client, couch = stub(Answer(200, {"db_name": "coord"}), Answer(200, {"rows": []}))
    store = CouchCheckpoints(Server("http://couch.example:5984/", http=client)["coord"])
    stub_result_of(store.prepare(IDENTITY), client)
    stub_result_of(store.load(), client)
    asked = len(couch.seen)
    assert stub_result_of(store.save({}, {"orders"}), client) is None
    assert len(couch.seen) == asked


def test_couch_refused_document_fails_the_save():
    """A document CouchDB refuses for another reason than a conflict fails save with CheckpointError naming it."""
    results = [
        {"ok": True, "id": "txchanges:orders", "rev": "1-a"},
        {"id": "txchanges:users", "error": "forbidden", "reason": "not here"},
    ]
    client, couch = stub(Answer(200, {"db_name": "coord"}), Answer(201, results))
    store = CouchCheckpoints(Server("http://couch.example:5984/", http=client)["coord"])
    stub_result_of(store.prepare(IDENTITY), client)
    with pytest.raises(CheckpointError) as e:
        stub_result_of(store.save({"orders": SEQ, "users": SEQ}, ()), client)
    assert "txchanges:users: forbidden (not here)" in e.value.reason and "orders" not in e.value.reason
    assert [s.uri for s in couch.seen][-1] == "/coord/_bulk_docs"


# -- a _local document in each database -----------------------------------------


def local_store(server: Server, identity: str = IDENTITY) -> LocalDocCheckpoints:
    store = LocalDocCheckpoints(server)
    result_of(store.prepare(identity))
    return store


@pytest_twisted.ensureDeferred
async def test_local_round_trip(server, db_name):
    """Each database keeps its own checkpoint: a new store gets what another saved; load knows nothing."""
    names = [db_name + suffix for suffix in ("-a+b", "-c$(d)")]
    for name in names:
        await server.create_db(name)
    try:
        store = local_store(server)
        assert await store.get(names[0]) is None
        await store.save({names[0]: SEQ, names[1]: 42}, ())
        await store.save({names[0]: "11-x"}, ())
        again = local_store(server)
        assert await again.load() == {}
        assert [await again.get(n) for n in names] == ["11-x", 42]
        doc = await server[names[0]].get("_local/txchanges")
        assert (doc["seq"], doc["identity"], doc["_rev"]) == ("11-x", IDENTITY, "0-2")
    finally:
        for name in names:
            await server.delete_db(name)


@pytest_twisted.ensureDeferred
async def test_local_other_identity_is_refused(server, db):
    """get fails with CheckpointError naming the database whose document has another identity."""
    await local_store(server).save({db.name: SEQ}, ())
    with pytest.raises(CheckpointError) as e:
        await local_store(server, OTHER).get(db.name)
    assert db.url in str(e.value) and repr(IDENTITY) in e.value.reason


@pytest_twisted.ensureDeferred
async def test_local_deleted_database_is_passed_over(server, db):
    """A database deleted since its checkpoint was read is passed over; the others of the batch are saved."""
    gone = await server.create_db(db.name + "-gone")
    store = local_store(server)
    await store.save({gone.name: "1-y"}, ())
    assert await store.get(gone.name) == "1-y"
    await server.delete_db(gone.name)
    await store.save({db.name: "1-x", gone.name: "2-y"}, ())
    assert await local_store(server).get(db.name) == "1-x"
    assert gone.name not in await server.all_dbs()


@pytest_twisted.ensureDeferred
async def test_local_conflict_is_retried_and_our_seq_wins(server, db):
    """A document updated behind the store's back conflicts; the store re-reads it and writes its seq."""
    store = local_store(server)
    await store.save({db.name: "1-ours"}, ())
    theirs = await db.get("_local/txchanges")
    await db.save_doc(dict(theirs, seq="2-theirs"))
    await store.save({db.name: "3-ours"}, ())
    assert await local_store(server).get(db.name) == "3-ours"


def test_local_removed_database_is_forgotten():
    """A removed database's revision is forgotten: when it comes back, its first save is one PUT."""
    fake = FakeCouchDB()
    fake.create_db("orders")
    store = local_store(fake.server())
    result_of(store.save({"orders": "1-old"}, ()))
    fake.delete_db("orders")
    fake.create_db("orders")
    result_of(store.save({}, {"orders"}))
    before = len(fake.requests)
    result_of(store.save({"orders": "1-new"}, ()))
    assert [(r.method, r.path) for r in fake.requests[before:]] == [("PUT", ["orders", "_local", "txchanges"])]
    assert fake.get("orders", "_local/txchanges")["seq"] == "1-new"


def test_local_names_with_a_slash():
    """Names holding / and the other allowed characters are one quoted path segment each."""
    fake = FakeCouchDB()
    names = ["a/b", "c+d$(e)/f"]
    for name in names:
        fake.create_db(name)
    server = fake.server()
    result_of(local_store(server).save(dict.fromkeys(names, SEQ), ()))
    assert [fake.get(n, "_local/txchanges")["seq"] for n in names] == [SEQ, SEQ]
    assert [result_of(local_store(server).get(n)) for n in names] == [SEQ, SEQ]
    puts = sorted(r.path for r in fake.requests if r.method == "PUT")
    assert puts == [["a/b", "_local", "txchanges"], ["c+d$(e)/f", "_local", "txchanges"]]


def test_local_failed_write_fails_the_save_after_the_others():
    """A write answered with an error fails the save, once the other writes of the batch are done."""
    client, couch = stub(
        Answer(201, {"ok": True, "id": "_local/txchanges", "rev": "0-1"}),
        Answer(500, {"error": "unknown_error", "reason": "boom"}),
        Answer(201, {"ok": True, "id": "_local/txchanges", "rev": "0-1"}),
    )
    store = local_store(Server("http://couch.example:5984/", http=client))
    with pytest.raises(ServerError, match="boom"):
        stub_result_of(store.save({"a": SEQ, "b": SEQ, "c": SEQ, "d": SEQ}, ()), client)
    assert len(couch.seen) == 4


class HeldCouch(Resource):
    """Holds every request until the test answers it, so a test sees how many are in flight."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []
        self.paths: list[str] = []

    def render(self, request: Request) -> Any:
        self.held.append(request)
        self.paths.append(request.path.decode())
        return NOT_DONE_YET

    def answer_all(self, status: int, body: Any) -> None:
        held, self.held = self.held, []
        for request in held:
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(body).encode())
            request.finish()


def test_local_writes_at_most_ten_at_once():
    """A batch of 25 databases keeps 10 writes in flight while answers come, then completes."""
    couch = HeldCouch()
    client = StubTreq(couch)
    store = local_store(Server("http://couch.example:5984/", http=client))
    done: list[Any] = []
    store.save({f"db{i}": SEQ for i in range(25)}, ()).addBoth(done.append)
    in_flight = []
    while couch.held:
        in_flight.append(len(couch.held))
        couch.answer_all(201, {"ok": True, "id": "_local/txchanges", "rev": "0-1"})
        client.flush()
    assert in_flight == [10, 10, 5] and done == [None]
    assert sorted(couch.paths) == sorted(f"/db{i}/_local/txchanges" for i in range(25))
