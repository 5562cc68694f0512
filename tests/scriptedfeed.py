"""
A scripted CouchDB-3-style continuous ``_changes`` server that counts what
it sends, for tests that hold a client's reading against it.

:class:`FeedServer` answers ``GET /db/_changes?feed=continuous`` with the
rows of a feed built by :func:`build_feed` (opaque ~60-character seqs,
32-hex ids, heartbeats mixed in, ``last_seq`` at the end), from the start or
from any row's seq; a request from ``last_seq`` gets headers and then
silence. It writes as fast as its transport takes it, as a streaming
producer, so a client that stops reading holds it back; it counts the rows
each response has written and how often its transport paused it. It runs
over real TCP (``reactor.listenTCP``) or over :class:`tests.memorynet.MemoryNet`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from twisted.internet import interfaces, protocol
from twisted.internet.defer import Deferred, DeferredList
from zope.interface import implementer  # type: ignore[import-untyped]

__all__ = ["Feed", "FeedServer", "build_feed", "feed_of", "held_back", "seq"]

HEARTBEAT_EVERY = 997  # rows between the empty heartbeat lines in the body

HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: CouchDB/3.5.0 (Erlang OTP/25)\r\n"
    b"Content-Type: application/json\r\n"
    b"Cache-Control: must-revalidate\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def seq(n: int) -> str:
    """An opaque CouchDB-3-style sequence, about 60 characters."""
    return f"{n}-g1AAAA" + hashlib.sha256(str(n).encode()).hexdigest()[:52]


class Feed:
    """
    The rows of a feed and the body that carries them.

    :ivar rows: ``(seq, id, rev)`` of every change, in feed order.
    :ivar body: The continuous feed's body, ``last_seq`` line included.
    :ivar last_seq: The seq of the last row.
    :ivar row_ends: Where each change row's line ends in :attr:`body`.
    """

    def __init__(self, rows: list[tuple[str, str, str]], body: bytes) -> None:
        self.rows = rows
        self.body = body
        self.last_seq = rows[-1][0]
        self.index = {s: n for n, (s, _, _) in enumerate(rows)}
        self.row_ends: list[int] = []
        at = 0
        for line in body.split(b"\n"):
            at += len(line) + 1
            if line.startswith(b'{"seq"'):
                self.row_ends.append(at)

    def keys(self, start: int = 0) -> list[tuple[str, str]]:
        """``(id, rev)`` of the rows from number *start* on."""
        return [(docid, rev) for _, docid, rev in self.rows[start:]]


def build_feed(count: int, pad: int = 0) -> Feed:
    """
    A feed of *count* changes. Every tenth row is a second revision of the
    document of the row before it, so that some changes of one document sit
    in a buffer together. With *pad*, each row carries a ``doc`` with a
    string of that many bytes.
    """
    rows: list[tuple[str, str, str]] = []
    for n in range(count):
        if n % 10 == 9:
            docid = rows[-1][1]
            rev = "2-" + hashlib.md5(f"r2{n}".encode()).hexdigest()
        else:
            docid = hashlib.md5(f"doc{n}".encode()).hexdigest()
            rev = "1-" + hashlib.md5(f"r1{n}".encode()).hexdigest()
        rows.append((seq(n + 1), docid, rev))
    return feed_of(rows, pad)


def feed_of(rows: list[tuple[str, str, str]], pad: int = 0) -> Feed:
    """The feed of *rows*, ``(seq, id, rev)`` each, with a heartbeat line every ``HEARTBEAT_EVERY`` rows."""
    lines = []
    for n, (s, docid, rev) in enumerate(rows):
        row: dict[str, Any] = {"seq": s, "id": docid, "changes": [{"rev": rev}]}
        if pad:
            row["doc"] = {"_id": docid, "_rev": rev, "pad": "x" * pad}
        lines.append(json.dumps(row, separators=(",", ":")))
        if n % HEARTBEAT_EVERY == HEARTBEAT_EVERY - 1:
            lines.append("")
    lines.append(json.dumps({"last_seq": rows[-1][0], "pending": 0}, separators=(",", ":")))
    return Feed(rows, ("\n".join(lines) + "\n").encode())


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@implementer(interfaces.IPushProducer)
class FeedWriter:
    """
    Writes one response's body as fast as the transport takes it.

    :ivar rows_sent: Change rows written in full.
    :ivar done: Whether the whole body was written.
    """

    def __init__(self, transport: Any, server: "FeedServer", start: int) -> None:
        self.transport = transport
        self.server = server
        feed = server.feed
        body = feed.body[feed.row_ends[start - 1] if start else 0:]
        self._first_row = start
        self._base = len(feed.body) - len(body)
        self._writes: list[tuple[bytes, int]] = []  # (bytes, body offset reached)
        if server.chunk is None:
            at = 0
            for line in body.splitlines(keepends=True):
                at += len(line)
                self._writes.append((_chunk(line), at))
        else:
            size, group = server.chunk, server.chunks_per_write
            for i in range(0, len(body), size * group):
                piece = body[i:i + size * group]
                framed = b"".join(_chunk(piece[j:j + size]) for j in range(0, len(piece), size))
                self._writes.append((framed, i + len(piece)))
        self._writes.append((b"0\r\n\r\n", len(body)))
        self._index = 0
        self.paused = False
        self.stopped = False
        self.done = False
        self.rows_sent = 0

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self.transport.write(HEADERS)
        self.server.reactor.callLater(0, self._write_some)

    def _write_some(self) -> None:
        feed = self.server.feed
        while not (self.paused or self.stopped) and self._index < len(self._writes):
            data, reached = self._writes[self._index]
            self._index += 1
            # Counted first: the write may pause the writer, and whoever
            # waits for that reads the count at once.
            self.rows_sent = bisect.bisect_right(feed.row_ends, self._base + reached) - self._first_row
            self.transport.write(data)
        if self._index == len(self._writes) and not self.stopped:
            self.stopped = self.done = True
            self.transport.unregisterProducer()
            self.server.changed()

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.server.pauses += 1
            self.server.changed()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.server.reactor.callLater(0, self._write_some)

    def stopProducing(self) -> None:
        self.stopped = True


class FeedConnection(protocol.Protocol):
    """Answers ``GET /db/_changes?feed=continuous&since=...``."""

    factory: "FeedServer"

    def connectionMade(self) -> None:
        self.buffer = b""
        self.factory.connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.answer(method, target)

    def answer(self, method: str, target: str) -> None:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        server = self.factory
        feed = server.feed
        since = query.get("since", "0")
        server.requests.append((method, target))
        if method != "GET" or url.path != "/db/_changes" or query.get("feed") != "continuous":
            self.error(b"404 Object Not Found", b'{"error":"not_found","reason":"missing"}\n')
        elif since == feed.last_seq:
            # Resuming from last_seq: nothing new; headers at once, then quiet.
            server.quiet_requests.append(since)
            self.transport.write(HEADERS)
        elif since == "0" or since in feed.index:
            server.feed_requests.append(since)
            writer = FeedWriter(self.transport, server, 0 if since == "0" else feed.index[since] + 1)
            server.writers.append(writer)
            writer.start()
        else:
            self.error(b"400 Bad Request",
                       b'{"error":"bad_request","reason":"Malformed sequence supplied in \'since\' parameter."}\n')

    def error(self, status: bytes, body: bytes) -> None:
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )


class FeedServer(protocol.Factory):
    """
    The server of one :class:`Feed`.

    :param chunk: Body bytes per HTTP chunk (lines are cut across chunks),
        ``None`` for one chunk, and one write, per line.
    :param chunks_per_write: Chunks given to the transport at once.
    :param reactor: Runs the writers; the global reactor when omitted.
    :ivar writers: The writer of every feed response, in order.
    :ivar requests: ``(method, target)`` of every request.
    :ivar feed_requests: The ``since`` of every request that got rows.
    :ivar quiet_requests: The ``since`` of every request from ``last_seq``.
    :ivar pauses: How often a transport paused a writer.
    :ivar connections: Connections accepted.
    """

    protocol = FeedConnection
    noisy = False

    def __init__(self, feed: Feed, chunk: Optional[int] = 7919, chunks_per_write: int = 4, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.feed = feed
        self.chunk = chunk
        self.chunks_per_write = chunks_per_write
        self.reactor = reactor
        self.writers: list[FeedWriter] = []
        self.requests: list[tuple[str, str]] = []
        self.feed_requests: list[str] = []
        self.quiet_requests: list[str] = []
        self.pauses = 0
        self.connections = 0
        self._waiters: list[tuple[Any, Deferred[None]]] = []

    def connected(self, connection: FeedConnection) -> None:
        self.connections += 1

    @property
    def rows_sent(self) -> int:
        """Change rows written, over every response."""
        return sum(w.rows_sent for w in self.writers)

    def when(self, predicate: Any) -> "Deferred[None]":
        """A Deferred that fires once *predicate()* holds, checked whenever a writer pauses or ends."""
        d: Deferred[None] = Deferred()
        if predicate():
            d.callback(None)
        else:
            self._waiters.append((predicate, d))
        return d

    def changed(self) -> None:
        due = [(p, d) for p, d in self._waiters if p()]
        for waiter in due:
            self._waiters.remove(waiter)
            waiter[1].callback(None)


async def held_back(pipe: Any, server: FeedServer) -> bool:
    """
    Wait until nothing moves on *pipe* (a :class:`tests.memorynet.Pipe`):
    the client holds *server* back, or the server has written its last
    response in full.

    :return: Whether the client holds the server back.
    """
    stuck = pipe.when_stuck()
    done = server.when(lambda: bool(server.writers) and server.writers[-1].done)
    await DeferredList([stuck, done], fireOnOneCallback=True)
    return bool(stuck.called)
