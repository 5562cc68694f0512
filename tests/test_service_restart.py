"""ChangesService restarts against the project's test server: after a clean stop,
after a crash (SIGKILL of a follower process), and with ``since="now"``.

What "no change lost, repeats bounded" means here: the feed in order is
``rows``; a restart resumes from the saved checkpoint ``S``; the second service
must hand over exactly the rows after ``S`` (plus what is written meanwhile),
none before it; the changes handled twice are the ones the first service
handled past ``S``, and there are at most as many as could be in flight or
done since the last save.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from txchanges import ChangesService, FileCheckpoint, LocalDocCheckpoint

from ._service_helpers import Recorder, change_key, feed_rows, sleep, wait_for, write_docs

ROOT = Path(__file__).resolve().parent.parent

CONCURRENCY = 4
MAX_BUFFERED = 2 * CONCURRENCY  # the service's default
CHECKPOINT_EVERY = 10
DOCS = 300
UPDATED = 30  # documents given a second revision before following starts
NEW_DOCS = 40  # written while the second service runs



def make_store(kind: str, db, tmp_path: Path):
    if kind == "file":
        return FileCheckpoint(tmp_path / "follower.json")
    return LocalDocCheckpoint(db, "follower")


async def fill(db) -> None:
    """300 documents, the first 30 of them updated once (so they sit at the feed's end with rev 2)."""
    ids = [f"doc-{i:04d}" for i in range(DOCS)]
    await write_docs(db, ids)
    for i in ids[:UPDATED]:
        doc = await db.get(i)
        doc["updated"] = True
        await db.save_doc(doc)


async def write_while_running(db, prefix: str) -> list[tuple[str, str]]:
    """New documents and new revisions of old ones, written in small batches with pauses."""
    written = []
    for start in range(0, NEW_DOCS, 10):
        results = await db.save_docs([{"_id": f"{prefix}-{i:03d}"} for i in range(start, start + 10)])
        written += [(r["id"], r["rev"]) for r in results]
        await sleep(0.05)
    for i in range(UPDATED, UPDATED + 5):
        doc = await db.get(f"doc-{i:04d}")
        result = await db.save_doc(doc)
        written.append((result["id"], result["rev"]))
    return written


def latest(rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {change_key(r) for r in rows}


async def resume_and_check(db, store, first_handled: list[tuple[str, str]], saved: Any, prefix: str) -> dict:
    """
    Start a second service on *store*, write more while it runs, and check
    that it handles exactly what lies after *saved* plus the new writes, and
    that nothing is missed overall.

    :return: Measured numbers.
    """
    after = await feed_rows(db, since=saved)
    after_keys = latest(after)
    before_keys = latest(await feed_rows(db, since=0)) - after_keys
    second = Recorder(delay=0.005)
    svc = ChangesService(db, second, checkpoint=store, concurrency=CONCURRENCY, checkpoint_every=CHECKPOINT_EVERY)
    svc.startService()
    try:
        written = await write_while_running(db, prefix)
        expected = after_keys | set(written)
        await wait_for(lambda: expected <= set(second.handled), 20, "the second service to catch up")
        final = (await db.server.request_json("GET", db.path("_changes"), [("since", "now"), ("limit", "0")]))["last_seq"]
        await wait_for(lambda: svc.resume_seq == final, 5, "the resume point to reach the end")
    finally:
        await svc.stopService()
    counts = Counter(second.handled)
    assert not [k for k, n in counts.items() if n > 1], "the second service handled a change twice"
    # Nothing at or before the checkpoint is handled again...
    assert not set(second.handled) & before_keys
    # ...and nothing after it, or written later, is missed.
    assert set(second.handled) == expected
    everything = latest(await feed_rows(db, since=0))
    assert everything <= set(first_handled) | set(second.handled)
    repeats = set(first_handled) & set(second.handled)
    # A repeat is a change the first service handled past its last checkpoint.
    assert repeats <= after_keys
    assert await store.load() == final
    return {"repeats": len(repeats), "after_checkpoint": len(after_keys), "second": len(second.handled)}


@pytest.mark.parametrize("kind", ["file", "localdoc"])
@pytest_twisted.ensureDeferred
async def test_restart_after_clean_stop_resumes_from_the_checkpoint(db, tmp_path, kind, report_summary):
    """A service stopped halfway and a new one on the same store together handle every change once, the second only what lies past the saved checkpoint."""
    await fill(db)
    first = Recorder(delay=0.01)
    svc = ChangesService(
        db, first, checkpoint=make_store(kind, db, tmp_path), concurrency=CONCURRENCY, checkpoint_every=CHECKPOINT_EVERY
    )
    svc.startService()
    await first.when(DOCS // 2)
    await svc.stopService()
    assert svc.state == "stopped"
    assert first.running == 0, "stopService fired while handler calls were still running"
    assert first.max_running == CONCURRENCY
    handled_at_stop = len(first.handled)
    assert DOCS // 2 <= handled_at_stop < DOCS // 2 + MAX_BUFFERED + CONCURRENCY
    assert svc.stats.checkpoints >= 3
    saved = await make_store(kind, db, tmp_path).load()
    assert saved is not None and saved == svc.resume_seq
    # A clean stop waits for the running calls and saves past them; with one
    # change per document nothing is started out of order, so the
    # checkpoint lies right after what was handled.
    all_rows = await feed_rows(db)
    position = [r["seq"] for r in all_rows].index(saved)
    assert set(first.handled) == latest(all_rows[: position + 1])

    numbers = await resume_and_check(db, make_store(kind, db, tmp_path), first.handled, saved, "late")
    assert numbers["repeats"] <= MAX_BUFFERED
    report_summary(
        f"restart after clean stop ({kind}): first handled {handled_at_stop}, "
        f"{numbers['after_checkpoint']} after checkpoint, repeats {numbers['repeats']}"
    )


FOLLOWER_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from twisted.internet import defer, reactor, task
    from txchanges import ChangesService, FileCheckpoint, Server

    db = Server(os.environ["FOLLOW_SERVER"])[os.environ["FOLLOW_DB"]]
    delay = float(os.environ["FOLLOW_DELAY"])
    never = os.environ.get("FOLLOW_NEVER_FINISH") == "1"

    def say(text):
        os.write(1, (text + "\\n").encode())

    def handler(row):
        key = row["id"] + " " + row["changes"][0]["rev"]
        if never:
            say("got " + key)
            return defer.Deferred()
        return task.deferLater(reactor, delay, say, "done " + key)

    svc = ChangesService(
        db, handler, checkpoint=FileCheckpoint(os.environ["FOLLOW_CHECKPOINT"]),
        since=os.environ.get("FOLLOW_SINCE") or None,
        concurrency=int(os.environ["FOLLOW_CONCURRENCY"]),
        checkpoint_every=int(os.environ["FOLLOW_EVERY"]),
        checkpoint_interval=float(os.environ.get("FOLLOW_INTERVAL", "5")),
    )

    def ready():
        if svc.state == "streaming":
            say("streaming")
        else:
            reactor.callLater(0.02, ready)

    reactor.callWhenRunning(svc.startService)
    reactor.callWhenRunning(ready)
    reactor.run()
    """
)


class FollowerProcess(protocol.ProcessProtocol):
    """A follower in a child process; SIGKILLed by its pid once it printed *kill_after* lines of a kind."""

    def __init__(self, kill_after: int | None = None, kind: str = "done") -> None:
        self.kill_after = kill_after
        self.kind = kind
        self.lines: list[str] = []
        self.stderr = b""
        self._buffer = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._waiting: list[tuple[Any, defer.Deferred[None]]] = []
        self.killed = False

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        self.lines += [line.decode() for line in lines]
        if self.kill_after is not None and not self.killed and len(self.of_kind(self.kind)) >= self.kill_after:
            self.kill()
        for item in list(self._waiting):
            if item[1].called:
                self._waiting.remove(item)
            elif item[0](self):
                self._waiting.remove(item)
                item[1].callback(None)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def of_kind(self, kind: str) -> list[tuple[str, str]]:
        return [tuple(line.split()[1:3]) for line in self.lines if line.startswith(kind + " ")]

    def kill(self) -> None:
        if not self.killed and self.transport is not None:
            self.killed = True
            self.transport.signalProcess("KILL")

    def until(self, predicate, timeout: float = 15) -> defer.Deferred[None]:
        """Fires once *predicate(self)* holds; fails if the child ends first or after *timeout* seconds."""
        d: defer.Deferred[None] = defer.Deferred()
        if predicate(self):
            d.callback(None)
            return d
        self._waiting.append((predicate, d))
        timer = reactor.callLater(timeout, d.cancel)
        return d.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])

    def processEnded(self, reason) -> None:
        self.reason = reason
        waiting, self._waiting = self._waiting, []
        for _, d in waiting:
            d.errback(AssertionError(f"the follower ended first: {self.stderr.decode()}"))
        self.ended.callback(None)


def spawn_follower(tmp_path: Path, couch_server, db, checkpoint: Path, proto: FollowerProcess, **env: str):
    script = tmp_path / "follower.py"
    script.write_text(FOLLOWER_SCRIPT)
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "FOLLOW_SERVER": couch_server.admin_url,
        "FOLLOW_DB": db.name,
        "FOLLOW_CHECKPOINT": str(checkpoint),
        "FOLLOW_CONCURRENCY": str(CONCURRENCY),
        "FOLLOW_EVERY": str(CHECKPOINT_EVERY),
        "FOLLOW_DELAY": "0.01",
        **env,
    }
    reactor.spawnProcess(proto, sys.executable, [sys.executable, str(script)], env=environ)


async def ended_within(proto: FollowerProcess, seconds: float) -> None:
    timer = reactor.callLater(seconds, proto.kill)
    try:
        await proto.ended
    finally:
        if timer.active():
            timer.cancel()


@pytest_twisted.ensureDeferred
async def test_restart_after_sigkill_resumes_from_the_last_saved_checkpoint(couch_server, db, tmp_path, report_summary):
    """A follower process SIGKILLed mid-feed loses nothing: a new service resumes from its checkpoint file, repeating only what it handled past its last save."""
    await fill(db)
    checkpoint = tmp_path / "follower.json"
    child = FollowerProcess(kill_after=DOCS // 2)
    spawn_follower(tmp_path, couch_server, db, checkpoint, child)
    await ended_within(child, 30)
    assert child.killed, child.stderr.decode()
    assert child.reason.value.signal == 9
    handled = child.of_kind("done")
    assert DOCS // 2 <= len(handled) < DOCS, "the kill did not land mid-feed"
    assert len(set(handled)) == len(handled)
    record = json.loads(checkpoint.read_text())
    saved = record["seq"]
    assert isinstance(saved, str)
    after = latest(await feed_rows(db, since=saved))
    handled_past_save = set(handled) & after
    # What lies past the last save is at most what was done since it (fewer
    # than checkpoint_every plus what finished during that save) and what
    # was in flight.
    assert len(handled_past_save) <= CHECKPOINT_EVERY + MAX_BUFFERED
    assert len(after) <= DOCS - len(handled) + CHECKPOINT_EVERY + MAX_BUFFERED

    numbers = await resume_and_check(db, FileCheckpoint(checkpoint), handled, saved, "after-crash")
    assert numbers["repeats"] == len(handled_past_save)
    report_summary(
        f"restart after SIGKILL: child handled {len(handled)}, {numbers['after_checkpoint']} after its "
        f"last checkpoint, repeats {numbers['repeats']} (bound {CHECKPOINT_EVERY + MAX_BUFFERED})"
    )


async def now_seq(db) -> Any:
    body = await db.server.request_json("GET", db.path("_changes"), [("since", "now"), ("limit", "0")])
    return body["last_seq"]


@pytest_twisted.ensureDeferred
async def test_since_now_stopped_before_any_change_saves_a_real_seq(db, tmp_path):
    """A since='now' service stopped before any change saves the concrete seq it started at, and a restart handles exactly what was written while it was stopped."""
    await write_docs(db, [f"old-{i}" for i in range(20)])
    start_seq = await now_seq(db)
    path = tmp_path / "now.json"
    first = Recorder()
    svc = ChangesService(db, first, since="now", checkpoint=FileCheckpoint(path))
    svc.startService()
    await wait_for(lambda: svc.state == "streaming", 5, "the first service to stream")
    await svc.stopService()
    assert first.handled == []
    saved = await FileCheckpoint(path).load()
    assert saved != "now"
    assert saved == start_seq
    assert svc.resume_seq == start_seq

    await write_docs(db, [f"while-stopped-{i}" for i in range(30)])
    second = Recorder()
    svc2 = ChangesService(db, second, since="now", checkpoint=FileCheckpoint(path))
    svc2.startService()
    try:
        end = await now_seq(db)
        await wait_for(lambda: svc2.resume_seq == end, 10, "the changes written while stopped")
    finally:
        await svc2.stopService()
    assert sorted(i for i, _ in second.handled) == sorted(f"while-stopped-{i}" for i in range(30))
    assert await FileCheckpoint(path).load() == await now_seq(db)


async def stop_within(svc: ChangesService, seconds: float) -> None:
    d = svc.stopService()
    timer = reactor.callLater(seconds, d.cancel)
    await d
    assert timer.active(), f"stopService did not fire within {seconds} s"
    timer.cancel()


@pytest_twisted.ensureDeferred
async def test_since_now_stopped_at_once_saves_a_real_seq_or_nothing(db, tmp_path):
    """A since='now' service stopped in the same turn it started never hangs, and leaves either no checkpoint or a concrete seq."""
    await write_docs(db, [f"old-{i}" for i in range(5)])
    path = tmp_path / "now.json"
    handler = Recorder()
    svc = ChangesService(db, handler, since="now", checkpoint=FileCheckpoint(path))
    svc.startService()
    await stop_within(svc, 5)
    assert svc.state in ("stopped", "failed") and not svc.running
    assert handler.handled == []
    saved = await FileCheckpoint(path).load()
    assert saved is None or (saved != "now" and saved == await now_seq(db))


@pytest.mark.parametrize("case", ["since-now", "localdoc-load"])
@pytest_twisted.ensureDeferred
async def test_stop_during_start_up_request_is_a_clean_stop(db, tmp_path, case):
    """stopService() while the service's start-up request is in flight ends it 'stopped', and when_stopped() fires with None."""
    if case == "since-now":
        svc = ChangesService(db, Recorder(), since="now", checkpoint=FileCheckpoint(tmp_path / "c.json"))
    else:
        svc = ChangesService(db, Recorder(), checkpoint=LocalDocCheckpoint(db, "follower"))
    svc.startService()
    stopped = svc.when_stopped()
    await stop_within(svc, 5)
    outcome = []
    stopped.addBoth(outcome.append)
    assert outcome == [None], outcome
    assert svc.state == "stopped"


@pytest_twisted.ensureDeferred
async def test_since_now_crash_before_first_checkpoint_loses_no_change(couch_server, db, tmp_path):
    """A since='now' follower SIGKILLed while handling its first change hands that change, and later ones, to the service that replaces it."""
    checkpoint = tmp_path / "now.json"
    child = FollowerProcess()
    # The window is the first checkpoint_interval (5 s by default); a long
    # one keeps a slow machine from closing it before the kill.
    spawn_follower(
        tmp_path, couch_server, db, checkpoint, child,
        FOLLOW_SINCE="now", FOLLOW_NEVER_FINISH="1", FOLLOW_INTERVAL="60",
    )
    try:
        await child.until(lambda p: "streaming" in p.lines)
        await db.save_doc({"_id": "in-flight"})
        await child.until(lambda p: p.of_kind("got"))
    finally:
        child.kill()
        await ended_within(child, 10)
    assert [i for i, _ in child.of_kind("got")] == ["in-flight"]
    await db.save_doc({"_id": "while-down"})
    second = Recorder()
    svc = ChangesService(db, second, since="now", checkpoint=FileCheckpoint(checkpoint))
    svc.startService()
    try:
        await wait_for(lambda: svc.state == "streaming", 5, "the new service to stream")
        await db.save_doc({"_id": "after-restart"})
        await wait_for(lambda: ("after-restart" in {i for i, _ in second.handled}), 5, "the live change")
    finally:
        await svc.stopService()
    assert sorted(i for i, _ in second.handled) == ["after-restart", "in-flight", "while-down"]
