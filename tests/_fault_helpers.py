"""Helpers for the ChangesService fault tests (tests/test_service_faults.py):
a handler that records what it did and catches concurrent calls for one
document, a writer that creates and updates documents straight on the test
server, and a log watcher that counts why the service reconnected.
"""

from __future__ import annotations

import gc
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Optional

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from txchanges import Consumer, Database

from ._service_helpers import change_key, sleep, wait_for

__all__ = [
    "Tracker",
    "Writer",
    "FailureLog",
    "fast_retry",
    "latest_revs",
    "report",
    "sleep",
    "wait_for",
    "change_key",
]


def fast_retry(attempt: int) -> float:
    """A deterministic, quick backoff: 0.05, 0.1, 0.15, then 0.2 s for every later retry."""
    return 0.05 * min(attempt + 1, 4)


async def latest_revs(db: Database, since: Any = 0) -> dict[str, str]:
    """``{id: rev}`` of every document in a normal feed from *since*, read directly."""
    result = await Consumer(db).fetch(since=since)
    return {row["id"]: row["changes"][0]["rev"] for row in result["results"]}


class Tracker:
    """
    The handler: records every ``(id, rev)`` it finishes, returns at once for
    most changes and, for a seeded share of them, a Deferred that fires a bit
    later. It notes any call that starts while another call for the same
    document is still running.

    :ivar handled: ``(id, rev)`` of every finished call, in finishing order.
    :ivar overlaps: Ids whose call started while one for the same id ran.
    :ivar running: Ids with a call running.
    :ivar max_running: The most calls that ran at once.
    :ivar calls_after: Calls that started while :attr:`closed` was set.
    """

    def __init__(self, rng: random.Random, slow_share: float = 0.25, max_delay: float = 0.02) -> None:
        self._rng = rng
        self._slow_share = slow_share
        self._max_delay = max_delay
        self.handled: list[tuple[str, str]] = []
        self.overlaps: list[str] = []
        self.running: set[str] = set()
        self.max_running = 0
        self.closed = False
        self.calls_after = 0

    def __call__(self, row: dict[str, Any]) -> Optional["defer.Deferred[None]"]:
        docid = row["id"]
        if self.closed:
            self.calls_after += 1
        if docid in self.running:
            self.overlaps.append(docid)
        self.running.add(docid)
        self.max_running = max(self.max_running, len(self.running))
        key = change_key(row)
        if self._rng.random() < self._slow_share:
            return task.deferLater(reactor, self._rng.uniform(0.001, self._max_delay), self._finish, docid, key)
        self._finish(docid, key)
        return None

    def _finish(self, docid: str, key: tuple[str, str]) -> None:
        self.running.discard(docid)
        self.handled.append(key)

    @property
    def handled_set(self) -> set[tuple[str, str]]:
        return set(self.handled)

    def duplicates(self) -> int:
        """How many calls repeated an ``(id, rev)`` already handled."""
        return sum(n - 1 for n in Counter(self.handled).values())

    def missing(self, revs: dict[str, str]) -> list[tuple[str, str]]:
        """The ``(id, rev)`` pairs of *revs* not handled yet."""
        done = self.handled_set
        return [(i, r) for i, r in revs.items() if (i, r) not in done]


class Writer:
    """
    Writes straight to the test server (never through the proxy): new
    documents in ``_bulk_docs`` batches and, after each batch, single updates
    of documents written earlier, so that some documents get several
    revisions.

    :ivar revs: ``{id: rev}`` as the writes answered: each document's newest revision.
    :ivar created: Documents created.
    :ivar updates: Single updates made.
    """

    def __init__(self, db: Database, rng: random.Random, prefix: str = "doc") -> None:
        self._db = db
        self._rng = rng
        self._prefix = prefix
        self.revs: dict[str, str] = {}
        self.created = 0
        self.updates = 0
        self._stop = False

    def stop(self) -> None:
        """Finish the current batch and its updates, then end :meth:`run`."""
        self._stop = True

    async def run(self, docs: int, batch: int = 40, updates: int = 4, pause: float = 0.1,
                  limit: float = 60.0) -> None:
        """Create *docs* documents (*batch* per request, then *updates* single updates, then *pause* seconds)."""
        deadline = time.monotonic() + limit
        while self.created < docs and not self._stop:
            assert time.monotonic() < deadline, "the writer took too long"
            size = min(batch, docs - self.created)
            new = [{"_id": f"{self._prefix}-{self.created + i:05d}", "n": self.created + i, "pad": "x" * 30}
                   for i in range(size)]
            results = await self._db.save_docs(new)
            assert all("rev" in r and "error" not in r for r in results), results
            self.created += size
            self.revs.update((r["id"], r["rev"]) for r in results)
            for docid in self._rng.sample(sorted(self.revs), min(updates, len(self.revs))):
                result = await self._db.save_doc({"_id": docid, "_rev": self.revs[docid], "u": self.updates})
                self.revs[docid] = result["rev"]
                self.updates += 1
            await sleep(pause)

    @property
    def changes_written(self) -> int:
        """Every revision written: one per creation, one per update."""
        return self.created + self.updates

    @property
    def updated_ids(self) -> int:
        """Documents past their first revision."""
        return sum(1 for rev in self.revs.values() if not rev.startswith("1-"))


class FailureLog:
    """
    Collects, while used as a context manager, the errors the service logs
    before each retry ("... failed ({error}); retry ..."), by type name, and every
    "Unhandled error in Deferred" (garbage is collected on exit so that
    those are logged before it ends).

    :ivar errors: Retried errors by type name.
    :ivar unhandled: The failures of unhandled errors in Deferreds.
    """

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.unhandled: list[Failure] = []

    def _observe(self, event: dict[str, Any]) -> None:
        text = str(event.get("log_format", ""))
        if (str(event.get("log_namespace", "")).endswith("ChangesService") and "failed" in text
                and isinstance(event.get("error"), Exception) and "log_failure" not in event):
            self.errors[type(event["error"]).__name__] += 1
        elif "log_failure" in event and event.get("log_namespace") == "twisted.internet.defer":
            # The failure half of Twisted's "Unhandled error in Deferred:".
            self.unhandled.append(event["log_failure"])

    def __enter__(self) -> "FailureLog":
        globalLogPublisher.addObserver(self._observe)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            gc.collect()
        finally:
            globalLogPublisher.removeObserver(self._observe)

    def check_no_unhandled(self) -> None:
        """Fail if any Deferred ended with an unhandled error."""
        assert not self.unhandled, "unhandled errors in Deferreds:\n" + "\n".join(
            f.getTraceback() for f in self.unhandled[:3])


def report(say: Callable[[str], None], name: str, **fields: Any) -> None:
    """Print one line for the run's summary and to stdout (seen with -s)."""
    line = f"{name}: " + ", ".join(f"{k}={v}" for k, v in fields.items())
    print(line)
    say(line)
