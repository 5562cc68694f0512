"""``txchanges follow URL --all-dbs``, run as a process against the test server."""

from __future__ import annotations

import io
import json
import os
import queue
import secrets
import signal
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from twisted.python import usage

from txchanges.cli._main import CommandOptions, FollowOptions, run

from .test_cli import TIMEOUT, start, txchanges, write_docs


class Tenants:
    """The databases of one test, named with a prefix of its own: the test server is shared by the session."""

    def __init__(self, couch_server: Any) -> None:
        self.couch = couch_server
        self.prefix = f"alldbs-{secrets.token_hex(4)}-"
        self.match = f"{self.prefix}.*"

    def create(self, suffix: str, ids: list[str]) -> str:
        name = self.prefix + suffix
        self.couch.create_db(name)
        if ids:
            write_docs(self.couch, name, ids)
        return name

    def clean(self) -> None:
        status, names = self.couch.request("GET", "_all_dbs")
        assert status == 200, names
        for name in names:
            if name.startswith(self.prefix):
                self.couch.delete_db(name)


@pytest.fixture
def tenants(couch_server: Any) -> Iterator[Tenants]:
    t = Tenants(couch_server)
    yield t
    t.clean()


class Follower:
    """``txchanges follow URL --all-dbs`` as a process, its output read by threads so that no wait is unbounded."""

    def __init__(self, couch_server: Any, tenants: Tenants, *args: str) -> None:
        self.process = start(
            "follow", couch_server.admin_url, "--all-dbs", "--match", tenants.match, "--heartbeat", "1000", *args
        )
        self._out: queue.Queue[str | None] = queue.Queue()
        self._err: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self._out), (self.process.stderr, self._err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: queue.Queue[str | None]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def _next(self, lines: queue.Queue[str | None], deadline: float, what: str) -> str:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"no {what} within {TIMEOUT} s") from None
        assert line is not None, f"the output ended before {what}: {self.stop()}"
        return line

    def rows(self, count: int) -> list[dict[str, Any]]:
        """The next *count* lines of stdout, parsed."""
        deadline = time.monotonic() + TIMEOUT
        return [json.loads(self._next(self._out, deadline, f"line {n + 1} of {count}")) for n in range(count)]

    def wait_for_log(self, text: str) -> None:
        """Read stderr up to a line that holds *text*."""
        deadline = time.monotonic() + TIMEOUT
        while text not in self._next(self._err, deadline, repr(text)):
            pass

    def stop(self, sig: int = signal.SIGTERM) -> tuple[str, str]:
        """Send *sig* and wait for the end: what stdout and stderr had left."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=TIMEOUT)
        finally:
            if self.process.returncode is None:
                self.process.kill()
        for reader in self._readers:
            reader.join(TIMEOUT)
        return self._rest(self._out), self._rest(self._err)

    @staticmethod
    def _rest(lines: queue.Queue[str | None]) -> str:
        rest = []
        while (line := lines.get_nowait()) is not None:
            rest.append(line)
        return "".join(rest)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode


def pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(row["db"], row["id"]) for row in rows]


def test_prints_every_change_of_every_matching_database_once_with_its_name(couch_server, tenants):
    """Each change of each matching database is one line starting with its "db"; a database created later is followed too; others are not."""
    names = [tenants.create(suffix, [f"doc-{i}" for i in range(3)]) for suffix in ("a", "b", "c")]
    other = f"other-{secrets.token_hex(4)}"
    couch_server.create_db(other)
    try:
        write_docs(couch_server, other, ["not-mine"])
        follower = Follower(couch_server, tenants)
        try:
            rows = follower.rows(9)
            late = tenants.create("d", ["late"])
            write_docs(couch_server, names[0], ["doc-3"])
            rows += follower.rows(2)
        finally:
            out, err = follower.stop()
    finally:
        couch_server.delete_db(other)
    assert follower.returncode == 0, err
    assert out == "" and err == ""
    expected = {(name, f"doc-{i}") for name in names for i in range(3)} | {(late, "late"), (names[0], "doc-3")}
    assert sorted(pairs(rows)) == sorted(expected)
    assert all(list(row)[0] == "db" and {"seq", "id", "changes"} <= row.keys() for row in rows)


def test_a_deleted_database_prints_its_line(couch_server, tenants):
    """A followed database that is deleted prints {"db": NAME, "db_deleted": true}."""
    kept, gone = tenants.create("kept", ["k"]), tenants.create("gone", ["g"])
    follower = Follower(couch_server, tenants)
    try:
        assert sorted(pairs(follower.rows(2))) == [(gone, "g"), (kept, "k")]
        couch_server.delete_db(gone)
        [deleted] = follower.rows(1)
    finally:
        out, err = follower.stop()
    assert deleted == {"db": gone, "db_deleted": True}
    assert follower.returncode == 0 and out == "", err


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_restart_after_a_signal_resumes_every_database_without_printing_again(
    couch_server, tenants, tmp_path, sig, status
):
    """Stopped by a signal, the follower saves every database's checkpoint in the file; the next run prints only what came after."""
    a, b = tenants.create("a", ["a-0", "a-1", "a-2"]), tenants.create("b", ["b-0", "b-1"])
    ckpt = f"file:{tmp_path / 'checkpoints.json'}"
    first = Follower(couch_server, tenants, "--checkpoint", ckpt)
    try:
        printed = first.rows(5)
    finally:
        out, err = first.stop(sig)
    assert first.returncode == status, err
    assert out == "" and err == ""
    assert sorted(pairs(printed)) == [(a, "a-0"), (a, "a-1"), (a, "a-2"), (b, "b-0"), (b, "b-1")]
    write_docs(couch_server, a, ["a-3"])
    c = tenants.create("c", ["c-0"])
    second = Follower(couch_server, tenants, "--checkpoint", ckpt)
    try:
        again = second.rows(2)
    finally:
        out, err = second.stop()
    assert second.returncode == 0, err
    assert sorted(pairs(again)) == [(a, "a-3"), (c, "c-0")]
    assert out == ""


