"""
A canned CouchDB-3-style ``_changes`` server for the benchmark.

Standard library only, run as its own process so that the clients measured
never share a CPU slice with it:

    python benchmarks/feedserver.py --changes 200000 [--docs] [--chunks line|backlog]

It prints ``listening http://127.0.0.1:PORT/`` once it accepts requests and
serves one database, ``db``, of N changes:

- ``GET /db/_changes?feed=continuous``: every change as its own line, then
  ``{"last_seq": ..., "pending": 0}``. With ``--chunks line`` every line is
  its own HTTP chunk (a live feed); with ``--chunks backlog`` the body is cut
  into ~1490-byte chunks regardless of lines (how CouchDB sends a backlog).
  From ``since=<the last seq>`` the feed is open and quiet: heartbeats (if
  asked for) until the client leaves, or the ``last_seq`` row after
  ``timeout``.
- ``GET /db/_changes`` (``feed=normal``, the default): CouchDB's normal body,
  ``{"results":[`` rows separated by ``,\\r\\n`` ``],"last_seq":...}``, in
  ~1490-byte chunks; ``since`` and ``limit`` page through it, and with
  ``seq_interval=N`` only every Nth row carries its seq, the others
  ``"seq":null``, as CouchDB 3 does. ``POST`` is answered as ``GET``.
- ``GET /db``: the database info, with ``update_seq`` (the last seq) and
  ``doc_count`` (N), which clients use to know where the feed ends.
- ``GET /``: the welcome document.

The rows look like CouchDB 3's: opaque ~60-character string seqs, 32-hex
document ids, a deleted row every 50, and with ``--docs`` a ~300-byte
document in each row. Every response is rendered once (on first use) and
written with large ``sendall`` calls, so the server is never the bottleneck.
Authentication headers are accepted and ignored.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

#: CouchDB sends a backlog in chunks of about this many bytes.
BACKLOG_CHUNK = 1490
#: How much of a pre-rendered body one ``sendall`` writes.
WRITE_SIZE = 1 << 20
#: One row in this many is a deletion.
DELETED_EVERY = 50


def seq(n: int) -> str:
    """The opaque sequence of change *n* (from 1): about 60 characters."""
    tail = base64.urlsafe_b64encode(hashlib.blake2b(b"%d" % n, digest_size=39).digest())
    return f"{n}-g1AAAA" + tail.decode("ascii")[:53 - len(str(n))]


def row_line(n: int, docs: bool) -> bytes:
    """The JSON of change *n* (from 1), without its newline."""
    docid = hashlib.md5(b"doc-%d" % n).hexdigest()
    deleted = n % DELETED_EVERY == 0
    rev = ("2-" if deleted else "1-") + hashlib.md5(b"rev-%d" % n).hexdigest()
    row: dict[str, Any] = {"seq": seq(n), "id": docid, "changes": [{"rev": rev}]}
    if deleted:
        row["deleted"] = True
    if docs:
        if deleted:
            row["doc"] = {"_id": docid, "_rev": rev, "_deleted": True}
        else:
            row["doc"] = {
                "_id": docid,
                "_rev": rev,
                "type": "order",
                "customer": f"customer-{n % 977:04d}",
                "created": f"2026-11-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00Z",
                "status": ("new", "paid", "shipped")[n % 3],
                "total": round(n % 10007 * 1.37, 2),
                "items": [
                    {"sku": f"SKU-{(n * 7 + i) % 100000:06d}", "qty": 1 + (n + i) % 4, "price": 9.99 + i}
                    for i in range(3)
                ],
                "note": "deliver to the back door",
            }
    return json.dumps(row, separators=(",", ":")).encode("utf-8")


def without_seq(line: bytes) -> bytes:
    """A row's JSON with ``"seq":null`` in place of its seq (a ``seq_interval`` row)."""
    return b'{"seq":null' + line[line.index(b'",', 8) + 1:]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunk_all(body: bytes, size: int = BACKLOG_CHUNK) -> bytes:
    """*body* cut into chunks of *size* bytes, without the last chunk."""
    return b"".join(chunk(body[i:i + size]) for i in range(0, len(body), size))


