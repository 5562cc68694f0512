"""Bearer tokens: Server(authorization=...) and TXCHANGES_TOKEN."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python import usage

from txchanges import ChangesService, Consumer, Forbidden, Server, Unauthorized
from txchanges.cli._options import authorization_from, open_database

from ._service_helpers import wait_for, write_docs
from .couchserver import jwt
from .fakecouch import Answer, result_of, stub
from .test_service_unit import ScriptedFeed
from .test_http11 import LINES, feed_server, ids_through, listen

TOKEN = "eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl"


def renewing() -> tuple[object, list[int]]:
    """An authorization function giving a new token every call."""
    calls = itertools.count(1)
    made: list[int] = []

    def authorization() -> str:
        n = next(calls)
        made.append(n)
        return f"Bearer token-{n}"

    return authorization, made


def test_every_request_asks_for_the_current_token():
    """Each request carries what the function returns at that moment, never a stale header."""
    authorization, made = renewing()
    client, couch = stub(Answer(body={"couchdb": "Welcome"}))
    server = Server("http://127.0.0.1:5984/", http=client, authorization=authorization)
    result_of(server.info(), client)
    result_of(server.all_dbs(), client)
    assert [s.headers["authorization"] for s in couch.seen] == ["Bearer token-1", "Bearer token-2"]
    assert made == [1, 2]


def test_the_token_never_shows_and_credentials_exclude_it():
    """repr names no token; credentials and authorization together, or a non-callable, are refused."""
    server = Server("http://127.0.0.1:5984/", authorization=lambda: "Bearer " + TOKEN)
    assert TOKEN not in repr(server) and "authorization=(a function)" in repr(server)
    with pytest.raises(ValueError, match="either credentials"):
        Server("http://u:p@127.0.0.1:5984/", authorization=lambda: "Bearer x")
    with pytest.raises(ValueError, match="either credentials"):
        Server("http://127.0.0.1:5984/", ("u", "p"), authorization=lambda: "Bearer x")
    with pytest.raises(TypeError, match="must be a function"):
        Server("http://127.0.0.1:5984/", authorization="Bearer x")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "  ", "Bearer a\r\nX-Evil: 1", "Bearer \u2603", None, b"Bearer x"])
def test_a_bad_header_value_fails_the_request_without_sending_it(value):
    """An empty, multi-line, non-latin-1 or non-str value fails that request; nothing goes out."""
    client, couch = stub(Answer(body={}))
    server = Server("http://127.0.0.1:5984/", http=client, authorization=lambda: value)
    with pytest.raises(ValueError, match="authorization function"):
        result_of(server.info(), client)
    assert couch.seen == []


@pytest_twisted.ensureDeferred
async def test_a_feed_through_the_fast_reader_carries_the_token() -> None:
    """The continuous feed's own HTTP/1.1 reader sends the function's header too."""
    server = feed_server(*LINES, b'{"last_seq":"5-g1AAAA","pending":0}\n')
    seen, _ = await ids_through(server, authorization=lambda: "Bearer " + TOKEN)
    assert len(seen) == 5
    head = server.requests[0].partition(b"\r\n\r\n")[0]
    assert f"Authorization: Bearer {TOKEN}".encode() in head.split(b"\r\n")


def test_a_failing_token_source_is_retried_by_the_service():
    """When the function raises (a token service is down), the follower retries with backoff rather than stopping."""
    failures = iter([RuntimeError("token service down"), RuntimeError("still down")])

    def authorization() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "Bearer fresh"

    clock = Clock()
    feed = ScriptedFeed()
    feed.answer(b'{"seq":"1-a","id":"a","changes":[{"rev":"1-x"}]}\n')  # held open
    client = StubTreq(feed)
    server = Server("http://127.0.0.1:5984/", http=client, authorization=authorization)
    handled: list[str] = []
    service = ChangesService(server["db"], lambda row: handled.append(row["id"]), clock=clock,
                             retry_policy=lambda attempt: 1.0, heartbeat=1000)
    service.startService()
    client.flush()
    assert feed.requests == [] and service.state == "waiting"
    clock.advance(1.0)
    client.flush()
    assert feed.requests == []
    clock.advance(1.0)
    client.flush()
    assert handled == ["a"] and service.state == "streaming"
    assert feed.requests[0].requestHeaders.getRawHeaders(b"authorization") == [b"Bearer fresh"]
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    client.flush()
    assert stopped == [None]


@pytest_twisted.ensureDeferred
async def test_txchanges_token_becomes_a_bearer_header() -> None:
    """TXCHANGES_TOKEN gives the command and the plugin a Server sending 'Bearer <token>'."""
    server = feed_server(*LINES, b'{"last_seq":"5-g1AAAA","pending":0}\n')
    port, listening = listen(server)
    db = open_database(f"http://127.0.0.1:{port}/", "mydb", {"TXCHANGES_TOKEN": f" {TOKEN}\n"})
    try:
        await Consumer(db).wait(since=0)
    finally:
        await db.server.close()
        await listening.stopListening()
    head = server.requests[0].partition(b"\r\n\r\n")[0]
    assert f"Authorization: Bearer {TOKEN}".encode() in head.split(b"\r\n")
    assert authorization_from("http://127.0.0.1:5984/", {}) is None


@pytest.mark.parametrize(
    "url, environ, message",
    [
        ("http://127.0.0.1:5984/", {"TXCHANGES_TOKEN": "  "}, "one token on one line"),
        ("http://127.0.0.1:5984/", {"TXCHANGES_TOKEN": "a\nb"}, "one token on one line"),
        ("http://u:p@127.0.0.1:5984/", {"TXCHANGES_TOKEN": "t"}, "give one of them"),
        ("http://127.0.0.1:5984/", {"TXCHANGES_TOKEN": "t", "TXCHANGES_USER": "u"}, "give one of them"),
    ],
)
def test_txchanges_token_misuse_is_a_usage_error(url, environ, message):
    """An empty or multi-line token, or a token beside credentials, is a usage error."""
    with pytest.raises(usage.UsageError, match=message):
        authorization_from(url, environ)


# -- against the test server, which checks HS256 tokens as CouchDB 3 does -------


def admin_token(couch_server, expires_in: float = 300.0) -> str:
    return jwt(couch_server.jwt_secret, "admin", ["_admin"], expires_in)


@pytest_twisted.ensureDeferred
async def test_a_service_follows_with_renewed_bearer_tokens(couch_server, db_name):
    """Every request and feed connection carries a freshly made token; CouchDB's JWT check accepts them."""
    made: list[str] = []

    def authorization() -> str:
        made.append(admin_token(couch_server))
        return "Bearer " + made[-1]

    server = Server(couch_server.url, authorization=authorization)
    try:
        db = await server.create_db(db_name)
        await write_docs(db, [f"d{i}" for i in range(20)])
        handled: list[str] = []
        service = ChangesService(db, lambda row: handled.append(row["id"]))
        service.startService()
        try:
            await wait_for(lambda: len(handled) == 20, 10, "every change")
        finally:
            await service.stopService()
        assert sorted(handled) == sorted(f"d{i}" for i in range(20))
        assert len(made) >= 3, "one call each: the create, the _bulk_docs, the feed"
    finally:
        await server.close()


