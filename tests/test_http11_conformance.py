"""
Conformance of txchanges' own HTTP/1.1 feed reader, next to Twisted's client.

Every case puts exact bytes on a loopback socket (:mod:`tests.rawserver`) and
reads them twice: through ``Server(fast_feeds=True)``, txchanges' reader
(``txchanges.http._http11`` and the modules it uses), and through ``Server(fast_feeds=False)``, treq
and Twisted's client. Each case states what each path must do; where the two
differ on purpose, the case says so and why.

Two levels are checked: the response (the status, the body bytes, and how
the body ended: ``done``, ``data-loss`` for a body ended by the close, or
``failed``) and the feed (the rows ``Consumer.wait`` delivered, and how it
ended: the ``last_seq``, or a typed error).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from txchanges import Consumer, Server, TxChangesError

from . import fixtures_util
from .rawserver import RawServer, serving

PATHS = {"ours": True, "twisted": False}
#: The longest a case may take before it counts as a hang.
GUARD = 5.0


# -- reading through both paths ----------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """What a client made of a response: its status, body and end, or the
    error (``ConnectionFailed``) or ``hang`` when there was no response."""

    end: str
    code: Optional[int] = None
    body: bytes = b""


class Hung(Exception):
    """A Deferred that had not fired within its guard time."""


async def within(d: "defer.Deferred[Any]", guard: float) -> Any:
    """The result of *d*; :class:`Hung` (whatever its cancellation raised) when it has not fired within *guard* seconds."""
    timer = reactor.callLater(guard, d.cancel)
    try:
        return await d
    except Exception:
        if not timer.active():
            raise Hung() from None
        raise
    finally:
        if timer.active():
            timer.cancel()


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.ended: defer.Deferred[str] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        kinds = [(ResponseDone, "done"), (PotentialDataLoss, "data-loss"), (ResponseFailed, "failed")]
        self.ended.callback(next((kind for cls, kind in kinds if reason.check(cls)), repr(reason.value)))


async def read(url: str, fast: bool, guard: float = GUARD) -> Read:
    """Open a feed at *url* through one path; what came of it."""
    server = Server(url, fast_feeds=fast)
    try:
        try:
            response = await within(server.open_feed("GET", "db/_changes", [("feed", "continuous")]), guard)
        except Hung:
            return Read("hang")
        except TxChangesError as e:
            return Read(type(e).__name__)
        body = _Recorder()
        response.deliverBody(body)
        try:
            end = await within(body.ended, guard)
        except Hung:
            body.transport.stopProducing()
            end = "hang"
        return Read(end, response.code, b"".join(body.data))
    finally:
        await server.close()


async def read_both(script: bytes, close: bool = True, write_size: Optional[int] = None,
                    guards: Optional[dict[str, float]] = None) -> dict[str, Read]:
    """What each path made of *script*; *guards* shortens the wait for a path that hangs."""
    async with serving(RawServer(script, close=close, write_size=write_size)) as url:
        return {name: await read(url, fast, (guards or {}).get(name, GUARD)) for name, fast in PATHS.items()}


@dataclass(frozen=True)
class Followed:
    """What ``Consumer.wait`` did: the ids of the rows it handed over, and
    how it ended (``last_seq`` or the error's class) with which seq."""

    ids: tuple[str, ...]
    end: str
    seq: Any = None


async def follow(url: str, fast: bool, db: str = "db") -> Followed:
    server = Server(url, fast_feeds=fast)
    rows: list[dict[str, Any]] = []
    waiting = Consumer(server[db]).wait(since=0, heartbeat=False, cb=rows.append)
    try:
        seq = await within(waiting, GUARD)
        end = "last_seq"
    except Hung:
        end, seq = "hang", None
    except TxChangesError as e:
        end, seq = type(e).__name__, getattr(e, "last_seq", None)
    finally:
        await server.close()
    return Followed(tuple(r["id"] for r in rows), end, seq)


async def follow_both(script: bytes, write_size: Optional[int] = None) -> dict[str, Followed]:
    async with serving(RawServer(script, write_size=write_size)) as url:
        return {name: await follow(url, fast) for name, fast in PATHS.items()}


# -- the bytes ------------------------------------------------------------------------


def frames(*chunks: bytes, ext: bytes = b"") -> bytes:
    """The chunked framing of *chunks*, each with *ext* after its size."""
    return b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks)


