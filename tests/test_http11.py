"""
txchanges' own HTTP/1.1 reader for feeds: the chunked decoder on its own,
the response reader over a real loopback connection (and TLS), and its seam
in Server and FeedRun.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Optional

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import defer, reactor, ssl, task
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import implementer
from twisted.web.iweb import IPolicyForHTTPS

from txchanges import CertificateError, ConnectionFailed, Consumer, NotFound, ServerError, Server, Stalled, Unauthorized
from txchanges.http._chunked import ChunkedDecoder
from txchanges.http._framing import LengthDecoder, UntilClose, body_framing
from txchanges.http._wire import BadResponse, host_header, render_request
from txchanges.feed._ends import Stopped
from txchanges.feed._feed import FeedRun
from txchanges.http._http11 import open_response
from txchanges.http._response import FeedResponse
from txchanges.feed._params import feed_request
from txchanges.feed._protocol import ChangesProtocol

from .fakecouch import Answer, stub


# -- the chunked decoder -----------------------------------------------------------


def chunked(*chunks: bytes, ext: bytes = b"", trailers: bytes = b"") -> bytes:
    """The chunked framing of *chunks*, then the last chunk and *trailers*."""
    return b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks) + b"0\r\n" + trailers + b"\r\n"


def decode(pieces: list[bytes], decoder: Optional[ChunkedDecoder] = None) -> tuple[bytes, ChunkedDecoder]:
    """Feed *pieces* one by one; return the body (lines joined back) and the decoder."""
    decoder = decoder or ChunkedDecoder()
    body = []
    for piece in pieces:
        for out in decoder.feed(piece):
            body.append(b"".join(line + b"\n" for line in out) if isinstance(out, list) else out)
    return b"".join(body), decoder


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def line(n: int, extra: str = "") -> bytes:
    return json.dumps({"seq": f"{n}-g1AAAA{extra}", "id": f"doc{n}", "changes": [{"rev": "1-a"}]}).encode() + b"\n"


LINES = [line(n) for n in range(1, 6)]
BODY = b"".join(LINES)


def test_one_line_chunks_come_out_as_lines() -> None:
    """A read of one-line chunks (a live feed) comes out as a list of lines without their newlines."""
    out = ChunkedDecoder().feed(chunked(*LINES))
    assert out == [[piece[:-1] for piece in LINES]]


def test_multi_line_chunks_come_out_as_bytes() -> None:
    """Chunks cut across lines (a backlog) come out as body bytes, one piece per chunk."""
    data = chunked(BODY[:100], BODY[100:250], BODY[250:])
    decoder = ChunkedDecoder()
    assert b"".join(decoder.feed(data)) == BODY  # type: ignore[arg-type]
    assert decoder.done


@pytest.mark.parametrize("cut", range(1, 12))
def test_a_cut_inside_the_size_line_or_crlf(cut: int) -> None:
    """A read that ends inside a chunk-size line or between its CR and LF loses nothing."""
    data = chunked(LINES[0], b"%s" % LINES[1], LINES[2])
    start = len(b"%x\r\n" % len(LINES[0])) + len(LINES[0])  # the CRLF after the first chunk
    body, decoder = decode([data[:start + cut], data[start + cut:]])
    assert body == b"".join(LINES[:3]) and decoder.done


def test_every_two_way_split() -> None:
    """Whatever byte a read ends on, the body is the same."""
    data = chunked(*LINES, ext=b"", trailers=b"")
    for cut in range(1, len(data)):
        body, decoder = decode([data[:cut], data[cut:]])
        assert body == BODY and decoder.done, cut


def test_byte_by_byte() -> None:
    """Fed one byte at a time, the decoder gives the same body."""
    data = chunked(*LINES)
    body, decoder = decode([data[i:i + 1] for i in range(len(data))])
    assert body == BODY and decoder.done


def test_chunk_extensions_are_ignored() -> None:
    """Chunk extensions (``;name=value``) are skipped, also on the last chunk."""
    data = chunked(*LINES, ext=b';name="va;lue"').replace(b"0\r\n\r\n", b"0;last\r\n\r\n")
    body, decoder = decode([data])
    assert body == BODY and decoder.done


def test_trailers_are_skipped_and_end_the_body() -> None:
    """Trailer fields after the last chunk are read past; the body ends at the blank line."""
    data = chunked(*LINES, trailers=b"X-Couch-Trailer: 1\r\nX-Other: two\r\n")
    for cut in range(len(data) - 40, len(data)):
        body, decoder = decode([data[:cut], data[cut:]])
        assert body == BODY and decoder.done


def test_nothing_after_the_end_is_delivered() -> None:
    """Bytes after the last chunk are not body."""
    body, decoder = decode([chunked(*LINES) + b"garbage that follows"])
    assert body == BODY and decoder.done


def test_crlf_inside_chunk_data() -> None:
    """Chunk data holding CRLF (a normal feed's ``,\\r\\n`` between rows) is taken by its size."""
    rows = b'{"results":[\r\n{"seq":1},\r\n{"seq":2}\r\n],\r\n"last_seq":2}\n'
    data = chunked(rows[:20], rows[20:45], rows[45:])
    for cut in range(1, len(data)):
        body, decoder = decode([data[:cut], data[cut:]])
        assert body == rows and decoder.done


def test_upper_case_hex_sizes() -> None:
    """Chunk sizes in upper-case hex are read."""
    big = b"x" * 0xAB + b"\n"
    data = b"AC\r\n" + big + b"\r\nAC\r\n" + big + b"\r\nAC\r\n" + big + b"\r\n0\r\n\r\n"
    body, decoder = decode([data])
    assert body == big * 3 and decoder.done


def test_heartbeat_chunks_come_out_as_empty_lines() -> None:
    """A heartbeat chunk (a lone newline) between rows is an empty line, in its place."""
    data = chunked(LINES[0], b"\n", LINES[1], b"\n", b"\n", LINES[2])
    out = ChunkedDecoder().feed(data)
    assert out == [[LINES[0][:-1], b"", LINES[1][:-1], b"", b"", LINES[2][:-1]]]


def test_a_chunk_bigger_than_a_read_is_delivered_as_it_comes() -> None:
    """A huge chunk is handed over piece by piece, not held until it is complete."""
    data = chunked(b"y" * 100_000 + b"\n")
    decoder = ChunkedDecoder()
    first = decoder.feed(data[:50_000])
    assert sum(map(len, first)) > 49_000  # type: ignore[arg-type]
    rest, decoder = decode([data[50_000:]], decoder)
    assert decoder.done


@pytest.mark.parametrize(
    "data",
    [
        b"zz\r\nabc\r\n",  # not hex
        b"0x3\r\nabc\r\n",  # int() would take it
        b"+3\r\nabc\r\n",
        b" 3\r\nabc\r\n",
        b"3_0\r\nabc\r\n",
        b"3\r\nabcXY",  # no CRLF after the data
        b"1" * 5000,  # a size line that never ends
    ],
)
def test_broken_framing_is_an_error(data: bytes) -> None:
    """Broken chunk framing raises BadResponse rather than producing a wrong body."""
    with pytest.raises(BadResponse):
        ChunkedDecoder().feed(data)


def test_broken_framing_after_good_chunks_in_one_read() -> None:
    """In a read that the fast path takes only in part, the broken chunk still fails."""
    data = chunked(*LINES)[:-5] + b"zz\r\nabc\r\n"
    with pytest.raises(BadResponse):
        decode([data])


def test_a_lying_size_is_an_error() -> None:
    """A size that does not match the data before the next CRLF fails, it is not guessed around."""
    data = b"5\r\nabc\r\n" + chunked(*LINES)
    with pytest.raises(BadResponse):
        decode([data])


body_lines = st.lists(
    st.one_of(
        st.builds(line, st.integers(1, 10**6), st.text(alphabet="abcé\r", max_size=40)),
        st.just(b"\n"),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(
    lines=body_lines,
    data=st.data(),
    one_per_chunk=st.booleans(),
    ext=st.sampled_from([b"", b";a=b"]),
    trailers=st.sampled_from([b"", b"X-T: 1\r\n"]),
)
def test_any_chunking_and_any_reads(lines: list[bytes], data: Any, one_per_chunk: bool, ext: bytes, trailers: bytes) -> None:
    """However the body is cut into chunks and the wire into reads, the decoded body is the same."""
    body = b"".join(lines)
    if one_per_chunk:
        chunks = lines
    else:
        cuts = data.draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=8))
        chunks = split_at(body, cuts)
    wire = chunked(*chunks, ext=ext, trailers=trailers)
    reads = split_at(wire, data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=12)))
    got, decoder = decode(reads)
    assert got == body and decoder.done


