"""Consumer batch delivery (register_batch_callback, batches()) and the one-callback path of wait."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from txchanges import BatchStream, Consumer, Server

from .fakecouch import Answer, stub
from .memorynet import MemoryNet
from .scriptedfeed import FeedServer, build_feed, held_back
from .test_consumer_unit import Streaming, consumer_on, outcome, row

END = b'{"last_seq":"9-z","pending":0}\n'


def ids(batches: list[list[dict[str, Any]]]) -> list[list[str]]:
    return [[r["id"] for r in b] for b in batches]


def test_a_batch_callback_gets_each_reads_changes_as_one_list():
    """wait hands a batch callback the changes of a read in one list, cut at max_batch and before a document's second change."""
    consumer, client = consumer_on(Streaming(row("1-a", "a") + row("2-b", "b") + row("3-a", "a") + row("4-c", "c") + END), Clock())
    batches: list[list[dict[str, Any]]] = []
    consumer.register_batch_callback(batches.append)
    got = outcome(consumer.wait())
    client.flush()
    assert ids(batches) == [["a", "b"], ["a", "c"]]
    assert got == ["9-z"]


def test_max_batch_bounds_a_batch():
    """Consumer(max_batch=N) never hands over more than N changes at once."""
    consumer, client = consumer_on(Streaming(b"".join(row(f"{n}-x", f"d{n}") for n in range(5)) + END), Clock())
    consumer = Consumer(consumer.db, clock=Clock(), max_batch=2)
    batches: list[list[dict[str, Any]]] = []
    consumer.register_batch_callback(batches.append)
    outcome(consumer.wait())
    client.flush()
    assert [len(b) for b in batches] == [2, 2, 1]
    with pytest.raises(ValueError):
        Consumer(consumer.db, max_batch=0)


def test_a_batch_callbacks_deferred_holds_the_next_batch_back():
    """The next batch waits for the Deferred of the last one; the feed then goes on to its end."""
    consumer, client = consumer_on(Streaming(b"".join(row(f"{n}-x", f"d{n}") for n in range(3)) + END), Clock())
    consumer = Consumer(consumer.db, clock=Clock(), max_batch=1)
    batches: list[list[dict[str, Any]]] = []
    pending: list[Deferred[None]] = []

    def on_batch(batch: list[dict[str, Any]]) -> Deferred[None]:
        batches.append(batch)
        pending.append(Deferred())
        return pending[-1]

    consumer.register_batch_callback(on_batch)
    got = outcome(consumer.wait())
    client.flush()
    assert ids(batches) == [["d0"]]
    pending[0].callback(None)
    client.flush()
    assert ids(batches) == [["d0"], ["d1"]] and got == []
    pending[1].callback(None)
    pending[2].callback(None)
    client.flush()
    assert ids(batches) == [["d0"], ["d1"], ["d2"]] and got == ["9-z"]


def test_a_failing_batch_deferred_fails_wait_and_is_logged():
    """A batch callback's Deferred that fails ends wait with that failure, logged with the batch's seqs."""
    consumer, client = consumer_on(Streaming(row("1-a", "a") + row("2-b", "b")), Clock())
    pending: Deferred[None] = Deferred()
    consumer.register_batch_callback(lambda batch: pending)
    got = outcome(consumer.wait())
    client.flush()
    with capturedLogs() as events:
        pending.errback(RuntimeError("bulk write refused"))
        client.flush()
    assert got[0].check(RuntimeError)
    said = [e for e in events if e.get("log_failure") is not None]
    assert said and said[0]["count"] == 2 and (said[0]["first"], said[0]["last"]) == ("1-a", "2-b")


def test_a_raising_batch_callback_fails_wait():
    """A batch callback that raises fails wait with that exception."""
    consumer, client = consumer_on(Streaming(row("1-a", "a") + row("2-b", "b")), Clock())

    def on_batch(batch: list[dict[str, Any]]) -> None:
        raise KeyError("boom")

    consumer.register_batch_callback(on_batch)
    got = outcome(consumer.wait())
    client.flush()
    assert got[0].check(KeyError)


def test_per_change_and_batch_callbacks_keep_registration_order():
    """With both kinds registered, each batch goes to each callback in turn: a plain one gets its changes one by one."""
    consumer, client = consumer_on(Streaming(row("1-a", "a") + row("2-b", "b") + END), Clock())
    calls: list[Any] = []
    consumer.register_callback(lambda r: calls.append(("one", r["id"])))
    consumer.register_batch_callback(lambda b: calls.append(("batch", [r["id"] for r in b])))
    outcome(consumer.wait(cb=lambda r: calls.append(("cb", r["id"]))))
    client.flush()
    assert calls == [("one", "a"), ("one", "b"), ("batch", ["a", "b"]), ("cb", "a"), ("cb", "b")]


