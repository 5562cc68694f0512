"""The twistd plugin: its options, the service it makes, and ``twistd -n txchanges`` as a process."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.plugin import getPlugins
from twisted.python import usage

from txchanges import ChangesService, DatabasesService, FileCheckpoint, LocalDocCheckpoint, NotFound, Shard
from txchanges.cli import _alldbs, _options
from txchanges.cli._tap import ExitOnFailure, Options, makeService
from txchanges.group import GroupService

from . import handlers_for_tests

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = "tests.handlers_for_tests"
TIMEOUT = 30
BASE = ["--url", "http://127.0.0.1:5984/", "--db", "mydb"]


def parse(*args: str, environ: dict[str, str] | None = None) -> Options:
    options = Options(environ={} if environ is None else environ)
    options.parseOptions(list(args))
    return options


def test_good_options_become_service_arguments(tmp_path):
    """Every follower option is parsed, checked and turned into the service's keyword arguments."""
    selector = tmp_path / "selector.json"
    selector.write_text('{"type": "order"}')
    options = parse(
        *BASE, "--handler", f"{HANDLERS}:record", "--since", "now",
        "--selector", f"@{selector}", "--include-docs", "--param", "region=eu",
        "--heartbeat", "5000", "--concurrency", "4", "--max-buffered", "16", "--max-ahead", "500",
        "--on-error", "retry",
        "--checkpoint", f"file:{tmp_path / 'ckpt.json'}", "--checkpoint-every", "7",
        "--dedup-window", "100", "--give-up-after", "60", "--shard", "2/3",
        "--pending-interval", "15", "--feed-max-duration", "90",
    )
    assert options["handler-object"] is handlers_for_tests.record
    assert options.service_kwargs() == {
        "since": "now", "heartbeat": 5000, "checkpoint_every": 7, "dedup_window": 100, "give_up_after": 60.0,
        "shard": Shard(2, 3), "pending_interval": 15.0, "feed_max_duration": 90.0, "selector": {"type": "order"}, "include_docs": True,
        "params": {"region": "eu"},
    }
    assert (options["concurrency"], options["max-buffered"], options["max-ahead"], options["on-error"]) == (4, 16, 500, "retry")


@pytest.mark.parametrize("args, expected", [([], 300.0), (["--feed-max-duration", "0"], None)], ids=["default", "zero"])
def test_feed_max_duration(args, expected):
    """--feed-max-duration is 300 s unless given; 0 turns the renewals off."""
    options = parse(*BASE, "--handler", f"{HANDLERS}:record", *args)
    assert options.service_kwargs()["feed_max_duration"] == expected


def test_param_sorts_feed_parameters_from_the_filters_own():
    """--param with a feed parameter's name gives it its type; any other key goes to params, for the filter."""
    options = parse(*BASE, "--handler", f"{HANDLERS}:record", "--filter", "app/by_region",
                    "--param", "conflicts=true", "--param", "style=all_docs", "--param", "seq_interval=10",
                    "--param", "region=eu", "--param", "max=3")
    kwargs = options.service_kwargs()
    assert (kwargs["conflicts"], kwargs["style"], kwargs["seq_interval"]) == (True, "all_docs", 10)
    assert kwargs["params"] == {"region": "eu", "max": "3"}