def test_length_and_close_framing() -> None:
    """Content-Length bodies end after that many bytes; bodies without framing never end by themselves."""
    decoder = body_framing(200, Headers({b"content-length": [b"5"]}))
    assert isinstance(decoder, LengthDecoder)
    assert decoder.feed(b"abc") == [b"abc"] and not decoder.done
    assert decoder.feed(b"de-and-more") == [b"de"] and decoder.done
    assert isinstance(body_framing(200, Headers()), UntilClose)
    assert body_framing(204, Headers()).done
    assert isinstance(body_framing(200, Headers({b"transfer-encoding": [b"gzip, chunked"]})), ChunkedDecoder)
    with pytest.raises(BadResponse):
        body_framing(200, Headers({b"content-length": [b"5", b"6"]}))


# -- the reader over a real connection ---------------------------------------------------


class Scripted(Protocol):
    """Writes its factory's pieces once the request is in, then closes if told to."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.request = b""
        self.lost: Optional[Failure] = None
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        self.request += data
        if self.answered or b"\r\n\r\n" not in self.request:
            return
        head, _, body = self.request.partition(b"\r\n\r\n")
        length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
        if length and len(body) < length[0]:
            return
        self.answered = True
        self.factory.requests.append(self.request)
        self._write(list(self.factory.pieces))

    def _write(self, pieces: list[Any]) -> None:
        while pieces:
            piece = pieces.pop(0)
            if isinstance(piece, float):
                reactor.callLater(piece, self._write, pieces)
                return
            self.transport.write(piece)
        if self.factory.close:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class ScriptedServer(Factory):
    protocol = Scripted

    def __init__(self, *pieces: Any, close: bool = True) -> None:
        self.pieces = pieces
        self.close = close
        self.requests: list[bytes] = []
        self.connections: list[Scripted] = []


def listen(factory: Factory, tls: Any = None, interface: str = "127.0.0.1") -> tuple[int, Any]:
    if tls is None:
        port = reactor.listenTCP(0, factory, interface=interface)
    else:
        port = reactor.listenSSL(0, factory, tls, interface=interface)
    return port.getHost().port, port


def has_ipv6() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Body(Protocol):
    """Records what a body protocol is told."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lines: list[list[bytes]] = []
        self.ended: defer.Deferred[FailureBox] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # A Failure given to callback() would become the Deferred's error.
        self.ended.callback(FailureBox(reason))


