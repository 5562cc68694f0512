"""``txchanges follow --group`` and ``txchanges group status``, run as processes against the test server."""

from __future__ import annotations

import json
import signal
import threading
import time

from .test_cli import read_lines, start, txchanges, write_docs


def _collect(process, into: list[str]) -> threading.Thread:
    def read() -> None:
        for line in process.stdout:
            into.append(json.loads(line)["id"])

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_two_followers_of_a_group_print_every_change_once_and_status_shows_them(couch_server, db_name, db_url):
    """Two workers print disjoint parts of the feed, all of it together; group status lists both and every unit."""
    ids = [f"doc-{i:02d}" for i in range(40)]
    coord = db_name + "-groups"
    args = ["follow", db_url, "--group", "g", "--group-db", coord, "--group-units", "4", "--group-ttl", "2"]
    printed: list[list[str]] = [[], []]
    workers = [start(*args) for _ in range(2)]
    threads = [_collect(w, out) for w, out in zip(workers, printed)]
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            status = txchanges("group", "status", couch_server.admin_url, "--group", "g", "--group-db", coord)
            if status.returncode == 0 and "members (2)" in status.stdout and status.stdout.count("units 2") == 2:
                break
            time.sleep(0.2)
        write_docs(couch_server, db_name, ids)
        while time.monotonic() < deadline and len(printed[0] + printed[1]) < 40:
            time.sleep(0.05)
        assert status is not None and status.returncode == 0, status.stderr
        assert "members (2)" in status.stdout and "4 units, shards of" in status.stdout, status.stdout
        unit_lines = [line for line in status.stdout.splitlines() if "lease written" in line]
        assert len(unit_lines) == 4 and all("checkpoint" in line for line in unit_lines), status.stdout
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        codes = [w.wait(20) for w in workers]
        for t in threads:
            t.join(5)
    assert codes == [0, 0], [w.stderr.read() for w in workers]
    assert printed[0] and printed[1]
    assert sorted(printed[0] + printed[1]) == ids


def test_a_group_takes_no_shard_nor_checkpoint(db_url, tmp_path):
    """--group keeps the checkpoints in its leases: --shard and --checkpoint are usage errors."""
    for extra in (["--shard", "0/2"], ["--checkpoint", f"file:{tmp_path / 'c.json'}"], ["--feed", "longpoll"]):
        done = txchanges("follow", db_url, "--group", "g", *extra)
        assert done.returncode == 2 and "--group" in done.stderr, done.stderr


def test_status_of_a_group_that_does_not_exist(couch_server, db_name):
    """A group with no documents is said to be missing, with status 0."""
    couch_server.create_db(db_name)
    done = txchanges("group", "status", couch_server.admin_url, "--group", "nobody", "--group-db", db_name)
    assert done.returncode == 0, done.stderr
    assert "no such group" in done.stdout


def test_a_group_of_a_servers_databases_prints_each_databases_changes(couch_server, db_name):
    """follow URL --all-dbs --group: a worker owns every bucket of databases and prints each matching database's changes, with its name."""
    names = [f"{db_name}-t{i}" for i in range(3)]
    for name in names:
        couch_server.create_db(name)
        write_docs(couch_server, name, [f"{name}-a", f"{name}-b"])
    worker = start(
        "follow", couch_server.admin_url, "--all-dbs", "--match", f"{db_name}-t.*", "--group", "g",
        "--group-db", db_name + "-groups", "--group-units", "4", "--group-ttl", "2",
    )
    try:
        lines = read_lines(worker, 6)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(20)
        for name in names:
            couch_server.delete_db(name)
    assert code == 0, worker.stderr.read()
    assert sorted((line["db"], line["id"]) for line in lines) == sorted(
        (name, f"{name}-{x}") for name in names for x in "ab"
    )
    # The work went through the group's leases, each unit's checkpoint in its own.
    status, body = couch_server.request("GET", f"{db_name}-groups/_all_docs")
    assert status == 200, body
    assert {f"g:lease:{i}" for i in range(4)} <= {row["id"] for row in body["rows"]}
