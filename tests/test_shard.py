"""Shard: which follower owns which document."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from txchanges import Shard

# The CRC-32 check value of b"123456789" (every CRC-32 catalogue lists it),
# and the CRC-32 of b"a": the hash must never change, or checkpoints and
# running followers of one deployment would disagree about who owns what.
CHECK_VALUE = 0xCBF43926
CRC_OF_A = 0xE8B7BE43


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_every_document_has_exactly_one_owner(count):
    """Across the shards of a split, each id is owned by one shard, and the shares are even."""
    ids = [f"doc-{i:05d}" for i in range(4000)] + ["é", "_design/app", "order:42", "\ud800lone"]
    owners = Counter()
    for docid in ids:
        mine = [i for i in range(count) if Shard(i, count).owns(docid)]
        assert len(mine) == 1, (docid, mine)
        owners[mine[0]] += 1
    expected = len(ids) / count
    assert all(abs(owners[i] - expected) < 0.15 * expected + 10 for i in range(count)), owners


def test_the_hash_is_crc32_of_the_utf8_id():
    """The owner of an id follows from the standard CRC-32, the same in any process."""
    for count in (2, 3, 5, 10):
        assert Shard(CHECK_VALUE % count, count).owns("123456789")
        assert Shard(CRC_OF_A % count, count).owns("a")
    code = "from txchanges import Shard; print([i for i in range(7) if Shard(i, 7).owns('héllo')])"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(runs) == 1, "hash randomisation must not move a document"
    assert runs == {f"{[i for i in range(7) if Shard(i, 7).owns('héllo')]}\n"}


@pytest.mark.parametrize("text, shard", [("0/1", Shard(0, 1)), ("2/4", Shard(2, 4)), (" 3/10 ", Shard(3, 10))])
def test_parse(text, shard):
    """I/N parses to shard I of N, and prints back the same way."""
    assert Shard.parse(text) == shard
    assert str(shard) == text.strip()


@pytest.mark.parametrize(
    "text, message",
    [
        ("4/4", "shard index 4 is not in 0..3"),
        ("-1/4", "shard index -1 is not in 0..3"),
        ("0/0", "a shard count must be at least 1"),
        ("1", "expected a shard as I/N"),
        ("a/b", "expected a shard as I/N"),
        ("1/2/3", "expected a shard as I/N"),
        ("", "expected a shard as I/N"),
    ],
)
def test_parse_refuses_what_is_no_shard(text, message):
    """Anything but I/N with 0 <= I < N is a ValueError that says what was expected."""
    with pytest.raises(ValueError, match=message):
        Shard.parse(text)


def test_constructor_checks_types():
    """Shard indexes and counts are ints, not floats, strings or booleans."""
    for index, count in [(0.0, 2), ("0", 2), (True, 2), (0, 2.0)]:
        with pytest.raises(ValueError, match="must be an int"):
            Shard(index, count)  # type: ignore[arg-type]