class FailureBox:
    def __init__(self, failure: Failure) -> None:
        self.failure = failure

    def check(self, *types: type) -> Any:
        return self.failure.check(*types)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


async def server_sees_the_close(server: ScriptedServer) -> None:
    """Wait (at most a second) until *server*'s first connection is lost; fail if it never is."""
    for _ in range(100):
        if server.connections[0].lost is not None:
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the client never closed the connection")


def endpoint_for(port: int) -> Any:
    from twisted.internet.endpoints import TCP4ClientEndpoint

    return TCP4ClientEndpoint(reactor, "127.0.0.1", port)


def request_bytes(port: int) -> bytes:
    return render_request("GET", "/db/_changes?feed=continuous", b"127.0.0.1:%d" % port, Headers({b"Accept": [b"application/json"]}))


async def fetch_body(factory: ScriptedServer) -> tuple[FeedResponse, Body, FailureBox]:
    port, listening = listen(factory)
    try:
        response = await open_response(endpoint_for(port), request_bytes(port))
        body = Body()
        response.deliverBody(body)
        reason = await body.ended
    finally:
        await listening.stopListening()
    return response, body, reason


@pytest_twisted.ensureDeferred
async def test_chunked_response_one_call_per_read() -> None:
    """A chunked body arrives whole, in far fewer dataReceived calls than chunks, and ends with ResponseDone."""
    response, body, reason = await fetch_body(ScriptedServer(HEAD + chunked(*(LINES * 40))))
    assert response.code == 200 and response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert b"".join(body.data) == BODY * 40
    assert len(body.data) < 10
    assert reason.check(ResponseDone)


