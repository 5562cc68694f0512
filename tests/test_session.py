"""Cookie authentication: Server(auth="session") logs in once, sends the AuthSession cookie, takes renewed ones, and logs in again once on a 401."""

from __future__ import annotations

import json
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from treq.testing import RequestTraversalAgent, _SynchronousProducer
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.web.server import NOT_DONE_YET

from txchanges import Consumer, Server, Unauthorized

from .fakecouch import Answer, ScriptedCouch, result_of
from .rawserver import RawServer, serving

PASSWORD = "pa55-w0rd-never-shown"
URL = f"http://admin:{PASSWORD}@127.0.0.1:5984/"


def login(cookie: str) -> Answer:
    """CouchDB's answer to a good POST /_session."""
    return Answer(
        body={"ok": True, "name": "admin", "roles": ["_admin"]},
        headers={"Set-Cookie": f"AuthSession={cookie}; Version=1; Max-Age=600; Path=/; HttpOnly"},
    )


EXPIRED = Answer(status=401, body={"error": "unauthorized", "reason": "You are not a server admin."})
WRONG_PASSWORD = Answer(status=401, body={"error": "unauthorized", "reason": "Name or password is incorrect."})
WELCOME = Answer(body={"couchdb": "Welcome"})


def stub(*answers: Answer, couch: type[ScriptedCouch] = ScriptedCouch) -> tuple[Any, Any]:
    """A treq client talking to a fresh ScriptedCouch, whose cookie jar keeps nothing (treq's own jar would
    send back what Set-Cookie set): every cookie a request carries is the one txchanges put there.
    ``result_of(d, client)`` runs it."""
    resource = couch(*answers)
    agent = RequestTraversalAgent(resource)
    jar = IndexableCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    client = HTTPClient(agent, cookiejar=jar, data_to_body_producer=_SynchronousProducer)
    client.flush = agent.flush  # type: ignore[attr-defined]
    return client, resource


def sent(couch: ScriptedCouch) -> list[tuple[str, str, str | None]]:
    """Each request as (method, path, cookie sent)."""
    return [(s.method, s.uri.split("?")[0], s.headers.get("cookie")) for s in couch.seen]


def test_one_login_then_the_cookie_on_every_request_and_never_basic_auth():
    """The password goes once, in the login's body; every request after it carries the cookie and no Authorization header."""
    client, couch = stub(login("c1"), WELCOME)
    server = Server(URL, http=client, auth="session")
    result_of(server.info(), client)
    result_of(server.all_dbs(), client)
    assert sent(couch) == [("POST", "/_session", None), ("GET", "/", "AuthSession=c1"), ("GET", "/_all_dbs", "AuthSession=c1")]
    assert couch.seen[0].json() == {"name": "admin", "password": PASSWORD}
    assert not [s for s in couch.seen if "authorization" in s.headers]


class HeldLogins(ScriptedCouch):
    """A ScriptedCouch that holds its answers to logins back until :meth:`release`."""

    def __init__(self, *answers: Answer) -> None:
        super().__init__(*answers)
        self.held: list[tuple[Any, bytes]] = []

    def render(self, request: Any) -> Any:
        body = super().render(request)
        if request.uri != b"/_session":
            return body
        self.held.append((request, body))
        return NOT_DONE_YET

    def release(self) -> None:
        held, self.held = self.held, []
        for request, body in held:
            request.write(body)
            request.finish()


def test_requests_made_while_logging_in_share_the_login():
    """Two requests sent before the login answered wait for that one login; there is no second."""
    client, couch = stub(login("c1"), WELCOME, couch=HeldLogins)
    server = Server(URL, http=client, auth="session")
    first, second = server.info(), server.all_dbs()
    client.flush()
    assert not first.called and not second.called
    couch.release()
    result_of(first, client)
    result_of(second, client)
    assert sent(couch) == [("POST", "/_session", None), ("GET", "/", "AuthSession=c1"), ("GET", "/_all_dbs", "AuthSession=c1")]