def test_since_now_prints_only_later_changes(couch_server, tenants):
    """--since now starts the databases that exist at start-up at their current position."""
    a = tenants.create("a", ["old"])
    follower = Follower(couch_server, tenants, "--since", "now", "-v")
    try:
        follower.wait_for_log("scanned 1 databases")
        write_docs(couch_server, a, ["new"])
        rows = follower.rows(1)
    finally:
        out, _ = follower.stop()
    assert pairs(rows) == [(a, "new")]
    assert out == ""


@pytest.mark.parametrize(
    "url, message",
    [
        ("{url}", "HTTP 401 unauthorized: You are not a server admin. (GET {url}_all_dbs?limit=1): "
                  "--all-dbs needs a server admin's credentials"),
        ("http://admin:secret@127.0.0.1:1/", "cannot reach 127.0.0.1:1: ConnectionRefusedError: "),
        ("{admin_url}no-such-prefix/", "HTTP 404 not_found: Database does not exist. "
                                       "(GET {url}no-such-prefix/_all_dbs?limit=1): with --all-dbs, URL is the server's"),
    ],
    ids=["not-an-admin", "refused-port", "not-the-server-root"],
)
def test_what_retrying_cannot_fix_at_start_is_one_line_and_status_1(couch_server, url, message):
    """No admin, a refused port or a URL that is not the server's: one line on stderr, nothing on stdout, status 1."""
    anonymous = {k: v for k, v in os.environ.items() if not k.startswith("TXCHANGES_")}
    done = txchanges("follow", url.format(url=couch_server.url, admin_url=couch_server.admin_url), "--all-dbs",
                     env=anonymous)
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("txchanges: " + message.format(url=couch_server.url)), line
    assert "secret" not in line


def test_an_unusable_checkpoint_file_is_one_line_and_status_1(couch_server, tenants, tmp_path):
    """A --checkpoint file in a directory that does not exist stops the follower at once with one line naming it."""
    tenants.create("a", ["a-0"])
    done = txchanges("follow", couch_server.admin_url, "--all-dbs", "--match", tenants.match,
                     "--checkpoint", f"file:{tmp_path / 'missing' / 'c.json'}")
    assert done.returncode == 1 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("txchanges: ") and str(tmp_path / "missing") in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["http://127.0.0.1:5984/mydb", "--all-dbs"], "but http://127.0.0.1:5984/mydb names the database 'mydb'"),
        (["ftp://127.0.0.1/", "--all-dbs"], "must start with http:// or https://"),
        (["--all-dbs"], "expected one server URL argument (http://host:5984/), got none"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--shard", "0/2"], "--shard does not go with --all-dbs"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--feed", "longpoll"], "--feed does not go with --all-dbs"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--limit", "3"], "--limit does not go with --all-dbs"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--checkpoint-every", "10"], "--checkpoint-every does not go"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--dedup-window", "10"], "--dedup-window does not go"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--pending-interval", "5"], "--pending-interval does not go"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--since", "5-g1AAA"], "--since with --all-dbs must be 0 or now"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--match", "tenant-("], "--match: match is not a regular expression"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--max-connections", "0"], "expected a whole number above 0"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--page-size", "x"], "expected a whole number above 0"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--checkpoint", "local:name"],
         "--checkpoint with --all-dbs: expected memory, file:PATH, couch:DBNAME or local"),
        (["http://127.0.0.1:5984/", "--all-dbs", "--checkpoint", "couch:Bad"], "invalid database name 'Bad'"),
        (["http://127.0.0.1:5984/db", "--checkpoint", "local"], "--checkpoint: expected memory, file:PATH or local:NAME"),
        (["http://127.0.0.1:5984/db", "--match", "tenant-.*"], "--match only goes with --all-dbs"),
        (["http://127.0.0.1:5984/db", "--max-connections", "5"], "--max-connections only goes with --all-dbs"),
        (["http://127.0.0.1:5984/db", "--page-size", "5"], "--page-size only goes with --all-dbs"),
    ],
)
def test_usage_errors(args, message):
    """--all-dbs with a database URL or a one-database option, or an --all-dbs option without it, is a usage error that says so."""
    with pytest.raises(usage.UsageError) as caught:
        CommandOptions().parseOptions(["follow", *args])
    assert message in str(caught.value)


