"""The runnable examples work against the test server, as a user would run them."""

import json
import secrets
import signal
import urllib.parse

import pytest

from ._service_helpers import lines_then_signal
from .examplerun import run_example, start_example


def run(script, *args, timeout=60):
    done = run_example(script, *args, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.runs_example("fetch.py")
def test_fetch_example(couch_server, db_name):
    """fetch.py saves two documents and prints both changes with a last_seq."""
    out = run("fetch.py", couch_server.admin_url, db_name)
    first, second, *rest = out.splitlines()
    saved = [json.loads(first)["id"], json.loads(second)["id"]]
    result = json.loads("\n".join(rest))
    assert sorted(r["id"] for r in result["results"]) == sorted(saved)
    assert "last_seq" in result


@pytest.mark.runs_example("wait_once.py")
def test_wait_once_example(couch_server, db_name):
    """wait_once.py prints the one change written while it waited."""
    result = json.loads(run("wait_once.py", couch_server.admin_url, db_name))
    assert len(result["results"]) == 1


@pytest.mark.runs_example("wait.py")
def test_wait_example(couch_server, db_name):
    """wait.py prints each change through its registered callback and the last_seq at the end."""
    lines = run("wait.py", couch_server.admin_url, db_name).splitlines()
    assert [line.startswith("got {") for line in lines] == [True, True, False]
    assert lines[-1].startswith("feed ended at ")


@pytest.mark.runs_example("follow.py")
def test_follow_example_demo(couch_server, db_name):
    """follow.py --demo-writes creates the database, says what it does, and prints live changes as JSON lines."""
    done = run_example("follow.py", couch_server.admin_url + db_name, "--demo-writes", "--max-changes", "2")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 2 and all("seq" in r and "id" in r for r in rows)
    assert done.stderr == f"writing a change every 2 s to the {db_name} database; Ctrl-C to stop\n"


@pytest.mark.runs_example("follow.py")
def test_follow_example_max_changes_on_a_database_with_changes_already(couch_server, db_name, tmp_path):
    """follow.py --max-changes 3 on a database of 20 changes prints exactly 3, checkpointed at the third; the next run prints the next 3."""
    couch_server.create_db(db_name)
    status, _ = couch_server.request("POST", f"{db_name}/_bulk_docs", {"docs": [{"_id": f"doc-{i:02}"} for i in range(20)]})
    assert status == 201
    url, ckpt = couch_server.admin_url + db_name, tmp_path / "follow.ckpt"
    first = [json.loads(line) for line in run("follow.py", url, "--max-changes", "3", "--checkpoint", str(ckpt)).splitlines()]
    assert [row["id"] for row in first] == ["doc-00", "doc-01", "doc-02"]
    assert json.loads(ckpt.read_text())["seq"] == first[-1]["seq"]
    second = [json.loads(line) for line in run("follow.py", url, "--max-changes", "3", "--checkpoint", str(ckpt)).splitlines()]
    assert [row["id"] for row in second] == ["doc-03", "doc-04", "doc-05"]


@pytest.mark.parametrize(
    "url, message",
    [
        ("{admin_url}no-such-db", "HTTP 404 not_found: Database does not exist. (GET {url}no-such-db)"),
        ("http://admin:wrong@{host}/{db}", "HTTP 401 unauthorized: Name or password is incorrect. (GET {url}{db})"),
        ("http://admin:secret@127.0.0.1:1/{db}", "cannot reach 127.0.0.1:1: ConnectionRefusedError: "),
    ],
    ids=["missing-db", "wrong-password", "refused-port"],
)
@pytest.mark.runs_example("follow.py")
def test_follow_example_errors_are_one_line_and_status_1(couch_server, db_name, url, message):
    """What ./run follow URL runs answers a missing database, a wrong password or a refused port with one line on stderr and status 1."""
    couch_server.create_db(db_name)
    host = f"127.0.0.1:{couch_server.port}"
    done = run_example("follow.py", url.format(admin_url=couch_server.admin_url, host=host, db=db_name))
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("follow.py: " + message.format(url=couch_server.url, db=db_name)), line
    assert "secret" not in line and "wrong" not in line


@pytest.mark.runs_example("service.py")
def test_service_example(couch_server, db_name):
    """service.py follows until SIGTERM, then goes on: it reports every document handled and the checkpoint it saved in its _local document."""
    process = start_example("service.py", couch_server.admin_url, db_name)
    handled, out, err = lines_then_signal(process, 20, signal.SIGTERM, 60)
    assert process.returncode == 0, err
    assert sorted(handled) == sorted(f"handled doc-{i}\n" for i in range(20))
    status, saved = couch_server.request("GET", f"{db_name}/_local/example-follower")
    assert status == 200
    assert out == f"stopped by SIGTERM: handled 20 changes; checkpoint {saved['seq']}\n"
    status, rest = couch_server.request("GET", f"{db_name}/_changes?since={urllib.parse.quote(saved['seq'], safe='')}")
    assert status == 200 and rest["results"] == []


@pytest.mark.runs_example("follow.py")
def test_follow_example_resumes_from_its_checkpoint_file(couch_server, db_name, tmp_path):
    """follow.py with --checkpoint prints only new changes when run again."""
    ckpt = str(tmp_path / "follow.ckpt")
    url = couch_server.admin_url + db_name
    first = run("follow.py", url, "--demo-writes", "--max-changes", "2", "--checkpoint", ckpt)
    second = run("follow.py", url, "--demo-writes", "--max-changes", "1", "--checkpoint", ckpt)
    seen_first = {json.loads(line)["id"] for line in first.splitlines()}
    seen_second = {json.loads(line)["id"] for line in second.splitlines()}
    assert len(seen_first) == 2 and len(seen_second) == 1
    assert not seen_first & seen_second


@pytest.mark.runs_example("async_for.py")
def test_async_for_example(couch_server, db_name):
    """async_for.py prints each document's change and the place to resume from."""
    lines = run("async_for.py", couch_server.admin_url, db_name, "3").splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["item-0", "item-1", "item-2"]
    assert lines[3].startswith("resume from ")


@pytest.mark.runs_example("all_dbs.py")
def test_all_dbs_example_follows_every_database_of_its_prefix_and_resumes_each(couch_server, tmp_path):
    """all_dbs.py prints each new document of its three databases with the database's name, stops on SIGTERM with every checkpoint in its file, and a second run prints only what that run wrote."""
    prefix = f"example-{secrets.token_hex(4)}"
    names = [f"{prefix}-{n}" for n in range(3)]
    ckpt = tmp_path / "checkpoints.json"
    try:
        first = start_example("all_dbs.py", couch_server.admin_url, prefix, str(ckpt))
        handled, out, err = lines_then_signal(first, 15, signal.SIGTERM, 60)
        assert first.returncode == 0, err
        assert out == "stopped by SIGTERM: handled 15 changes of 3 databases\n"
        assert sorted(line.split()[0] for line in handled) == sorted(names * 5)
        assert sorted(json.loads(ckpt.read_text())["seqs"]) == names
        second = start_example("all_dbs.py", couch_server.admin_url, prefix, str(ckpt))
        again, out, err = lines_then_signal(second, 15, signal.SIGTERM, 60)
        assert second.returncode == 0, err
        assert out == "stopped by SIGTERM: handled 15 changes of 3 databases\n"
        assert sorted(line.split()[0] for line in again) == sorted(names * 5)
        assert not set(again) & set(handled)
    finally:
        for name in names:
            couch_server.delete_db(name)