def test_a_renewed_cookie_is_sent_from_the_next_request_on():
    """A Set-Cookie the server sends with an answer (CouchDB's renewal) replaces the cookie for the requests that follow."""
    renewed = Answer(body={}, headers={"Set-Cookie": "AuthSession=c2; Version=1; Max-Age=600; Path=/; HttpOnly"})
    client, couch = stub(login("c1"), renewed, WELCOME)
    server = Server(URL, http=client, auth="session")
    for _ in range(3):
        result_of(server.info(), client)
    assert [cookie for _, _, cookie in sent(couch)] == [None, "AuthSession=c1", "AuthSession=c2", "AuthSession=c2"]


def test_a_401_logs_in_again_once_and_sends_the_request_again():
    """An expired session (401) costs one login more, and the request succeeds with the new cookie."""
    client, couch = stub(login("c1"), EXPIRED, login("c2"), WELCOME)
    server = Server(URL, http=client, auth="session")
    assert result_of(server.info(), client) == {"couchdb": "Welcome"}
    assert sent(couch) == [
        ("POST", "/_session", None), ("GET", "/", "AuthSession=c1"),
        ("POST", "/_session", None), ("GET", "/", "AuthSession=c2"),
    ]


def test_a_second_401_is_unauthorized():
    """Refused again with a fresh cookie, the request fails with Unauthorized and no third login is tried."""
    client, couch = stub(login("c1"), EXPIRED, login("c2"), EXPIRED)
    server = Server(URL, http=client, auth="session")
    with pytest.raises(Unauthorized) as caught:
        result_of(server.info(), client)
    assert caught.value.reason == "You are not a server admin."
    assert [method for method, _, _ in sent(couch)] == ["POST", "GET", "POST", "GET"]


def test_a_wrong_password_fails_at_the_login_and_is_never_shown():
    """A refused login is Unauthorized at once; neither the error, the server's repr nor the log holds the password."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client, couch = stub(WRONG_PASSWORD, WELCOME)
        server = Server(URL, http=client, auth="session")
        with pytest.raises(Unauthorized) as caught:
            result_of(server.info(), client)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert caught.value.reason == "Name or password is incorrect."
    assert caught.value.method == "POST" and caught.value.url == "http://127.0.0.1:5984/_session"
    assert sent(couch) == [("POST", "/_session", None)]
    shown = [str(caught.value), repr(caught.value), repr(server)] + [formatEvent(e) + repr(e) for e in events]
    assert not [text for text in shown if PASSWORD in text]
    assert repr(server) == "<Server http://127.0.0.1:5984/ user='admin' auth=session>"


def test_the_cookie_is_never_logged():
    """The log tells of logins and renewals, naming the user, never the cookie."""
    events: list[LogEvent] = []
    renewed = Answer(body={}, headers={"Set-Cookie": "AuthSession=secret-cookie-2; Version=1; Path=/"})
    globalLogPublisher.addObserver(events.append)
    try:
        client, couch = stub(login("secret-cookie-1"), renewed, EXPIRED, login("secret-cookie-3"), WELCOME)
        server = Server(URL, http=client, auth="session")
        result_of(server.info(), client)
        result_of(server.info(), client)
    finally:
        globalLogPublisher.removeObserver(events.append)
    told = [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("txchanges")]
    assert sum("logged in to http://127.0.0.1:5984/ as admin" in t for t in told) == 2
    assert any("renewed" in t for t in told) and any("expired" in t for t in told)
    assert not [e for e in events if "secret-cookie" in formatEvent(e) + repr(e)]


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(auth="cookie"), "auth must be one of 'basic', 'session'"),
        (dict(auth="session", url="http://127.0.0.1:5984/"), "auth='session' needs credentials"),
        (dict(auth="session", url="http://127.0.0.1:5984/", authorization=lambda: "Bearer x"), "authorization function"),
    ],
)
def test_auth_misuse_is_a_value_error(args, message):
    """An unknown mode, a session without credentials, or auth beside an authorization function is refused at once."""
    url = args.pop("url", URL)
    with pytest.raises(ValueError, match=message):
        Server(url, **args)


def test_basic_stays_the_default():
    """Without auth, and with auth="basic", credentials go as basic auth on the request itself, with no login."""
    for auth in (None, "basic"):
        client, couch = stub(WELCOME)
        result_of(Server(URL, http=client, auth=auth).info(), client)
        assert sent(couch) == [("GET", "/", None)]
        assert couch.seen[0].headers["authorization"].startswith("Basic ")


# -- feeds through the own HTTP/1.1 reader --------------------------------------


class SessionScript:
    """A raw server's answers: logins hand out c1, c2, ...; a feed request is refused (401) the first *refusals* times."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.logins = 0

    def __call__(self, request: bytes) -> bytes:
        head = request.partition(b"\r\n\r\n")[0]
        if head.startswith(b"POST /_session"):
            self.logins += 1
            body = b'{"ok":true,"name":"admin","roles":["_admin"]}'
            return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                    b"Set-Cookie: AuthSession=c%d; Version=1; Path=/; HttpOnly\r\n\r\n%s" % (len(body), self.logins, body))
        if self.refusals:
            self.refusals -= 1
            body = b'{"error":"unauthorized","reason":"You are not authorized to access this db."}\n'
            return b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        rows = b'{"seq":"1-a","id":"d1","changes":[{"rev":"1-x"}]}\n{"last_seq":"1-a","pending":0}\n'
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(rows), rows)