def test_doc_ids_accumulate_from_commas_and_repeats():
    """--doc-ids takes comma-separated ids and may be repeated; --filter and --view pass through."""
    options = parse(*BASE, "--handler", f"{HANDLERS}:record", "--doc-ids", "a,b", "--doc-ids", "c")
    assert options["feed_params"] == {"doc_ids": ["a", "b", "c"]}
    assert parse(*BASE, "--handler", f"{HANDLERS}:record", "--view", "app/by_type")["feed_params"] == {"view": "app/by_type"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--db", "mydb", "--handler", f"{HANDLERS}:record"], "--url is required"),
        (["--url", "http://127.0.0.1:5984/", "--handler", f"{HANDLERS}:record"], "--db is required"),
        ([*BASE], "give exactly one of --handler and --handler-factory"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--handler-factory", f"{HANDLERS}:make_recorder"], "exactly one"),
        ([*BASE, "--handler", "tests.no_such_module:record"], "cannot be imported: ModuleNotFoundError"),
        ([*BASE, "--handler", f"{HANDLERS}:no_such_name"], "cannot be imported: AttributeError"),
        ([*BASE, "--handler", f"{HANDLERS}:not_callable"], "is not callable"),
        ([*BASE, "--handler", f"{HANDLERS}:RecorderClass"], "is a class; use --handler-factory"),
        ([*BASE, "--handler-factory", f"{HANDLERS}:make_recorder", "--handler-arg", "colour=red"], "cannot be called with"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--handler-arg", "tag=x"], "--handler-arg only goes with"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--param", "region"], "--param expects KEY=VALUE"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--param", "since=5"], "use --since"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--param", "conflicts=yes"], "--param conflicts must be true or false"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--param", "style=everything"], "--param style must be one of"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--param", "seq_interval=0"], "--param seq_interval must be a whole"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--selector", "{not json"], "--selector is not valid JSON"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--selector", "[1]"], "must be a JSON object"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--selector", "@/no/such/file.json"], "cannot read the selector file"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--filter", "nofilter"], "invalid filter name"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--filter", "a/b", "--doc-ids", "x"], "implies filter '_doc_ids'"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--heartbeat", "-1"], "expected a whole number above 0"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--concurrency", "4", "--max-buffered", "2"], "--max-buffered"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--on-error", "ignore"], "--on-error must be one of"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--max-buffered", "8", "--max-ahead", "4"], "--max-ahead (4) must be at least"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--checkpoint", "file:"], "--checkpoint: expected"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--metrics-port", "70000"], "a port number"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--shard", "3/3"], "shard index 3 is not in 0..2"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--shard", "half"], "expected a shard as I/N"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--pending-interval", "0"], "a number of seconds above 0"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--feed-max-duration", "-1"], "a number of seconds, 0 or more"),
        (["--url", "nope://x/", "--db", "mydb", "--handler", f"{HANDLERS}:record"], "--url: server URL must start"),
        (["--url", "http://127.0.0.1:5984/", "--db", "MyDb", "--handler", f"{HANDLERS}:record"], "invalid database name"),
    ],
)
def test_bad_options_are_usage_errors(args, message):
    """Each bad option, handler or selector is a UsageError whose message names the problem."""
    with pytest.raises(usage.UsageError) as caught:
        parse(*args)
    assert message in str(caught.value)


def test_password_without_user_is_a_usage_error():
    """TXCHANGES_PASSWORD without TXCHANGES_USER is refused rather than silently ignored."""
    with pytest.raises(usage.UsageError, match="TXCHANGES_USER is not"):
        parse(*BASE, "--handler", f"{HANDLERS}:record", environ={"TXCHANGES_PASSWORD": "x"})


class RecordingService(ChangesService):
    """The real service, remembering the keyword arguments it was made with."""

    made: list[dict[str, Any]] = []

    def __init__(self, db: Any, handler: Any, **kwargs: Any) -> None:
        RecordingService.made.append(dict(kwargs, db=db, handler=handler))
        super().__init__(db, handler, **kwargs)


def test_make_service_builds_the_follower_with_the_options(monkeypatch, tmp_path):
    """makeService gives a MultiService holding a ChangesService made from every option, and the exit watcher."""
    monkeypatch.setattr(_options, "ChangesService", RecordingService)
    RecordingService.made.clear()
    options = parse(
        "--url", "http://127.0.0.1:5984/prefix/", "--db", "orders", "--handler", f"{HANDLERS}:record",
        "--filter", "app/important", "--param", "level=2", "--concurrency", "3", "--on-error", "skip",
        "--checkpoint", f"file:{tmp_path / 'c.json'}", "--since", "now",
        environ={"TXCHANGES_USER": "bob", "TXCHANGES_PASSWORD": "hunter2"},
    )
    top = makeService(options)
    assert isinstance(top, MultiService)
    follower = top.getServiceNamed("follower")
    assert isinstance(follower, ChangesService)
    assert isinstance(top.getServiceNamed("exit-on-failure"), ExitOnFailure)
    [made] = RecordingService.made
    assert made["db"].url == "http://127.0.0.1:5984/prefix/orders"
    assert "user='bob'" in repr(made["db"].server) and "hunter2" not in repr(made["db"].server)
    assert made["handler"] is handlers_for_tests.record
    assert (made["concurrency"], made["max_buffered"], made["max_ahead"], made["on_error"], made["since"]) == (
        3, None, None, "skip", "now")
    assert (made["filter"], made["params"]) == ("app/important", {"level": "2"})
    store = made["checkpoint"]
    assert isinstance(store, FileCheckpoint)
    assert store.identity == "http://127.0.0.1:5984/prefix/orders/_changes?filter=app/important&level=2"


