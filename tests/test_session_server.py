"""Cookie sessions against the test server, which hands them out, renews and expires them as CouchDB 3 does:
a follower that outlives many sessions, and the command's --auth session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.python import usage

from txchanges import ChangesService, Consumer, Server, Unauthorized
from txchanges.cli._tap import Options, makeService

from . import couchserver
from ._fault_helpers import report
from ._service_helpers import testserver_counts as server_counts, wait_for, write_docs
from .faultproxy import FaultProxy

#: The session lifetime of the expiry test's server, in seconds. CouchDB
#: counts whole seconds: a cookie made at T is good while now < T + 2, and
#: one used from T + 1 on is renewed.
LIFETIME = 2


def sessions(server: couchserver.RunningServer) -> dict[str, Any]:
    """The test server's session counters (GET /_testserver)."""
    return dict(server_counts(server)["sessions"])


@pytest.fixture
def short_sessions() -> Iterator[couchserver.RunningServer]:
    """A test server of its own whose sessions last LIFETIME seconds."""
    server = couchserver.start(session_timeout=LIFETIME)
    try:
        yield server
    finally:
        server.stop()


async def clock_reaches(when: float) -> None:
    """Wait until the wall clock (the server's too) reads *when*: cookies age by it."""
    await wait_for(lambda: time.time() >= when, max(0.0, when - time.time()) + 5, f"the clock to reach {when}")


@pytest_twisted.ensureDeferred
async def test_requests_and_feeds_are_cookie_authenticated(couch_server, db_name):
    """With auth="session" the server sees one login, then cookie-authenticated requests and feeds only."""
    before = sessions(couch_server)
    server = Server(couch_server.admin_url, auth="session")
    try:
        db = await server.create_db(db_name)
        await write_docs(db, ["a", "b"])
        who = await server.request_json("GET", "_session")
        rows = (await Consumer(db).fetch(since=0))["results"]
        last = await Consumer(db).wait(since=0, timeout=100, heartbeat=False)
    finally:
        await server.close()
    assert who["info"]["authenticated"] == "cookie" and who["userCtx"]["name"] == "admin"
    assert [r["id"] for r in rows] == ["a", "b"] and last == rows[-1]["seq"]
    after = sessions(couch_server)
    assert after["logins"] - before["logins"] == 1 and after["expired"] == before["expired"]


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_stops_a_follower_with_unauthorized(couch_server, db_name):
    """A refused login is terminal for the service: it stops with Unauthorized, once, and the password shows nowhere."""
    couch_server.create_db(db_name)
    before = sessions(couch_server)
    server = Server(couch_server.url, ("admin", "not-the-password"), auth="session")
    try:
        service = ChangesService(server[db_name], lambda row: None)
        service.startService()
        with pytest.raises(Unauthorized) as caught:
            await service.when_stopped()
    finally:
        await server.close()
    assert caught.value.reason == "Name or password is incorrect."
    assert "not-the-password" not in str(caught.value) + repr(caught.value) + repr(server)
    assert sessions(couch_server)["refused_logins"] - before["refused_logins"] == 1