@pytest_twisted.ensureDeferred
async def test_content_length_response() -> None:
    """A Content-Length body ends after its length, cleanly, whatever follows."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    response, body, reason = await fetch_body(ScriptedServer(head + BODY + b"extra", close=False))
    assert response.length == len(BODY)
    assert b"".join(body.data) == BODY and reason.check(ResponseDone)


@pytest_twisted.ensureDeferred
async def test_connection_close_response() -> None:
    """A body without framing ends when the server closes, reported as PotentialDataLoss."""
    response, body, reason = await fetch_body(ScriptedServer(b"HTTP/1.0 200 OK\r\n\r\n", BODY[:50], 0.01, BODY[50:]))
    assert response.version == (b"HTTP", 1, 0)
    assert b"".join(body.data) == BODY and reason.check(PotentialDataLoss)


@pytest_twisted.ensureDeferred
async def test_cut_chunked_body_is_a_failure() -> None:
    """A chunked body cut off before its last chunk ends with ResponseFailed."""
    response, body, reason = await fetch_body(ScriptedServer(HEAD + chunked(*LINES)[:-20]))
    assert reason.check(ResponseFailed)


@pytest_twisted.ensureDeferred
async def test_interim_response_and_folded_headers() -> None:
    """A 100 Continue before the response is skipped; folded and repeated headers are kept."""
    head = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Long: one\r\n two\r\nX-Many: a\r\n"
            b"X-Many: b\r\nTransfer-Encoding: chunked\r\n\r\n")
    response, body, reason = await fetch_body(ScriptedServer(head + chunked(*LINES)))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"x-long") == [b"one two"]
    assert response.headers.getRawHeaders(b"x-many") == [b"a", b"b"]
    assert b"".join(body.data) == BODY


@pytest_twisted.ensureDeferred
async def test_body_split_between_head_and_reads() -> None:
    """Body bytes in the read that ends the head, then chunks cut anywhere over several writes."""
    wire = HEAD + chunked(*LINES)
    pieces: list[Any] = []
    for i in range(0, len(wire), 7):
        pieces += [wire[i:i + 7], 0.001]
    response, body, reason = await fetch_body(ScriptedServer(*pieces))
    assert b"".join(body.data) == BODY and reason.check(ResponseDone)


@pytest.mark.parametrize(
    "head, close",
    [
        (b"HTP/1.1 200 OK\r\n\r\n", False),
        (b"HTTP/1.1 2000 OK\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", False),
        (b"HTTP/1.1 200", True),
    ],
    ids=["not-http", "bad-status", "bad-header", "closed-before-the-head"],
)
@pytest_twisted.ensureDeferred
async def test_no_valid_head_fails_the_response(head: bytes, close: bool) -> None:
    """A head that is not HTTP/1.x, or a server that closes before a whole head, fails the request with ResponseFailed."""
    port, listening = listen(ScriptedServer(head, close=close))
    try:
        with pytest.raises(ResponseFailed):
            await open_response(endpoint_for(port), request_bytes(port))
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_cancel_while_waiting_for_the_head() -> None:
    """Cancelling before the head arrives fails with CancelledError and drops the connection."""
    server = ScriptedServer(close=False)
    port, listening = listen(server)
    try:
        d = open_response(endpoint_for(port), request_bytes(port))
        while not server.requests:
            await task.deferLater(reactor, 0.01, lambda: None)
        d.cancel()
        with pytest.raises(defer.CancelledError):
            await d
        await server_sees_the_close(server)
    finally:
        await listening.stopListening()


class Flow(Protocol):
    """A body protocol that pauses, resumes or stops its transport on request."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.ended: defer.Deferred[FailureBox] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # A Failure given to callback() would become the Deferred's error.
        self.ended.callback(FailureBox(reason))


@pytest_twisted.ensureDeferred
async def test_pause_resume_and_stop_through_the_transport() -> None:
    """Paused, the body receives nothing more; resumed, it gets the rest; stopped, the connection drops with ResponseFailed."""
    wire = [HEAD, chunked(*LINES)[:-5], 0.05, chunked(*LINES)[-5:].replace(b"0\r\n\r\n", b""), 0.05]
    server = ScriptedServer(*wire, *(chunked(line(n))[:-5] for n in range(100)), close=False)
    port, listening = listen(server)
    try:
        response = await open_response(endpoint_for(port), request_bytes(port))
        body = Flow()
        response.deliverBody(body)
        while not body.data:
            await task.deferLater(reactor, 0.005, lambda: None)
        body.transport.pauseProducing()
        seen = len(body.data)
        await task.deferLater(reactor, 0.2, lambda: None)
        assert len(body.data) == seen
        body.transport.resumeProducing()
        for _ in range(200):
            if len(body.data) > seen:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        assert len(body.data) > seen
        body.transport.stopProducing()
        reason = await body.ended
        assert reason.check(ResponseFailed)
        await server_sees_the_close(server)
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_body_held_until_delivered_to() -> None:
    """A body that arrives before deliverBody is held, with its end, for the protocol."""
    port, listening = listen(ScriptedServer(HEAD + chunked(*LINES)))
    try:
        response = await open_response(endpoint_for(port), request_bytes(port))
        await task.deferLater(reactor, 0.1, lambda: None)
        body = Body()
        response.deliverBody(body)
        reason = await body.ended
        assert b"".join(body.data) == BODY and reason.check(ResponseDone)
        with pytest.raises(RuntimeError):
            response.deliverBody(Body())
    finally:
        await listening.stopListening()