def test_handler_factory_is_called_once_with_the_database_and_handler_args(monkeypatch, tmp_path):
    """--handler-factory is called with the Database and the --handler-arg pairs; a local: checkpoint lives in that database."""
    monkeypatch.setattr(_options, "ChangesService", RecordingService)
    monkeypatch.setenv(handlers_for_tests.OUTPUT_VARIABLE, str(tmp_path / "out.jsonl"))
    RecordingService.made.clear()
    options = parse(*BASE, "--handler-factory", f"{HANDLERS}:make_recorder", "--handler-arg", "tag=blue",
                    "--checkpoint", "local:indexer")
    makeService(options)
    [made] = RecordingService.made
    made["handler"]({"id": "doc-1", "seq": "1-a"})
    [line] = (tmp_path / "out.jsonl").read_text().splitlines()
    assert json.loads(line) == {"id": "doc-1", "seq": "1-a", "db": made["db"].url, "tag": "blue"}
    store = made["checkpoint"]
    assert isinstance(store, LocalDocCheckpoint) and store.describe() == f"_local/indexer in {made['db'].url}"


def test_handler_factory_returning_nothing_fails_clearly():
    """A factory that returns something not callable makes makeService fail naming the factory."""
    options = parse(*BASE, "--handler-factory", f"{HANDLERS}:make_nothing")
    with pytest.raises(TypeError, match="make_nothing.*returned None, not a callable"):
        makeService(options)


def test_plugin_is_found_by_twisted():
    """twistd's plugin lookup finds 'txchanges' with a one-line description and these options."""
    plugins = {p.tapname: p for p in getPlugins(IServiceMaker)}
    plugin = plugins["txchanges"]
    assert "\n" not in plugin.description and "CouchDB" in plugin.description
    assert isinstance(plugin.options(), Options)


class FakeFollower:
    def __init__(self, outcome: Deferred[None]) -> None:
        self.outcome = outcome
        self.db = type("Db", (), {"url": "http://127.0.0.1:5984/x"})()

    def when_stopped(self) -> Deferred[None]:
        return self.outcome


class FakeReactor:
    def __init__(self) -> None:
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1

    def callWhenRunning(self, f: Any) -> None:
        f()


def test_exit_on_failure_stops_the_reactor_with_status_1_only_on_an_error():
    """A follower that fails stops the reactor and sets exit status 1; one stopped normally does neither."""
    statuses: list[int] = []
    failed, reactor = FakeReactor(), FakeReactor()
    error = NotFound(404, "not_found", "Database does not exist.")
    ExitOnFailure(FakeFollower(fail(error)), failed, statuses.append).startService()  # type: ignore[arg-type]
    ExitOnFailure(FakeFollower(succeed(None)), reactor, statuses.append).startService()  # type: ignore[arg-type]
    assert (failed.stopped, reactor.stopped, statuses) == (1, 0, [1])


# -- twistd as a process ------------------------------------------------------


def twistd_command() -> list[str]:
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd_env(output: Path | None = None, **extra: str) -> dict[str, str]:
    # The repository root on the path makes its twisted/plugins directory a
    # plugin directory, whatever the way the package is installed.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **extra)
    if output is not None:
        env[handlers_for_tests.OUTPUT_VARIABLE] = str(output)
    return env


