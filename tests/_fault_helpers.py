"""Helpers for the ChangesService fault tests (tests/test_service_faults.py):
a handler that records what it did and catches concurrent calls for one
document, a writer that creates and updates documents straight on the test
server, a log watcher that counts, by their fields, the events that make the
service reconnect, and seeds drawn afresh for each run.
"""

from __future__ import annotations

import gc
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Optional

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from txchanges import ChangesService, Consumer, Database

from ._service_helpers import change_key, sleep, wait_for

__all__ = [
    "Tracker",
    "Writer",
    "FailureLog",
    "draw_seed",
    "seeded",
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
        self._busy = False
        self._held: Optional[defer.Deferred[None]] = None
        self._idle: list[defer.Deferred[None]] = []

    def stop(self) -> None:
        """Finish the current batch and its updates, then end :meth:`run`."""
        self._stop = True

    def hold(self) -> "defer.Deferred[None]":
        """
        Finish the current batch and its updates, then write nothing until
        :meth:`release`. The Deferred fires once nothing is being written.
        """
        if self._held is None:
            self._held = defer.Deferred()
        d: defer.Deferred[None] = defer.Deferred()
        if self._busy:
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    def release(self) -> None:
        """Write again after :meth:`hold`."""
        held, self._held = self._held, None
        if held is not None:
            held.callback(None)

    async def run(self, docs: int, batch: int = 40, updates: int = 4, pause: float = 0.1,
                  limit: float = 60.0) -> None:
        """Create *docs* documents (*batch* per request, then *updates* single updates, then *pause* seconds)."""
        deadline = time.monotonic() + limit
        while self.created < docs and not self._stop:
            if self._held is not None:
                await self._held
                continue
            assert time.monotonic() < deadline, "the writer took too long"
            self._busy = True
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
            self._busy = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            await sleep(pause)

    @property
    def changes_written(self) -> int:
        """Every revision written: one per creation, one per update."""
        return self.created + self.updates

    @property
    def updated_ids(self) -> int:
        """Documents past their first revision."""
        return sum(1 for rev in self.revs.values() if not rev.startswith("1-"))


def _fields(event: dict[str, Any]) -> set[str]:
    """The fields an event was logged with (not the logging system's own ``log_*`` keys)."""
    return {k for k in event if not k.startswith("log_")}


class FailureLog:
    """
    Collects, while used as a context manager, the structured log events of
    every :class:`~txchanges.ChangesService`, told apart by their fields and
    not by their text: a transient failure before a retry (``what``,
    ``error``, ``attempt``, ``delay``), a feed that ended cleanly before a
    reconnect (``seq`` alone), giving up (``what``, ``seconds``); and every
    "Unhandled error in Deferred" (garbage is collected on exit so that
    those are logged before it ends).

    :ivar errors: Retried errors by type name, over every service.
    :ivar unhandled: The failures of unhandled errors in Deferreds.
    :ivar gave_up: The ``seconds`` of failing each give-up event reports.
    """

    RETRY = {"what", "error", "attempt", "delay"}
    GIVE_UP = {"what", "seconds"}
    CLEAN_END = {"seq"}

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.unhandled: list[Failure] = []
        self.gave_up: list[float] = []
        self._retries: Counter[int] = Counter()
        self._clean_ends: Counter[int] = Counter()

    def _observe(self, event: dict[str, Any]) -> None:
        if "log_failure" in event:
            if event.get("log_namespace") == "twisted.internet.defer":
                # The failure half of Twisted's "Unhandled error in Deferred:".
                self.unhandled.append(event["log_failure"])
            return
        if not isinstance(event.get("log_source"), ChangesService):
            return
        source, fields = id(event["log_source"]), _fields(event)
        if fields == self.RETRY and isinstance(event["error"], Exception):
            self.errors[type(event["error"]).__name__] += 1
            self._retries[source] += 1
        elif fields == self.CLEAN_END:
            self._clean_ends[source] += 1
        elif fields == self.GIVE_UP:
            self.gave_up.append(float(event["seconds"]))

    def retries(self, service: ChangesService) -> int:
        """How many transient failures *service* logged before a retry."""
        return self._retries[id(service)]

    def clean_ends(self, service: ChangesService) -> int:
        """How many feeds of *service* ended cleanly before a reconnect."""
        return self._clean_ends[id(service)]

    def check_reconnects(self, service: ChangesService) -> None:
        """
        Check that *service*, streaming and never restarted, made exactly
        one new request after each failure and each clean end it logged:
        no retry lost, no request made without a reason.
        """
        assert service.state == "streaming", service.state
        expected = self.retries(service) + self.clean_ends(service)
        assert service.stats.reconnects == expected, (
            f"{service.stats.reconnects} reconnects, but {self.retries(service)} retries "
            f"and {self.clean_ends(service)} clean ends logged")

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


def draw_seed() -> int:
    """
    A fresh seed for a randomised test, or the one in ``TXCHANGES_FAULT_SEED``
    to replay a run (each test reports the seed it used).
    """
    fixed = os.environ.get("TXCHANGES_FAULT_SEED")
    seed = int(fixed) if fixed else random.SystemRandom().randrange(2**32)
    # Shown with the output of a failed test.
    print(f"TXCHANGES_FAULT_SEED={seed}")
    return seed


def seeded(seed: int, name: str) -> random.Random:
    """A random generator for one use, derived from the test's *seed*."""
    return random.Random(f"{seed}:{name}")


def report(say: Callable[[str], None], name: str, **fields: Any) -> None:
    """Print one line for the run's summary and to stdout (seen with -s)."""
    line = f"{name}: " + ", ".join(f"{k}={v}" for k, v in fields.items())
    print(line)
    say(line)
