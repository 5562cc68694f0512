"""``txchanges follow --shard``, run as a process against the test server."""

from __future__ import annotations

import json

import pytest

from txchanges import Shard

from .test_cli import txchanges, write_docs


@pytest.mark.parametrize("feed", ["continuous", "longpoll"])
def test_two_shards_print_disjoint_halves(couch_server, db_name, db_url, tmp_path, feed):
    """Each of two followers prints the changes of its own documents, in feed order; together, all of them."""
    ids = [f"doc-{i:02d}" for i in range(40)]
    write_docs(couch_server, db_name, ids)
    printed = []
    for index in (0, 1):
        mine = [i for i in ids if Shard(index, 2).owns(i)]
        done = txchanges(
            "follow", db_url, "--shard", f"{index}/2", "--limit", str(len(mine)), "--feed", feed,
            "--checkpoint", f"file:{tmp_path / f'shard-{index}.json'}",
        )
        assert done.returncode == 0, done.stderr
        got = [json.loads(line)["id"] for line in done.stdout.splitlines()]
        assert got == mine
        printed += got
    assert sorted(printed) == ids


def test_a_checkpoint_of_another_shard_is_refused(couch_server, db_name, db_url, tmp_path):
    """Shards pass over each other's changes, so one shard's checkpoint file fails another's start."""
    write_docs(couch_server, db_name, ["a", "b", "c", "d"])
    ckpt = f"file:{tmp_path / 'shared.json'}"
    first = txchanges("follow", db_url, "--shard", "0/2", "--checkpoint", ckpt, "--limit", "1")
    assert first.returncode == 0, first.stderr
    second = txchanges("follow", db_url, "--shard", "1/2", "--checkpoint", ckpt, "--limit", "1")
    assert second.returncode == 1
    assert "shard 0/2" in second.stderr and "shard 1/2" in second.stderr and "delete it to start over" in second.stderr
    assert second.stdout == ""
