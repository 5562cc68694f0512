"""The ``txchanges`` command, run as ``python -m txchanges`` against the test server."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from txchanges import ConnectionFailed, MemoryCheckpoint, Server, ServiceStats
from txchanges.cli._longpoll import LongpollFollower
from txchanges.cli._progressline import ProgressLine
from txchanges.cli._main import run

from ._service_helpers import wait_for

TIMEOUT = 30


def txchanges(*args: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txchanges", *args],
        capture_output=True, text=True, timeout=timeout, env=env, encoding="utf-8",
    )


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "txchanges", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
    )


def write_docs(couch_server: Any, db_name: str, ids: list[str], **fields: Any) -> None:
    status, body = couch_server.request("POST", f"{db_name}/_bulk_docs", {"docs": [{"_id": i, **fields} for i in ids]})
    assert status == 201, body


def changes_since(couch_server: Any, db_name: str, seq: Any) -> list[str]:
    since = urllib.parse.quote(seq if isinstance(seq, str) else json.dumps(seq), safe="")
    status, body = couch_server.request("GET", f"{db_name}/_changes?since={since}")
    assert status == 200, body
    return [row["id"] for row in body["results"]]


def read_lines(process: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    assert process.stdout is not None
    rows = []
    deadline = time.monotonic() + TIMEOUT
    while len(rows) < count:
        assert time.monotonic() < deadline, f"only {len(rows)} of {count} lines"
        line = process.stdout.readline()
        assert line, f"stdout ended after {len(rows)} lines: {process.stderr.read() if process.stderr else ''}"
        rows.append(json.loads(line))
    return rows


def saved_seq(path: Path) -> Any:
    return json.loads(path.read_text())["seq"]


@pytest.fixture
def db_url(couch_server: Any, db_name: str) -> str:
    couch_server.create_db(db_name)
    return couch_server.admin_url + db_name


@pytest.mark.parametrize("feed", ["continuous", "longpoll"])
def test_follow_limit_prints_that_many_changes_as_json_lines(couch_server, db_name, db_url, feed):
    """follow --limit 3 prints exactly the first 3 changes, one JSON object a line, keeping non-ASCII text, and exits 0."""
    write_docs(couch_server, db_name, ["a", "b", "c", "d", "e"], name="héllo")
    done = txchanges("follow", db_url, "--limit", "3", "--include-docs", "--feed", feed)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]
    assert '"name": "héllo"' in lines[0]
    assert done.stderr == ""


def test_fetch_prints_the_normal_feed_body(couch_server, db_name, db_url):
    """fetch prints one JSON document, the normal feed's body, honouring --limit and a filter."""
    write_docs(couch_server, db_name, ["a", "b", "c"])
    done = txchanges("fetch", db_url, "--doc-ids", "a,c")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert [r["id"] for r in body["results"]] == ["a", "c"] and "last_seq" in body
    limited = json.loads(txchanges("fetch", db_url, "--limit", "1").stdout)
    assert [r["id"] for r in limited["results"]] == ["a"]