LAST_CHUNK = b"0\r\n\r\n"


class Feed:
    """
    The database's rows and the responses rendered from them, each built
    once, on first use.
    """

    def __init__(self, changes: int, docs: bool, chunks: str) -> None:
        self.changes = changes
        self.docs = docs
        self.chunks = chunks
        self.last_seq = seq(changes) if changes else "0"
        self._lines: list[bytes] | None = None
        self._continuous: bytes | None = None
        # Normal bodies by (start, limit, seq_interval): the clients of a
        # benchmark ask for the same ones round after round.
        self._normal: dict[tuple[int, int | None, int | None], bytes] = {}
        self._lock = threading.Lock()

    @property
    def lines(self) -> list[bytes]:
        with self._lock:
            if self._lines is None:
                self._lines = [row_line(n, self.docs) for n in range(1, self.changes + 1)]
            return self._lines

    def end_row(self) -> bytes:
        return b'{"last_seq":%s,"pending":0}' % json.dumps(self.last_seq).encode()

    def continuous(self, start: int = 0) -> bytes:
        """The chunked continuous body of the rows after the first *start*."""
        if start == 0:
            lines = self.lines
            with self._lock:
                if self._continuous is None:
                    self._continuous = self._render_continuous(lines)
                return self._continuous
        return self._render_continuous(self.lines[start:])

    def _render_continuous(self, lines: list[bytes]) -> bytes:
        if self.chunks == "line":
            body = b"".join(b"%x\r\n%s\n\r\n" % (len(line) + 1, line) for line in lines)
            return body + chunk(self.end_row() + b"\n") + LAST_CHUNK
        text = b"\n".join(lines + [self.end_row()]) + b"\n"
        return chunk_all(text) + LAST_CHUNK

    def normal(self, start: int = 0, limit: int | None = None, seq_interval: int | None = None) -> bytes:
        """The chunked normal body of *limit* rows after the first *start*."""
        key = (start, limit, seq_interval)
        lines = self.lines
        with self._lock:
            body = self._normal.get(key)
        if body is None:
            stop = len(lines) if limit is None else min(len(lines), start + limit)
            last = seq(stop) if stop else "0"
            page = lines[start:stop]
            if seq_interval:
                page = [line if k % seq_interval == 0 else without_seq(line) for k, line in enumerate(page, 1)]
            body = self._render_normal(page, last, len(lines) - stop)
            with self._lock:
                self._normal[key] = body
        return body

    def _render_normal(self, lines: list[bytes], last_seq: str, pending: int = 0) -> bytes:
        head = b'{"results":[\n'
        tail = b'\n],\n"last_seq":%s,"pending":%d}\n' % (json.dumps(last_seq).encode(), pending)
        return chunk_all(head + b",\r\n".join(lines) + tail) + LAST_CHUNK

    def position(self, since: str | None) -> int | None:
        """How many rows lie at or before *since*; ``None`` for an unknown seq."""
        if since == "now":
            return self.changes
        if since in (None, "", "0"):
            return 0
        number, _, _ = since.partition("-")
        if not number.isdigit() or int(number) > self.changes or seq(int(number)) != since:
            return None
        return int(number)