@pytest_twisted.ensureDeferred
async def test_an_expired_or_forged_token_is_unauthorized(couch_server, db_name):
    """The server refuses an expired or wrongly signed token with 401, which stops a follower."""
    couch_server.create_db(db_name)
    for token, reason in [
        (admin_token(couch_server, expires_in=-10), "exp not in future"),
        (jwt("not-the-secret", "admin", ["_admin"]), "Signature verification failed"),
    ]:
        server = Server(couch_server.url, authorization=lambda token=token: "Bearer " + token)
        try:
            service = ChangesService(server[db_name], lambda row: None)
            service.startService()
            with pytest.raises(Unauthorized) as caught:
                await service.when_stopped()
            assert caught.value.reason == reason
            assert token not in str(caught.value)
        finally:
            await server.close()


def test_the_command_takes_the_token_from_txchanges_token(couch_server, db_name):
    """txchanges follow with TXCHANGES_TOKEN reads an admin-only database with no password anywhere."""
    couch_server.create_db(db_name)
    status, body = couch_server.request("POST", f"{db_name}/_bulk_docs", {"docs": [{"_id": "a"}, {"_id": "b"}]})
    assert status == 201, body
    env = dict(os.environ, TXCHANGES_TOKEN=admin_token(couch_server))
    env.pop("TXCHANGES_USER", None)
    env.pop("TXCHANGES_PASSWORD", None)
    done = subprocess.run(
        [sys.executable, "-m", "txchanges", "follow", couch_server.url + db_name, "--limit", "2"],
        capture_output=True, text=True, timeout=30, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == ["a", "b"]
    refused = subprocess.run(
        [sys.executable, "-m", "txchanges", "fetch", couch_server.url + db_name],
        capture_output=True, text=True, timeout=30, env=dict(env, TXCHANGES_TOKEN="not.a.token"),
    )
    assert refused.returncode == 1 and refused.stderr.startswith("txchanges: HTTP 401")


@pytest_twisted.ensureDeferred
async def test_a_token_without_the_admin_role_is_forbidden_the_database(couch_server, db_name):
    """A valid token for a user who is not the admin gets CouchDB 3's 403 on an admin-only database."""
    couch_server.create_db(db_name)
    token = jwt(couch_server.jwt_secret, "reader", [])
    server = Server(couch_server.url, authorization=lambda: "Bearer " + token)
    try:
        with pytest.raises(Forbidden) as caught:
            await Consumer(server[db_name]).fetch(since=0)
        assert caught.value.reason == "You are not allowed to access this db."
    finally:
        await server.close()