def test_unregister_callback_removes_a_batch_callback():
    """unregister_callback takes a batch callback away too; an unknown one is a ValueError."""
    consumer, client = consumer_on(Streaming(row("1-a", "a") + END), Clock())
    batches: list[Any] = []
    seen: list[Any] = []
    consumer.register_batch_callback(batches.append)
    consumer.unregister_callback(batches.append)
    consumer.register_callback(seen.append)
    outcome(consumer.wait())
    client.flush()
    assert batches == [] and [r["id"] for r in seen] == ["a"]
    with pytest.raises(ValueError):
        consumer.unregister_callback(batches.append)
    with pytest.raises(TypeError):
        consumer.register_batch_callback("not callable")  # type: ignore[arg-type]


def test_wait_once_hands_batches_and_waits_for_each():
    """wait_once hands a batch callback the results in batches, each after the Deferred of the one before."""
    results = [{"seq": f"{n}-x", "id": docid, "changes": []} for n, docid in enumerate("aba")]
    body = json.dumps({"results": results, "last_seq": "2-x", "pending": 0}).encode()
    client, _ = stub(Answer(body=body))
    consumer = Consumer(Server("http://h:1/", http=client)["db"], clock=Clock())
    batches: list[list[dict[str, Any]]] = []
    pending: list[Deferred[None]] = []

    def on_batch(batch: list[dict[str, Any]]) -> Deferred[None]:
        batches.append(batch)
        pending.append(Deferred())
        return pending[-1]

    consumer.register_batch_callback(on_batch)
    got = outcome(consumer.wait_once())
    client.flush()
    assert ids(batches) == [["a", "b"]] and got == []
    pending[0].callback(None)
    client.flush()
    assert ids(batches) == [["a", "b"], ["a"]] and got == []
    pending[1].callback(None)
    client.flush()
    assert got[0]["last_seq"] == "2-x"


def test_one_callback_that_registers_another_shares_the_next_change():
    """A single callback (called straight from the feed) that registers a second: the second gets the next change, not this one."""
    consumer, client = consumer_on(Streaming(row("1-a", "a") + row("2-b", "b") + row("3-c", "c") + END), Clock())
    calls: list[tuple[str, str]] = []

    def late(r: dict[str, Any]) -> None:
        calls.append(("late", r["id"]))

    def first(r: dict[str, Any]) -> None:
        calls.append(("first", r["id"]))
        if r["id"] == "a":
            consumer.register_callback(late)
        if r["id"] == "b":
            consumer.unregister_callback(late)

    consumer.register_callback(first)
    outcome(consumer.wait())
    client.flush()
    assert calls == [("first", "a"), ("first", "b"), ("late", "b"), ("first", "c")]


def test_one_raising_callback_is_logged_with_the_change():
    """The single callback's exception is logged with the change's id and seq before wait fails with it."""
    consumer, client = consumer_on(Streaming(row("1-a", "a") + row("2-b", "b")), Clock())

    def handler(r: dict[str, Any]) -> None:
        if r["id"] == "b":
            raise KeyError("boom")

    consumer.register_callback(handler)
    with capturedLogs() as events:
        got = outcome(consumer.wait())
        client.flush()
    assert got[0].check(KeyError)
    said = [e for e in events if e.get("log_failure") is not None]
    assert [(e["id"], e["seq"]) for e in said] == [("b", "2-b")]


@pytest_twisted.ensureDeferred
async def test_async_for_batches_gets_every_change_once_while_the_feed_waits():
    """async for over batches(): every change once, in order, in lists without a document twice; the server
    is held back while a batch is in hand; last_seq is the feed's at its end."""
    feed = build_feed(300)
    server = FeedServer(feed, chunk=None, reactor=reactor)
    net = MemoryNet(server, reactor, window=1)
    couch = Server("http://127.0.0.1:5984/", reactor=net)
    stream = Consumer(couch["db"]).batches(since=0, heartbeat=False, max_batch=7)
    assert isinstance(stream, BatchStream)
    seen: list[tuple[str, str]] = []
    try:
        async with stream:
            async for batch in stream:
                assert 0 < len(batch) <= 7 and len({r["id"] for r in batch}) == len(batch)
                seen.extend((r["id"], r["changes"][0]["rev"]) for r in batch)
                if len(seen) == len(batch):
                    assert await held_back(net.pipes[-1], server), "the server wrote the whole feed while a batch was held"
    finally:
        await couch.close()
    assert seen == feed.keys()
    assert stream.last_seq == feed.last_seq


@pytest_twisted.ensureDeferred
async def test_batches_last_seq_is_the_last_batch_handed_over():
    """Leaving the loop after a batch, last_seq is that batch's last seq: where to resume."""
    feed = build_feed(50)
    server = FeedServer(feed, chunk=None, reactor=reactor)
    couch = Server("http://127.0.0.1:5984/", reactor=MemoryNet(server, reactor, window=1))
    try:
        async with Consumer(couch["db"]).batches(since=0, heartbeat=False, max_batch=4) as stream:
            async for batch in stream:
                break
    finally:
        await couch.close()
    assert stream.last_seq == batch[-1]["seq"] != feed.last_seq