HEADERS = (
    "HTTP/1.1 {status}\r\n"
    "Server: CouchDB/3.5.0 (Erlang OTP/25)\r\n"
    "Content-Type: application/json\r\n"
    "Cache-Control: must-revalidate\r\n"
    "{framing}\r\n"
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "FeedServer"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self._answer()

    def _answer(self) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        feed = self.server.feed
        if url.path == "/":
            self._json(200, {"couchdb": "Welcome", "version": "3.5.0"})
        elif url.path == "/db":
            self._json(200, {"db_name": "db", "doc_count": feed.changes, "update_seq": feed.last_seq})
        elif url.path == "/db/_changes":
            self._changes(query)
        else:
            self._json(404, {"error": "not_found", "reason": "Database does not exist."})

    def _changes(self, query: dict[str, str]) -> None:
        feed = self.server.feed
        kind = query.get("feed", "normal")
        start = feed.position(query.get("since"))
        if start is None:
            self._json(400, {"error": "bad_request", "reason": "Malformed sequence supplied in 'since' parameter."})
            return
        if kind == "normal" or kind == "longpoll" and start < feed.changes:
            limit = int(query["limit"]) if "limit" in query else None
            interval = int(query["seq_interval"]) if "seq_interval" in query else None
            self._chunked(feed.normal(start, limit, interval))
        elif kind == "continuous" and start < feed.changes:
            self._chunked(feed.continuous(start))
        elif kind in ("continuous", "longpoll"):
            self._quiet(kind, query)
        else:
            self._json(400, {"error": "bad_request", "reason": "Supported `feed` types: normal, continuous, live, longpoll, eventsource"})

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode() + b"\n"
        phrase = {200: "OK", 400: "Bad Request", 404: "Object Not Found"}[status]
        head = HEADERS.format(status=f"{status} {phrase}", framing=f"Content-Length: {len(data)}\r\n")
        self.wfile.write(head.encode("ascii") + data)

    def _chunked(self, body: bytes) -> None:
        head = HEADERS.format(status="200 OK", framing="Transfer-Encoding: chunked\r\n").encode("ascii")
        self.wfile.write(head)
        view = memoryview(body)
        for i in range(0, len(view), WRITE_SIZE):
            self.wfile.write(view[i:i + WRITE_SIZE])

    def _quiet(self, kind: str, query: dict[str, str]) -> None:
        """An open feed with nothing new: heartbeats until the client leaves, or the end row after timeout."""
        feed = self.server.feed
        head = HEADERS.format(status="200 OK", framing="Transfer-Encoding: chunked\r\n").encode("ascii")
        self.wfile.write(head)
        heartbeat = query.get("heartbeat")
        interval = 60.0 if heartbeat == "true" else int(heartbeat) / 1000 if heartbeat else None
        timeout = int(query.get("timeout", 60000)) / 1000
        deadline = time.monotonic() + timeout
        try:
            while interval is not None or time.monotonic() < deadline:
                time.sleep(min(interval or 0.05, max(0.0, deadline - time.monotonic()) if interval is None else interval))
                if interval is not None:
                    self.wfile.write(chunk(b"\n"))
            if kind == "longpoll":
                body = b'{"results":[\n\n],\n"last_seq":%s,"pending":0}\n' % json.dumps(feed.last_seq).encode()
            else:
                body = feed.end_row() + b"\n"
            self.wfile.write(chunk(body) + LAST_CHUNK)
        except OSError:
            self.close_connection = True


class FeedServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], feed: Feed) -> None:
        super().__init__(address, Handler)
        self.feed = feed

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
        super().server_bind()


def _exit_with_parent(server: FeedServer, parent: int) -> None:
    """Stop *server* once this process's parent is gone, so that a killed run leaves none behind."""
    while os.getppid() == parent:
        time.sleep(0.5)
    server.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=200_000, help="how many changes the database holds")
    parser.add_argument("--docs", action="store_true", help="include a ~300-byte document in each row")
    parser.add_argument("--chunks", choices=("line", "backlog"), default="line",
                        help="one HTTP chunk per line, or ~1490-byte chunks")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prerender", action="store_true", help="render the continuous feed before listening")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop when the process that started this one is gone")
    args = parser.parse_args(argv)
    feed = Feed(args.changes, args.docs, args.chunks)
    if args.prerender:
        feed.continuous()
    server = FeedServer(("127.0.0.1", args.port), feed)
    if args.exit_with_parent:
        threading.Thread(target=_exit_with_parent, args=(server, os.getppid()), daemon=True).start()
    print(f"listening http://127.0.0.1:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