def feed_requests(raw: RawServer) -> list[bytes]:
    """The Cookie line of every _changes request the raw server received."""
    cookies = []
    for request in raw.requests:
        lines = request.partition(b"\r\n\r\n")[0].split(b"\r\n")
        if b"/_changes?" in lines[0]:
            cookies.append(next((line for line in lines if line.lower().startswith(b"cookie:")), b""))
    return cookies


@pytest_twisted.ensureDeferred
async def test_a_feed_carries_the_cookie_and_logs_in_again_on_a_401() -> None:
    """A continuous feed through the fast reader sends the cookie; refused once, it logs in again and the feed runs."""
    script = SessionScript(refusals=1)
    raw = RawServer(script)
    async with serving(raw) as url:
        server = Server(url.replace("http://", f"http://admin:{PASSWORD}@"), auth="session")
        try:
            seen: list[str] = []
            last = await Consumer(server["db"]).wait(since=0, cb=lambda row: seen.append(row["id"]))
        finally:
            await server.close()
    assert seen == ["d1"] and last == "1-a"
    assert feed_requests(raw) == [b"Cookie: AuthSession=c1", b"Cookie: AuthSession=c2"]
    assert script.logins == 2
    assert not [r for r in raw.requests if PASSWORD.encode() in r and not r.startswith(b"POST /_session")]


@pytest_twisted.ensureDeferred
async def test_a_feed_refused_twice_is_unauthorized() -> None:
    """A feed refused again after logging in again fails with Unauthorized, the second login being the last."""
    script = SessionScript(refusals=2)
    raw = RawServer(script)
    async with serving(raw) as url:
        server = Server(url.replace("http://", f"http://admin:{PASSWORD}@"), auth="session")
        try:
            with pytest.raises(Unauthorized):
                await Consumer(server["db"]).wait(since=0)
        finally:
            await server.close()
    assert script.logins == 2 and len(feed_requests(raw)) == 2


def test_the_login_body_is_json():
    """The login is CouchDB's JSON form of POST /_session, with its content type."""
    client, couch = stub(login("c1"), WELCOME)
    result_of(Server(URL, http=client, auth="session").info(), client)
    assert couch.seen[0].headers["content-type"] == "application/json"
    assert json.loads(couch.seen[0].body) == {"name": "admin", "password": PASSWORD}