def test_host_header() -> None:
    """The Host header is the URL's authority, an international name in its IDNA form."""
    assert host_header("127.0.0.1:5984", "127.0.0.1") == b"127.0.0.1:5984"
    assert host_header("[::1]:5984", "::1") == b"[::1]:5984"
    assert host_header("café.example:5984", "café.example") == b"xn--caf-dma.example:5984"
    assert host_header("café.example", "café.example") == b"xn--caf-dma.example"


def test_rendered_request() -> None:
    """The request line, Host, the caller's headers, Content-Length and Connection: close, then the body."""
    headers = Headers({b"Authorization": [b"Basic eDp5"], b"Content-Type": [b"application/json"], b"Connection": [b"keep-alive"]})
    data = render_request("POST", "/db/_changes?feed=continuous&filter=_doc_ids", b"h:1", headers, b'{"doc_ids":["a"]}')
    head, body = data.split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /db/_changes?feed=continuous&filter=_doc_ids HTTP/1.1"
    assert set(lines[1:]) == {b"Host: h:1", b"Authorization: Basic eDp5", b"Content-Type: application/json",
                              b"Content-Length: 17", b"Connection: close"}
    assert body == b'{"doc_ids":["a"]}'


# -- through Server, Consumer and FeedRun ---------------------------------------------


def feed_server(*rows: bytes, close: bool = True) -> ScriptedServer:
    return ScriptedServer(HEAD + chunked(*rows), close=close)


@pytest_twisted.ensureDeferred
async def test_consumer_wait_sends_auth_and_the_post_body() -> None:
    """A feed through the fast reader sends basic auth and a doc_ids POST body as Server does, and delivers every row."""
    server = feed_server(*LINES, b'{"last_seq":"5-g1AAAA","pending":0}\n')
    port, listening = listen(server)
    couch = Server(f"http://admin:s3cret@127.0.0.1:{port}/")
    try:
        seen: list[str] = []
        last = await Consumer(couch["db"]).wait(since=0, cb=lambda r: seen.append(r["id"]), doc_ids=["doc1", "doc2"])
    finally:
        await couch.close()
        await listening.stopListening()
    assert seen == [f"doc{n}" for n in range(1, 6)] and last == "5-g1AAAA"
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /db/_changes?")
    assert b"Authorization: Basic YWRtaW46czNjcmV0" in head.split(b"\r\n")
    assert json.loads(body) == {"doc_ids": ["doc1", "doc2"]}


@pytest_twisted.ensureDeferred
async def test_path_prefix_and_no_credentials_in_the_request_line() -> None:
    """A server URL with a path prefix (CouchDB behind a proxy) is kept; credentials go only in the header."""
    server = feed_server(*LINES, b'{"last_seq":"5-g1AAAA","pending":0}\n')
    port, listening = listen(server)
    couch = Server(f"http://u:p@127.0.0.1:{port}/couch/")
    try:
        await Consumer(couch["db"]).wait(since=0)
    finally:
        await couch.close()
        await listening.stopListening()
    request_line = server.requests[0].split(b"\r\n")[0]
    assert request_line.startswith(b"GET /couch/db/_changes?") and b"u:p" not in server.requests[0]


def error_server(status: bytes, body: bytes, content_type: bytes = b"application/json", extra: bytes = b"") -> ScriptedServer:
    return ScriptedServer(
        b"HTTP/1.1 %s\r\nContent-Type: %s\r\n%sContent-Length: %d\r\n\r\n%s" % (status, content_type, extra, len(body), body),
        close=False,
    )


