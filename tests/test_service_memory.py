"""ChangesService memory bound: a feed far faster than the handler is held back,
so that the changes held stay under ``max_buffered`` whatever the feed's speed.

The feed comes from a raw in-process HTTP/1.1 server on 127.0.0.1:0 that
writes a CouchDB-3-style continuous body (opaque ~60-character string seqs,
32-hex ids, heartbeats mixed in, chunked, HTTP chunks cut across lines, many
rows per write) as fast as its socket takes it, then ``last_seq``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest_twisted
from twisted.internet import defer, interfaces, protocol, reactor
from zope.interface import implementer

from txchanges import ChangesService, MemoryCheckpoint, Server

from ._service_helpers import sleep, wait_for

CHANGES = 100_000
CONCURRENCY = 8
MAX_BUFFERED = 16
CHUNK = 7919  # bytes of body per HTTP chunk: lines are cut across chunks
CHUNKS_PER_WRITE = 4
HEARTBEAT_EVERY = 997  # rows between the empty heartbeat lines in the body
SLOW_EVERY = 100  # every Nth handler call takes a little longer


def seq(n: int) -> str:
    """An opaque CouchDB-3-style sequence, about 60 characters."""
    return f"{n}-g1AAAA" + hashlib.sha256(str(n).encode()).hexdigest()[:52]


def build_feed(count: int) -> tuple[list[tuple[str, str, str]], bytes, str]:
    """
    Rows ``(seq, id, rev)`` and the body that carries them. Every tenth row is
    a second revision of the document of the row before it, so that some
    changes of one document sit in the buffer together.
    """
    rows = []
    for n in range(count):
        if n % 10 == 9:
            docid = rows[-1][1]
            rev = "2-" + hashlib.md5(f"r2{n}".encode()).hexdigest()
        else:
            docid = hashlib.md5(f"doc{n}".encode()).hexdigest()
            rev = "1-" + hashlib.md5(f"r1{n}".encode()).hexdigest()
        rows.append((seq(n + 1), docid, rev))
    lines = []
    for n, (s, docid, rev) in enumerate(rows):
        lines.append(json.dumps({"seq": s, "id": docid, "changes": [{"rev": rev}]}, separators=(",", ":")))
        if n % HEARTBEAT_EVERY == HEARTBEAT_EVERY - 1:
            lines.append("")
    last = rows[-1][0]
    lines.append(json.dumps({"last_seq": last, "pending": 0}, separators=(",", ":")))
    return rows, ("\n".join(lines) + "\n").encode(), last


def chunked(body: bytes) -> list[bytes]:
    """The body as HTTP chunks of ``CHUNK`` bytes, grouped several to a write, then the last chunk."""
    chunks = [b"%x\r\n%s\r\n" % (len(body[i:i + CHUNK]), body[i:i + CHUNK]) for i in range(0, len(body), CHUNK)]
    writes = [b"".join(chunks[i:i + CHUNKS_PER_WRITE]) for i in range(0, len(chunks), CHUNKS_PER_WRITE)]
    return writes + [b"0\r\n\r\n"]


def row_offsets(body: bytes) -> list[int]:
    """Where each change row ends in the body."""
    offsets, at = [], 0
    for line in body.split(b"\n"):
        at += len(line) + 1
        if line.startswith(b'{"seq"'):
            offsets.append(at)
    return offsets


HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: CouchDB/3.5.0 (Erlang OTP/25)\r\n"
    b"Content-Type: application/json\r\n"
    b"Cache-Control: must-revalidate\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


@implementer(interfaces.IPushProducer)
class FeedWriter:
    """Writes the feed as fast as the transport takes it, and counts how often the transport held it back."""

    def __init__(self, transport: Any, writes: list[bytes], stats: "FeedServer") -> None:
        self.transport = transport
        self.writes = writes
        self.stats = stats
        self.index = 0
        self.paused = False
        self.stopped = False
        self._paused_at = 0.0

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self.transport.write(HEADERS)
        reactor.callLater(0, self._write_some)

    def _write_some(self) -> None:
        while not (self.paused or self.stopped) and self.index < len(self.writes):
            self.stats.bytes_written += len(self.writes[self.index])
            self.transport.write(self.writes[self.index])
            self.index += 1
        if self.index == len(self.writes) and not self.stopped:
            self.stopped = True
            self.transport.unregisterProducer()
            self.stats.feed_done = True

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.stats.pauses += 1
            self._paused_at = time.monotonic()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.stats.paused_seconds += time.monotonic() - self._paused_at
            reactor.callLater(0, self._write_some)

    def stopProducing(self) -> None:
        self.stopped = True


class FeedConnection(protocol.Protocol):
    """Answers ``GET /db/_changes?feed=continuous...``: the whole feed from the start, an open quiet feed from ``last_seq``."""

    def connectionMade(self) -> None:
        self.buffer = b""
        # A small send buffer, so that what the server gets ahead of the
        # client is mostly the client's own receive buffer.
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.factory.requests.append((method, target))
            self.answer(method, target)

    def answer(self, method: str, target: str) -> None:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        server: FeedServer = self.factory
        since = query.get("since", "0")
        if method != "GET" or url.path != "/db/_changes" or query.get("feed") != "continuous":
            self.error(b"404 Object Not Found", b'{"error":"not_found","reason":"missing"}\n')
        elif since == server.last_seq:
            # Resuming from last_seq: nothing new; headers at once, then quiet.
            server.quiet_requests.append(since)
            self.transport.write(HEADERS)
        elif since == "0" or since in server.index:
            server.feed_requests.append(since)
            FeedWriter(self.transport, server.writes_from(since), server).start()
        else:
            self.error(b"400 Bad Request", b'{"error":"bad_request","reason":"Malformed sequence supplied in \'since\' parameter."}\n')

    def error(self, status: bytes, body: bytes) -> None:
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )


class FeedServer(protocol.Factory):
    """The feed of *rows* in *body*; a request from any row's seq gets the rest of it."""

    protocol = FeedConnection

    def __init__(self, rows: list[tuple[str, str, str]], body: bytes, last_seq: str) -> None:
        self.body = body
        self.last_seq = last_seq
        self.offsets = row_offsets(body)
        self.index = {s: n for n, (s, _, _) in enumerate(rows)}
        self._from_start = chunked(body)
        self.requests: list[tuple[str, str]] = []
        self.feed_requests: list[str] = []
        self.quiet_requests: list[Any] = []
        self.bytes_written = 0
        self.pauses = 0
        self.paused_seconds = 0.0
        self.feed_done = False

    def writes_from(self, since: str) -> list[bytes]:
        if since == "0":
            return self._from_start
        return chunked(self.body[self.offsets[self.index[since]]:])


