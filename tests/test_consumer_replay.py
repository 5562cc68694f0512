"""
fetch, wait_once and wait against the exact bytes a real CouchDB 3.5 sent
(served by the replay server), and every recorded error mapped to its class.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_twisted
from twisted.internet import reactor

from txchanges import (
    BadRequest,
    Consumer,
    NotFound,
    Server,
    ServerError,
    Unauthorized,
)
from txchanges.feed._feedparams import KNOWN, feed_param_from_text
from txchanges.feed._rows import LastSeq, parse_line

from .fixtures_util import load, names
from .replay import AllAtOnce, AtRecordedTimes, InSplits

pytest_plugins = ["tests.conftest_replay"]

# What the client deliberately sends differently from the recorded request.
# filter-doc-ids-get: doc_ids always go in a POST body, which CouchDB prefers.
SENT_DIFFERENTLY = {"filter-doc-ids-get"}


def recorded_call(name: str) -> tuple[str, str, Any, dict[str, Any]]:
    """
    Turn a recorded request back into the Consumer call that makes it:
    ``(method name, db name, since, keyword arguments)``.
    """
    rec = load(name)
    target = urlsplit(rec.path)
    db = target.path.split("/")[1]
    query = dict(parse_qsl(target.query))
    feed = query.pop("feed", "normal")
    since = query.pop("since", None)
    kwargs: dict[str, Any] = dict(query)
    body = rec.meta["request"].get("body")
    if name == "filter-doc-ids-get":
        kwargs.pop("filter")
        kwargs["doc_ids"] = json.loads(kwargs["doc_ids"])
    if body:
        parsed = json.loads(body)
        kwargs.pop("filter", None)
        kwargs.update(parsed)
    for key in ("heartbeat", "timeout"):
        if key in kwargs:
            kwargs[key] = int(kwargs[key])
    # Feed parameters are typed keywords; anything else goes in params.
    for key, text in query.items():
        if key in kwargs and key in KNOWN:
            kwargs[key] = feed_param_from_text(key, text)
        elif key in kwargs and key not in ("heartbeat", "timeout"):
            kwargs.setdefault("params", {})[key] = kwargs.pop(key)
    method = {"normal": "fetch", "longpoll": "wait_once", "continuous": "wait"}[feed]
    if method == "wait_once":
        kwargs.setdefault("timeout", None)
    if method == "wait":
        kwargs.setdefault("heartbeat", False)
    return method, db, since, kwargs


def body_rows(name: str) -> tuple[list[dict[str, Any]], Any]:
    """The change rows of a continuous recording and its last_seq (None if it never ended)."""
    rows, last = [], None
    for line in load(name).body.split(b"\n"):
        row = parse_line(line)
        if isinstance(row, LastSeq):
            last = row.last_seq
            break
        if row is not None:
            rows.append(row)
    return rows, last


def same_query(sent: str, recorded: str) -> None:
    mine = sorted(parse_qsl(urlsplit(sent).query))
    theirs = dict(parse_qsl(urlsplit(recorded).query))
    theirs.setdefault("feed", "normal")
    assert mine == sorted(theirs.items())


async def consumer_for(replay: Any, name: str, **options: Any):
    method, db, since, kwargs = recorded_call(name)
    running = await replay(name, **options)
    server = Server(f"http://admin:secret@127.0.0.1:{running.port}/")
    return running, server, Consumer(server[db]), method, since, kwargs


NORMAL = [n for n in names() if n.startswith(("normal-", "filter-", "deleted-"))]
LONGPOLL = names("longpoll-*")
CONTINUOUS_ENDED = [n for n in names("continuous-*") if load(n).complete]
CONTINUOUS_OPEN = [n for n in names("continuous-*") if not load(n).complete]


@pytest.mark.parametrize("name", NORMAL)
@pytest_twisted.ensureDeferred
async def test_fetch_recorded_normal_feeds(replay: Any, name: str) -> None:
    """fetch returns a recorded normal-feed body exactly and sent the recorded request."""
    running, server, consumer, method, since, kwargs = await consumer_for(replay, name)
    assert method == "fetch"
    result = await consumer.fetch(since, **kwargs)
    await server.close()
    assert result == json.loads(load(name).body)
    sent = running.requests[0]
    if name not in SENT_DIFFERENTLY:
        same_query(sent.target, load(name).path)
        assert sent.method == load(name).method


@pytest.mark.parametrize("name", LONGPOLL)
@pytest_twisted.ensureDeferred
async def test_wait_once_recorded_longpolls(replay: Any, name: str) -> None:
    """wait_once parses a recorded longpoll body (padded with newlines while it waited) at recorded times."""
    running, server, consumer, method, since, kwargs = await consumer_for(
        replay, name, pacing=AtRecordedTimes(speed=10)
    )
    assert method == "wait_once"
    seen: list[dict[str, Any]] = []
    result = await consumer.wait_once(since, cb=seen.append, **kwargs)
    await server.close()
    expected = json.loads(load(name).body)
    assert result == expected and seen == expected["results"]
    same_query(running.requests[0].target, load(name).path)


@pytest.mark.parametrize("pacing", ["at-once", "recorded", "byte-splits"])
@pytest.mark.parametrize("name", CONTINUOUS_ENDED)
@pytest_twisted.ensureDeferred
async def test_wait_recorded_continuous_feeds(replay: Any, name: str, pacing: str) -> None:
    """wait delivers every recorded row in order and fires with the recorded last_seq, however paced."""
    rec = load(name)
    chosen = {
        "at-once": AllAtOnce(),
        "recorded": AtRecordedTimes(speed=10),
        "byte-splits": InSplits(list(range(len(rec.head), len(rec.raw), 97))),
    }[pacing]
    running, server, consumer, method, since, kwargs = await consumer_for(replay, name, pacing=chosen)
    assert method == "wait"
    seen: list[dict[str, Any]] = []
    last_seq = await consumer.wait(since, cb=seen.append, **kwargs)
    await server.close()
    rows, last = body_rows(name)
    assert seen == rows and last_seq == last and last is not None
    same_query(running.requests[0].target, rec.path)


@pytest.mark.parametrize("name", CONTINUOUS_OPEN)
@pytest_twisted.ensureDeferred
async def test_wait_recorded_open_feeds_then_stop(replay: Any, name: str) -> None:
    """On a feed that never ends, wait delivers the recorded rows (heartbeats between them) and stop() ends it."""
    rows, last = body_rows(name)
    assert last is None
    running, server, consumer, method, since, kwargs = await consumer_for(
        replay, name, pacing=AtRecordedTimes(speed=10)
    )
    seen: list[dict[str, Any]] = []

    def on_row(row: dict[str, Any]) -> None:
        seen.append(row)
        if len(seen) == len(rows):
            consumer.stop()

    if not rows:
        # Only heartbeats: stop once the whole recording has been played.
        reactor.callLater(max(load(name).frame_times_ms) / 10 / 1000 + 0.2, consumer.stop)
    resume = await consumer.wait(since, cb=on_row, **kwargs)
    await server.close()
    assert seen == rows
    assert resume == (rows[-1]["seq"] if rows else since)


ERRORS = {
    "error-feed-invalid-400": BadRequest,
    "error-filter-doc-ids-get-no-param-400": BadRequest,
    "error-filter-malformed-400": BadRequest,
    "error-filter-missing-ddoc-404": NotFound,
    "error-filter-missing-function-404": NotFound,
    "error-filter-selector-no-body-400": BadRequest,
    "error-filter-view-no-view-param-400": BadRequest,
    "error-limit-invalid-500": ServerError,
    "error-missing-db-404": NotFound,
    "error-missing-db-continuous-404": NotFound,
    "error-no-credentials-401": Unauthorized,
    "error-no-credentials-continuous-401": Unauthorized,
    "error-since-integer-400": BadRequest,
    "error-since-malformed-400": BadRequest,
    "error-wrong-password-401": Unauthorized,
    "error-db-updates-no-credentials-401": Unauthorized,
    "db-updates-without-global-changes-db": NotFound,
}


def test_every_error_recording_is_listed() -> None:
    """Each recorded error response has an expected class here."""
    assert sorted(ERRORS) == sorted(n for n in names() if load(n).status >= 400)


@pytest.mark.parametrize("name", sorted(ERRORS))
@pytest_twisted.ensureDeferred
async def test_recorded_errors_map_to_typed_errors(replay: Any, name: str) -> None:
    """A recorded error response fails the request with its class, CouchDB's error and reason."""
    rec = load(name)
    running = await replay(name)
    server = Server(f"http://127.0.0.1:{running.port}/")
    body = rec.meta["request"].get("body")
    target = rec.path.lstrip("/")
    path, _, query = target.partition("?")
    with pytest.raises(ERRORS[name]) as e:
        if body:
            await server.request_json(rec.method, path, parse_qsl(query), json.loads(body))
        else:
            await server.request_json(rec.method, path, parse_qsl(query))
    await server.close()
    expected = json.loads(rec.body)
    assert (e.value.status, e.value.error, e.value.reason) == (
        rec.status,
        expected["error"],
        expected["reason"],
    )


