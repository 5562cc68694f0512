"""ChangesService with a batch handler, and the per-change handler called straight from the feed, driven by task.Clock."""

from __future__ import annotations

import json
from typing import Any, Optional

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from txchanges import ChangesService, MemoryCheckpoint, Server, Shard

from .test_service_unit import ScriptedFeed, end, row


class Batches:
    """A service with a batch handler over a scripted feed; records each batch's ids."""

    def __init__(self, handler: Any = None, **options: Any) -> None:
        self.clock = Clock()
        self.couch = ScriptedFeed()
        self.client = StubTreq(self.couch)
        self.batches: list[list[str]] = []
        self.store = MemoryCheckpoint()
        options.setdefault("retry_policy", lambda attempt: 1.0)
        options.setdefault("heartbeat", 1000)
        options.setdefault("checkpoint_every", 1)
        self.service = ChangesService(
            Server("http://127.0.0.1:5984/", http=self.client)["db"],
            batch_handler=handler or self.record,
            checkpoint=self.store,
            clock=self.clock,
            **options,
        )
        self.outcome: list[Any] = []

    def record(self, batch: list[dict[str, Any]]) -> Any:
        self.batches.append([r["id"] for r in batch])
        return None

    def start(self) -> None:
        self.service.startService()
        self.service.when_stopped().addBoth(self.outcome.append)
        self.client.flush()

    def write(self, *rows: bytes) -> None:
        self.couch.requests[-1].write(b"".join(rows))
        self.client.flush()

    def stop(self) -> list[Any]:
        done: list[Any] = []
        self.service.stopService().addBoth(done.append)
        self.client.flush()
        return done


def db() -> Any:
    return Server("http://127.0.0.1:5984/", http=StubTreq(ScriptedFeed()))["db"]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({}, TypeError),
        ({"handler": print, "batch_handler": print}, TypeError),
        ({"batch_handler": "not callable"}, TypeError),
        ({"batch_handler": print, "concurrency": 2}, ValueError),
        ({"batch_handler": print, "max_buffered": 4}, ValueError),
        ({"batch_handler": print, "max_ahead": 4000}, ValueError),
        ({"batch_handler": print, "max_batch": 0}, ValueError),
    ],
)
def test_handler_options_are_checked_at_once(kwargs: dict[str, Any], error: type) -> None:
    """Exactly one of handler and batch_handler; a batch handler takes no per-change scheduling options."""
    with pytest.raises(error):
        ChangesService(db(), **kwargs)


def test_each_read_is_a_batch_and_the_checkpoint_passes_it_when_done() -> None:
    """A read's changes are one batch; while its Deferred runs, the next waits and the checkpoint stays before it."""
    pending: list[Deferred[None]] = []

    def handler(batch: list[dict[str, Any]]) -> Deferred[None]:
        h.record(batch)
        pending.append(Deferred())
        return pending[-1]

    h = Batches(handler)
    h.couch.answer(row("1-a", "a") + row("2-b", "b") + row("3-a", "a", "2-x"))
    h.start()
    assert h.batches == [["a", "b"]]
    h.write(row("4-c", "c"))
    assert h.batches == [["a", "b"]] and h.store.saves == []
    pending[0].callback(None)
    assert h.batches == [["a", "b"], ["a"]] and h.store.saves == ["2-b"]
    pending[1].callback(None)
    assert h.batches[-1] == ["c"]
    pending[2].callback(None)
    assert h.store.saves[-1] == "4-c" and h.service.stats.handled == 4
    assert h.stop() == [None]


def test_max_batch_bounds_a_batch() -> None:
    """max_batch is the most changes a batch holds."""
    h = Batches(max_batch=2)
    h.couch.answer(b"".join(row(f"{n}-x", f"d{n}") for n in range(5)))
    h.start()
    assert h.batches == [["d0", "d1"], ["d2", "d3"], ["d4"]]
    assert h.service.resume_seq == "4-x"


def test_a_failing_batch_stops_the_service_before_it() -> None:
    """on_error="stop": the service stops with the error and the checkpoint stays before the whole batch."""

    def handler(batch: list[dict[str, Any]]) -> None:
        h.record(batch)
        if len(h.batches) == 2:
            raise RuntimeError("bulk write refused")

    h = Batches(handler, max_batch=2)
    h.couch.answer(b"".join(row(f"{n}-x", f"d{n}") for n in range(5)))
    h.start()
    assert h.batches == [["d0", "d1"], ["d2", "d3"]]
    assert h.outcome and h.outcome[0].check(RuntimeError)
    assert h.store.saves[-1] == "1-x" and h.service.stats.handler_failures == 1


def test_a_failing_batch_is_retried_whole() -> None:
    """on_error="retry": the same batch is called again after the delay, and the feed waits for it."""
    failures = [RuntimeError("busy")]

    def handler(batch: list[dict[str, Any]]) -> None:
        h.record(batch)
        if failures:
            raise failures.pop()

    h = Batches(handler, on_error="retry", max_batch=2)
    h.couch.answer(b"".join(row(f"{n}-x", f"d{n}") for n in range(3)))
    h.start()
    assert h.batches == [["d0", "d1"]] and h.store.saves == []
    h.clock.advance(1.0)
    h.client.flush()
    assert h.batches == [["d0", "d1"], ["d0", "d1"], ["d2"]]
    assert h.store.saves[-1] == "2-x" and h.service.stats.handled == 3


