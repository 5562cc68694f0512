"""Checkpoint stores without a server: memory, file, the save ordering, and specs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests._write_order import record_write_order
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from txchanges import Conflict, NotFound, Server
from txchanges.service.checkpoint import (
    CheckpointError,
    CheckpointStore,
    FileCheckpoint,
    LocalDocCheckpoint,
    MemoryCheckpoint,
    parse_checkpoint_spec,
)
from txchanges.errors import TxChangesError

from .test_testing import result_of

# Opaque sequences of every shape a server sends, with the characters a
# CouchDB 3 sequence carries; 0 checks that a falsy seq is still a seq.
SEQS = [
    "10-g1AAAACbeJzLYWBgYMpgTmHgz8tPSTV0MDQy1zMAQsMcoARTIkOS_P___7MSGQgqy2MB/+x=-",
    42,
    0,
    [12, "g1AAAA-abc"],
    "3-ünïcødé-シーケンス",
]


def failure_of(d: Deferred[Any], cls: type[BaseException]) -> Any:
    """The exception a fired Deferred failed with, checked to be a *cls*."""
    with pytest.raises(cls) as e:
        result_of(d)
    return e.value


# -- memory ---------------------------------------------------------------


def test_memory_round_trip_and_saves():
    """MemoryCheckpoint loads its initial seq, then the last saved one, and lists every save."""
    store = MemoryCheckpoint("1-abc")
    assert result_of(store.load()) == "1-abc"
    for seq in SEQS:
        assert result_of(store.save(seq)) is None
    assert result_of(store.load()) == SEQS[-1]
    assert store.saves == SEQS


def test_memory_starts_empty():
    """A new MemoryCheckpoint loads None and has no saves."""
    store = MemoryCheckpoint()
    assert result_of(store.load()) is None
    assert store.saves == []


@pytest.mark.parametrize(
    "bad, error", [(None, ValueError), (object(), TypeError), (float("nan"), TypeError)]
)
def test_save_refuses_what_cannot_be_a_seq(tmp_path, bad, error):
    """Saving None or a non-JSON value raises at once in every store, and nothing is written."""
    file_store = FileCheckpoint(tmp_path / "cp.json")
    for store in (MemoryCheckpoint(), file_store, LocalDocCheckpoint(FakeDatabase(), "cp")):
        with pytest.raises(error):
            store.save(bad)
    assert list(tmp_path.iterdir()) == []


def test_every_store_is_a_checkpoint_store(tmp_path):
    """The three stores satisfy the CheckpointStore protocol."""
    stores = [
        MemoryCheckpoint(),
        FileCheckpoint(tmp_path / "x"),
        LocalDocCheckpoint(FakeDatabase(), "x"),
    ]
    assert all(isinstance(s, CheckpointStore) for s in stores)


# -- file -----------------------------------------------------------------


@pytest.mark.parametrize("seq", SEQS, ids=["string", "int", "zero", "list", "non-ascii"])
def test_file_round_trip_keeps_value_and_type(tmp_path, seq):
    """A sequence saved to a file loads back equal and of the same type in a new store."""
    path = tmp_path / "cp.json"
    result_of(FileCheckpoint(path).save(seq))
    loaded = result_of(FileCheckpoint(path).load())
    assert loaded == seq and type(loaded) is type(seq)


def test_file_holds_seq_identity_and_saved_at(tmp_path):
    """The file is UTF-8 JSON with seq, identity and the clock's time as saved_at."""
    clock = Clock()
    clock.advance(1700000000.5)
    path = tmp_path / "cp.json"
    result_of(FileCheckpoint(path, identity="http://h/db", clock=clock).save("5-é"))
    record = json.loads(path.read_bytes().decode("utf-8"))
    assert record == {"seq": "5-é", "identity": "http://h/db", "saved_at": 1700000000.5}


def test_file_second_save_replaces_the_first(tmp_path):
    """After two saves the file holds only the second seq and no temporary file is left."""
    store = FileCheckpoint(tmp_path / "cp.json")
    result_of(store.save("1-a"))
    result_of(store.save("2-b"))
    assert result_of(store.load()) == "2-b"
    assert [p.name for p in tmp_path.iterdir()] == ["cp.json"]