class SlowHandler:
    """Returns a Deferred fired on a later reactor turn (every Nth a little later), sampling the buffer at each call."""

    def __init__(self) -> None:
        self.svc: ChangesService | None = None
        self.calls = 0
        self.order: list[tuple[str, str]] = []
        self.max_buffered = 0
        self.max_held_bytes = 0
        self.max_buffered_on_arrival = 0
        self.arrivals = 0
        self.feed_pauses = 0
        self.server: FeedServer | None = None
        self.max_lag_bytes = 0
        self.stop_at: int | None = None
        self.max_open = 0
        self.reached: defer.Deferred[None] = defer.Deferred()

    def watch(self, svc: ChangesService) -> None:
        """Also sample the buffer right after each row arrives, and count the service's pauses of the feed."""
        self.svc = svc
        begin = svc._begin

        def begun(since: Any) -> None:
            begin(since)
            run = svc._run
            assert run is not None
            take, pause = run.scheduler.take, run.pause

            def arrived(change: Any) -> None:
                take(change)
                self.arrivals += 1
                if self.server is not None:
                    lag = self.server.bytes_written - self.server.offsets[self.arrivals - 1]
                    self.max_lag_bytes = max(self.max_lag_bytes, lag)
                self.max_buffered_on_arrival = max(self.max_buffered_on_arrival, run.scheduler.buffered)
                self.max_open = max(self.max_open, run.progress.tracked)

            def paused() -> None:
                self.feed_pauses += 1
                pause()

            run.scheduler.take = arrived  # type: ignore[method-assign]
            run.pause = paused  # type: ignore[method-assign]

        svc._begin = begun  # type: ignore[method-assign]

    def __call__(self, row: dict[str, Any]) -> "defer.Deferred[None]":
        assert self.svc is not None and self.svc._run is not None
        self.calls += 1
        if self.calls == self.stop_at:
            reactor.callLater(0, self.reached.callback, None)
        self.order.append((row["id"], row["changes"][0]["rev"]))
        self.max_buffered = max(self.max_buffered, self.svc._run.scheduler.buffered)
        feed = self.svc._run.feed
        body = getattr(feed, "protocol", None)
        if body is not None:
            held = sum(map(len, body._held)) + body._pending_length
            self.max_held_bytes = max(self.max_held_bytes, held)
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.002 if self.calls % SLOW_EVERY == 0 else 0, d.callback, None)
        return d


