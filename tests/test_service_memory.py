"""ChangesService memory bounds: a feed far faster than the handler is held back,
so that the changes held stay within ``max_buffered``, and the rows past a hung
handler call within ``max_ahead``, whatever the feed's speed.

What the service holds is measured from outside: rows the server handed over
against handler calls finished. Exact bounds come from a scripted server
(tests/scriptedfeed.py) over an in-memory network with exact flow control
(tests/memorynet.py), one row per write; the large feeds run over real TCP,
where socket buffers make only a loose bound observable.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from txchanges import ChangesService, MemoryCheckpoint, Server

from ._service_helpers import wait_for
from .memorynet import MemoryNet
from .scriptedfeed import Feed, FeedServer, build_feed, held_back

CHANGES = 100_000
CONCURRENCY = 8
MAX_BUFFERED = 16


def per_doc(pairs: Any) -> dict[str, list[str]]:
    """The revisions of each document, in the order given."""
    revs: dict[str, list[str]] = defaultdict(list)
    for docid, rev in pairs:
        revs[docid].append(rev)
    return revs


def turns(n: int) -> "defer.Deferred[None]":
    """A Deferred that fires after *n* reactor turns."""
    d: defer.Deferred[None] = defer.Deferred()

    def tick(left: int) -> None:
        if left:
            reactor.callLater(0, tick, left - 1)
        else:
            d.callback(None)

    tick(n)
    return d


class SlowHandler:
    """
    A handler whose every call finishes *turns_per_call* reactor turns later
    (a Deferred), recording what it finished.

    :ivar calls: Calls made.
    :ivar finished: Calls finished.
    :ivar order: ``(id, rev)`` of each call, in call order.
    :ivar on_call: Called with the number of calls so far at each call.
    """

    def __init__(self, turns_per_call: int = 1) -> None:
        self._turns = turns_per_call
        self.calls = 0
        self.finished = 0
        self.order: list[tuple[str, str]] = []
        self.on_call: Optional[Any] = None

    def __call__(self, row: dict[str, Any]) -> "defer.Deferred[None]":
        self.calls += 1
        self.order.append((row["id"], row["changes"][0]["rev"]))
        if self.on_call is not None:
            self.on_call(self.calls)
        d = turns(self._turns)
        d.addCallback(self._finish)
        return d

    def _finish(self, _: object) -> None:
        self.finished += 1


def listen(feed: Feed) -> tuple[FeedServer, Any, Server]:
    """The scripted server of *feed* on 127.0.0.1, and a Server reaching it."""
    server = FeedServer(feed)
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    return server, port, Server(f"http://127.0.0.1:{port.getHost().port}/")


class RowTap:
    """Counts the change rows an in-memory network hands to the client (one row per write)."""

    def __init__(self, handler: SlowHandler) -> None:
        self.handler = handler
        self.rows = 0
        self.max_held = 0

    def __call__(self, data: bytes) -> None:
        if b'{"seq"' in data:
            self.rows += 1
            # Taken by the service and not yet finished by the handler.
            self.max_held = max(self.max_held, self.rows - self.handler.finished)


@pytest_twisted.ensureDeferred
async def test_changes_held_never_exceed_max_buffered(report_summary):
    """Rows handed to the service minus handler calls finished never exceed max_buffered, and reach it: the feed, far faster than the handler, is paused there again and again, and every change is still handled once, in order per document."""
    feed = build_feed(3000)
    handler = SlowHandler(turns_per_call=20)
    tap = RowTap(handler)
    server = FeedServer(feed, chunk=None)
    net = MemoryNet(server, reactor, window=1, tap=tap)
    svc = ChangesService(Server("http://127.0.0.1:5984/", reactor=net)["db"], handler,
                         concurrency=CONCURRENCY, max_buffered=MAX_BUFFERED)
    svc.startService()
    try:
        await wait_for(lambda: svc.resume_seq == feed.last_seq, 30, "the service to reach last_seq")
    finally:
        await svc.stopService()
    pipe = net.pipes[0]
    assert tap.rows == len(feed.rows) == handler.finished == svc.stats.handled
    assert tap.max_held == MAX_BUFFERED
    # Paused each time the buffer filled: a burst of at least half of it each time.
    assert len(feed.rows) // MAX_BUFFERED <= pipe.client_pauses <= 2 * len(feed.rows) // MAX_BUFFERED
    assert Counter(handler.order) == Counter(feed.keys())
    assert per_doc(handler.order) == per_doc(feed.keys())
    report_summary(f"memory: at most {tap.max_held} changes held (max_buffered {MAX_BUFFERED}) over "
                   f"{len(feed.rows)} changes; the service paused the feed {pipe.client_pauses} times")


@pytest.mark.parametrize("max_buffered, max_ahead, bound", [
    (MAX_BUFFERED, None, 1000),  # the default: at least 1000...
    (40, None, 2000),  # ...or 50 x max_buffered
    (MAX_BUFFERED, 200, 200),
])
@pytest_twisted.ensureDeferred
async def test_one_stuck_handler_call_keeps_rows_past_the_resume_point_bounded(max_buffered, max_ahead, bound, report_summary):
    """While the first handler call hangs, the service takes exactly max_ahead rows (the default, the larger of 1000 and 50 x max_buffered, or the one configured) and then reads no more; released, it handles the rest."""
    feed = build_feed(3000)
    stuck: defer.Deferred[None] = defer.Deferred()
    handler = SlowHandler()
    calls: list[int] = []

    def handle(row: dict[str, Any]) -> "defer.Deferred[None]":
        calls.append(1)
        return stuck if len(calls) == 1 else handler(row)

    tap = RowTap(handler)
    server = FeedServer(feed, chunk=None)
    net = MemoryNet(server, reactor, window=1, tap=tap)
    options: dict[str, Any] = {} if max_ahead is None else {"max_ahead": max_ahead}
    svc = ChangesService(Server("http://127.0.0.1:5984/", reactor=net)["db"], handle,
                         concurrency=CONCURRENCY, max_buffered=max_buffered, **options)
    svc.startService()
    try:
        await wait_for(lambda: bool(net.pipes), 5, "the connection")
        assert await held_back(net.pipes[0], server), "the whole feed was read while a handler call hung"
        taken = tap.rows
        resume_while_stuck = svc.resume_seq
        stuck.callback(None)
        await wait_for(lambda: svc.resume_seq == feed.last_seq, 30, "the service to reach last_seq")
    finally:
        await svc.stopService()
    assert taken == bound
    assert resume_while_stuck is None, "the resume point stays at the start, before the hung change"
    assert len(calls) == len(feed.rows) and sorted(handler.order + [feed.keys()[0]]) == sorted(feed.keys())
    report_summary(f"one stuck handler call: {taken} rows taken past it (max_ahead {bound}) of a {len(feed.rows)}-row feed")


@pytest_twisted.ensureDeferred
async def test_fast_feed_over_tcp_is_held_back_and_handled_completely(report_summary):
    """A 100,000-change feed written over TCP as fast as the socket takes it, into a slower handler: the server is paused by its socket and never gets half the feed ahead of the handler, and every change is handled once, in order per document, up to last_seq, where the service resumes."""
    feed = build_feed(CHANGES)
    server, port, couch = listen(feed)
    handler = SlowHandler()
    lag: list[int] = [0]
    handler.on_call = lambda calls: lag.__setitem__(0, max(lag[0], server.rows_sent - calls))
    store = MemoryCheckpoint()
    svc = ChangesService(couch["db"], handler, checkpoint=store, concurrency=CONCURRENCY,
                         max_buffered=MAX_BUFFERED, checkpoint_every=1000)
    svc.startService()
    try:
        await wait_for(lambda: svc.resume_seq == feed.last_seq, 90, "the service to reach last_seq", step=0.1)
        await wait_for(lambda: server.quiet_requests, 5, "the reconnect from last_seq")
    finally:
        await svc.stopService()
        await couch.close()
        await port.stopListening()
    assert handler.calls == handler.finished == CHANGES == svc.stats.handled
    assert Counter(handler.order) == Counter(feed.keys())
    assert per_doc(handler.order) == per_doc(feed.keys())
    assert svc.resume_seq == feed.last_seq and store.seq == feed.last_seq
    assert server.quiet_requests == [feed.last_seq] and server.feed_requests == ["0"]
    assert svc.state == "stopped"
    # Held back: the socket paused the server's writer, and the rows it had
    # sent never ran half the feed ahead of the handler calls.
    assert server.writers[0].done and server.pauses > 0
    assert lag[0] < CHANGES // 2
    report_summary(f"memory over TCP: {CHANGES} changes, server writer paused {server.pauses} times, "
                   f"at most {lag[0]} rows ahead of the handler calls")


@pytest_twisted.ensureDeferred
async def test_stop_under_backpressure_then_resume_repeats_at_most_a_buffer(report_summary):
    """A service stopped halfway through a fast feed stops at once and saves; a new one on the same store handles exactly the rest, repeating at most max_buffered changes."""
    feed = build_feed(CHANGES)
    server, port, couch = listen(feed)
    store = MemoryCheckpoint()
    options: dict[str, Any] = dict(checkpoint=store, concurrency=CONCURRENCY, max_buffered=MAX_BUFFERED,
                                   checkpoint_every=1000)
    try:
        first = SlowHandler()
        halfway: defer.Deferred[None] = defer.Deferred()
        first.on_call = lambda calls: calls == CHANGES // 2 and reactor.callLater(0, halfway.callback, None)
        svc = ChangesService(couch["db"], first, **options)
        svc.startService()
        await halfway
        writer_paused_at_stop = server.writers[0].paused
        d = svc.stopService()
        timer = reactor.callLater(10, d.cancel)
        await d
        assert timer.active(), "stopService did not fire within 10 s"
        timer.cancel()
        assert svc.state == "stopped"
        saved = store.seq
        assert saved == svc.resume_seq and saved in feed.index
        resume_at = feed.index[saved] + 1
        # Everything up to the checkpoint was handled; past it, only a few.
        assert set(first.order) >= set(feed.keys()[:resume_at])
        assert CHANGES // 2 <= first.calls <= resume_at + MAX_BUFFERED

        second = SlowHandler()
        svc2 = ChangesService(couch["db"], second, **options)
        svc2.startService()
        try:
            await wait_for(lambda: svc2.resume_seq == feed.last_seq, 60, "the second service to reach last_seq",
                           step=0.1)
        finally:
            await svc2.stopService()
    finally:
        await couch.close()
        await port.stopListening()

    rest = feed.keys(resume_at)
    assert second.order and Counter(second.order) == Counter(rest)
    assert per_doc(second.order) == per_doc(rest)
    repeats = set(first.order) & set(second.order)
    assert len(repeats) <= MAX_BUFFERED
    assert set(first.order) | set(second.order) == set(feed.keys())
    assert server.feed_requests == ["0", saved]
    report_summary(
        f"memory stop/resume: stopped after {first.calls} handler calls (server writer paused at stop: "
        f"{writer_paused_at_stop}), checkpoint at row {resume_at}, repeats {len(repeats)} (bound {MAX_BUFFERED})"
    )