def chunked(*chunks: bytes, ext: bytes = b"", last: bytes = b"0\r\n", trailers: bytes = b"") -> bytes:
    """A whole chunked body: the frames of *chunks*, then the *last* chunk and *trailers*."""
    return frames(*chunks, ext=ext) + last + trailers + b"\r\n"


def row(n: int) -> bytes:
    return json.dumps({"seq": f"{n}-g1AAAA", "id": f"doc{n}", "changes": [{"rev": "1-a"}]}).encode() + b"\n"


ROWS = [row(n) for n in range(1, 6)]
BODY = b"".join(ROWS)
CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
MAX_HEAD = 64 * 1024  # the reader's limit on a response head (_wire.MAX_HEAD)


def head_of(size: int, line: int = 1000) -> bytes:
    """A 200 head of exactly *size* bytes before its blank line, in header lines of about *line* bytes."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
    while size - len(head) > line + 20:
        field = b"\r\nX-Pad: "
        head += field + b"v" * (line - len(field))
    field = b"\r\nX-Last: "
    return head + field + b"v" * (size - len(head) - len(field)) + b"\r\n\r\n"


OK = Read("done", 200, BODY)
FAILED = Read("ConnectionFailed")


@dataclass(frozen=True)
class Case:
    """Bytes, and what each path must make of them."""

    wire: bytes
    ours: Read
    twisted: Read
    close: bool = True
    #: For a large case: the size of each write instead of one byte.
    step: int = 1


CASES = {
    # Extensions are skipped, quoted strings with ';' included, also on the last chunk.
    "chunk-extensions": Case(CHUNKED + chunked(*ROWS, ext=b';name=val;q="va;lue"', last=b"0;end=1\r\n"), OK, OK),
    # RFC 9112 allows whitespace before ';'; Twisted refuses it (a bare hex size only).
    "chunk-extension-after-whitespace": Case(CHUNKED + chunked(*ROWS, ext=b" ;name=val"),
                                             OK, Read("failed", 200, b"")),
    "trailers": Case(CHUNKED + chunked(*ROWS, trailers=b"X-Trailer: 1\r\nX-Other: two\r\n"), OK, OK),
    "empty-chunked-body": Case(CHUNKED + b"0\r\n\r\n", Read("done", 200), Read("done", 200)),
    "transfer-encoding-mixed-case": Case(
        b"HTTP/1.1 200 OK\r\nTRANSFER-encoding: ChUnKeD\r\n\r\n" + chunked(*ROWS), OK, OK),
    # Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
    "chunked-with-content-length": Case(
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(*ROWS), OK, OK),
    # What follows the length is not body, and the server need not close.
    "content-length": Case(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY + b"trailing junk",
                           OK, OK, close=False),
    "content-length-cut-short": Case(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(BODY) + 9) + BODY,
                                     Read("failed", 200, BODY), Read("failed", 200, BODY)),
    "close-delimited-http-1.0": Case(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY,
                                     Read("data-loss", 200, BODY), Read("data-loss", 200, BODY)),
    "close-delimited-http-1.1": Case(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY,
                                     Read("data-loss", 200, BODY), Read("data-loss", 200, BODY)),
    "interim-responses": Case(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX-Progress: 1\r\n\r\n"
                              + CHUNKED + chunked(*ROWS), OK, OK),
    "chunked-cut-short": Case(CHUNKED + chunked(*ROWS)[:-7], Read("failed", 200, BODY), Read("failed", 200, BODY)),
    # The chunks before a broken one are body; the broken one fails it.
    "malformed-chunk-size": Case(CHUNKED + frames(*ROWS) + b"zz\r\nabc\r\n0\r\n\r\n",
                                 Read("failed", 200, BODY), Read("failed", 200, BODY)),
    "chunk-size-0x-prefix": Case(CHUNKED + frames(*ROWS[:2]) + b"0x3\r\nabc\r\n0\r\n\r\n",
                                 Read("failed", 200, ROWS[0] + ROWS[1]), Read("failed", 200, ROWS[0] + ROWS[1])),
    "chunk-data-longer-than-its-size": Case(CHUNKED + frames(*ROWS[:2]) + b"3\r\nabcXY5\r\nhello\r\n0\r\n\r\n",
                                            Read("failed", 200, ROWS[0] + ROWS[1] + b"abc"),
                                            Read("failed", 200, ROWS[0] + ROWS[1] + b"abc")),
    "status-line-not-http": Case(b"SSH-2.0-OpenSSH_9.6\r\n", FAILED, FAILED, close=False),
    "status-code-not-a-number": Case(b"HTTP/1.1 OK\r\n\r\n", FAILED, FAILED, close=False),
    "closed-before-a-whole-head": Case(b"HTTP/1.1 200 OK\r\nContent-Ty", FAILED, FAILED),
    # A TLS alert from an https port: no line ever ends. Twisted waits for
    # one; the reader fails as soon as the first bytes are not "HTTP/1.".
    "binary-reply-kept-open": Case(b"\x15\x03\x01\x00\x02\x02\x46", FAILED, Read("hang"), close=False),
    # The head is bounded as a whole (64 KiB) however it arrives; Twisted
    # bounds each line (16 KiB) but not the block.
    "head-at-the-limit": Case(head_of(MAX_HEAD) + chunked(*ROWS), OK, OK, step=997),
    "head-over-the-limit": Case(head_of(MAX_HEAD + 1) + chunked(*ROWS), FAILED, OK, step=997),
    "head-never-ending-kept-open": Case(head_of(MAX_HEAD + 200)[:-4], FAILED, Read("hang"), close=False, step=997),
    "header-line-over-16k": Case(head_of(20_000, line=19_000) + chunked(*ROWS), OK, FAILED, step=997),
}


@pytest.mark.parametrize("writes", ["at-once", "one-step-at-a-time"])
@pytest.mark.parametrize("name", CASES)
@pytest_twisted.ensureDeferred
async def test_response(name: str, writes: str) -> None:
    """Each path makes of the bytes what the case says, whether they come in one write or a byte (step) at a time."""
    case = CASES[name]
    # A path that hangs is shown to hang within a short wait.
    guards = {name: 0.2 for name, expected in [("ours", case.ours), ("twisted", case.twisted)]
              if expected.end == "hang"}
    got = await read_both(case.wire, case.close, None if writes == "at-once" else case.step, guards)
    assert got == {"ours": case.ours, "twisted": case.twisted}


# -- a recorded feed, cut at every byte -----------------------------------------------

RECORDING = fixtures_util.load("continuous-timeout-live-change-then-last-seq")
#: How many cuts are followed at once (below the listening backlog).
AT_ONCE = 32


def expected_after_cut(n: int) -> Followed:
    """What a follower must make of the recording's first *n* bytes: the rows
    whose line is complete, then the last_seq if its line is, else UncleanEnd
    with the seq of the last row (ConnectionFailed before a whole head)."""
    head = RECORDING.head
    if n < len(head):
        return Followed((), "ConnectionFailed")
    body, at = b"", len(head)
    for frame in RECORDING.frames:
        start = at + frame.index(b"\r\n") + 2
        data = frame[frame.index(b"\r\n") + 2:-2]
        body += data[:max(0, n - start)]
        at += len(frame)
    ids: list[str] = []
    seq = None
    for line in body.split(b"\n")[:-1]:
        if not line:
            continue
        parsed = json.loads(line)
        if "last_seq" in parsed:
            return Followed(tuple(ids), "last_seq", parsed["last_seq"])
        ids.append(parsed["id"])
        seq = parsed["seq"]
    return Followed(tuple(ids), "UncleanEnd", seq)


@pytest_twisted.ensureDeferred
async def test_cut_at_every_byte() -> None:
    """A recorded CouchDB 3 feed cut at every byte offset: the rows before the cut and a typed error,
    or the last_seq once its row is in; never a hang, never a wrong row; Twisted's client the same."""
    raw = RECORDING.raw
    # One server for every cut; the database name in the request says where.
    cut_at = re.compile(rb"/cut-(\d+)/")
    server = RawServer(lambda request: raw[:int(cut_at.search(request).group(1))])
    wrong: list[str] = []
    async with serving(server) as url:
        for name, fast in PATHS.items():
            for start in range(0, len(raw) + 1, AT_ONCE):
                cuts = range(start, min(start + AT_ONCE, len(raw) + 1))
                got = await defer.gatherResults([defer.Deferred.fromCoroutine(follow(url, fast, f"cut-{n}"))
                                                 for n in cuts])
                wrong += [f"{name} at byte {n}: {g} instead of {expected_after_cut(n)}"
                          for n, g in zip(cuts, got) if g != expected_after_cut(n)]
    assert not wrong, "\n".join(wrong[:20])
    assert len(server.requests) == 2 * (len(raw) + 1)
    # The cuts met every outcome: inside the head, before the row, after it, after last_seq.
    assert {expected_after_cut(n).end for n in range(len(raw) + 1)} == {"ConnectionFailed", "UncleanEnd", "last_seq"}


