"""ChangesService transitions, driven by task.Clock and an in-process scripted CouchDB."""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txchanges import BadRequest, Forbidden, NotFound, Server, ServerError, Unauthorized
from txchanges.feed._watchdog import GRACE
from txchanges.service.checkpoint import CheckpointError, FileCheckpoint, MemoryCheckpoint
from txchanges.service import ChangesService


def row(seq: str, docid: str, rev: str = "1-a") -> bytes:
    return json.dumps({"seq": seq, "id": docid, "changes": [{"rev": rev}]}).encode() + b"\n"


def end(seq: str) -> bytes:
    return json.dumps({"last_seq": seq, "pending": 0}).encode() + b"\n"


class ScriptedFeed(Resource):
    """
    Answers each _changes request with the next scripted answer: a status
    with a body, or a 200 whose body pieces are written at once (then the
    response is finished if ``finish``, else held open for the test).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.script: list[dict[str, Any]] = []
        self.requests: list[Any] = []

    def answer(self, *pieces: bytes, status: int = 200, finish: bool = False, headers: dict[str, str] | None = None) -> None:
        self.script.append({"pieces": pieces, "status": status, "finish": finish, "headers": headers or {}})

    def render(self, request):
        self.requests.append(request)
        if not self.script:
            return NOT_DONE_YET  # no answer scripted: the server never answers
        plan = self.script.pop(0)
        request.setResponseCode(plan["status"])
        request.setHeader(b"content-type", b"application/json")
        for name, value in plan["headers"].items():
            request.setHeader(name.encode(), value.encode())
        if plan["status"] >= 400:
            return b"".join(plan["pieces"])
        for piece in plan["pieces"]:
            request.write(piece)
        if plan["finish"]:
            request.finish()
        return NOT_DONE_YET

    def since(self, i: int) -> str | None:
        return dict(_query(self.requests[i].uri)).get("since")


def _query(uri: bytes) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl, urlsplit

    return parse_qsl(urlsplit(uri.decode()).query)


class Harness:
    def __init__(self, handler=None, **options: Any) -> None:
        self.clock = Clock()
        self.couch = ScriptedFeed()
        self.client = StubTreq(self.couch)
        self.handled: list[str] = []
        self.store = options.pop("checkpoint", MemoryCheckpoint())
        options.setdefault("retry_policy", lambda attempt: [1.0, 2.0, 4.0, 8.0][min(attempt, 3)])
        options.setdefault("heartbeat", 1000)
        self.service = ChangesService(
            Server("http://127.0.0.1:5984/", http=self.client)["db"],
            handler or (lambda r: self.handled.append(r["id"])),
            checkpoint=self.store,
            clock=self.clock,
            **options,
        )
        self.outcome: list[Any] = []

    def start(self) -> None:
        self.service.startService()
        self.service.when_stopped().addBoth(self.outcome.append)
        self.flush()

    def flush(self) -> None:
        self.client.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    def stop(self) -> list[Any]:
        done: list[Any] = []
        self.service.stopService().addBoth(done.append)
        self.flush()
        return done


def test_clean_end_reconnects_at_once_from_last_seq():
    """After a last_seq row the service asks again at once, since that last_seq."""
    h = Harness()
    h.couch.answer(row("1-a", "a"), row("2-b", "b"), end("3-end"), finish=True)
    h.start()
    assert h.handled == ["a", "b"]
    assert len(h.couch.requests) == 2
    assert h.couch.since(1) == "3-end"
    assert h.service.resume_seq == "3-end"
    assert h.service.stats.reconnects == 1


def test_backoff_grows_and_resets_after_a_good_response():
    """Failures wait 1, 2, 4 s; a response with a change resets the backoff to 1 s."""
    h = Harness()
    for _ in range(3):
        h.couch.answer(b'{"error":"x","reason":"y"}', status=500)
    h.couch.answer(row("1-a", "a"))
    h.start()
    assert len(h.couch.requests) == 1
    for delay, expected in [(1, 2), (2, 3), (4, 4)]:
        h.advance(delay - 0.01)
        assert len(h.couch.requests) == expected - 1
        h.advance(0.01)
        assert len(h.couch.requests) == expected
    assert h.handled == ["a"]
    h.couch.requests[-1].channel.transport.loseConnection()
    h.flush()
    h.advance(0.99)
    assert len(h.couch.requests) == 4
    h.advance(0.01)
    assert len(h.couch.requests) == 5
    assert h.couch.since(4) == "1-a", "it resumes after the last change received"
    assert h.service.state == "connecting"


def test_retry_after_is_honoured():
    """A 429 or 503 with Retry-After waits exactly that long before the next request."""
    for status in (429, 503):
        h = Harness()
        h.couch.answer(b'{"error":"busy","reason":"later"}', status=status, headers={"Retry-After": "7"})
        h.start()
        h.advance(6.99)
        assert len(h.couch.requests) == 1
        h.advance(0.01)
        assert len(h.couch.requests) == 2


@pytest.mark.parametrize(
    "status, cls", [(400, BadRequest), (401, Unauthorized), (403, Forbidden), (404, NotFound)]
)
def test_terminal_statuses_stop_the_service(status, cls):
    """400, 401, 403 and 404 stop the service with the typed error and no retry."""
    h = Harness()
    h.couch.answer(b'{"error":"e","reason":"r"}', status=status)
    h.start()
    assert len(h.outcome) == 1 and h.outcome[0].check(cls)
    assert h.service.state == "failed" and not h.service.running
    h.advance(100)
    assert len(h.couch.requests) == 1
    assert h.stop() == [None], "stopService after a terminal stop fires at once"


def test_give_up_after_stops_with_the_last_error():
    """With give_up_after, transient failures for longer than it stop the service with the last one."""
    h = Harness(give_up_after=5)
    for _ in range(10):
        h.couch.answer(b'{"error":"x","reason":"down"}', status=502)
    h.start()
    for _ in range(10):
        h.advance(4)
    assert h.outcome and h.outcome[0].check(ServerError)
    assert 3 <= len(h.couch.requests) <= 5


def test_watchdog_aborts_a_silent_feed_and_reconnects():
    """No byte for heartbeat x 1.25 + grace aborts the feed; it reconnects from the last seq."""
    h = Harness()
    h.couch.answer(row("1-a", "a"))
    h.start()
    limit = 1.25 + GRACE
    h.advance(limit - 0.1)
    assert len(h.couch.requests) == 1
    h.advance(0.1)
    h.advance(1.0)
    assert len(h.couch.requests) == 2 and h.couch.since(1) == "1-a"


def test_heartbeats_keep_the_watchdog_quiet():
    """Heartbeats arriving in time keep the feed open for as long as they come."""
    h = Harness()
    h.couch.answer(b"\n")
    h.start()
    for _ in range(20):
        h.advance(1.0)
        h.couch.requests[0].write(b"\n")
        h.flush()
    assert len(h.couch.requests) == 1


def test_watchdog_is_suspended_while_paused():
    """While the buffer is full the feed is paused and silence does not count as a stall."""
    pending: list[Deferred[None]] = []

    def slow(r):
        d: Deferred[None] = Deferred()
        pending.append(d)
        return d

    h = Harness(slow, concurrency=1, max_buffered=2)
    h.couch.answer(row("1-a", "a"), row("2-b", "b"), row("3-c", "c"))
    h.start()
    assert len(pending) == 1
    h.advance(60)
    h.advance(5)
    assert len(h.couch.requests) == 1 and h.service.state == "streaming", "no stall, no reconnect while paused"
    for _ in range(3):
        pending.pop(0).callback(None)
        h.flush()
    assert h.service.resume_seq == "3-c"
    h.advance(1.25 + GRACE + 0.1)
    h.advance(1)
    assert len(h.couch.requests) == 2, "after resuming, the watchdog runs again"


def test_handler_failure_stops_with_checkpoint_before_it():
    """By default a failing handler stops the service, the checkpoint staying before that change."""

    def handler(r):
        if r["id"] == "b":
            raise RuntimeError("cannot handle b")

    store = MemoryCheckpoint()
    h = Harness(handler, checkpoint=store, checkpoint_every=1)
    h.couch.answer(row("1-a", "a"), row("2-b", "b"), row("3-c", "c"))
    h.start()
    assert h.outcome and h.outcome[0].check(RuntimeError)
    assert store.saves[-1] == "1-a"
    assert h.service.stats.handler_failures == 1


def test_dedup_window_suppresses_replays_after_reconnect():
    """Rows sent again after a reconnect are not handed over twice with a dedup window."""
    h = Harness(dedup_window=100)
    h.couch.answer(row("1-a", "a"), row("2-b", "b"), end("2-b"), finish=True)
    h.couch.answer(row("1-a", "a"), row("2-b", "b"), row("3-c", "c"))
    h.start()
    assert h.handled == ["a", "b", "c"]
    assert h.service.stats.duplicates == 2


def test_checkpoint_every_n_and_on_stop():
    """Checkpoints are saved every N done changes and once more on stop, never ahead of handling."""
    pending: dict[str, Deferred[None]] = {}

    def handler(r):
        pending[r["id"]] = Deferred()
        return pending[r["id"]]

    store = MemoryCheckpoint()
    h = Harness(handler, checkpoint=store, checkpoint_every=2, concurrency=3, max_buffered=6)
    h.couch.answer(row("1-a", "a"), row("2-b", "b"), row("3-c", "c"))
    h.start()
    pending["c"].callback(None)
    pending["b"].callback(None)
    h.flush()
    assert store.saves == [], "a is still running, so nothing can be saved"
    pending["a"].callback(None)
    h.flush()
    assert store.saves == ["3-c"]
    h.couch.requests[0].write(row("4-d", "d"))
    h.flush()
    pending["d"].callback(None)
    assert store.saves == ["3-c"]
    assert h.stop() == [None]
    assert store.saves == ["3-c", "4-d"]


def test_checkpoint_interval_saves_without_enough_changes():
    """A moved resume point is saved after checkpoint_interval seconds even below N changes."""
    store = MemoryCheckpoint()
    h = Harness(checkpoint=store, checkpoint_every=1000, checkpoint_interval=5.0)
    h.couch.answer(row("1-a", "a"), b"\n")
    h.start()
    h.couch.requests[0].write(b"\n")
    h.advance(4.9)
    assert store.saves == []
    h.advance(0.1)
    assert store.saves == ["1-a"]


def test_checkpoint_wins_over_since():
    """A saved checkpoint is where the service starts, whatever since says."""
    h = Harness(checkpoint=MemoryCheckpoint("7-saved"), since="0")
    h.start()
    assert h.couch.since(0) == "7-saved"


def test_since_now_is_resolved_to_a_real_seq():
    """since='now' is turned into the current last_seq first, so checkpoints are always real seqs."""

    class NowThenFeed(ScriptedFeed):
        def render(self, request):
            if b"feed=continuous" not in request.uri:
                self.requests.append(request)
                return json.dumps({"results": [], "last_seq": "5-now", "pending": 0}).encode()
            return super().render(request)

    h = Harness(since="now")
    h.couch.__class__ = NowThenFeed
    h.start()
    assert h.couch.since(1) == "5-now"
    assert h.stop() == [None]
    assert h.store.saves == ["5-now"], "a restart resumes from where 'now' was, missing nothing"


class NeverLoads(MemoryCheckpoint):
    def load(self):
        return Deferred()


@pytest.mark.parametrize("state", ["starting", "connecting", "streaming", "paused", "waiting", "in handler"])
def test_stop_in_every_state(state):
    """stopService fires promptly in every state and leaves no timer or request behind."""
    held: list[Deferred[None]] = []
    handler = None
    options: dict[str, Any] = {}
    if state == "starting":
        options["checkpoint"] = NeverLoads()
    if state in ("paused", "in handler"):
        def handler(r):
            d: Deferred[None] = Deferred()
            held.append(d)
            return d
        # One call at a time, two changes held at most: "a" runs; in the
        # paused state "b" waits behind it and fills the buffer.
        options.update(concurrency=1, max_buffered=2, stop_timeout=10)
    h = Harness(handler, **options)
    if state == "streaming":
        h.couch.answer(row("1-a", "a"))
    if state == "in handler":
        h.couch.answer(row("1-a", "a"))
    if state == "paused":
        h.couch.answer(row("1-a", "a"), row("2-b", "b"), row("3-c", "c"))
    if state == "waiting":
        h.couch.answer(b"{}", status=500)
    h.start()
    expected = {"in handler": "streaming", "paused": "streaming"}.get(state, state)
    assert h.service.state == expected
    if state == "paused":
        # Paused: a minute without a byte is the service's own doing, so the
        # watchdog does not call it a stall and no second request is made.
        h.advance(60)
        assert len(h.couch.requests) == 1 and h.service.state == "streaming"
    done = h.stop()
    if held:
        assert done == [], "it waits for the running handler"
        held[0].callback(None)
        h.flush()
        assert len(held) == 1, "nothing new starts once stopping"
    assert done == [None]
    assert h.service.state == "stopped" and h.outcome == [None]
    assert not h.clock.getDelayedCalls()
    if held:
        assert h.store.saves == ["1-a"]


def test_stop_gives_up_on_a_stuck_handler_after_stop_timeout():
    """A handler that never finishes delays stopService by stop_timeout at most."""
    h = Harness(lambda r: Deferred(), stop_timeout=3)
    h.couch.answer(row("1-a", "a"))
    h.start()
    done = h.stop()
    h.advance(2.9)
    assert done == []
    h.advance(0.1)
    assert done == [None] and h.store.saves == []


BAD_OPTIONS = [
    pytest.param({"handler": "nope"}, TypeError, "handler must be callable, not 'nope'", id="handler"),
    pytest.param({"heartbeat": 0}, ValueError, "heartbeat must be a positive number of milliseconds, not 0",
                 id="heartbeat"),
    pytest.param({"since": 1.5}, TypeError, "since must be a sequence string, 'now' or an int, not 1.5", id="since"),
    pytest.param({"concurrency": 0}, ValueError, "concurrency must be an int of at least 1, not 0", id="concurrency"),
    pytest.param({"on_error": "explode"}, ValueError,
                 "on_error must be one of ('stop', 'retry', 'skip'), not 'explode'", id="on_error"),
    pytest.param({"filter_name": "nofilter"}, ValueError,
                 "invalid filter name 'nofilter': use 'designname/filtername' or one of _design, _doc_ids, "
                 "_selector, _view", id="filter_name"),
    pytest.param({"timeout": 1000}, ValueError,
                 "ChangesService(): timeout= is not allowed: the service sends heartbeat, which makes CouchDB "
                 "ignore timeout; see feed_max_duration", id="timeout"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_OPTIONS)
def test_bad_options_raise_at_once(kwargs, error, message):
    """Each misuse is its own TypeError or ValueError, saying what is wrong, at construction and before any request."""
    couch = ScriptedFeed()
    db = Server("http://127.0.0.1:5984/", http=StubTreq(couch))["db"]
    args = dict({"handler": print}, **kwargs)
    with pytest.raises(error) as raised:
        ChangesService(db, args.pop("handler"), clock=Clock(), **args)
    assert type(raised.value) is error and str(raised.value) == message
    assert couch.requests == []


def test_an_unusable_checkpoint_stops_the_service_at_once(tmp_path):
    """A corrupt checkpoint file is a terminal error at start-up: no retries, no request, when_stopped fails with it."""
    path = tmp_path / "ckpt.json"
    path.write_text("{not json")
    h = Harness(checkpoint=FileCheckpoint(path))
    h.start()
    assert len(h.outcome) == 1 and h.outcome[0].check(CheckpointError)
    assert "corrupt, not JSON" in str(h.outcome[0].value)
    assert h.couch.requests == [] and h.service.state == "failed"
    h.advance(60)
    assert h.couch.requests == [] and path.read_text() == "{not json"
