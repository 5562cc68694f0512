"""The runnable examples work against the test server, as a user would run them."""

import json

import pytest

from .examplerun import run_example


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
    """follow.py --demo-writes creates the database and prints live changes as JSON lines."""
    out = run("follow.py", couch_server.admin_url + db_name, "--demo-writes", "--max-changes", "2")
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2 and all("seq" in r and "id" in r for r in rows)


@pytest.mark.runs_example("follow.py")
def test_follow_example_missing_db(couch_server):
    """follow.py on a database that does not exist exits non-zero naming the problem."""
    done = run_example("follow.py", couch_server.admin_url + "no-such-db")
    assert done.returncode != 0
    assert "Database does not exist" in done.stderr
    assert "secret" not in done.stderr


@pytest.mark.runs_example("service.py")
def test_service_example(couch_server, db_name):
    """service.py follows with a _local checkpoint and reports every document handled."""
    out = run("service.py", couch_server.admin_url, db_name, "2")
    assert out.startswith("handled 20 changes; checkpoint ")


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
