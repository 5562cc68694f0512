"""Consumer.wait and wait_once over an in-process fake, with an injected clock."""

import json

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txchanges import Consumer, MalformedRow, Server, Stalled, UnexpectedResponse

from .fakecouch import Answer, result_of, stub


class Silent(Resource):
    """Accepts a request and never answers."""

    isLeaf = True

    def render(self, request):
        return NOT_DONE_YET


class Streaming(Resource):
    """Starts a 200 response, writes the given pieces, and keeps it open."""

    isLeaf = True

    def __init__(self, *pieces: bytes) -> None:
        super().__init__()
        self.pieces = pieces

    def render(self, request):
        request.setHeader(b"content-type", b"application/json")
        for piece in self.pieces:
            request.write(piece)
        return NOT_DONE_YET


def consumer_on(resource, clock):
    client = StubTreq(resource)
    server = Server("http://127.0.0.1:5984/", http=client)
    return Consumer(server["db"], clock=clock), client


def row(seq, docid):
    return json.dumps({"seq": seq, "id": docid, "changes": [{"rev": "1-a"}]}).encode() + b"\n"


def outcome(d):
    results = []
    d.addBoth(results.append)
    return results


def test_wait_stalls_when_headers_never_come():
    """A server that never answers is abandoned after heartbeat x 1.25 + grace with Stalled."""
    clock = Clock()
    consumer, client = consumer_on(Silent(), clock)
    got = outcome(consumer.wait(heartbeat=1000))
    client.flush()
    clock.advance(6.2)
    assert got == []
    clock.advance(0.1)
    client.flush()
    assert got and got[0].check(Stalled)
    assert got[0].value.idle == pytest.approx(6.25)


def test_wait_stalls_mid_feed_with_last_seq():
    """A feed that goes silent after some rows fails with Stalled carrying the last seq delivered."""
    clock = Clock()
    seen = []
    consumer, client = consumer_on(Streaming(row("1-a", "a"), row("2-b", "b"), b"\n"), clock)
    consumer.register_callback(seen.append)
    got = outcome(consumer.wait(heartbeat=2000))
    client.flush()
    assert [r["id"] for r in seen] == ["a", "b"]
    for _ in range(7):
        clock.advance(1)
        client.flush()
    assert got == []
    clock.advance(1)
    client.flush()
    assert got[0].check(Stalled) and got[0].value.last_seq == "2-b"


def test_stop_before_headers_fires_with_since():
    """stop() while waiting for headers makes wait fire with the since it was given."""
    clock = Clock()
    consumer, client = consumer_on(Silent(), clock)
    got = outcome(consumer.wait(since="5-x"))
    client.flush()
    consumer.stop()
    client.flush()
    assert got == ["5-x"]


def test_stop_mid_feed_fires_with_last_delivered_seq():
    """stop() on an open feed fires wait with the seq of the last change delivered."""
    clock = Clock()
    consumer, client = consumer_on(Streaming(row("1-a", "a"), row(None, "b"), b"\n"), clock)
    got = outcome(consumer.wait(since=0))
    client.flush()
    consumer.stop()
    client.flush()
    assert got == ["1-a"]
    assert not clock.getDelayedCalls(), "the watchdog must not outlive the feed"


def test_callback_order_and_unregister():
    """Registered callbacks run in registration order, then cb; an unregistered one no more."""
    clock = Clock()
    consumer, client = consumer_on(
        Streaming(row("1-a", "a") + row("2-b", "b") + b'{"last_seq":"2-b","pending":0}\n'), clock
    )
    calls = []
    first = lambda r: calls.append(("first", r["id"]))  # noqa: E731
    second = lambda r: calls.append(("second", r["id"]))  # noqa: E731
    consumer.register_callback(first)
    consumer.register_callback(second)
    consumer.unregister_callback(second)
    consumer.register_callback(second)
    got = outcome(consumer.wait(cb=lambda r: calls.append(("cb", r["id"]))))
    client.flush()
    assert got == ["2-b"]
    assert calls == [
        ("first", "a"), ("second", "a"), ("cb", "a"),
        ("first", "b"), ("second", "b"), ("cb", "b"),
    ]
    with pytest.raises(ValueError):
        consumer.unregister_callback(print)
    with pytest.raises(TypeError):
        consumer.register_callback("not callable")


def test_raising_callback_fails_wait_and_stops_delivery():
    """A callback that raises fails wait with that exception, and later rows are not delivered."""
    clock = Clock()
    consumer, client = consumer_on(Streaming(row("1-a", "a") + row("2-b", "b")), clock)
    seen = []

    def handler(r):
        seen.append(r["id"])
        raise KeyError("boom")

    consumer.register_callback(handler)
    got = outcome(consumer.wait())
    client.flush()
    assert seen == ["a"]
    assert got[0].check(KeyError)


def test_failing_callback_deferred_fails_wait():
    """A callback's Deferred that fails later ends the feed with that failure."""
    from twisted.internet.defer import Deferred

    clock = Clock()
    consumer, client = consumer_on(Streaming(row("1-a", "a")), clock)
    pending = Deferred()
    consumer.register_callback(lambda r: pending)
    got = outcome(consumer.wait())
    client.flush()
    assert got == []
    pending.errback(RuntimeError("late"))
    client.flush()
    assert got[0].check(RuntimeError)


def test_malformed_line_fails_wait():
    """A line that is not JSON fails wait with MalformedRow carrying the line."""
    clock = Clock()
    consumer, client = consumer_on(Streaming(row("1-a", "a") + b"<html>oops</html>\n"), clock)
    got = outcome(consumer.wait())
    client.flush()
    assert got[0].check(MalformedRow)
    assert "<html>oops" in got[0].value.line and got[0].value.last_seq == "1-a"


def test_wait_once_calls_callbacks_and_returns_body():
    """wait_once fires with the longpoll body and hands each row to the callbacks."""
    body = {"results": [{"seq": "3-c", "id": "c", "changes": []}], "last_seq": "3-c", "pending": 0}
    client, couch = stub(Answer(body=b'{"results":[\n\n\n' + json.dumps(body["results"][0]).encode() + b'\n],\n"last_seq":"3-c","pending":0}\n'))
    consumer = Consumer(Server("http://h:1/", http=client)["db"], clock=Clock())
    seen = []
    out = result_of(consumer.wait_once(since="now", cb=seen.append), client)
    assert out == body and seen == body["results"]
    assert couch.seen[0].uri == "/db/_changes?feed=longpoll&since=now&timeout=60000"


def test_wait_once_html_body_is_unexpected():
    """A longpoll answered with an HTML page fails with UnexpectedResponse."""
    client, _ = stub(Answer(body=b"<html>proxy</html>", content_type="text/html"))
    consumer = Consumer(Server("http://h:1/", http=client)["db"], clock=Clock())
    with pytest.raises(UnexpectedResponse):
        result_of(consumer.wait_once(), client)


def test_wait_once_stop_cancels():
    """stop() during a longpoll fails wait_once with CancelledError."""

    class Silent(Resource):
        isLeaf = True

        def render(self, request):
            request.write(b'{"results":[\n')
            return NOT_DONE_YET

    clock = Clock()
    consumer, client = consumer_on(Silent(), clock)
    got = outcome(consumer.wait_once(since="now"))
    client.flush()
    consumer.stop()
    client.flush()
    assert got[0].check(CancelledError)