@pytest_twisted.ensureDeferred
async def test_a_follower_outlives_five_session_expiries_and_loses_nothing(short_sessions, report_summary):
    """A service following through 2 s sessions: feeds cut while the cookie is good reconnect with the renewed
    cookie (no login), feeds cut after it expired log in again once, and every change written meanwhile is handled."""
    proxy = FaultProxy("127.0.0.1", short_sessions.port)
    await proxy.start()
    # The writer uses basic auth: every session the server counts is the follower's.
    writer = Server(short_sessions.admin_url)
    follower = Server(proxy.url_for(short_sessions.admin_url), auth="session")
    db = await writer.create_db("expiries")
    written: list[str] = []

    async def write_one() -> None:
        doc = {"_id": f"w{len(written):05d}"}
        await db.save_doc(doc)
        written.append(doc["_id"])

    handled: set[str] = set()
    service = ChangesService(follower["expiries"], lambda row: handled.add(row["id"]), retry_policy=lambda n: 0.0)
    writing = task.LoopingCall(lambda: task.Deferred.fromCoroutine(write_one()))
    started = time.monotonic()
    service.startService()
    done = writing.start(0.05)
    try:
        await wait_for(lambda: bool(handled) and sessions(short_sessions)["logins"] == 1, 10, "the login and a change")
        # Cut twice while the cookie is good but older than 10% of its life:
        # the reconnect gets a renewed cookie, and the next one must use it,
        # for the old one has expired by then.
        for _ in range(2):
            counts = sessions(short_sessions)
            await clock_reaches(counts["last_issued"] + 1.1)
            proxy.cut_all()
            await wait_for(lambda: sessions(short_sessions)["renewals"] > counts["renewals"], 10, "a renewed cookie")
            assert sessions(short_sessions)["logins"] == 1 and sessions(short_sessions)["expired"] == 0
        # Five times, let the cookie expire under the open feed, then cut it:
        # the reconnect is refused and the follower logs in again, once.
        for _ in range(5):
            counts = sessions(short_sessions)
            await clock_reaches(counts["last_issued"] + LIFETIME + 0.05)
            proxy.cut_all()
            await wait_for(lambda: sessions(short_sessions)["logins"] > counts["logins"], 10, "the login after an expiry")
        writing.stop()
        await done
        await wait_for(lambda: handled >= set(written), 10, "every change written")
        final = sessions(short_sessions)
        # It follows on (it may be between two requests right now).
        await wait_for(lambda: service.state == "streaming", 10, "the feed open again")
    finally:
        await service.stopService()
        await follower.close()
        await writer.close()
        await proxy.stop()
    assert handled == set(written) and len(written) > 100
    assert final["logins"] == 6 and final["expired"] >= 5 and final["renewals"] >= 2 and final["refused_logins"] == 0
    report(report_summary, "sessions across expiries",
           lifetime=f"{LIFETIME}s", seconds=f"{time.monotonic() - started:.1f}", changes=len(written),
           handled=len(handled), logins=final["logins"], renewals=final["renewals"], expired=final["expired"],
           reconnects=service.stats.reconnects)


def run_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "txchanges", *args], capture_output=True, text=True, timeout=30, env=env)


def test_the_command_follows_with_auth_session(couch_server, db_name):
    """txchanges follow --auth session reads an admin-only database through one login; a wrong password is one line, status 1."""
    couch_server.create_db(db_name)
    status, body = couch_server.request("POST", f"{db_name}/_bulk_docs", {"docs": [{"_id": "a"}, {"_id": "b"}]})
    assert status == 201, body
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXCHANGES_")}
    before = sessions(couch_server)
    done = run_command("follow", couch_server.admin_url + db_name, "--auth", "session", "--limit", "2", env=env)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == ["a", "b"]
    assert sessions(couch_server)["logins"] - before["logins"] == 1
    wrong = run_command("fetch", couch_server.url + db_name, "--auth", "session",
                        env=dict(env, TXCHANGES_USER="admin", TXCHANGES_PASSWORD="wrong-pw-xyz"))
    assert wrong.returncode == 1
    assert wrong.stderr == f"txchanges: HTTP 401 unauthorized: Name or password is incorrect. (POST {couch_server.url}_session)\n"
    missing = run_command("fetch", couch_server.url + db_name, "--auth", "session", env=env)
    assert missing.returncode == 1 and "--auth session needs a user and password" in missing.stderr


PLUGIN = ["--url", "http://127.0.0.1:5984/", "--db", "mydb", "--handler", "tests.handlers_for_tests:record"]


def test_the_plugin_takes_auth_session():
    """twistd txchanges --auth session builds a follower whose server logs in with the user from the environment."""
    options = Options(environ={"TXCHANGES_USER": "bob", "TXCHANGES_PASSWORD": "hunter2"})
    options.parseOptions([*PLUGIN, "--auth", "session"])
    follower = makeService(options).getServiceNamed("follower")
    assert repr(follower.db.server) == "<Server http://127.0.0.1:5984/ user='bob' auth=session>"


@pytest.mark.parametrize("args, environ, message", [
    (["--auth", "cookie"], {}, "--auth must be basic or session, not 'cookie'"),
    (["--auth", "session"], {}, "--auth session needs a user and password"),
    (["--auth", "session"], {"TXCHANGES_TOKEN": "t"}, "not TXCHANGES_TOKEN"),
])
def test_plugin_auth_misuse_is_a_usage_error(args, environ, message):
    """An unknown --auth, or --auth session without a user and password (or with a token), is a usage error."""
    with pytest.raises(usage.UsageError, match=message):
        Options(environ=environ).parseOptions([*PLUGIN, *args])