def twistd(*args: str, output: Path | None = None, **extra_env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*twistd_command(), "-n", "--pidfile=", *args], env=twistd_env(output, **extra_env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for_lines(path: Path, count: int, process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"handled {path.read_text() if path.exists() else ''!r}; twistd said {process.communicate()[0]}")


def test_twistd_help_lists_the_plugin():
    """'twistd --help' lists txchanges with its description."""
    done = subprocess.run([*twistd_command(), "--help"], env=twistd_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert "txchanges        Follow a CouchDB database's _changes feed" in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--handler", "tests.no_such_module:x"], "--handler 'tests.no_such_module:x' cannot be imported"),
        (["--handler", f"{HANDLERS}:record", "--concurrency", "0"], "--concurrency expects a whole number"),
        (["--handler", f"{HANDLERS}:record", "--no-such-option"], "option --no-such-option not recognized"),
    ],
    ids=["handler", "value", "unknown-option"],
)
def test_twistd_usage_error_is_two_lines_not_the_whole_help(args, message):
    """A usage error under twistd is the message and a pointer to --help on stderr, without twistd's help or a traceback, and status 2."""
    done = subprocess.run(
        [*twistd_command(), "-n", "txchanges", *BASE, *args],
        env=twistd_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.returncode == 2 and done.stdout == ""
    first, second = done.stderr.splitlines()
    assert first.startswith("twistd txchanges: ") and message in first
    assert second == "Run 'twistd txchanges --help' for usage."


def test_twistd_help_of_the_plugin_is_still_the_whole_help():
    """twistd txchanges --help prints every option and exits 0."""
    done = subprocess.run(
        [*twistd_command(), "txchanges", "--help"], env=twistd_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.returncode == 0 and "--handler-factory=" in done.stdout and "--metrics-port=" in done.stdout


def test_a_handler_in_the_current_directory_says_how_to_import_it(couch_server, tmp_path):
    """A handler module in twistd's working directory is not found, with a hint to set PYTHONPATH=.; with it, it is imported."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "index.py").write_text("def handle(change):\n    pass\n")
    args = [*twistd_command(), "-n", "--pidfile=", "txchanges", "--url", couch_server.admin_url, "--db", "no-such-db",
            "--handler", "myapp.index:handle"]
    done = subprocess.run(args, env=twistd_env(), cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2, done.stderr
    assert "No module named 'myapp' (twistd does not look in the current directory: run it as PYTHONPATH=. twistd" in done.stderr
    with_path = twistd_env()
    with_path["PYTHONPATH"] = os.pathsep.join([".", with_path["PYTHONPATH"]])
    done = subprocess.run(args, env=with_path, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1 and "Database does not exist" in done.stdout, done.stdout + done.stderr


def test_twistd_with_a_metrics_port_in_use_logs_one_line_and_exits_1(couch_server, db_name, tmp_path):
    """--metrics-port on a port in use: one log line naming it, no traceback, status 1, and no change handled."""
    couch_server.create_db(db_name)
    couch_server.request("PUT", f"{db_name}/doc-0", {})
    output = tmp_path / "handled.jsonl"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = twistd(
            "txchanges", "--url", couch_server.admin_url, "--db", db_name, "--handler", f"{HANDLERS}:record",
            "--metrics-port", str(port), output=output,
        )
        log = process.communicate(timeout=TIMEOUT)[0]
    assert process.returncode == 1, log
    assert "Traceback" not in log and not output.exists()
    [line] = [line for line in log.splitlines() if str(port) in line]
    assert f"cannot serve metrics on 127.0.0.1:{port} (Address already in use); exiting with status 1" in line


def test_twistd_follows_and_stops_on_sigterm_with_the_checkpoint_saved(couch_server, db_name, tmp_path):
    """twistd -n txchanges hands every change to the handler module and, on SIGTERM, saves the checkpoint past them."""
    couch_server.create_db(db_name)
    couch_server.request("POST", f"{db_name}/_bulk_docs", {"docs": [{"_id": f"doc-{i}"} for i in range(5)]})
    output, ckpt = tmp_path / "handled.jsonl", tmp_path / "ckpt.json"
    process = twistd(
        "txchanges", "--url", couch_server.url, "--db", db_name, "--handler", f"{HANDLERS}:record",
        "--checkpoint", f"file:{ckpt}", "--heartbeat", "2000", output=output,
        TXCHANGES_USER=couch_server.admin[0], TXCHANGES_PASSWORD=couch_server.admin[1],
    )
    try:
        handled = wait_for_lines(output, 5, process)
    finally:
        process.send_signal(signal.SIGTERM)
        log = process.communicate(timeout=TIMEOUT)[0]
    assert process.returncode in (0, -signal.SIGTERM), log  # twistd re-raises the signal it stopped on
    assert [h["id"] for h in handled] == [f"doc-{i}" for i in range(5)]
    saved = json.loads(ckpt.read_text())["seq"]
    assert saved == handled[-1]["seq"]
    since = urllib.parse.quote(saved, safe="")
    status, body = couch_server.request("GET", f"{db_name}/_changes?since={since}")
    assert status == 200 and body["results"] == []
    assert "secret" not in log


def test_twistd_exits_1_when_the_follower_stops_on_an_error(couch_server, tmp_path):
    """A missing database stops the follower: twistd logs the error and exits with status 1."""
    process = twistd(
        "txchanges", "--url", couch_server.admin_url, "--db", "no-such-db",
        "--handler-factory", f"{HANDLERS}:make_recorder", output=tmp_path / "handled.jsonl",
    )
    log = process.communicate(timeout=TIMEOUT)[0]
    assert process.returncode == 1, log
    assert "HTTP 404 not_found: Database does not exist." in log and "exiting with status 1" in log
    assert "secret" not in log


def test_twistd_exits_1_when_the_handler_fails_with_on_error_stop(couch_server, db_name, tmp_path):
    """With --on-error stop, a failing handler stops twistd with status 1, the checkpoint left before that change."""
    couch_server.create_db(db_name)
    couch_server.request("PUT", f"{db_name}/doc-0", {})
    ckpt = tmp_path / "ckpt.json"
    process = twistd(
        "txchanges", "--url", couch_server.admin_url, "--db", db_name, "--handler", f"{HANDLERS}:fail",
        "--checkpoint", f"file:{ckpt}", output=tmp_path / "handled.jsonl",
    )
    log = process.communicate(timeout=TIMEOUT)[0]
    assert process.returncode == 1, log
    assert "RuntimeError: cannot handle doc-0" in log and "exiting with status 1" in log
    assert log.count("Traceback (most recent call last)") == 1, log
    assert not ckpt.exists()


def test_make_service_with_a_shard_names_it_in_the_checkpoint_identity(monkeypatch, tmp_path):
    """--shard reaches the service, and the checkpoint's identity carries it, so shards cannot share one."""
    monkeypatch.setattr(_options, "ChangesService", RecordingService)
    RecordingService.made.clear()
    options = parse(*BASE, "--handler", f"{HANDLERS}:record", "--shard", "1/4", "--checkpoint", f"file:{tmp_path / 'c.json'}")
    makeService(options)
    [made] = RecordingService.made
    assert made["shard"] == Shard(1, 4)
    assert made["checkpoint"].identity.endswith("/_changes shard 1/4")


# -- --all-dbs: every matching database of the server --------------------------

ALL = ["--url", "http://127.0.0.1:5984/", "--all-dbs"]


class RecordingDatabasesService(DatabasesService):
    """The real service of many databases, remembering what it was made with."""

    made: list[dict[str, Any]] = []

    def __init__(self, server: Any, handler: Any, **kwargs: Any) -> None:
        RecordingDatabasesService.made.append(dict(kwargs, server=server, handler=handler))
        super().__init__(server, handler, **kwargs)


def test_all_dbs_makes_a_databases_service_from_the_options(monkeypatch):
    """--all-dbs gives a DatabasesService with the handler, --on-deleted, --match and the other options, watched for failures."""
    monkeypatch.setattr(_alldbs, "DatabasesService", RecordingDatabasesService)
    RecordingDatabasesService.made.clear()
    options = parse(
        *ALL, "--match", "tenant-.*", "--handler", f"{HANDLERS}:record_db", "--on-deleted", f"{HANDLERS}:record_deleted",
        "--concurrency", "3", "--on-error", "skip", "--max-connections", "7", "--page-size", "50", "--since", "now",
        "--checkpoint", "couch:checkpoints", "--include-docs",
        environ={"TXCHANGES_USER": "bob", "TXCHANGES_PASSWORD": "hunter2"},
    )
    top = makeService(options)
    assert isinstance(top.getServiceNamed("follower"), DatabasesService)
    assert isinstance(top.getServiceNamed("exit-on-failure"), ExitOnFailure)
    [made] = RecordingDatabasesService.made
    assert made["server"].url == "http://127.0.0.1:5984/" and "user='bob'" in repr(made["server"])
    assert made["handler"] is handlers_for_tests.record_db
    assert made["on_deleted"] is handlers_for_tests.record_deleted
    assert {k: made[k] for k in ("match", "concurrency", "on_error", "max_connections", "page_size", "since")} == {
        "match": "tenant-.*", "concurrency": 3, "on_error": "skip", "max_connections": 7, "page_size": 50, "since": "now",
    }
    assert made["include_docs"] is True
    assert made["checkpoint"].describe() == "documents txchanges:* in http://127.0.0.1:5984/checkpoints"


def test_all_dbs_handler_factory_is_called_with_the_server(monkeypatch, tmp_path):
    """With --all-dbs, --handler-factory is called with the Server and the --handler-arg pairs."""
    monkeypatch.setattr(_alldbs, "DatabasesService", RecordingDatabasesService)
    monkeypatch.setenv(handlers_for_tests.OUTPUT_VARIABLE, str(tmp_path / "out.jsonl"))
    RecordingDatabasesService.made.clear()
    makeService(parse(*ALL, "--handler-factory", f"{HANDLERS}:make_db_recorder", "--handler-arg", "tag=blue"))
    [made] = RecordingDatabasesService.made
    made["handler"]("tenant-1", {"id": "doc-1", "seq": "1-a"})
    [line] = (tmp_path / "out.jsonl").read_text().splitlines()
    assert json.loads(line) == {"db": "tenant-1", "id": "doc-1", "server": "http://127.0.0.1:5984/", "tag": "blue"}


@pytest.mark.parametrize(
    "args, message",
    [
        ([*ALL, "--db", "mydb", "--handler", f"{HANDLERS}:record_db"], "--db does not go with --all-dbs"),
        (["--url", "http://127.0.0.1:5984/", "--handler", f"{HANDLERS}:record"], "--db is required (or --all-dbs"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--on-deleted", f"{HANDLERS}:record_deleted"],
         "--on-deleted only goes with --all-dbs"),
        ([*BASE, "--handler", f"{HANDLERS}:record", "--match", "t-.*"], "--match only goes with --all-dbs"),
        ([*ALL, "--handler", f"{HANDLERS}:record_db", "--on-deleted", f"{HANDLERS}:not_callable"], "is not callable"),
        ([*ALL, "--handler", f"{HANDLERS}:record_db", "--on-deleted", "tests.no_such_module:x"], "cannot be imported"),
        ([*ALL, "--handler", f"{HANDLERS}:record_db", "--max-buffered", "8"], "--max-buffered does not go with --all-dbs"),
        ([*ALL, "--handler", f"{HANDLERS}:record_db", "--max-ahead", "8"], "--max-ahead does not go with --all-dbs"),
        ([*ALL, "--handler", f"{HANDLERS}:record_db", "--shard", "0/2"], "--shard does not go with --all-dbs"),
        ([*ALL, "--handler", f"{HANDLERS}:record_db", "--since", "3-abc"], "--since with --all-dbs must be 0 or now"),
        ([*ALL, "--handler", f"{HANDLERS}:record_db", "--checkpoint", "local:x"], "--checkpoint with --all-dbs"),
    ],
)
def test_all_dbs_usage_errors(args, message):
    """A one-database option with --all-dbs, an --all-dbs option without it, or a bad --on-deleted is a usage error."""
    with pytest.raises(usage.UsageError) as caught:
        parse(*args)
    assert message in str(caught.value)


def test_twistd_follows_every_matching_database_and_tells_of_deletions(couch_server, tmp_path):
    """twistd -n txchanges --all-dbs calls the handler with each database's name and change, --on-deleted with a deleted one's, and saves every checkpoint on SIGTERM."""
    prefix = f"tap-{secrets.token_hex(4)}-"
    kept, gone = prefix + "kept", prefix + "gone"
    for name in (kept, gone):
        couch_server.create_db(name)
        couch_server.request("POST", f"{name}/_bulk_docs", {"docs": [{"_id": f"{name}-{i}"} for i in range(2)]})
    output, ckpt = tmp_path / "handled.jsonl", tmp_path / "checkpoints.json"
    try:
        process = twistd(
            "txchanges", "--url", couch_server.url, "--all-dbs", "--match", f"{prefix}.*",
            "--handler", f"{HANDLERS}:record_db", "--on-deleted", f"{HANDLERS}:record_deleted",
            "--checkpoint", f"file:{ckpt}", "--heartbeat", "2000", output=output,
            TXCHANGES_USER=couch_server.admin[0], TXCHANGES_PASSWORD=couch_server.admin[1],
        )
        try:
            handled = wait_for_lines(output, 4, process)
            couch_server.delete_db(gone)
            told = wait_for_lines(output, 5, process)[4]
        finally:
            process.send_signal(signal.SIGTERM)
            log = process.communicate(timeout=TIMEOUT)[0]
    finally:
        couch_server.delete_db(kept)
        couch_server.delete_db(gone)
    assert process.returncode in (0, -signal.SIGTERM), log
    assert sorted((h["db"], h["id"]) for h in handled) == sorted((n, f"{n}-{i}") for n in (kept, gone) for i in range(2))
    assert told == {"db": gone, "deleted": True}
    last_of_kept = [h["seq"] for h in handled if h["db"] == kept][-1]
    assert json.loads(ckpt.read_text())["seqs"] == {kept: last_of_kept}
    assert "secret" not in log


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "HTTP 401 unauthorized: You are not a server admin."),
        (["--checkpoint", "file:{tmp}/missing/c.json"], "missing does not exist"),
    ],
    ids=["not-an-admin", "unusable-checkpoint"],
)
def test_twistd_all_dbs_exits_1_when_it_cannot_start(couch_server, tmp_path, extra, message):
    """Without a server admin's credentials, or with a checkpoint file it cannot write, twistd logs why and exits 1."""
    process = twistd(
        "txchanges", "--url", couch_server.url, "--all-dbs", "--handler", f"{HANDLERS}:record_db",
        *(arg.format(tmp=tmp_path) for arg in extra), output=tmp_path / "handled.jsonl",
    )
    try:
        log = process.communicate(timeout=TIMEOUT)[0]
    finally:
        if process.returncode is None:  # it hangs: end it, not leave it behind
            process.kill()
            process.communicate()
    assert process.returncode == 1, log
    [line] = [line for line in log.splitlines() if "exiting with status 1" in line]
    assert f"the follower of the databases of {couch_server.url} stopped on an error" in line and message in line
    if not extra:
        assert "--all-dbs needs a server admin's credentials" in line