@pytest_twisted.ensureDeferred
async def test_fast_feed_into_slow_handler_stays_within_max_buffered(report_summary):
    """A 100,000-change feed written as fast as the socket takes it into a slower handler never holds more than max_buffered changes, and every change is handled once, in order per document, up to last_seq."""
    rows, body, last_seq = build_feed(CHANGES)
    server = FeedServer(rows, body, last_seq)
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    couch = Server(f"http://127.0.0.1:{port.getHost().port}/")
    handler = SlowHandler()
    store = MemoryCheckpoint()
    svc = ChangesService(
        couch["db"], handler, checkpoint=store, concurrency=CONCURRENCY, max_buffered=MAX_BUFFERED,
        checkpoint_every=1000,
    )
    handler.watch(svc)
    handler.server = server
    started = time.monotonic()
    svc.startService()
    try:
        await wait_for(lambda: svc.resume_seq == last_seq, 90, "the service to reach last_seq", step=0.1)
        await wait_for(lambda: server.quiet_requests, 5, "the reconnect from last_seq")
    finally:
        await svc.stopService()
        await couch.close()
        await port.stopListening()
    elapsed = time.monotonic() - started

    # Bounded: never more changes held than configured.
    assert handler.max_buffered <= MAX_BUFFERED
    assert handler.max_buffered_on_arrival <= MAX_BUFFERED
    # The feed outran the handler: the buffer filled and the feed was paused
    # many times (otherwise this test would prove nothing).
    assert handler.max_buffered_on_arrival == MAX_BUFFERED
    assert handler.feed_pauses > CHANGES // (10 * MAX_BUFFERED)
    assert handler.arrivals == CHANGES
    # Complete: every change once, in feed order per document.
    assert handler.calls == CHANGES == svc.stats.handled
    assert Counter(handler.order) == Counter((docid, rev) for _, docid, rev in rows)
    expected: dict[str, list[str]] = defaultdict(list)
    got: dict[str, list[str]] = defaultdict(list)
    for _, docid, rev in rows:
        expected[docid].append(rev)
    for docid, rev in handler.order:
        got[docid].append(rev)
    assert got == expected
    # Resumes from the end.
    assert svc.resume_seq == last_seq and store.seq == last_seq
    assert server.quiet_requests == [last_seq] and server.feed_requests == ["0"]
    assert svc.state == "stopped"
    # Held back: the server's transport paused the writer, and the bytes the
    # body protocol keeps while paused stay around one socket read.
    assert server.feed_done and server.pauses > 0
    assert handler.max_held_bytes < 4 * 65536
    assert handler.max_lag_bytes < len(body) / 2
    report_summary(
        f"memory: {CHANGES} changes in {elapsed:.1f}s, max buffered {handler.max_buffered} at handler calls, "
        f"{handler.max_buffered_on_arrival} on arrival (bound {MAX_BUFFERED}), feed paused "
        f"{handler.feed_pauses} times, max bytes held by the paused protocol {handler.max_held_bytes}, "
        f"server writer paused {server.pauses} times for {server.paused_seconds:.1f}s in all, "
        f"{server.bytes_written / 1e6:.1f} MB written, server at most {handler.max_lag_bytes / 1e6:.2f} MB ahead of the rows taken, "
        f"at most {handler.max_open} rows tracked past the resume point"
    )


def per_doc(pairs: Any) -> dict[str, list[str]]:
    revs: dict[str, list[str]] = defaultdict(list)
    for docid, rev in pairs:
        revs[docid].append(rev)
    return revs


