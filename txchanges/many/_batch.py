"""
What the stores of many checkpoints share about a batch: the check made at
the call, and the bounded fan-out of per-database requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from txchanges.service.checkpoint import check_seq

__all__ = ["check_batch", "each_bounded"]

T = TypeVar("T")


def check_batch(seqs: Mapping[str, Any]) -> None:
    """
    Refuse, at the call, a batch holding a sequence no store may save.

    :raises ValueError: when a sequence is ``None``, naming its database.
    :raises TypeError: when a sequence is not JSON-serialisable, naming its
        database.
    """
    for name, seq in seqs.items():
        try:
            check_seq(seq)
        except (TypeError, ValueError) as e:
            raise type(e)(f"database {name!r}: {e}") from None


async def each_bounded(items: Iterable[T], call: Callable[[T], Awaitable[None]], limit: int) -> None:
    """
    Await ``call(item)`` for every item, at most *limit* at once; one that
    fails does not stop the others.

    :raises Exception: the first failure, once every call has ended.
    """
    pending = iter(items)
    failures: list[Failure] = []

    async def worker() -> None:
        # The workers share one iterator: each takes the next item when it
        # is free, so at most *limit* calls run and none waits for a slot.
        for item in pending:
            try:
                await call(item)
            except Exception:
                failures.append(Failure())

    await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(limit)])
    if failures:
        failures[0].raiseException()