def test_file_missing_is_a_fresh_start(tmp_path):
    """A missing file loads None by default."""
    assert result_of(FileCheckpoint(tmp_path / "nothing.json").load()) is None


def test_file_missing_is_an_error_when_required(tmp_path):
    """With missing_ok=False a missing file fails with CheckpointError naming the path."""
    path = tmp_path / "nothing.json"
    err = failure_of(FileCheckpoint(path, missing_ok=False).load(), CheckpointError)
    assert str(path) in str(err) and str(path) in err.location
    assert isinstance(err, TxChangesError) and "does not exist" in err.reason


@pytest.mark.parametrize(
    "content",
    [
        b"garbage",
        b"",
        b'{"seq": "10-abc',
        b'{"identity": null, "saved_at": 1}',
        b'{"seq": null}',
        b'["10-abc"]',
        b'"10-abc"',
        b"\xff\xfe{}",
    ],
    ids=["garbage", "empty", "truncated", "no-seq", "null-seq", "array", "string", "not-utf8"],
)
def test_file_corrupt_is_an_error(tmp_path, content):
    """A corrupt file fails load with CheckpointError naming the path, even with missing_ok."""
    path = tmp_path / "cp.json"
    path.write_bytes(content)
    err = failure_of(FileCheckpoint(path, missing_ok=True).load(), CheckpointError)
    assert str(path) in str(err)
    assert path.read_bytes() == content


def test_file_unreadable_is_an_error(tmp_path):
    """A path that cannot be read as a file (a directory) fails load with CheckpointError."""
    err = failure_of(FileCheckpoint(tmp_path).load(), CheckpointError)
    assert str(tmp_path) in str(err) and "cannot read" in err.reason


def test_file_identity_mismatch_is_an_error(tmp_path):
    """A file saved for one identity fails load for another, and loads for it or for none."""
    path = tmp_path / "cp.json"
    result_of(FileCheckpoint(path, identity="http://h/db-a").save("7-x"))
    err = failure_of(FileCheckpoint(path, identity="http://h/db-b").load(), CheckpointError)
    assert "http://h/db-a" in err.reason and str(path) in str(err)
    assert result_of(FileCheckpoint(path, identity="http://h/db-a").load()) == "7-x"
    assert result_of(FileCheckpoint(path).load()) == "7-x"


def test_file_without_identity_is_refused_by_a_store_with_one(tmp_path):
    """A file saved without an identity fails load in a store that expects one."""
    path = tmp_path / "cp.json"
    result_of(FileCheckpoint(path).save("7-x"))
    failure_of(FileCheckpoint(path, identity="http://h/db").load(), CheckpointError)


@pytest.mark.parametrize("crashing", ["replace", "fsync"])
def test_file_failed_write_keeps_old_checkpoint(tmp_path, monkeypatch, crashing):
    """A write failing at fsync or rename fails save, keeps the old file and leaves no temp file."""
    path = tmp_path / "cp.json"
    store = FileCheckpoint(path)
    result_of(store.save("1-old"))
    before = path.read_bytes()

    def crash(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, crashing, crash)
    err = failure_of(store.save("2-new"), CheckpointError)
    monkeypatch.undo()
    assert "No space left" in err.reason and str(path) in str(err)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cp.json"]
    assert result_of(store.load()) == "1-old"