@pytest_twisted.ensureDeferred
async def test_stop_under_backpressure_then_resume_repeats_at_most_a_buffer(report_summary):
    """A service stopped halfway through a fast feed while paused stops at once and saves; a new one on the same store handles exactly the rest, repeating at most max_buffered changes."""
    rows, body, last_seq = build_feed(CHANGES)
    server = FeedServer(rows, body, last_seq)
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    couch = Server(f"http://127.0.0.1:{port.getHost().port}/")
    store = MemoryCheckpoint()
    options = dict(checkpoint=store, concurrency=CONCURRENCY, max_buffered=MAX_BUFFERED, checkpoint_every=1000)
    try:
        first = SlowHandler()
        first.stop_at = CHANGES // 2
        svc = ChangesService(couch["db"], first, **options)
        first.watch(svc)
        svc.startService()
        await first.reached
        paused_at_stop = svc._run is not None and svc._run.scheduler.paused
        d = svc.stopService()
        timer = reactor.callLater(10, d.cancel)
        await d
        assert timer.active(), "stopService did not fire within 10 s"
        timer.cancel()
        assert svc.state == "stopped"
        saved = store.seq
        assert saved == svc.resume_seq and saved in server.index
        resume_at = server.index[saved] + 1
        # Everything up to the checkpoint was handled; past it, only a few.
        assert set(first.order) >= {(docid, rev) for _, docid, rev in rows[:resume_at]}
        assert CHANGES // 2 <= first.calls <= resume_at + MAX_BUFFERED

        second = SlowHandler()
        svc2 = ChangesService(couch["db"], second, **options)
        second.watch(svc2)
        svc2.startService()
        try:
            await wait_for(lambda: svc2.resume_seq == last_seq, 60, "the second service to reach last_seq", step=0.1)
        finally:
            await svc2.stopService()
    finally:
        await couch.close()
        await port.stopListening()

    rest = [(docid, rev) for _, docid, rev in rows[resume_at:]]
    assert second.order and Counter(second.order) == Counter(rest)
    assert per_doc(second.order) == per_doc(rest)
    assert second.max_buffered_on_arrival <= MAX_BUFFERED and first.max_buffered_on_arrival <= MAX_BUFFERED
    repeats = set(first.order) & set(second.order)
    assert len(repeats) <= MAX_BUFFERED
    assert set(first.order) | set(second.order) == {(docid, rev) for _, docid, rev in rows}
    assert server.feed_requests == ["0", saved]
    report_summary(
        f"memory stop/resume: stopped after {first.calls} handler calls (feed paused at stop: {paused_at_stop}), "
        f"checkpoint at row {resume_at}, repeats {len(repeats)} (bound {MAX_BUFFERED})"
    )


STUCK_FEED = 20_000


@pytest_twisted.ensureDeferred
async def test_one_stuck_handler_call_keeps_rows_past_the_resume_point_bounded(report_summary):
    """While one handler call hangs, the service pauses the feed after a bounded number of rows past the resume point instead of taking the whole feed."""
    rows, body, last_seq = build_feed(STUCK_FEED)
    server = FeedServer(rows, body, last_seq)
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    couch = Server(f"http://127.0.0.1:{port.getHost().port}/")
    stuck: list[defer.Deferred[None]] = []

    def handler(row: dict[str, Any]) -> "defer.Deferred[None]":
        d: defer.Deferred[None] = defer.Deferred()
        if not stuck:
            stuck.append(d)  # the first change hangs until released below
        else:
            reactor.callLater(0, d.callback, None)
        return d

    watcher = SlowHandler()
    svc = ChangesService(
        couch["db"], handler, checkpoint=MemoryCheckpoint(), concurrency=CONCURRENCY, max_buffered=MAX_BUFFERED
    )
    watcher.watch(svc)
    svc.startService()
    try:
        # Until the feed stops moving (paused for good) or has all arrived.
        seen = -1
        while watcher.arrivals != seen and watcher.arrivals < STUCK_FEED:
            seen = watcher.arrivals
            await sleep(0.3)
        tracked = watcher.max_open
        assert stuck, "the handler was never called"
        stuck[0].callback(None)
        await wait_for(lambda: svc.resume_seq == last_seq, 30, "the service to reach last_seq", step=0.1)
    finally:
        await svc.stopService()
        await couch.close()
        await port.stopListening()
    report_summary(f"one stuck handler call: {tracked} rows tracked past the resume point of a {STUCK_FEED}-row feed")
    assert tracked <= 100 * MAX_BUFFERED
