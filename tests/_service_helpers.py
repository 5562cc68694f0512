"""Helpers for the ChangesService restart and memory tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, reactor, task

from txchanges import Consumer, Database

T = TypeVar("T")


def sleep(seconds: float) -> "defer.Deferred[None]":
    return task.deferLater(reactor, seconds, lambda: None)


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    """Poll *predicate* on the reactor until it holds; fail naming *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await sleep(step)


def change_key(row: dict[str, Any]) -> tuple[str, str]:
    """A change as ``(id, rev)``: what a handler is told to do."""
    return row["id"], row["changes"][0]["rev"]


class Recorder:
    """
    A slowish handler: each call returns a Deferred that fires after *delay*
    seconds, and the change counts as handled then.

    :ivar handled: ``(id, rev)`` of every finished call, in finishing order.
    :ivar seqs: The seq of every finished call, same order.
    :ivar running: Calls started and not finished.
    :ivar max_running: The most calls that ran at once.
    """

    def __init__(self, delay: float = 0.005) -> None:
        self.delay = delay
        self.handled: list[tuple[str, str]] = []
        self.seqs: list[Any] = []
        self.running = 0
        self.max_running = 0
        self._marks: list[tuple[int, defer.Deferred[None]]] = []

    def __call__(self, row: dict[str, Any]) -> "defer.Deferred[None]":
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        return task.deferLater(reactor, self.delay, self._finish, row)

    def _finish(self, row: dict[str, Any]) -> None:
        self.running -= 1
        self.handled.append(change_key(row))
        self.seqs.append(row["seq"])
        due = [m for m in self._marks if len(self.handled) >= m[0]]
        for mark in due:
            self._marks.remove(mark)
            # On a later turn: whoever waits reacts outside the handler's stack.
            reactor.callLater(0, mark[1].callback, None)

    def when(self, count: int) -> "defer.Deferred[None]":
        """A Deferred firing (on a later reactor turn) once *count* calls finished."""
        d: defer.Deferred[None] = defer.Deferred()
        if len(self.handled) >= count:
            reactor.callLater(0, d.callback, None)
        else:
            self._marks.append((count, d))
        return d


async def write_docs(db: Database, ids: list[str], batch: int = 100) -> None:
    """Create one document per id, in bulk batches."""
    for start in range(0, len(ids), batch):
        results = await db.save_docs([{"_id": i, "n": n} for n, i in enumerate(ids[start:start + batch], start)])
        assert all("rev" in r for r in results), results


async def feed_rows(db: Database, since: Any = 0) -> list[dict[str, Any]]:
    """Every row of a normal feed from *since*, in feed order."""
    result = await Consumer(db).fetch(since=since)
    return list(result["results"])


def testserver_counts(couch_server: Any) -> dict[str, Any]:
    """The test server's own counters (``GET /_testserver``, see testserver/README.md)."""
    status, body = couch_server.request("GET", "/_testserver")
    assert status == 200, body
    return dict(body)


def heartbeats_sent(couch_server: Any, db_name: str) -> int:
    """How many heartbeats the test server's _changes feeds of *db_name* have written."""
    return int(testserver_counts(couch_server)["heartbeats"]["changes"].get(db_name, 0))


def open_feeds(couch_server: Any) -> int:
    """How many _changes feeds the test server has open now."""
    return int(testserver_counts(couch_server)["open_feeds"]["changes"])


def started_feeds(couch_server: Any) -> int:
    """How many _changes feeds the test server has started, each counted once
    its ``since`` is resolved: when the count grows, a write from then on
    comes after a ``since=now``."""
    return int(testserver_counts(couch_server)["started_feeds"]["changes"])


async def start_feed(couch_server: Any, open_feed: Callable[[], T]) -> T:
    """Call *open_feed* (a Consumer call that opens a ``since=now`` feed) and
    return what it returns once the test server has started that feed: a
    write from then on comes after its "now"."""
    before = started_feeds(couch_server)
    result = open_feed()
    await wait_for(lambda: started_feeds(couch_server) > before, 5, "the feed to start")
    return result


def lines_then_signal(
    process: "subprocess.Popen[str]", count: int, signum: int, timeout: float
) -> tuple[list[str], str, str]:
    """Read *count* lines of *process*'s stdout, send it *signum*, and wait for it to end.

    :return: The lines read, then the rest of its stdout and its stderr; the
        process is killed if it has not ended by *timeout* seconds.
    """
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(count)]
        process.send_signal(signum)
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.returncode is None:
            process.kill()
            process.communicate()
    return lines, out, err