CLIENT_REFUSES = [
    "error-feed-invalid-400",
    "error-filter-doc-ids-get-no-param-400",
    "error-filter-malformed-400",
    "error-filter-selector-no-body-400",
    "error-filter-view-no-view-param-400",
    "error-limit-invalid-500",
]
CONSUMER_ERRORS = [n for n in sorted(ERRORS) if "/_changes" in load(n).path and n not in CLIENT_REFUSES]


@pytest.mark.parametrize("name", CONSUMER_ERRORS)
@pytest_twisted.ensureDeferred
async def test_recorded_errors_through_the_consumer(replay: Any, name: str) -> None:
    """The Consumer method making a recorded erroneous request fails with the typed error."""
    running, server, consumer, method, since, kwargs = await consumer_for(replay, name)
    with pytest.raises(ERRORS[name]) as e:
        await getattr(consumer, method)(since, **kwargs)
    await server.close()
    assert e.value.reason == json.loads(load(name).body)["reason"]


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda c: c.fetch(feed="bogus"), ValueError),
        (lambda c: c.fetch(filter="_doc_ids"), ValueError),
        (lambda c: c.fetch(filter_name="nofilter"), ValueError),
        (lambda c: c.fetch(filter="_selector"), ValueError),
        (lambda c: c.fetch(filter="_view"), ValueError),
        (lambda c: c.fetch(limit="abc"), TypeError),
    ],
    ids=CLIENT_REFUSES,
)
def test_client_refuses_what_couchdb_would_reject(call: Any, error: type[Exception]) -> None:
    """Requests CouchDB answers with 400 (or 500) for a bad filter, feed or limit are refused before sending."""
    consumer = Consumer(Server("http://127.0.0.1:1/")["fixture-db"])
    with pytest.raises(error):
        call(consumer)