def test_file_interrupted_write_leaves_no_temp_file(tmp_path, monkeypatch):
    """An exception that is not an OSError during the write still removes the temp file."""
    path = tmp_path / "cp.json"

    def interrupt(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        result_of(FileCheckpoint(path).save("1-a"))
    assert list(tmp_path.iterdir()) == []


def test_file_write_is_synced_then_renamed_then_dir_synced(tmp_path, monkeypatch):
    """save fsyncs the new file, then renames it over the old one, then fsyncs the directory."""
    events = record_write_order(monkeypatch)
    result_of(FileCheckpoint(tmp_path / "cp.json").save("1-a"))
    assert events == ["fsync file", "replace within the directory", "fsync dir"]


def test_file_save_into_missing_directory_fails(tmp_path):
    """Saving into a directory that does not exist fails with CheckpointError."""
    path = tmp_path / "no-such-dir" / "cp.json"
    err = failure_of(FileCheckpoint(path).save("1-a"), CheckpointError)
    assert str(path) in str(err)


def test_file_overlapping_saves_end_with_newest(tmp_path, monkeypatch):
    """Saves made during a write are written after it, so the newest seq ends on disk."""
    path = tmp_path / "cp.json"
    store = FileCheckpoint(path)
    written: list[Any] = []
    later: list[Deferred[None]] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        written.append(json.loads(Path(src).read_text("utf-8"))["seq"])
        if not later:
            later.append(store.save("2-newer"))
            later.append(store.save("3-newest"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    first = store.save("1-old")
    assert [result_of(d) for d in [first, *later]] == [None, None, None]
    assert written == ["1-old", "3-newest"]
    assert result_of(store.load()) == "3-newest"


# -- save ordering, with a database fake ------------------------------------


class FakeDatabase:
    """A Database stand-in whose writes wait until the test answers them."""

    url = "http://couch.example:5984/followed"

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.exists = True
        self.puts: list[tuple[dict[str, Any], Deferred[dict[str, Any]]]] = []

    def info(self) -> Deferred[dict[str, Any]]:
        if not self.exists:
            return _fail(NotFound(404, "not_found", "Database does not exist."))
        return succeed({"db_name": "followed"})

    def get(self, docid: str) -> Deferred[dict[str, Any]]:
        if not self.exists:
            return _fail(NotFound(404, "not_found", "Database does not exist."))
        if docid not in self.docs:
            return _fail(NotFound(404, "not_found", "missing"))
        return succeed(dict(self.docs[docid]))

    def save_doc(self, doc: dict[str, Any]) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self.puts.append((dict(doc), d))
        return d

    def answer(self, index: int, conflict: bool = False) -> None:
        """Complete the index-th write: store it, or refuse it as a conflict."""
        doc, d = self.puts[index]
        if conflict:
            d.errback(Conflict(409, "conflict", "Document update conflict"))
            return
        rev = f"0-{int(self.docs.get(doc['_id'], {}).get('_rev', '0-0')[2:]) + 1}"
        self.docs[doc["_id"]] = dict(doc, _rev=rev)
        d.callback({"ok": True, "id": doc["_id"], "rev": rev})


def _fail(exc: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(exc)
    return d


def test_saves_during_a_write_wait_and_only_the_newest_is_written():
    """Saves made during a write wait for it, then only the newest is written, and all fire."""
    db = FakeDatabase()
    store = LocalDocCheckpoint(db, "cp")
    ds = [store.save(seq) for seq in ("1-a", "2-b", "3-c")]
    assert [doc["seq"] for doc, _ in db.puts] == ["1-a"]
    assert not any(d.called for d in ds)
    db.answer(0)
    assert ds[0].called and not ds[1].called
    assert [doc["seq"] for doc, _ in db.puts] == ["1-a", "3-c"]
    assert db.puts[1][0]["_rev"] == "0-1"
    db.answer(1)
    assert [result_of(d) for d in ds] == [None, None, None]
    assert db.docs["_local/cp"]["seq"] == "3-c"


def test_failed_write_fails_only_its_callers():
    """When the in-flight write fails, its save fails and the newer queued save is still written."""
    db = FakeDatabase()
    store = LocalDocCheckpoint(db, "cp")
    first, second = store.save("1-a"), store.save("2-b")
    db.puts[0][1].errback(NotFound(404, "not_found", "Database does not exist."))
    failure_of(first, NotFound)
    assert not second.called and db.puts[1][0]["seq"] == "2-b"
    db.answer(1)
    assert result_of(second) is None


def test_cancelled_save_does_not_stop_the_writer():
    """Cancelling a save's Deferred fails it with CancelledError and later saves still complete."""
    db = FakeDatabase()
    store = LocalDocCheckpoint(db, "cp")
    first = store.save("1-a")
    first.cancel()
    failure_of(first, CancelledError)
    second = store.save("2-b")
    db.answer(0)
    db.answer(1)
    assert result_of(second) is None and db.docs["_local/cp"]["seq"] == "2-b"


def test_conflict_is_retried_once_with_the_current_rev():
    """A conflicting write re-reads the document's rev and is retried once with it."""
    db = FakeDatabase()
    db.docs["_local/cp"] = {"_id": "_local/cp", "_rev": "0-4", "seq": "9-other"}
    d = LocalDocCheckpoint(db, "cp").save("10-mine")
    assert "_rev" not in db.puts[0][0]
    db.answer(0, conflict=True)
    assert db.puts[1][0]["_rev"] == "0-4"
    db.answer(1)
    assert result_of(d) is None and db.docs["_local/cp"]["seq"] == "10-mine"


def test_second_conflict_fails_the_save():
    """When the retry conflicts too, save fails with Conflict and no third write is made."""
    db = FakeDatabase()
    d = LocalDocCheckpoint(db, "cp").save("10-mine")
    db.answer(0, conflict=True)
    db.answer(1, conflict=True)
    failure_of(d, Conflict)
    assert len(db.puts) == 2


def test_missing_doc_in_missing_database_is_not_found():
    """load fails with NotFound, not None, when the database itself is gone."""
    db = FakeDatabase()
    store = LocalDocCheckpoint(db, "cp")
    assert result_of(store.load()) is None
    db.exists = False
    failure_of(store.load(), NotFound)


# -- specs ----------------------------------------------------------------

# A reactor that never connects: building a Database must not need a server.
DB = Server("http://admin:s3cret-pw@couch.example:5984/", reactor=MemoryReactor())["followed"]


def test_spec_memory():
    """'memory' builds an empty MemoryCheckpoint."""
    store = parse_checkpoint_spec("memory", DB)
    assert isinstance(store, MemoryCheckpoint) and store.seq is None


def test_spec_file(tmp_path):
    """'file:PATH' builds a FileCheckpoint on PATH with the identity given."""
    path = tmp_path / "a b" / "cp:1.json"
    store = parse_checkpoint_spec(f"file:{path}", DB, identity="id-1")
    assert isinstance(store, FileCheckpoint)
    assert store.path == path and store.identity == "id-1" and str(path) in store.describe()


def test_spec_file_expands_home(monkeypatch, tmp_path):
    """'file:~/cp.json' is taken relative to the home directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    store = parse_checkpoint_spec("file:~/cp.json", DB)
    assert isinstance(store, FileCheckpoint) and store.path == tmp_path / "cp.json"


def test_spec_local():
    """'local:NAME' builds a store on _local/NAME in the followed db, shown without the password."""
    store = parse_checkpoint_spec("local:my-follower", DB, identity="id-2")
    assert isinstance(store, LocalDocCheckpoint)
    assert store.db is DB and store.docid == "_local/my-follower" and store.identity == "id-2"
    assert store.describe() == "_local/my-follower in http://couch.example:5984/followed"
    assert "s3cret" not in store.describe() + repr(store)


@pytest.mark.parametrize(
    "spec",
    ["", "mem", "MEMORY", "memory:x", " memory", "file:", "local:", "s3:bucket", "cp.json"],
)
def test_bad_specs_raise_value_error(spec):
    """Anything but memory, file:PATH and local:NAME raises ValueError quoting spec and forms."""
    with pytest.raises(ValueError) as e:
        parse_checkpoint_spec(spec, DB)
    assert repr(spec) in str(e.value) and "'local:NAME'" in str(e.value)


def test_local_name_with_prefix_is_refused():
    """A local name that already starts with _local/ raises ValueError naming it."""
    with pytest.raises(ValueError, match="'_local/x'"):
        parse_checkpoint_spec("local:_local/x", DB)


def test_a_memory_checkpoint_keeps_a_bounded_history_of_saves() -> None:
    """A follower that runs for months with the default store must not grow: the last saves are kept, not all."""
    from txchanges.service._memorycheckpoint import KEPT_SAVES

    store = MemoryCheckpoint()
    for n in range(5 * KEPT_SAVES):
        store.save(f"{n}-x")
    assert KEPT_SAVES <= len(store.saves) <= 2 * KEPT_SAVES
    assert store.saves[-1] == f"{5 * KEPT_SAVES - 1}-x"
    assert store.saves == [f"{n}-x" for n in range(5 * KEPT_SAVES - len(store.saves), 5 * KEPT_SAVES)]
