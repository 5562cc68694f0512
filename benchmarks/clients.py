"""
The clients the benchmark runs, each in a process of its own:

    python -m benchmarks.clients CLIENT URL CHANGES [--no-orjson]

Every client reads the whole feed of the canned server at *URL* (see
:mod:`benchmarks.feedserver`), counts the changes it saw, and prints one
JSON line: ``{"client", "changes", "seconds", "max_rss_kib", "json"}``. It
exits with status 1, after printing, unless it saw exactly *CHANGES* changes.
``seconds`` runs from just before the request to the end of the feed, so
interpreter and import start-up are left out; ``max_rss_kib`` is the
process's peak resident set.

``--no-orjson`` hides orjson from the process, so that txchanges takes its
standard-library path.

The clients:

``consumer``
    txchanges ``Consumer.wait`` with a registered callback.
``consumer-batch``
    txchanges ``Consumer.wait`` with a registered batch callback
    (``--max-batch`` sets the consumer's ``max_batch``).
``service``
    txchanges ``ChangesService`` with a handler and an in-memory checkpoint;
    done when the checkpoint reaches the feed's ``last_seq``.
``service-batch``
    the same with a ``batch_handler`` (``--max-batch`` sets ``max_batch``).
``normal-stream``
    txchanges ``Consumer.fetch_rows`` on the normal feed: rows handed over
    as they are parsed.
``fetch``
    txchanges ``Consumer.fetch`` on the normal feed: the whole body at once.
``service-catch-up``
    ``service`` with ``catch_up="normal"``: the backlog read through pages
    of the normal feed, then the continuous feed.
``raw-normal-orjson``
    a blocking socket, a de-chunking loop, and ``orjson.loads`` per row of
    the normal feed (each on its line, as CouchDB sends it): the floor for
    a Python client of the normal feed.
``treq-lines``
    plain treq (``unbuffered=True``) + ``LineOnlyReceiver`` + ``json.loads``
    per line: the obvious Twisted client.
``raw-json`` / ``raw-orjson``
    a blocking socket, a de-chunking loop, and ``json.loads`` on ``str`` (or
    ``orjson.loads`` on bytes) per line: the floor for a Python client.

``--treq-feeds`` makes the txchanges clients read feeds through treq
(``Server(fast_feeds=False)``) instead of txchanges' own HTTP/1.1 reader.
``--seq-interval N`` makes ``normal-stream`` and ``raw-normal-orjson`` ask
for the normal feed with ``seq_interval=N`` (as nano's ``spool`` does).

One more client measures latency rather than throughput, against the
project's CouchDB-compatible test server rather than the canned one:

    python -m benchmarks.clients latency URL WRITES [--follower service|consumer]

It follows a fresh database (``URL`` carries the admin's credentials) from
``since=now``, writes *WRITES* documents one after the other, each once the
previous one reached the handler, and prints the median and 95th percentile
of the time from sending the write to the handler's call.
"""

from __future__ import annotations

import json
import resource
import socket
import sys
import time
import urllib.request
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

CONTINUOUS = "db/_changes?feed=continuous&since=0&heartbeat=10000"
NORMAL = "db/_changes?since=0"


def _feed_end(url: str) -> Any:
    """The feed's last seq, from the database's info (read before the clock starts)."""
    with urllib.request.urlopen(url + "db") as response:
        return json.loads(response.read())["update_seq"]


# -- txchanges -----------------------------------------------------------------


#: Set by --treq-feeds: read feeds through treq.
FAST_FEEDS = True
#: Set by --max-batch: the most changes in one batch of the batch clients.
MAX_BATCH: Any = None
#: Set by --seq-interval: the normal feed's seq_interval.
SEQ_INTERVAL: int | None = None
#: Set by --catch-up-page: the changes in a page of service-catch-up.
CATCH_UP_PAGE: int | None = None


def _server(url: str) -> Any:
    from txchanges import Server

    return Server(url, fast_feeds=FAST_FEEDS)


def _react(main: Callable[[Any], Any]) -> int:
    """Run *main(reactor)* (a coroutine function) under the reactor; return its result."""
    from twisted.internet import defer, task

    result: list[int] = []

    def run(reactor: Any) -> Any:
        d = defer.ensureDeferred(main(reactor))
        d.addCallback(result.append)
        return d

    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            raise
    return result[0]


