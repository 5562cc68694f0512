"""A checkpoint that cannot be written: refused at start-up, and a follower stopped when saves keep failing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pytest
from twisted.internet.task import Clock

from txchanges import ChangesService, CheckpointError, FileCheckpoint, LocalDocCheckpoint, MemoryCheckpoint
from txchanges.service._saver import GIVE_UP_FAILURES, GIVE_UP_SECONDS
from txchanges.testing import FakeCouchDB

from .test_testing import failure_of, result_of


class Follower:
    """A ChangesService on a FakeCouchDB database "db", on a task.Clock, saving after every change."""

    def __init__(self, store: Any, **options: Any) -> None:
        self.clock = Clock()
        self.fake = FakeCouchDB(clock=self.clock)
        self.fake.create_db("db")
        self.db = self.fake.server()["db"]
        if callable(store):  # a store that needs the database
            store = store(self.db)
        self.handled: list[str] = []
        options.setdefault("checkpoint_every", 1)
        options.setdefault("retry_policy", lambda attempt: 1.0)
        self.service = ChangesService(
            self.db, lambda change: self.handled.append(change["id"]), checkpoint=store, clock=self.clock, **options
        )
        self.stopped = self.service.when_stopped()

    def changes_requests(self) -> int:
        return sum(1 for r in self.fake.requests if r.path[-1:] == ["_changes"])

    def run_for(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)


# -- start-up -------------------------------------------------------------------------


def test_file_check_passes_and_leaves_nothing_behind(tmp_path):
    """check() on a writable directory succeeds and leaves the directory as it was."""
    (tmp_path / "other").write_text("x")
    assert result_of(FileCheckpoint(tmp_path / "cp.json").check()) is None
    assert [p.name for p in tmp_path.iterdir()] == ["other"]


def test_file_check_fails_for_a_missing_directory(tmp_path):
    """check() fails with CheckpointError naming the directory when it does not exist, or is a file."""
    err = failure_of(FileCheckpoint(tmp_path / "gone" / "cp.json").check())
    assert isinstance(err, CheckpointError) and f"the directory {tmp_path / 'gone'} does not exist" in err.reason
    (tmp_path / "plain").write_text("")
    err = failure_of(FileCheckpoint(tmp_path / "plain" / "cp.json").check())
    assert isinstance(err, CheckpointError) and "does not exist" in err.reason


def test_file_check_fails_when_nothing_can_be_created(tmp_path, monkeypatch):
    """check() fails with CheckpointError when a file cannot be created in the directory (full, read-only)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    err = failure_of(FileCheckpoint(tmp_path / "cp.json").check())
    assert isinstance(err, CheckpointError)
    assert err.reason == f"cannot write in {tmp_path}: No space left on device"


def test_memory_and_local_checks_pass():
    """check() of a memory or _local store succeeds without a request."""
    follower = Follower(MemoryCheckpoint())
    before = len(follower.fake.requests)
    assert result_of(MemoryCheckpoint().check()) is None
    assert result_of(LocalDocCheckpoint(follower.db, "cp").check()) is None
    assert len(follower.fake.requests) == before


def test_service_with_an_unwritable_checkpoint_stops_at_start(tmp_path):
    """A checkpoint file in a missing directory stops the service at start-up with CheckpointError, before any feed."""
    follower = Follower(FileCheckpoint(tmp_path / "gone" / "cp.json"))
    follower.service.startService()
    err = failure_of(follower.stopped)
    assert isinstance(err, CheckpointError) and "does not exist" in str(err)
    assert follower.service.state == "failed" and follower.changes_requests() == 0


class NoCheck:
    """A store of the user's own, with load, save and describe, and no check()."""

    def __init__(self) -> None:
        self.inner = MemoryCheckpoint()

    def load(self) -> Any:
        return self.inner.load()

    def save(self, seq: Any) -> Any:
        return self.inner.save(seq)

    def describe(self) -> str:
        return "mine"


def test_a_store_without_check_still_works():
    """A store with only load, save and describe is followed and saved to as before."""
    store = NoCheck()
    follower = Follower(store)
    follower.service.startService()
    follower.fake.save("db", {"_id": "a"})
    assert follower.handled == ["a"] and store.inner.saves == [follower.fake.update_seq("db")]


# -- while running ------------------------------------------------------------------