def test_a_usage_error_is_one_line_a_hint_and_status_2():
    """As for one database: the message and where the help is on stderr, nothing on stdout, status 2."""
    out, err = io.BytesIO(), io.StringIO()
    assert run(["follow", "http://127.0.0.1:5984/mydb", "--all-dbs"], stdout=out, stderr=err) == 2
    first, hint = err.getvalue().splitlines()
    assert first.startswith("txchanges: --all-dbs follows every database of a server, but")
    assert hint == "Run 'txchanges follow --help' for usage."
    assert out.getvalue() == b""


@pytest.mark.parametrize("since, expected", [([], None), (["--since", "0"], None), (["--since", "now"], "now")])
def test_options_become_the_service_arguments(since, expected):
    """The --all-dbs options, feed parameters and --since 0/now become DatabasesService's keyword arguments."""
    options = FollowOptions()
    options.parseOptions(["http://127.0.0.1:5984/prefix/", "--all-dbs", "--match", "tenant-.*", "--max-connections",
                          "3", "--page-size", "50", "--include-docs", "--heartbeat", "2000", *since])
    assert options["server_url"] == "http://127.0.0.1:5984/prefix/"
    assert options.databases_kwargs() == {
        "match": "tenant-.*", "since": expected, "max_connections": 3, "page_size": 50, "include_docs": True,
        "heartbeat": 2000, "give_up_after": None, "params": {},
    }


def test_help_documents_all_dbs(capsys):
    """follow --help names --all-dbs and its options, and says what the lines look like."""
    assert run(["follow", "--help"], stdout=io.BytesIO(), stderr=io.StringIO()) == 0
    text = capsys.readouterr().out
    assert "txchanges follow URL --all-dbs [options]" in text
    for option in ("--all-dbs", "--match=", "--max-connections=", "--page-size=", "couch:DBNAME"):
        assert option in text
    assert '"db_deleted": true' in " ".join(text.split())


def test_checkpoint_file_holds_every_database(couch_server, tenants, tmp_path):
    """The file of --checkpoint file:PATH holds one sequence per followed database, the last printed."""
    a, b = tenants.create("a", ["a-0", "a-1"]), tenants.create("b", ["b-0"])
    path = tmp_path / "checkpoints.json"
    follower = Follower(couch_server, tenants, "--checkpoint", f"file:{path}")
    try:
        rows = follower.rows(3)
    finally:
        follower.stop()
    last = {row["db"]: row["seq"] for row in rows}
    assert json.loads(path.read_text())["seqs"] == last == {a: last[a], b: last[b]}


def test_a_closed_stdout_ends_quietly_without_checkpointing_the_unprinted_change(couch_server, tenants, tmp_path):
    """When the reader closes stdout, the follower exits 0 silently, and the change it could not print stays past the checkpoint."""
    a = tenants.create("a", ["first"])
    path = tmp_path / "checkpoints.json"
    process = start("follow", couch_server.admin_url, "--all-dbs", "--match", tenants.match,
                    "--checkpoint", f"file:{path}")
    assert process.stdout is not None and process.stderr is not None
    assert json.loads(process.stdout.readline())["id"] == "first"
    process.stdout.close()
    write_docs(couch_server, a, ["second"])
    assert process.wait(timeout=TIMEOUT) == 0
    assert process.stderr.read() == ""
    seq = json.loads(path.read_text())["seqs"][a]
    status, body = couch_server.request("GET", f"{a}/_changes?since={urllib.parse.quote(seq, safe='')}")
    assert status == 200 and [row["id"] for row in body["results"]] == ["second"]