def consumer(url: str) -> int:
    from txchanges import Consumer

    async def main(reactor: Any) -> int:
        server = _server(url)
        count = 0

        def on_change(row: dict[str, Any]) -> None:
            nonlocal count
            count += 1

        c = Consumer(server["db"])
        c.register_callback(on_change)
        await c.wait(since=0, heartbeat=10000)
        await server.close()
        return count

    return _react(main)


def consumer_batch(url: str) -> int:
    from txchanges import Consumer

    async def main(reactor: Any) -> int:
        server = _server(url)
        count = 0

        def on_batch(rows: list[dict[str, Any]]) -> None:
            nonlocal count
            count += len(rows)

        c = Consumer(server["db"], **({} if MAX_BATCH is None else {"max_batch": MAX_BATCH}))
        c.register_batch_callback(on_batch)
        await c.wait(since=0, heartbeat=10000)
        await server.close()
        return count

    return _react(main)


def service(url: str, batched: bool = False, **options: Any) -> int:
    from twisted.internet.defer import Deferred

    from txchanges import ChangesService, MemoryCheckpoint

    end = _feed_end(url)
    reached: Deferred[None] = Deferred()

    class Checkpoint(MemoryCheckpoint):
        def save(self, seq: Any) -> Any:
            d = super().save(seq)
            if seq == end and not reached.called:
                reached.callback(None)
            return d

    async def main(reactor: Any) -> int:
        server = _server(url)
        count = 0

        def handler(row: dict[str, Any]) -> None:
            nonlocal count
            count += 1

        def batch_handler(rows: list[dict[str, Any]]) -> None:
            nonlocal count
            count += len(rows)

        handling: dict[str, Any] = {"handler": handler}
        if batched:
            handling = {"batch_handler": batch_handler}
            if MAX_BATCH is not None:
                handling["max_batch"] = MAX_BATCH
        # The continuous feed from the start, unless a client says otherwise.
        options.setdefault("catch_up", "continuous")
        svc = ChangesService(server["db"], since=0, checkpoint=Checkpoint(), heartbeat=10000, **handling, **options)
        svc.startService()
        await reached
        await svc.stopService()
        await server.close()
        return count

    return _react(main)


def service_catch_up(url: str) -> int:
    if CATCH_UP_PAGE is None:
        return service(url, catch_up="normal")
    return service(url, catch_up="normal", catch_up_page=CATCH_UP_PAGE)


def normal_stream(url: str) -> int:
    from txchanges import Consumer

    async def main(reactor: Any) -> int:
        server = _server(url)
        count = 0

        def on_row(row: dict[str, Any]) -> None:
            nonlocal count
            count += 1

        if SEQ_INTERVAL is None:
            await Consumer(server["db"]).fetch_rows(on_row, since=0)
        else:
            await Consumer(server["db"]).fetch_rows(on_row, since=0, seq_interval=SEQ_INTERVAL)
        await server.close()
        return count

    return _react(main)


def fetch(url: str) -> int:
    from txchanges import Consumer

    async def main(reactor: Any) -> int:
        server = _server(url)
        result = await Consumer(server["db"]).fetch(since=0)
        await server.close()
        return len(result["results"])

    return _react(main)


# -- plain treq ----------------------------------------------------------------


