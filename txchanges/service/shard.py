"""
:class:`Shard`: one part of a database's documents, so that several
followers, in as many processes or machines, share the work of one feed.

Every follower reads the whole feed, and each hands its handler only the
changes of the documents its shard owns. A document always belongs to the
same shard, so its changes are still handled one at a time and in feed
order, by one follower; and each follower checkpoints its own resume point,
which passes the other shards' changes as if they were done.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

__all__ = ["Shard"]


@dataclass(frozen=True)
class Shard:
    """
    Shard *index* of *count*: the documents whose id hashes to *index*.

    The hash is the CRC-32 of the id's UTF-8 bytes, modulo *count*: the same
    in every process, on every machine and in every Python version, unlike
    :func:`hash`.

    :param index: Which shard, from ``0`` to ``count - 1``.
    :param count: How many shards the documents are split into.
    :raises ValueError: when *index* is not in ``range(count)`` or *count*
        is below 1.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        for name in ("index", "count"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"shard {name} must be an int, not {value!r}")
        if self.count < 1:
            raise ValueError(f"a shard count must be at least 1, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} is not in 0..{self.count - 1}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """
        Read ``"I/N"``: shard *I* (from 0) of *N*.

        :raises ValueError: for anything else, or a shard that does not
            exist (``"4/4"``).
        """
        index, sep, count = text.strip().partition("/")
        try:
            if not sep:
                raise ValueError(text)
            return cls(int(index), int(count))
        except ValueError as e:
            if "shard" in str(e):
                raise
            raise ValueError(f"expected a shard as I/N (0 <= I < N), e.g. 0/4, not {text!r}") from None

    def owns(self, docid: str) -> bool:
        """
        Whether the document *docid* belongs to this shard.
        """
        return zlib.crc32(docid.encode("utf-8", "surrogatepass")) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