# -- whole feeds, however they are framed and read ------------------------------------


def rows_of(body: bytes) -> Followed:
    """The rows and end a follower must report for a whole recorded body."""
    ids = tuple(json.loads(line)["id"] for line in body.split(b"\n") if line.startswith(b'{"seq"'))
    return Followed(ids, "last_seq", json.loads(body.strip().split(b"\n")[-1])["last_seq"])


#: A small live feed (heartbeats, a row, last_seq) read at once and a byte
#: at a time; a longer backlog (many rows in one chunk) read at once.
FEEDS = [("continuous-timeout-live-change-then-last-seq", None), ("continuous-timeout-live-change-then-last-seq", 1),
         ("continuous-since-0-timeout", None)]


def framed(recording: fixtures_util.Recording, framing: str) -> bytes:
    """The recording's body again, framed another way."""
    status = recording.head.split(b"\r\n", 1)[0]
    if framing == "recorded":
        return recording.raw
    if framing == "one-byte-chunks":
        return recording.head + chunked(*(recording.body[i:i + 1] for i in range(len(recording.body))))
    if framing == "mixed-case-chunked":
        return recording.head.replace(b"Transfer-Encoding: chunked", b"transfer-encoding: CHUNKED") + (
            recording.raw[len(recording.head):])
    if framing == "content-length":
        return status + b"\r\nContent-Length: %d\r\n\r\n" % len(recording.body) + recording.body
    assert framing == "http-1.0-until-close"
    return b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + recording.body