@pytest.mark.parametrize(
    "status, body, ctype, cls, error, reason",
    [
        (b"404 Object Not Found", b'{"error":"not_found","reason":"Database does not exist."}', b"application/json",
         NotFound, "not_found", "Database does not exist."),
        (b"401 Unauthorized", b'{"error":"unauthorized","reason":"You are not a server admin."}', b"application/json",
         Unauthorized, "unauthorized", "You are not a server admin."),
        (b"502 Bad Gateway", b"<html><body>bad gateway</body></html>", b"text/html",
         ServerError, None, "<html><body>bad gateway</body></html>"),
        (b"500 Internal Server Error", b"", b"text/plain", ServerError, None, "Internal Server Error"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_errors_map_to_the_same_typed_errors(status: bytes, body: bytes, ctype: bytes, cls: type, error: Any, reason: str) -> None:
    """An error status on a feed fails with the class, error and reason Server's other requests give."""
    port, listening = listen(error_server(status, body, ctype))
    couch = Server(f"http://127.0.0.1:{port}/")
    try:
        with pytest.raises(cls) as e:
            await Consumer(couch["db"]).wait(since=0)
    finally:
        await couch.close()
        await listening.stopListening()
    assert (e.value.error, e.value.reason, e.value.method) == (error, reason, "GET")
    assert e.value.url.startswith(f"http://127.0.0.1:{port}/db/_changes?")


@pytest_twisted.ensureDeferred
async def test_retry_after_is_kept() -> None:
    """A 503 with Retry-After on a feed keeps the header on the error, for the service's backoff."""
    error = await feed_error(error_server(b"503 Service Unavailable", b'{"error":"unavailable","reason":"busy"}',
                                          extra=b"Retry-After: 7\r\n"))
    assert isinstance(error, ServerError) and error.headers == {"retry-after": "7"}


async def feed_error(server: ScriptedServer) -> Exception:
    """What opening a feed fails with when *server* answers it."""
    port, listening = listen(server)
    couch = Server(f"http://127.0.0.1:{port}/")
    try:
        with pytest.raises(Exception) as caught:
            await couch.open_feed("GET", "db/_changes", [("feed", "continuous")])
    finally:
        await couch.close()
        await listening.stopListening()
    return caught.value


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_connection_failed() -> None:
    """A feed to a port nobody listens on fails with ConnectionFailed."""
    port, listening = listen(ScriptedServer())
    await listening.stopListening()
    couch = Server(f"http://127.0.0.1:{port}/")
    with pytest.raises(ConnectionFailed):
        await Consumer(couch["db"]).wait(since=0)
    await couch.close()


@pytest_twisted.ensureDeferred
async def test_malformed_response_is_connection_failed() -> None:
    """A response that is not HTTP fails a feed with ConnectionFailed, as through treq."""
    port, listening = listen(ScriptedServer(b"SSH-2.0-OpenSSH\r\n\r\n"))
    couch = Server(f"http://127.0.0.1:{port}/")
    try:
        with pytest.raises(ConnectionFailed):
            await Consumer(couch["db"]).wait(since=0)
    finally:
        await couch.close()
        await listening.stopListening()


async def ids_through(server: ScriptedServer, url: str = "http://127.0.0.1:{port}/", interface: str = "127.0.0.1",
                      **options: Any) -> tuple[list[str], int]:
    """Serve *server* on a free port, follow its feed with Consumer.wait through a Server at *url*
    (``{port}`` filled in) made with *options*; return the ids seen and the port."""
    port, listening = listen(server, interface=interface)
    couch = Server(url.format(port=port), **options)
    try:
        seen: list[str] = []
        await Consumer(couch["db"]).wait(since=0, cb=lambda r: seen.append(r["id"]))
    finally:
        await couch.close()
        await listening.stopListening()
    return seen, port


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
@pytest_twisted.ensureDeferred
async def test_ipv6_address() -> None:
    """A server at an IPv6 address is reached directly, with a bracketed Host header."""
    server = feed_server(*LINES, b'{"last_seq":"5-g1AAAA","pending":0}\n')
    seen, port = await ids_through(server, "http://[::1]:{port}/", interface="::1")
    assert len(seen) == 5 and server.requests[0].split(b"\r\n")[1] == b"Host: [::1]:%d" % port


def feed_run(couch: Server, limit: float, make_protocol: Any = None) -> FeedRun:
    request = feed_request("continuous", 0, {"heartbeat": 1000})
    return FeedRun(couch, "db/_changes", request, reactor, limit,
                   make_protocol or (lambda on_activity: ChangesProtocol(lambda c: None, on_activity)))


@pytest_twisted.ensureDeferred
async def test_stall_before_the_head() -> None:
    """A server that takes the request and never answers trips FeedRun's watchdog: Stalled."""
    port, listening = listen(ScriptedServer(close=False))
    couch = Server(f"http://127.0.0.1:{port}/")
    try:
        with pytest.raises(Stalled):
            await feed_run(couch, 0.2).run()
    finally:
        await couch.close()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_stall_mid_feed_carries_last_seq() -> None:
    """A feed that goes quiet after some rows trips the watchdog with the last seq delivered."""
    port, listening = listen(ScriptedServer(HEAD + chunked(*LINES)[:-5], close=False))
    couch = Server(f"http://127.0.0.1:{port}/")
    try:
        with pytest.raises(Stalled) as e:
            await feed_run(couch, 0.3).run()
    finally:
        await couch.close()
        await listening.stopListening()
    assert e.value.last_seq == "5-g1AAAA"


@pytest_twisted.ensureDeferred
async def test_stop_while_waiting_for_the_head() -> None:
    """FeedRun.stop() before the head arrives cancels the request: run() returns Stopped at once."""
    server = ScriptedServer(close=False)
    port, listening = listen(server)
    couch = Server(f"http://127.0.0.1:{port}/")
    try:
        run = feed_run(couch, 30)
        d = defer.Deferred.fromCoroutine(run.run())
        while not server.requests:
            await task.deferLater(reactor, 0.01, lambda: None)
        run.stop()
        assert isinstance(await d, Stopped)
    finally:
        await couch.close()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_backpressure_pause_holds_rows_until_resume() -> None:
    """FeedRun.pause() on the fast reader holds rows back until resume(), then delivers them in order."""
    rows = [line(n) for n in range(1, 200)]
    port, listening = listen(feed_server(*rows, b'{"last_seq":"199-g1AAAA","pending":0}\n'))
    couch = Server(f"http://127.0.0.1:{port}/")
    seen: list[str] = []
    run: FeedRun

    def on_change(change: Any) -> None:
        seen.append(change["id"])
        if len(seen) == 10:
            run.pause()

    try:
        run = feed_run(couch, 30, lambda on_activity: ChangesProtocol(on_change, on_activity))
        d = defer.Deferred.fromCoroutine(run.run())
        await task.deferLater(reactor, 0.2, lambda: None)
        assert len(seen) == 10 and not d.called
        run.resume()
        end = await d
    finally:
        await couch.close()
        await listening.stopListening()
    assert seen == [f"doc{n}" for n in range(1, 200)] and end.last_seq == "199-g1AAAA"


def test_injected_http_client_carries_feeds() -> None:
    """With an injected StubTreq, feeds go through it, not through the fast reader."""
    client, couch = stub(Answer(body=b'{"seq":"1-a","id":"x","changes":[]}\n{"last_seq":"1-a","pending":0}\n'))
    server = Server("http://127.0.0.1:5984/", http=client)
    results: list[Any] = []
    server.open_feed("GET", "db/_changes", [("feed", "continuous")]).addBoth(results.append)
    client.flush()
    assert not isinstance(results[0], (FeedResponse, Failure)) and results[0].code == 200
    assert couch.seen[0].uri == "/db/_changes?feed=continuous"


def test_fast_feeds_and_tls_policy_need_the_servers_own_connections() -> None:
    """Asking for the fast reader or a TLS policy with an injected client raises at once."""
    with pytest.raises(ValueError):
        Server("http://h:1/", http=StubTreq(None), fast_feeds=True)
    with pytest.raises(ValueError):
        Server("http://h:1/", http=StubTreq(None), tls_policy=object())  # type: ignore[arg-type]
    Server("http://h:1/", http=StubTreq(None), fast_feeds=False)


@pytest_twisted.ensureDeferred
async def test_fast_feeds_off_goes_through_treq() -> None:
    """Server(fast_feeds=False) reads feeds through treq, with the same rows."""
    port, listening = listen(feed_server(*LINES, b'{"last_seq":"5-g1AAAA","pending":0}\n'))
    couch = Server(f"http://127.0.0.1:{port}/", fast_feeds=False)
    try:
        response = await couch.open_feed("GET", "db/_changes", [("feed", "continuous")])
        assert not isinstance(response, FeedResponse)
        body = Body()
        response.deliverBody(body)
        await body.ended
    finally:
        await couch.close()
        await listening.stopListening()
    assert b"".join(body.data) == BODY + b'{"last_seq":"5-g1AAAA","pending":0}\n'


# -- TLS ---------------------------------------------------------------------------------


def self_signed() -> tuple[bytes, bytes]:
    """A certificate for "localhost" and its key, in PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


@implementer(IPolicyForHTTPS)
class TrustOnly:
    """Trust one certificate, for any host name it is valid for."""

    def __init__(self, cert_pem: bytes) -> None:
        self._root = ssl.Certificate.loadPEM(cert_pem)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._root)


# Twisted hands pyOpenSSL the certificate objects it deprecates; not ours to fix.
TLS_WARNINGS = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


@TLS_WARNINGS
@pytest_twisted.ensureDeferred
async def test_https_feed_with_a_self_signed_certificate() -> None:
    """Over https the fast reader speaks TLS with the server's tls_policy: rows arrive; other requests use the same trust."""
    cert_pem, key_pem = self_signed()
    options = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    rows = [line(n) for n in range(1, 300)]
    feed = feed_server(*rows, b'{"last_seq":"299-g1AAAA","pending":0}\n')
    port, listening = listen(feed, tls=options)
    couch = Server(f"https://localhost:{port}/", tls_policy=TrustOnly(cert_pem))
    try:
        seen: list[str] = []
        last = await Consumer(couch["db"]).wait(since=0, cb=lambda r: seen.append(r["id"]))
    finally:
        await couch.close()
        await listening.stopListening()
    assert seen == [f"doc{n}" for n in range(1, 300)] and last == "299-g1AAAA"
    assert feed.requests[0].split(b"\r\n")[1] == b"Host: localhost:%d" % port


@TLS_WARNINGS
@pytest_twisted.ensureDeferred
async def test_https_feed_pauses_and_resumes() -> None:
    """Over TLS, pausing the feed holds rows back and resuming delivers the rest in order."""
    cert_pem, key_pem = self_signed()
    options = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    rows = [line(n) for n in range(1, 2000)]
    port, listening = listen(feed_server(*rows, b'{"last_seq":"1999-g1AAAA","pending":0}\n'), tls=options)
    couch = Server(f"https://localhost:{port}/", tls_policy=TrustOnly(cert_pem))
    seen: list[str] = []
    run: FeedRun

    def on_change(change: Any) -> None:
        seen.append(change["id"])
        if len(seen) % 500 == 0:
            run.pause()
            reactor.callLater(0.05, run.resume)

    try:
        run = feed_run(couch, 30, lambda on_activity: ChangesProtocol(on_change, on_activity))
        end = await run.run()
    finally:
        await couch.close()
        await listening.stopListening()
    assert seen == [f"doc{n}" for n in range(1, 2000)] and end.last_seq == "1999-g1AAAA"


@TLS_WARNINGS
@pytest_twisted.ensureDeferred
async def test_https_feed_refuses_an_untrusted_certificate() -> None:
    """Without trust in the server's certificate the feed fails with CertificateError, which says the certificate is self-signed."""
    cert_pem, key_pem = self_signed()
    options = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    port, listening = listen(feed_server(*LINES), tls=options)
    couch = Server(f"https://localhost:{port}/")
    try:
        with pytest.raises(CertificateError, match="it is self-signed, and not trusted"):
            await Consumer(couch["db"]).wait(since=0)
    finally:
        await couch.close()
        await listening.stopListening()


# -- ChangesProtocol's side of the seam ------------------------------------------------


class Transport:
    producerState = "producing"

    def pauseProducing(self) -> None:
        self.producerState = "paused"

    def resumeProducing(self) -> None:
        self.producerState = "producing"

    def stopProducing(self) -> None:
        self.producerState = "stopped"


def protocol_with(seen: list[str], **kw: Any) -> ChangesProtocol:
    protocol = ChangesProtocol(lambda c: seen.append(c["id"]), **kw)
    protocol.makeConnection(Transport())  # type: ignore[arg-type]
    return protocol


def test_lines_received_finishes_an_unfinished_line() -> None:
    """Lines handed over whole continue a line that an earlier read left unfinished."""
    seen: list[str] = []
    protocol = protocol_with(seen)
    protocol.dataReceived(LINES[0] + LINES[1][:10])
    protocol.lines_received([LINES[1][10:-1], LINES[2][:-1], b""])
    protocol.dataReceived(LINES[3])
    assert seen == ["doc1", "doc2", "doc3", "doc4"] and protocol.heartbeats == 1


def test_lines_received_while_paused_wait_in_order() -> None:
    """Lines that arrive during a pause are delivered after the held rows, in order."""
    seen: list[str] = []
    protocol = protocol_with(seen)
    protocol.pauseProducing()
    protocol.dataReceived(LINES[0])
    protocol.lines_received([LINES[1][:-1], LINES[2][:-1]])
    assert seen == []
    protocol.resumeProducing()
    assert seen == ["doc1", "doc2", "doc3"]


def test_lines_received_too_long() -> None:
    """A line over the bound fails the feed after the rows before it."""
    seen: list[str] = []
    protocol = protocol_with(seen, max_line_length=100)
    errors: list[Failure] = []
    protocol.finished.addErrback(errors.append)
    protocol.lines_received([LINES[0][:-1], b"x" * 101, LINES[1][:-1]])
    assert seen == ["doc1"] and errors and "longer than 100" in str(errors[0].value)


def test_lines_received_hand_over_dicts() -> None:
    """Lines handed over whole give the callback each row's dict, and last_seq follows the rows."""
    got: list[Any] = []
    protocol = ChangesProtocol(got.append)
    protocol.makeConnection(Transport())  # type: ignore[arg-type]
    protocol.lines_received([LINES[0][:-1], b'{"db_name":"a","type":"created","seq":"9-x"}'])
    assert got == [json.loads(LINES[0]), {"db_name": "a", "type": "created", "seq": "9-x"}]
    assert protocol.last_seq == "9-x"
