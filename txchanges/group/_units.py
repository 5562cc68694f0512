"""
The units of a group and what runs them: a :class:`Shard` of one
database's documents, each followed by a :class:`~txchanges.ChangesService`;
or a bucket of a server's databases (by a hash of the name), each followed
by a :class:`~txchanges.DatabasesService`. Either way the unit's checkpoint
lives in its lease document, and every change passes a gate that refuses it
once the lease is no longer valid.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping
from typing import Any, Callable, Optional, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.errors import TxChangesError
from txchanges.http.client import Database, Server
from txchanges.many._match import Match, predicate
from txchanges.many._service import DatabasesService
from txchanges.service._service import ChangesService
from txchanges.service.shard import Shard

__all__ = ["LeaseExpired", "ShardUnits", "DatabaseUnits", "bucket_of", "Leases"]


class LeaseExpired(TxChangesError):
    """A change was not handed over: the worker's lease on its unit had ended."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        super().__init__(unit)

    def __str__(self) -> str:
        return f"the lease on unit {self.unit} has ended; the change is left to its next owner"


def bucket_of(name: str, count: int) -> int:
    """The unit of database *name* among *count*: CRC-32 of its name, as :class:`Shard` hashes ids."""
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) % count


class Leases(Protocol):
    """What a unit asks of the coordinator."""

    def valid(self, unit: str) -> bool: ...

    def checkpoint(self, unit: str) -> Any: ...

    def save(self, unit: str, checkpoint: Any) -> "Deferred[None]": ...


class _LeaseCheckpoint:
    """A :class:`~txchanges.CheckpointStore` kept in a unit's lease document."""

    def __init__(self, leases: Leases, unit: str, where: str) -> None:
        self._leases = leases
        self._unit = unit
        self._where = where

    def load(self) -> "Deferred[Any]":
        return succeed(self._leases.checkpoint(self._unit))

    def save(self, seq: Any) -> "Deferred[None]":
        return self._leases.save(self._unit, seq)

    def describe(self) -> str:
        return f"the lease of unit {self._unit} of {self._where}"


class _LeaseCheckpoints:
    """A :class:`~txchanges.CheckpointsStore`: every database's seq of a unit in its lease document."""

    complete = True

    def __init__(self, leases: Leases, unit: str, where: str) -> None:
        self._leases = leases
        self._unit = unit
        self._where = where
        self._seqs: dict[str, Any] = {}

    def describe(self) -> str:
        return f"the lease of unit {self._unit} of {self._where}"

    def prepare(self, identity: str) -> "Deferred[None]":
        return succeed(None)

    def load(self) -> "Deferred[dict[str, Any]]":
        stored = self._leases.checkpoint(self._unit)
        self._seqs = dict(stored) if isinstance(stored, dict) else {}
        return succeed(dict(self._seqs))

    def get(self, name: str) -> "Deferred[Any]":
        return succeed(self._seqs.get(name))

    def save(self, seqs: Mapping[str, Any], removed: Collection[str]) -> "Deferred[None]":
        self._seqs.update(seqs)
        for name in removed:
            self._seqs.pop(name, None)
        return self._leases.save(self._unit, dict(self._seqs))


class _Running:
    """The services of the units running, and how each is stopped."""

    log = Logger()

    def __init__(self, failed: Callable[[Failure], None]) -> None:
        self._services: dict[str, Any] = {}
        self._stopping: set[Any] = set()
        self._failed = failed
        self.leases: Optional[Leases] = None

    def run(self, unit: str, service: Any) -> None:
        self._services[unit] = service
        service.startService()
        service.when_stopped().addErrback(self._ended, service, unit)

    def _ended(self, failure: Failure, service: Any, unit: str) -> None:
        # A unit that stops by itself (a handler failing with
        # on_error="stop", a refused request) stops the worker: as a single
        # follower would.
        if service not in self._stopping and not failure.check(LeaseExpired):
            self._failed(failure)

    def stop(self, unit: str, lost: bool) -> "Deferred[None]":
        service = self._services.pop(unit, None)
        if service is None:
            return succeed(None)
        self._stopping.add(service)
        # stopService() halts at once: no change is handed over after it.
        d: Deferred[None] = service.stopService()
        return d.addBoth(lambda _: self._stopping.discard(service))

    def gate(self, unit: str) -> None:
        assert self.leases is not None
        if not self.leases.valid(unit):
            raise LeaseExpired(unit)

    @property
    def services(self) -> list[Any]:
        return list(self._services.values())


class ShardUnits(_Running):
    """
    Units that are shards of one database's documents: unit ``"i"`` is
    :class:`~txchanges.Shard` ``(i, count)``.

    :param handler: Called with each change; ``None`` when *kwargs* hold a
        ``batch_handler`` (with its ``max_batch``), called with lists.
    :param kwargs: Passed to each :class:`~txchanges.ChangesService`.
    """

    def __init__(
        self, db: Database, handler: Optional[Callable[[dict[str, Any]], Any]], count: int,
        failed: Callable[[Failure], None], **kwargs: Any,
    ) -> None:
        super().__init__(failed)
        self.db = db
        self.count = count
        self._handler = handler
        self._kwargs = kwargs

    def names(self) -> list[str]:
        return [str(i) for i in range(self.count)]

    def start(self, unit: str, checkpoint: Any) -> None:
        assert self.leases is not None
        kwargs = dict(self._kwargs)
        # One change, or with a batch_handler a list of them.
        batch = kwargs.pop("batch_handler", None)
        handler = self._handler if batch is None else batch
        assert handler is not None

        def gated(changes: Any) -> Any:
            self.gate(unit)
            return handler(changes)

        kwargs["handler" if batch is None else "batch_handler"] = gated
        store = _LeaseCheckpoint(self.leases, unit, self.db.url)
        service = ChangesService(self.db, shard=Shard(int(unit), self.count), checkpoint=store, **kwargs)
        self.run(unit, service)


class DatabaseUnits(_Running):
    """
    Units that are buckets of a server's databases: unit ``"i"`` follows
    the matching databases whose :func:`bucket_of` is *i*.

    :param kwargs: Passed to each :class:`~txchanges.DatabasesService`.
    """

    def __init__(
        self, server: Server, handler: Callable[[str, dict[str, Any]], Any], count: int,
        failed: Callable[[Failure], None], match: Match = None, **kwargs: Any,
    ) -> None:
        super().__init__(failed)
        self.server = server
        self.count = count
        self._handler = handler
        self._match = predicate(match)
        self._kwargs = kwargs

    def names(self) -> list[str]:
        return [str(i) for i in range(self.count)]

    def start(self, unit: str, checkpoint: Any) -> None:
        assert self.leases is not None
        handler, index, count, matches = self._handler, int(unit), self.count, self._match

        def gated(name: str, change: dict[str, Any]) -> Any:
            self.gate(unit)
            return handler(name, change)

        def mine(name: str) -> bool:
            return matches(name) and bucket_of(name, count) == index

        store = _LeaseCheckpoints(self.leases, unit, self.server.url)
        service = DatabasesService(self.server, gated, match=mine, checkpoint=store, **self._kwargs)
        self.run(unit, service)