def test_a_failing_batch_is_skipped_and_logged() -> None:
    """on_error="skip": the batch is logged with its seqs and passed, the next one comes."""

    def handler(batch: list[dict[str, Any]]) -> None:
        h.record(batch)
        if len(h.batches) == 2:
            raise RuntimeError("bad batch")

    h = Batches(handler, on_error="skip", max_batch=2)
    h.couch.answer(b"".join(row(f"{n}-x", f"d{n}") for n in range(4)))
    with capturedLogs() as events:
        h.start()
    assert h.batches == [["d0", "d1"], ["d2", "d3"]]
    assert h.store.saves[-1] == "3-x" and h.service.stats.handled == 2
    said = [e for e in events if e.get("log_failure") is not None and "skipping" in e["log_format"]]
    assert [(e["count"], e["first"], e["last"]) for e in said] == [(2, "2-x", "3-x")]


def test_other_shards_and_replays_are_taken_out_of_a_batch() -> None:
    """A shard's batch holds only its own changes, replays are taken out, and the checkpoint passes them all."""
    docs = [f"doc{n}" for n in range(8)]
    mine = next(s for s in (Shard(0, 2), Shard(1, 2)) if s.owns(docs[0]))
    new = next(f"new{n}" for n in range(100) if mine.owns(f"new{n}"))
    owned = [d for d in docs if mine.owns(d)]
    h = Batches(shard=mine, dedup_window=100)
    h.couch.answer(b"".join(row(f"{n}-x", d) for n, d in enumerate(docs)) + end("7-x"), finish=True)
    h.couch.answer(row("0-x", docs[0]) + row("8-y", new))
    h.start()
    assert h.batches == [owned, [new]]
    assert h.service.stats.other_shards == len(docs) - len(owned)
    assert h.service.stats.duplicates == 1
    assert h.service.resume_seq == "8-y"


def test_stop_waits_for_the_batch_under_way() -> None:
    """stopService() while a batch runs waits for it and saves the checkpoint past it."""
    pending: Deferred[None] = Deferred()
    h = Batches(lambda batch: pending)
    h.couch.answer(row("1-a", "a") + row("2-b", "b"))
    h.start()
    done = h.stop()
    assert done == [] and h.store.saves == []
    pending.callback(None)
    h.client.flush()
    assert done == [None] and h.store.saves == ["2-b"]


def test_a_catch_up_hands_each_change_as_a_batch_of_one() -> None:
    """The normal feed a renewal asks for (feed_max_duration) hands its changes over one per batch."""
    h = Batches(feed_max_duration=60.0, heartbeat=120000)
    h.couch.answer(row("1-a", "a"))
    body = json.dumps({"results": [json.loads(row("2-b", "b")), json.loads(row("3-c", "c"))],
                       "last_seq": "5-z", "pending": 0}).encode()
    h.couch.answer(body, finish=True)
    h.start()
    h.clock.advance(60.0)
    h.client.flush()
    assert h.batches == [["a"], ["b"], ["c"]]
    assert h.service.resume_seq == "5-z"


# -- the per-change handler, called straight from the feed ---------------------------------


def test_a_deferred_from_the_handler_holds_the_next_change_of_the_feed() -> None:
    """The handler called from the feed returns a Deferred: the following changes wait their turn (concurrency 1)."""
    calls: list[str] = []
    pending: dict[str, Deferred[None]] = {}

    def handler(r: dict[str, Any]) -> Optional[Deferred[None]]:
        calls.append(r["id"])
        if r["id"] == "b":
            pending["b"] = Deferred()
            return pending["b"]
        return None

    couch = ScriptedFeed()
    client = StubTreq(couch)
    store = MemoryCheckpoint()
    service = ChangesService(Server("http://127.0.0.1:5984/", http=client)["db"], handler, checkpoint=store,
                             clock=Clock(), heartbeat=1000, checkpoint_every=1)
    couch.answer(row("1-a", "a") + row("2-b", "b") + row("3-c", "c") + row("4-d", "d"))
    service.startService()
    client.flush()
    assert calls == ["a", "b"] and service.resume_seq == "1-a" and service.stats.handled == 1
    pending["b"].callback(None)
    client.flush()
    assert calls == ["a", "b", "c", "d"] and service.resume_seq == "4-d" and service.stats.handled == 4


def test_a_handler_that_raises_in_the_feed_is_skipped_and_the_feed_goes_on() -> None:
    """With on_error="skip", a handler call from the feed that raises is logged, and the rest of the read follows."""
    calls: list[str] = []

    def handler(r: dict[str, Any]) -> None:
        calls.append(r["id"])
        if r["id"] == "b":
            raise RuntimeError("cannot")

    couch = ScriptedFeed()
    client = StubTreq(couch)
    service = ChangesService(Server("http://127.0.0.1:5984/", http=client)["db"], handler, on_error="skip",
                             clock=Clock(), heartbeat=1000)
    couch.answer(row("1-a", "a") + row("2-b", "b") + row("3-c", "c"))
    service.startService()
    client.flush()
    assert calls == ["a", "b", "c"]
    assert service.resume_seq == "3-c" and service.stats.handled == 2 and service.stats.handler_failures == 1
    assert len(couch.requests) == 1, "the feed went on: no reconnect"