def test_fetch_param_reaches_the_filter(couch_server, db_name, db_url):
    """--param KEY=VALUE reaches a design document filter as req.query; a feed parameter in --param keeps its type."""
    status, body = couch_server.request("PUT", f"{db_name}/_design/app", {
        "filters": {"by_type": "function(doc, req) { return doc.type === req.query.type; }"}})
    assert status == 201, body
    write_docs(couch_server, db_name, ["a", "c"], type="fruit")
    write_docs(couch_server, db_name, ["b"], type="vegetable")
    done = txchanges("fetch", db_url, "--filter", "app/by_type", "--param", "type=fruit", "--param", "descending=true")
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in json.loads(done.stdout)["results"]] == ["c", "a"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["follow", "http://127.0.0.1:5984/"], "names no database"),
        (["follow", "http://127.0.0.1:5984/db", "--param", "novalue"], "--param expects KEY=VALUE"),
        (["follow", "http://127.0.0.1:5984/db", "--param", "limit=3"], "--param limit=... is not allowed"),
        (["fetch", "http://127.0.0.1:5984/db", "--selector", "{bad"], "--selector is not valid JSON"),
        (["follow", "http://127.0.0.1:5984/db", "--feed", "normal"], "--feed must be continuous or longpoll"),
        (["follow", "http://127.0.0.1:5984/db", "--checkpoint", "disk"], "--checkpoint: expected memory"),
        (["follow", "http://127.0.0.1:5984/db", "--limit", "0"], "expected a whole number above 0"),
        (["follow", "ftp://h/db"], "must start with http:// or https://"),
        (["follow", "http://127.0.0.1:5984/Bad"], "invalid database name 'Bad'"),
        (["follow"], "expected one URL/DB argument"),
        (["frobnicate"], "Unknown command: frobnicate"),
        ([], "expected a command"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_a_hint(args, message):
    """A usage error prints 'txchanges: <message>' and a usage hint on stderr, nothing on stdout, and returns 2."""
    out, err = io.BytesIO(), io.StringIO()
    assert run(args, stdout=out, stderr=err) == 2
    first, hint = err.getvalue().splitlines()
    assert first.startswith("txchanges: ") and message in first
    assert hint.startswith("Run 'txchanges") and hint.endswith("--help' for usage.")
    assert out.getvalue() == b""


def test_usage_error_as_a_process():
    """The console entry point exits with status 2 on a usage error, never with a traceback."""
    done = txchanges("follow", "http://admin:secret@127.0.0.1:5984/")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "secret" not in done.stderr


def test_version():
    """--version prints the package version and exits 0."""
    done = txchanges("--version")
    assert done.returncode == 0 and done.stdout.strip().startswith("txchanges 0.")


@pytest.mark.parametrize("feed", ["continuous", "longpoll"])
def test_missing_database_exits_1_with_one_line(couch_server, feed):
    """A 404 is terminal: exit 1, one line naming the status and CouchDB's reason, no traceback, no password."""
    done = txchanges("follow", couch_server.admin_url + "no-such-db", "--feed", feed)
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("txchanges: HTTP 404 not_found: Database does not exist.")
    assert "secret" not in line


def test_credentials_from_the_environment(couch_server, db_name, db_url):
    """Without credentials in the URL, TXCHANGES_USER/TXCHANGES_PASSWORD are used; without either, a 401 is terminal."""
    write_docs(couch_server, db_name, ["a"])
    user, password = couch_server.admin
    env = dict(os.environ, TXCHANGES_USER=user, TXCHANGES_PASSWORD=password)
    done = txchanges("follow", couch_server.url + db_name, "--limit", "1", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == "a"
    anonymous = {k: v for k, v in os.environ.items() if not k.startswith("TXCHANGES_")}
    refused = txchanges("fetch", couch_server.url + db_name, env=anonymous)
    assert refused.returncode == 1 and refused.stderr.startswith("txchanges: HTTP 401")


@pytest.mark.parametrize("feed", ["continuous", "longpoll"])
def test_second_run_resumes_from_the_checkpoint_file(couch_server, db_name, db_url, tmp_path, feed):
    """With --checkpoint file:PATH a second run prints only the changes after those the first printed."""
    write_docs(couch_server, db_name, ["a", "b", "c", "d"])
    ckpt = f"file:{tmp_path / 'ckpt.json'}"
    first = txchanges("follow", db_url, "--checkpoint", ckpt, "--limit", "2", "--feed", feed)
    second = txchanges("follow", db_url, "--checkpoint", ckpt, "--limit", "2", "--feed", feed)
    write_docs(couch_server, db_name, ["e"])
    third = txchanges("follow", db_url, "--checkpoint", ckpt, "--limit", "1", "--feed", feed)
    ids = [[json.loads(line)["id"] for line in done.stdout.splitlines()] for done in (first, second, third)]
    assert ids == [["a", "b"], ["c", "d"], ["e"]], [d.stderr for d in (first, second, third)]


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_stops_cleanly_and_saves_the_checkpoint(couch_server, db_name, db_url, tmp_path, sig, status):
    """SIGTERM (exit 0) or SIGINT (exit 130) stops a live follower, the checkpoint saved past every printed change."""
    write_docs(couch_server, db_name, ["a", "b", "c"])
    path = tmp_path / "ckpt.json"
    process = start("follow", db_url, "--checkpoint", f"file:{path}")
    try:
        rows = read_lines(process, 3)
    finally:
        process.send_signal(sig)
        _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == status, err
    assert err == ""
    assert saved_seq(path) == rows[-1]["seq"]
    assert changes_since(couch_server, db_name, saved_seq(path)) == []


@pytest.mark.parametrize("feed", ["continuous", "longpoll"])
def test_closed_stdout_ends_quietly_without_skipping_the_unprinted_change(couch_server, db_name, db_url, tmp_path, feed):
    """When the reader closes stdout, the follower exits 0 silently, and the change it could not print is not checkpointed."""
    write_docs(couch_server, db_name, ["a"])
    path = tmp_path / "ckpt.json"
    process = start("follow", db_url, "--checkpoint", f"file:{path}", "--feed", feed)
    read_lines(process, 1)
    assert process.stdout is not None
    process.stdout.close()
    write_docs(couch_server, db_name, ["b"])
    assert process.wait(timeout=TIMEOUT) == 0
    assert process.stderr is not None and process.stderr.read() == ""
    assert changes_since(couch_server, db_name, saved_seq(path)) == ["b"]


class _FakeServer:
    def __init__(self, pending: int) -> None:
        self.pending = pending
        self.queries: list[Any] = []

    def request_json(self, method: str, path: str, query: Any) -> Any:
        from twisted.internet.defer import succeed

        self.queries.append(query)
        return succeed({"results": [], "last_seq": "x", "pending": self.pending})


class _FakeDb:
    def __init__(self, server: _FakeServer) -> None:
        self.server = server

    def path(self, *segments: str) -> str:
        return "/db/" + "/".join(segments)


class _FakeFollower:
    def __init__(self, server: _FakeServer) -> None:
        self.db = _FakeDb(server)
        self.stats = ServiceStats()
        self.resume_seq: Any = "5-abc"


def test_progress_line_shows_handled_pending_and_rate_then_clears():
    """The progress line reports changes handled, pending (asked with limit=0 from the resume point) and the rate, and is cleared once caught up."""
    clock, stream, server = Clock(), io.StringIO(), _FakeServer(pending=40)
    follower = _FakeFollower(server)
    progress = ProgressLine(stream, clock, follower)
    follower.stats.handled = 60
    clock.advance(1.0)
    assert stream.getvalue().endswith("\r60 changes, 40 pending, 60/s\x1b[K")
    assert server.queries[-1] == [("since", "5-abc"), ("limit", "0")]
    server.pending = 0
    clock.advance(1.0)
    assert stream.getvalue().endswith("\r\x1b[K")
    progress.stop()
    assert not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_longpoll_follower_retries_connection_failures_then_gives_up():
    """The longpoll follower retries a refused connection with backoff, counting it, and stops with the error after --give-up-after."""
    clock = Clock()
    server = Server("http://127.0.0.1:1/")
    follower = LongpollFollower(
        server["db"], lambda change: None, since=None, checkpoint=MemoryCheckpoint(), heartbeat=1000,
        give_up_after=5.0, limit=None, clock=clock,
    )
    follower.start()
    stopped = follower.when_stopped()
    await wait_for(lambda: follower.state == "waiting", 10, "the first retry")
    assert follower.stats.reconnects == 0
    clock.advance(10)  # only while waiting: a jump during a request would trip the stall watchdog
    with pytest.raises(ConnectionFailed):
        await stopped
    assert follower.state == "failed" and follower.stats.reconnects == 1
    await server.close()


@pytest_twisted.ensureDeferred
async def test_longpoll_follower_stop_while_waiting_to_retry_is_clean():
    """Stopping the longpoll follower during its retry wait ends it at once, without an error."""
    clock = Clock()
    server = Server("http://127.0.0.1:1/")
    follower = LongpollFollower(
        server["db"], lambda change: None, since=None, checkpoint=MemoryCheckpoint(), heartbeat=1000,
        give_up_after=None, limit=None, clock=clock,
    )
    follower.start()
    await wait_for(lambda: follower.state == "waiting", 10, "the first retry")
    follower.stop()
    await follower.when_stopped()
    assert follower.state == "stopped"
    await server.close()


def test_help_lists_the_commands_and_their_options(capsys):
    """--help exits 0 listing the commands; a command's --help names the command and its options."""
    assert run(["--help"], stdout=io.BytesIO(), stderr=io.StringIO()) == 0
    top = capsys.readouterr().out
    assert top.startswith("Usage: txchanges [-v|-q] COMMAND URL/DB [options]")
    assert "follow" in top and "fetch" in top
    assert run(["follow", "--help"], stdout=io.BytesIO(), stderr=io.StringIO()) == 0
    follow = capsys.readouterr().out
    assert follow.startswith("Usage: txchanges [-v|-q] follow URL/DB [options]")
    for option in ("--limit=", "--feed=", "--checkpoint=", "--selector=", "--metrics-port="):
        assert option in follow



def read_stderr_until(process: subprocess.Popen[str], text: str) -> None:
    assert process.stderr is not None
    while text not in (line := process.stderr.readline()):
        assert line, f"stderr ended before {text!r}"


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_sent_to_the_process_group_twice_at_once_still_saves_the_checkpoint(
    couch_server, db_name, db_url, tmp_path, sig, status
):
    """A signal that reaches the follower twice within a second (timeout(1) sends it to the process, then to its group) is one request to stop: the checkpoint is saved and the exit status is the documented one."""
    write_docs(couch_server, db_name, ["a", "b", "c"])
    path = tmp_path / "ckpt.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "txchanges", "-v", "follow", db_url, "--checkpoint", f"file:{path}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", start_new_session=True,
    )
    try:
        rows = read_lines(process, 3)
        os.killpg(process.pid, sig)
        # The second arrives once the first is being handled, as timeout's
        # second signal does when the follower is quick enough to see both.
        read_stderr_until(process, "received: stopping")
        os.killpg(process.pid, sig)
        process.communicate(timeout=TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            process.communicate()
    assert process.returncode == status
    assert saved_seq(path) == rows[-1]["seq"]
