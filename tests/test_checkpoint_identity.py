"""One checkpoint identity for the library, the command and the plugin: a checkpoint written by one resumes the others."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

import txchanges
from txchanges import ChangesService, CheckpointError, FileCheckpoint, LocalDocCheckpoint, Server, Shard, checkpoint_identity
from txchanges.cli._tap import Options

from ._service_helpers import Recorder, write_docs

TIMEOUT = 30


def follow(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``txchanges follow URL ARGS`` as a process."""
    return subprocess.run(
        [sys.executable, "-m", "txchanges", "follow", url, *args], capture_output=True, text=True, timeout=TIMEOUT
    )


def printed_ids(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["id"] for line in done.stdout.splitlines()]


async def run_library(db: Any, path: Path, count: int, **options: Any) -> list[str]:
    """Follow *db* with ChangesService and FileCheckpoint(path) (no identity) until *count* changes are done, then stop."""
    recorder = Recorder(delay=0)
    service = ChangesService(db, recorder, checkpoint=FileCheckpoint(path), heartbeat=2000, **options)
    service.startService()
    try:
        await recorder.when(count)
    finally:
        await service.stopService()
    return [docid for docid, _ in recorder.handled]


def test_identity_names_the_database_and_what_chooses_the_changes():
    """checkpoint_identity holds the URL without credentials, the filter and its parameters and the shard, not include_docs."""
    db = Server("http://bob:hunter2@127.0.0.1:5984/prefix/")["orders"]
    identity = checkpoint_identity(db, filter_name="app/paid", params={"region": "eu"}, include_docs=True, shard=Shard(1, 3))
    assert identity == "http://127.0.0.1:5984/prefix/orders/_changes?filter=app/paid&region=eu shard 1/3"
    assert checkpoint_identity(db) == "http://127.0.0.1:5984/prefix/orders/_changes"
    assert checkpoint_identity(db, doc_ids=["b", "a"]).endswith('?filter=_doc_ids {"doc_ids":["b","a"]}')
    assert txchanges.service.checkpoint.checkpoint_identity is checkpoint_identity


def test_the_plugin_and_the_command_compute_the_library_identity(tmp_path):
    """The options' checkpoint store carries exactly checkpoint_identity of the same database, filter and shard."""
    options = Options(environ={})
    options.parseOptions([
        "--url", "http://127.0.0.1:5984/", "--db", "orders", "--handler", "tests.handlers_for_tests:record",
        "--filter", "app/paid", "--param", "region=eu", "--include-docs", "--shard", "0/2",
        "--checkpoint", f"file:{tmp_path / 'c.json'}",
    ])
    db = Server("http://127.0.0.1:5984/")["orders"]
    store = options.checkpoint_store(db)
    assert isinstance(store, FileCheckpoint)
    assert store.identity == checkpoint_identity(db, filter_name="app/paid", params={"region": "eu"}, shard=Shard(0, 2))


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_of_the_library_resumes_the_command(couch_server, db, tmp_path):
    """A FileCheckpoint(path) written by ChangesService is read by txchanges follow, which prints only the newer changes."""
    path = tmp_path / "shared.ckpt"
    await write_docs(db, ["a", "b", "c"])
    assert await run_library(db, path, 3) == ["a", "b", "c"]
    assert json.loads(path.read_text())["identity"] == checkpoint_identity(db)
    await write_docs(db, ["d"])
    done = follow(couch_server.admin_url + db.name, "--checkpoint", f"file:{path}", "--limit", "1")
    assert printed_ids(done) == ["d"]


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_of_the_command_resumes_the_library(couch_server, db, tmp_path):
    """A checkpoint written by txchanges follow is read by ChangesService with FileCheckpoint(path), which hands over only the rest."""
    path = tmp_path / "shared.ckpt"
    await write_docs(db, ["a", "b", "c"])
    done = follow(couch_server.admin_url + db.name, "--checkpoint", f"file:{path}", "--limit", "2")
    assert printed_ids(done) == ["a", "b"]
    assert await run_library(db, path, 1) == ["c"]


@pytest_twisted.ensureDeferred
async def test_a_filtered_local_checkpoint_is_shared_too(couch_server, db):
    """With a filter, a _local checkpoint written by the command is read by the library with the same filter."""
    await write_docs(db, ["a", "b", "c"])
    done = follow(couch_server.admin_url + db.name, "--checkpoint", "local:shared", "--doc-ids", "a,c", "--limit", "1")
    assert printed_ids(done) == ["a"]
    recorder = Recorder(delay=0)
    store = LocalDocCheckpoint(db, "shared")
    service = ChangesService(db, recorder, checkpoint=store, heartbeat=2000, doc_ids=["a", "c"])
    service.startService()
    try:
        await recorder.when(1)
    finally:
        await service.stopService()
    assert [docid for docid, _ in recorder.handled] == ["c"]
    assert store.identity == checkpoint_identity(db, doc_ids=["a", "c"])


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_of_another_database_is_still_refused(couch_server, db, server, tmp_path):
    """The library's checkpoint of one database is refused by the command on another, which exits 1 naming both."""
    path = tmp_path / "shared.ckpt"
    await write_docs(db, ["a"])
    await run_library(db, path, 1)
    other = await server.create_db(db.name + "-other")
    try:
        done = follow(couch_server.admin_url + other.name, "--checkpoint", f"file:{path}")
    finally:
        await server.delete_db(other.name)
    assert done.returncode == 1 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert f"written for '{db.url}/_changes', not for '{other.url}/_changes'" in line


@pytest_twisted.ensureDeferred
async def test_a_service_refuses_a_file_written_with_no_identity(db, tmp_path):
    """A file saved by a bare FileCheckpoint, outside any follower, stops a service at start: it could be of any feed."""
    path = tmp_path / "bare.ckpt"
    await FileCheckpoint(path).save("1-anything")
    service = ChangesService(db, lambda change: None, checkpoint=FileCheckpoint(path))
    stopped = service.when_stopped()
    service.startService()
    with pytest.raises(CheckpointError, match="written with no identity"):
        await stopped
