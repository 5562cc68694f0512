"""
:class:`GroupService`: one worker of a group that shares the work of
following a database (or a server's databases) with the other workers of
the same group, wherever they run.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges._reactor import Clock, default_clock
from txchanges.errors import TxChangesError
from txchanges.group._config import GroupError, check_config
from txchanges.group._coordinator import Coordinator
from txchanges.group._couchstore import CouchLeaseStore
from txchanges.group._lease import Member, Timing
from txchanges.group._units import DatabaseUnits, ShardUnits
from txchanges.http.client import Database, Server
from txchanges.service._retry import is_terminal

__all__ = ["GroupService", "GroupStats", "DEFAULT_COORDINATION_DB", "boottime"]

#: Where groups keep their documents unless told otherwise.
DEFAULT_COORDINATION_DB = "txchanges-groups"


def boottime() -> float:
    """
    Seconds on a clock that only moves forward and keeps counting while the
    machine sleeps (``CLOCK_BOOTTIME`` on Linux; ``time.monotonic``
    elsewhere): a lease must not outlive a suspend.
    """
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is not None:
        return time.clock_gettime(clock_id)
    return time.monotonic()


@dataclass
class GroupStats:
    """What a worker has done: the counters of :attr:`GroupService.stats`."""

    #: Units whose lease it holds and whose follower runs.
    units_owned: int = 0
    #: Live members it sees, itself included.
    members: int = 0
    #: Times the units it should own changed.
    rebalances: int = 0
    #: Lease writes that succeeded, and those that failed (an error, a timeout, a conflict).
    renewals: int = 0
    renewals_failed: int = 0
    #: Leases won, and leases lost (expired before renewal, or taken).
    acquired: int = 0
    lost: int = 0
    #: Changes handled by the units running now.
    handled: int = 0


class GroupService(Service):
    """
    One worker of group *group*: the group's work is split into *units*,
    each owned by one live worker at a time through a lease document in the
    coordination database, and handed over when workers join, leave or die.

    Given a :class:`~txchanges.Database`, the units are the
    :class:`~txchanges.Shard` ``(i, units)`` of its documents, each followed
    by a :class:`~txchanges.ChangesService` calling ``handler(change)``.
    Given a :class:`~txchanges.Server`, the units are buckets of its
    databases (by a hash of the name), each followed by a
    :class:`~txchanges.DatabasesService` calling ``handler(db_name,
    change)``. A unit's checkpoint lives in its lease document.

    :param target: The database, or the server, to follow.
    :param handler: As for the service that follows a unit; ``None`` for a
        database's shards with a ``batch_handler`` in *follow*.
    :param group: The group's name: workers of one name share the work.
    :param coordination: The database of leases and heartbeats;
        ``txchanges-groups`` on the target's server by default. It is
        created when missing.
    :param units: How many units the work is split into, the same for every
        worker of the group (checked); much more than the workers expected.
    :param ttl: Seconds a lease or a heartbeat lasts without renewal: a
        crashed worker's units are taken over after about this long.
    :param margin: Seconds a holder's lease is cut short by, and an
        observer's wait made longer by (``ttl / 10`` by default): clocks
        must not drift apart by more over a *ttl*.
    :param worker: This worker's id, unique in the group; host, process id
        and a random part by default.
    :param clock: Timers; the global reactor when omitted.
    :param monotonic: The time leases are judged by; :func:`boottime` by
        default (``clock.seconds`` when a clock is given without it).
    :param on_ownership: Called as ``(unit, "granted" | "ended" |
        "released", t)`` with *t* on the *monotonic* clock: from when the
        unit may hand changes over, until when it could, and when it was
        handed over cleanly (its last checkpoint written with the release).
    :param follow: Keyword arguments for each unit's service
        (``concurrency``, ``checkpoint_interval``, ``stop_timeout``, feed
        parameters, and ``match`` for a server).
    """

    log = Logger()

    def __init__(
        self,
        target: Union[Database, Server],
        handler: Optional[Callable[..., Any]],
        *,
        group: str,
        coordination: Optional[Database] = None,
        units: int = 16,
        ttl: float = 15.0,
        margin: Optional[float] = None,
        worker: Optional[str] = None,
        clock: Optional[Clock] = None,
        monotonic: Optional[Callable[[], float]] = None,
        on_ownership: Optional[Callable[[str, str, float], None]] = None,
        **follow: Any,
    ) -> None:
        if not group or ":" in group:
            raise ValueError(f"invalid group name {group!r}: give a non-empty name without ':'")
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ValueError(f"units must be a positive int, not {units!r}")
        timing = Timing.for_ttl(ttl)
        if margin is not None:
            if not 0 <= margin < ttl / 2:
                raise ValueError(f"margin must be at least 0 and below ttl/2, not {margin!r}")
            timing = Timing(ttl=ttl, margin=margin, renew=timing.renew, poll=timing.poll)
        if monotonic is None:
            monotonic = boottime if clock is None else clock.seconds
        self._clock: Clock = default_clock(clock)
        self._now = monotonic
        server = target if isinstance(target, Server) else target.server
        self.coordination = coordination if coordination is not None else server[DEFAULT_COORDINATION_DB]
        self.group = group
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.store = CouchLeaseStore(self.coordination, group)
        follow.setdefault("clock", self._clock)
        self.units: Union[ShardUnits, DatabaseUnits]
        if isinstance(target, Server):
            if handler is None:
                raise TypeError("a group of a server's databases needs a handler(db_name, change)")
            self.units = DatabaseUnits(target, handler, units, self._unit_failed, **follow)
            self._settings = {"units": units, "kind": "databases", "target": target.url}
        elif isinstance(target, Database):
            self.units = ShardUnits(target, handler, units, self._unit_failed, **follow)
            self._settings = {"units": units, "kind": "shards", "target": target.url}
        else:
            raise TypeError(f"GroupService follows a Database or a Server, not {type(target).__name__}")
        info = {"host": socket.gethostname(), "pid": os.getpid()}
        self.member = Member(group, self.worker, self.units.names(), timing, monotonic(), info)
        self.coordinator = Coordinator(self.member, self.store, self.units, self._clock, monotonic, on_ownership)
        self.units.leases = self.coordinator
        self._starting: Optional[Deferred[None]] = None
        self._stopping: Optional[Deferred[None]] = None
        self._failure: Optional[Failure] = None
        self._waiters: list[Deferred[None]] = []
        self._ended = False

    def __repr__(self) -> str:
        return f"<GroupService {self.group!r} worker {self.worker!r}>"

    @property
    def stats(self) -> GroupStats:
        """The worker's counters (see :class:`GroupStats`)."""
        counts = self.member.counts
        return GroupStats(
            units_owned=len(self.member.held),
            members=len(self.member.live_members()),
            rebalances=counts["rebalances"],
            renewals=counts["renewals"],
            renewals_failed=counts["renewals_failed"],
            acquired=counts["acquired"],
            lost=counts["lost"],
            handled=sum(getattr(s.stats, "handled", 0) for s in self.units.services),
        )

    def startService(self) -> None:
        """Create the coordination database if needed, check the group's settings, and join."""
        if self.running:
            return
        super().startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._start_failed)

    async def _start(self) -> None:
        attempt = 0
        while True:
            try:
                await self.store.prepare()
                await check_config(self.store, self._settings)
                break
            except TxChangesError as e:
                if is_terminal(e) or isinstance(e, GroupError):
                    raise
                attempt += 1
                self.log.warn("cannot reach {where} ({error}); retrying", where=self.store.describe(), error=e)
                await deferLater(self._clock, min(30.0, 0.5 * attempt))  # type: ignore[arg-type]
        if self.running:
            self.log.info("worker {worker} joins {where}", worker=self.worker, where=self.store.describe())
            self.coordinator.start()

    def _start_failed(self, failure: Failure) -> None:
        if not failure.check(Exception) or self._stopping is not None:
            return
        self._unit_failed(failure)

    def _unit_failed(self, failure: Failure) -> None:
        if self._failure is None and self._stopping is None:
            self.log.failure("worker {worker} stops", failure, worker=self.worker)
            self._failure = failure
            Service.stopService(self)
            self._stop()

    def stopService(self) -> "Deferred[None]":
        """
        Leave the group: stop every unit (its checkpoint saved in its
        lease), release the leases so that the other workers take them at
        once, and delete the heartbeat.

        :return: A Deferred that fires when that is done; it never fails.
        """
        super().stopService()
        return self._stop()

    def _stop(self) -> "Deferred[None]":
        if self._stopping is None:
            if self._starting is not None and not self._starting.called:
                self._starting.cancel()
            self._stopping = Deferred.fromCoroutine(self._leave())
        d: Deferred[None] = Deferred()
        self._stopping.addBoth(lambda _: d.callback(None))
        return d

    async def _leave(self) -> None:
        await self.coordinator.leave()
        self._ended = True
        self.log.info("worker {worker} left {where}", worker=self.worker, where=self.store.describe())
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if self._failure is None:
                d.callback(None)
            else:
                d.errback(self._failure)

    def when_stopped(self) -> "Deferred[None]":
        """
        :return: A Deferred firing once the worker has left the group after
            :meth:`stopService`, or failing with the error that stopped it.
        """
        d: Deferred[None] = Deferred()
        if self._ended:
            if self._failure is None:
                d.callback(None)
            else:
                d.errback(self._failure)
        else:
            self._waiters.append(d)
        return d