def test_make_service_with_group_builds_a_worker():
    """--group makes the follower a GroupService of that group, with the unit count, TTL and coordination database asked for."""
    options = parse(*BASE, "--handler", f"{HANDLERS}:record", "--group", "indexer", "--group-units", "8",
                    "--group-ttl", "6", "--group-db", "coord", "--concurrency", "2")
    follower = makeService(options).getServiceNamed("follower")
    assert isinstance(follower, GroupService)
    assert (follower.group, follower.coordination.url, follower.member.timing.ttl) == ("indexer", "http://127.0.0.1:5984/coord", 6.0)
    assert follower.units.names() == [str(i) for i in range(8)]


def test_all_dbs_with_group_builds_a_worker_of_the_servers_databases():
    """--all-dbs --group makes a GroupService over the server, its units buckets of the databases, with the handler taking (db, change)."""
    options = parse(*ALL, "--handler", f"{HANDLERS}:record_db", "--group", "tenants", "--group-units", "4",
                    "--group-ttl", "5", "--match", "tenant-.*")
    follower = makeService(options).getServiceNamed("follower")
    assert isinstance(follower, GroupService)
    assert (follower.group, follower.coordination.url, follower.member.timing.ttl) == (
        "tenants", "http://127.0.0.1:5984/txchanges-groups", 5.0,
    )
    assert follower.units.names() == ["0", "1", "2", "3"]
    assert follower.units.server.url == "http://127.0.0.1:5984/"


@pytest.mark.parametrize("extra", [["--checkpoint", "file:x.json"], ["--checkpoint", "couch:ckpts"]])
def test_group_refuses_a_checkpoint_of_its_own(extra):
    """A group keeps its checkpoints in its lease documents: --checkpoint with --group is a usage error, with --all-dbs too."""
    for base in (BASE + ["--handler", f"{HANDLERS}:record"], ALL + ["--handler", f"{HANDLERS}:record_db"]):
        if extra[1].startswith("couch:") and "--all-dbs" not in base:
            continue
        with pytest.raises(usage.UsageError) as caught:
            parse(*base, "--group", "g", *extra)
        assert "--group splits the work and keeps the checkpoints itself" in str(caught.value)