def test_saves_failing_for_long_stop_the_service(tmp_path):
    """When the checkpoint directory disappears, the service goes on for a while, then stops with CheckpointError."""
    directory = tmp_path / "ckpt"
    directory.mkdir()
    follower = Follower(FileCheckpoint(directory / "cp.json"))
    follower.service.startService()
    follower.fake.save("db", {"_id": "a"})
    shutil.rmtree(directory)
    follower.fake.save("db", {"_id": "b"})
    follower.run_for(GIVE_UP_SECONDS - 1)
    assert not follower.stopped.called and follower.service.state == "streaming"
    follower.fake.save("db", {"_id": "c"})
    assert follower.handled == ["a", "b", "c"]
    follower.run_for(10)
    err = failure_of(follower.stopped)
    assert isinstance(err, CheckpointError) and err.location == f"file {directory / 'cp.json'}"
    assert f"saves failed in a row over" in err.reason and "No such file or directory" in err.reason
    assert follower.service.state == "failed" and follower.fake.open_feeds == 0


def test_a_burst_of_failures_does_not_stop_before_the_time(tmp_path):
    """Many failed saves in a few seconds (a fast feed) do not stop the service before GIVE_UP_SECONDS."""
    directory = tmp_path / "ckpt"
    directory.mkdir()
    follower = Follower(FileCheckpoint(directory / "cp.json"))
    follower.service.startService()
    directory.rmdir()
    for i in range(5 * GIVE_UP_FAILURES):
        follower.fake.save("db", {"_id": f"d{i}"})
    follower.run_for(GIVE_UP_SECONDS / 2)
    assert not follower.stopped.called and len(follower.handled) == 5 * GIVE_UP_FAILURES


def test_saves_that_recover_in_time_go_on(tmp_path):
    """A directory restored before the bound: the next save succeeds, the service goes on, the count starts over."""
    directory = tmp_path / "ckpt"
    directory.mkdir()
    path = directory / "cp.json"
    follower = Follower(FileCheckpoint(path))
    follower.service.startService()
    directory.rmdir()
    follower.fake.save("db", {"_id": "a"})
    follower.run_for(GIVE_UP_SECONDS - 5)
    directory.mkdir()
    follower.run_for(10)
    assert json.loads(path.read_text())["seq"] == follower.fake.update_seq("db")
    directory.joinpath("cp.json").unlink()
    directory.rmdir()
    follower.fake.save("db", {"_id": "b"})
    follower.run_for(GIVE_UP_SECONDS - 5)
    assert not follower.stopped.called and follower.service.stats.checkpoints == 1


def checkpoint_puts(fake: FakeCouchDB) -> int:
    return sum(1 for r in fake.requests if r.method == "PUT" and "_local" in r.path)


def test_a_503_on_a_local_checkpoint_is_retried_however_long():
    """Saves of a _local checkpoint answered 503 for far longer than the bound are retried, and succeed afterwards."""
    follower = Follower(lambda db: LocalDocCheckpoint(db, "cp"), checkpoint_interval=5.0)
    follower.service.startService()
    outage = 3 * GIVE_UP_SECONDS
    follower.fake.fail_next(int(outage / 5.0) + 2, 503, only=lambda r: r.method == "PUT" and "_local" in r.path)
    follower.fake.save("db", {"_id": "a"})
    follower.run_for(outage)
    assert not follower.stopped.called and follower.handled == ["a"]
    assert follower.fake.get("db", "_local/cp") is None and checkpoint_puts(follower.fake) > GIVE_UP_FAILURES
    follower.run_for(outage)
    assert follower.fake.get("db", "_local/cp")["seq"] == follower.fake.update_seq("db")
    assert not follower.stopped.called and follower.service.stats.checkpoints == 1


def test_final_save_failing_on_stop_fails_when_stopped(tmp_path):
    """When the save made on stop fails for a lasting reason, stopService fires and when_stopped fails with CheckpointError."""
    directory = tmp_path / "ckpt"
    directory.mkdir()
    follower = Follower(FileCheckpoint(directory / "cp.json"), checkpoint_every=100)
    follower.service.startService()
    follower.fake.save("db", {"_id": "a"})
    directory.rmdir()
    done = follower.service.stopService()
    assert result_of(done) is None
    err = failure_of(follower.stopped)
    assert isinstance(err, CheckpointError) and "the last save, on stop, failed" in err.reason


@pytest.mark.parametrize("feed", ["continuous", "longpoll"])
def test_command_with_an_unwritable_checkpoint_exits_1_with_one_line(couch_server, db_name, tmp_path, feed):
    """txchanges follow (either feed) with a checkpoint in a missing directory prints one error line and exits 1, printing no change."""
    couch_server.create_db(db_name)
    couch_server.request("PUT", f"{db_name}/a", {})
    path = tmp_path / "no-such-dir" / "x.ckpt"
    done = subprocess.run(
        [sys.executable, "-m", "txchanges", "follow", couch_server.admin_url + db_name, "--checkpoint", f"file:{path}",
         "--feed", feed],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [f"txchanges: checkpoint file {path}: the directory {path.parent} does not exist"]