@pytest.mark.parametrize("framing", ["recorded", "one-byte-chunks", "mixed-case-chunked", "content-length",
                                     "http-1.0-until-close"])
@pytest.mark.parametrize("name, writes", FEEDS, ids=[f"{n}-{'at-once' if w is None else 'byte-by-byte'}"
                                                     for n, w in FEEDS])
@pytest_twisted.ensureDeferred
async def test_whole_feed(name: str, framing: str, writes: Optional[int]) -> None:
    """A recorded feed, with a chunk boundary at every byte or none, read whole or a byte at a time,
    gives every row and the last_seq on both paths."""
    recording = fixtures_util.load(name)
    got = await follow_both(framed(recording, framing), write_size=writes)
    expected = rows_of(recording.body)
    assert expected.ids, "the recording has rows"
    assert got == {"ours": expected, "twisted": expected}


@pytest.mark.parametrize("writes", [None, 1], ids=["at-once", "byte-by-byte"])
@pytest_twisted.ensureDeferred
async def test_rows_before_broken_framing(writes: Optional[int]) -> None:
    """The rows before a malformed chunk are delivered, then the feed fails with UncleanEnd and the last seq."""
    got = await follow_both(CHUNKED + frames(*ROWS) + b"zz\r\n{}\r\n0\r\n\r\n", write_size=writes)
    expected = Followed(tuple(f"doc{n}" for n in range(1, 6)), "UncleanEnd", "5-g1AAAA")
    assert got == {"ours": expected, "twisted": expected}