def treq_lines(url: str) -> int:
    import treq
    from twisted.internet.defer import Deferred
    from twisted.protocols.basic import LineOnlyReceiver

    class Lines(LineOnlyReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 1 << 26

        def __init__(self) -> None:
            self.count = 0
            self.done: Deferred[int] = Deferred()

        def lineReceived(self, line: bytes) -> None:
            if not line:
                return
            row = json.loads(line)
            if "changes" in row:
                self.count += 1
            elif "last_seq" in row and not self.done.called:
                self.done.callback(self.count)
                self.transport.stopProducing()

        def connectionLost(self, reason: Any = None) -> None:
            if not self.done.called:
                self.done.callback(self.count)

    async def main(reactor: Any) -> int:
        response = await treq.get(url + CONTINUOUS, unbuffered=True)
        lines = Lines()
        response.deliverBody(lines)
        return await lines.done

    return _react(main)


# -- raw socket ----------------------------------------------------------------


def _raw_reads(url: str, path: str) -> Iterator[bytes]:
    """Send one GET from a blocking socket and yield the de-chunked body of each read, until the last chunk."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        b"GET /%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: application/json\r\n\r\n"
        % (path.encode(), parts.hostname.encode(), parts.port)
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    try:
        while True:
            # De-chunk what arrived: complete chunks go to the body, the rest waits.
            body = []
            pos = 0
            ended = False
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
                if size == 0:
                    ended = True
                    break
                if len(buf) < eol + 2 + size + 2:
                    break
                body.append(buf[eol + 2:eol + 2 + size])
                pos = eol + 2 + size + 2
            buf = buf[pos:]
            yield b"".join(body)
            data = b"" if ended else sock.recv(65536)
            if not data:
                return
            buf += data
    finally:
        sock.close()


def _raw(url: str, loads: Callable[[bytes], Any]) -> int:
    """Read the chunked continuous feed from a blocking socket, parsing each line with *loads*."""
    count = 0
    partial = b""
    for body in _raw_reads(url, CONTINUOUS):
        lines = (partial + body).split(b"\n")
        partial = lines.pop()
        for line in lines:
            if not line:
                continue
            row = loads(line)
            if "changes" in row:
                count += 1
            elif "last_seq" in row:
                return count
    return count


def raw_json(url: str) -> int:
    return _raw(url, lambda line: json.loads(line.decode("utf-8")))


def raw_orjson(url: str) -> int:
    import orjson

    return _raw(url, orjson.loads)


def raw_normal_orjson(url: str) -> int:
    """Read the normal feed, each row on its line as CouchDB sends it, parsing each row with orjson."""
    import orjson

    loads = orjson.loads
    count = 0
    partial = b""
    path = NORMAL + ("" if SEQ_INTERVAL is None else f"&seq_interval={SEQ_INTERVAL}")
    for body in _raw_reads(url, path):
        lines = (partial + body).split(b"\n")
        partial = lines.pop()
        for line in lines:
            # A row's line ends in ",\r" (the last one in nothing); around
            # the rows, the head, "],", and the tail with last_seq.
            if line[:7] == b'{"seq":':
                if "changes" in loads(line.rstrip(b",\r")):
                    count += 1
            elif line[:11] == b'"last_seq":':
                return count
    return count


# -- latency -------------------------------------------------------------------


def latency(url: str, writes: int, follower: str) -> dict[str, Any]:
    """
    Follow a fresh database and time each write's way to the handler.

    :return: ``{"writes", "median_ms", "p95_ms", "write_ms", "delays_ms"}``
        (``write_ms``: the median time for the write's own answer).
    """
    import itertools
    import secrets
    import statistics

    from twisted.internet import defer

    from txchanges import ChangesService, Consumer

    async def main(reactor: Any) -> dict[str, Any]:
        server = _server(url)
        db = await server.create_db(f"latency-{secrets.token_hex(4)}")
        arrived: dict[str, float] = {}
        waiter: list[defer.Deferred[None]] = []

        def on_change(row: dict[str, Any]) -> None:
            arrived[row["id"]] = time.perf_counter()
            if waiter:
                waiter.pop().callback(None)

        if follower == "service":
            svc = ChangesService(db, on_change, since="now", heartbeat=10000)
            svc.startService()
            stop = svc.stopService
        else:
            consumer = Consumer(db)
            consumer.register_callback(on_change)
            following = consumer.wait(since="now", heartbeat=10000)

            def stop() -> Any:
                consumer.stop()
                return following

        # Let the feed start before the first write. A write that lands
        # before the server has resolved "now" is never sent, so write
        # again until one arrives.
        for attempt in itertools.count():
            await db.save_doc({"_id": f"warm-up-{attempt}"})
            for _ in range(50):
                if arrived:
                    break
                await task_sleep(reactor, 0.01)
            if arrived:
                break
        delays, write_times = [], []
        for n in range(writes):
            docid = f"doc-{n:05d}"
            d: defer.Deferred[None] = defer.Deferred()
            waiter.append(d)
            started = time.perf_counter()
            await db.save_doc({"_id": docid, "n": n})
            write_times.append(time.perf_counter() - started)
            if docid not in arrived:
                await d
            waiter.clear()
            delays.append(arrived[docid] - started)
        await stop()
        await server.delete_db(db.name)
        await server.close()
        delays_ms = [round(d * 1000, 4) for d in delays]
        return {
            "writes": len(delays),
            "median_ms": statistics.median(delays_ms),
            "p95_ms": percentile(delays_ms, 95),
            "write_ms": statistics.median(write_times) * 1000,
            "delays_ms": delays_ms,
        }

    result: dict[str, Any] = {}

    async def run(reactor: Any) -> int:
        result.update(await main(reactor))
        return result["writes"]

    _react(run)
    return result


def percentile(values: list[float], p: float) -> float:
    """The *p*-th percentile of *values* (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, int(-(-len(ordered) * p // 100)) - 1)]


def task_sleep(reactor: Any, seconds: float) -> Any:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


CLIENTS: dict[str, Callable[[str], int]] = {
    "consumer": consumer,
    "consumer-batch": consumer_batch,
    "service": service,
    "service-batch": lambda url: service(url, batched=True),
    "normal-stream": normal_stream,
    "service-catch-up": service_catch_up,
    "fetch": fetch,
    "treq-lines": treq_lines,
    "raw-json": raw_json,
    "raw-orjson": raw_orjson,
    "raw-normal-orjson": raw_normal_orjson,
}


def _import_before_the_clock(client: str) -> None:
    """Import what *client* imports itself, so that the time measured is reading the feed, not importing (about 0.4 s)."""
    if client.startswith("raw-"):
        if "orjson" in client:
            import orjson  # noqa: F401
        return
    import treq  # noqa: F401
    import twisted.internet.reactor  # noqa: F401
    from twisted.internet import defer, task  # noqa: F401
    from twisted.protocols import basic  # noqa: F401

    import txchanges  # noqa: F401


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run one benchmark client.")
    parser.add_argument("client", choices=sorted(CLIENTS) + ["latency"])
    parser.add_argument("url", help="the feed server's base URL, ending in /")
    parser.add_argument("changes", type=int, help="how many changes the client must see")
    parser.add_argument("--no-orjson", action="store_true", help="hide orjson from this process")
    parser.add_argument("--treq-feeds", action="store_true", help="read feeds through treq")
    parser.add_argument("--max-batch", type=int, help="the most changes in one batch (batch clients; their default)")
    parser.add_argument("--seq-interval", type=int, help="the normal feed's seq_interval")
    parser.add_argument("--catch-up-page", type=int, help="changes per page of service-catch-up")
    parser.add_argument("--follower", choices=("service", "consumer"), default="service",
                        help="what follows the feed in the latency client")
    args = parser.parse_args(argv)
    if args.no_orjson:
        sys.modules["orjson"] = None  # type: ignore[assignment]
    global FAST_FEEDS, MAX_BATCH, SEQ_INTERVAL, CATCH_UP_PAGE
    FAST_FEEDS = not args.treq_feeds
    MAX_BATCH = args.max_batch
    SEQ_INTERVAL = args.seq_interval
    CATCH_UP_PAGE = args.catch_up_page
    if args.client == "latency":
        result = latency(args.url, args.changes, args.follower)
        print(json.dumps(dict(result, client="latency", follower=args.follower,
                              fast_feeds=FAST_FEEDS,
                              json=getattr(sys.modules.get("txchanges.feed._rows"), "PARSER", "json"))),
              flush=True)
        return 0 if result["writes"] == args.changes else 1
    run = CLIENTS[args.client]
    _import_before_the_clock(args.client)
    started = time.perf_counter()
    count = run(args.url)
    seconds = time.perf_counter() - started
    if args.client in ("raw-orjson", "raw-normal-orjson"):
        parser_name = "orjson"
    elif args.client in ("raw-json", "treq-lines"):
        parser_name = "json"
    else:
        parser_name = getattr(sys.modules.get("txchanges.feed._rows"), "PARSER", "json")
    print(json.dumps({
        "client": args.client,
        "changes": count,
        "seconds": seconds,
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "json": parser_name,
    }), flush=True)
    if count != args.changes:
        print(f"{args.client}: saw {count} changes, expected {args.changes}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
