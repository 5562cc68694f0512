"""The runnable examples work against the test server, as a user would run them."""

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script, *args, timeout=60):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_fetch_example(couch_server, db_name):
    """fetch.py saves two documents and prints both changes with a last_seq."""
    out = run("fetch.py", couch_server.admin_url, db_name)
    first, second, *rest = out.splitlines()
    saved = [json.loads(first)["id"], json.loads(second)["id"]]
    result = json.loads("\n".join(rest))
    assert sorted(r["id"] for r in result["results"]) == sorted(saved)
    assert "last_seq" in result


def test_wait_once_example(couch_server, db_name):
    """wait_once.py prints the one change written while it waited."""
    result = json.loads(run("wait_once.py", couch_server.admin_url, db_name))
    assert len(result["results"]) == 1


def test_wait_example(couch_server, db_name):
    """wait.py prints each change through its registered callback and the last_seq at the end."""
    lines = run("wait.py", couch_server.admin_url, db_name).splitlines()
    assert [line.startswith("got {") for line in lines] == [True, True, False]
    assert lines[-1].startswith("feed ended at ")


def test_follow_example_demo(couch_server, db_name):
    """follow.py --demo-writes creates the database and prints live changes as JSON lines."""
    out = run("follow.py", couch_server.admin_url + db_name, "--demo-writes", "--max-changes", "2")
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2 and all("seq" in r and "id" in r for r in rows)


def test_follow_example_missing_db(couch_server):
    """follow.py on a database that does not exist exits non-zero naming the problem."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "follow.py"), couch_server.admin_url + "no-such-db"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Database does not exist" in done.stderr
    assert "secret" not in done.stderr
