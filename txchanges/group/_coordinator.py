"""
:class:`Coordinator`: runs a worker's :class:`~txchanges.group._lease.Member`
against a lease store - reads the group's documents every *poll* seconds,
sends the writes the member asks for, starts and stops the units it wins and
loses - and keeps a timer on the end of the earliest lease.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Callable, Optional, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges._reactor import Clock
from txchanges.errors import Conflict, NotFound, TxChangesError
from txchanges.group._lease import CONFLICT, FAILED, Delete, Doc, Member, Op, Start, Stop, Write

__all__ = ["Coordinator", "LeaseStore", "Units", "LeaseLost"]


class LeaseLost(TxChangesError):
    """A checkpoint could not be saved: the unit's lease is no longer held."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        super().__init__(unit)

    def __str__(self) -> str:
        return f"the lease on unit {self.unit} is no longer held"


class LeaseStore(Protocol):
    """Where a group's documents live (CouchDB, or a simulation of it)."""

    def read(self) -> "Deferred[dict[str, Doc]]":
        """Every document of the group, by id."""

    def write(self, doc: str, body: dict[str, Any], rev: Optional[str]) -> "Deferred[str]":
        """Write over *rev* (``None``: create); the new revision, or a :class:`~txchanges.errors.Conflict`."""

    def delete(self, doc: str, rev: str) -> "Deferred[None]":
        """Delete at *rev*; a :class:`~txchanges.errors.Conflict` or NotFound when it changed."""


class Units(Protocol):
    """What runs the units a worker holds."""

    def start(self, unit: str, checkpoint: Any) -> None:
        """Start following *unit* from *checkpoint*."""

    def stop(self, unit: str, lost: bool) -> "Deferred[None]":
        """
        Hand over no more change of *unit*, at once; fire once its handler
        calls are done or abandoned and its last checkpoint saved (or
        refused, when *lost*).
        """


class Coordinator:
    """
    Drives one worker's membership and leases.

    :param member: The protocol's state.
    :param store: The group's documents.
    :param units: Runs the units.
    :param clock: Timers (the reactor).
    :param monotonic: The time every decision uses: a clock that only moves
        forward, on this machine only.
    :param wall: Wall-clock time, written in documents for people to read.
    :param on_ownership: Told ``(unit, "granted" | "ended" | "released",
        monotonic time)``: when a lease is won (the unit may hand over changes
        from then), the last moment it could hand one over when it ends, and
        when a unit given up was released with its last checkpoint.
    """

    log = Logger()

    def __init__(
        self,
        member: Member,
        store: LeaseStore,
        units: Units,
        clock: Clock,
        monotonic: Callable[[], float],
        on_ownership: Optional[Callable[[str, str, float], None]] = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.member = member
        self._wall = wall
        self._checkpoints: dict[str, tuple[Any, float]] = {}
        self._store = store
        self._units = units
        self._clock = clock
        self._now = monotonic
        self._on_ownership = on_ownership
        self._poller = LoopingCall(self._poll)
        self._poller.clock = clock  # type: ignore[assignment]
        self._reading = False
        self._deadline: Any = None
        self._waiters: dict[str, list[tuple[int, Deferred[None]]]] = {}
        self._left: Optional[Deferred[None]] = None
        self._running = False

    # -- life ----------------------------------------------------------------------

    def start(self) -> None:
        """Heartbeat, read, and acquire, every *poll* seconds."""
        self._running = True
        self._poller.start(self.member.timing.poll, now=True)

    def leave(self) -> "Deferred[None]":
        """
        Give every unit up (each stopped, its checkpoint saved, then its lease
        released) and delete the heartbeat.

        :return: A Deferred firing once done, or once the leases have run out.
        """
        if self._left is None:
            self._left = Deferred()
            self._run(self.member.leave())
            self._check_left()
        d: Deferred[None] = Deferred()
        self._left.addBoth(lambda r: d.callback(None))
        return d

    def _check_left(self) -> None:
        if self._left is not None and self.member.done and not self._left.called:
            self._stop_timers()
            self._left.callback(None)

    def _stop_timers(self) -> None:
        if self._poller.running:
            self._poller.stop()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._running = False

    # -- what units ask --------------------------------------------------------------

    def valid(self, unit: str) -> bool:
        """Whether a change of *unit* may be handed over now; stops the unit when not."""
        now = self._now()
        if self.member.valid(unit, now):
            return True
        self._run(self.member.expire(now))
        return False

    def checkpoint(self, unit: str) -> Any:
        """The checkpoint *unit* starts from."""
        return self.member.checkpoint(unit)

    def save(self, unit: str, checkpoint: Any) -> "Deferred[None]":
        """
        Write *checkpoint* with *unit*'s lease (at once, or right after the
        lease write in flight).

        :return: A Deferred firing once written, or failing with
            :class:`LeaseLost`.
        """
        generation = self.member.save(unit, checkpoint)
        if generation is None:
            return fail(LeaseLost(unit))
        d: Deferred[None] = Deferred()
        self._waiters.setdefault(unit, []).append((generation, d))
        self._run(self.member.flush(unit, self._now()))
        return d

    # -- the loop ----------------------------------------------------------------------

    def _poll(self) -> None:
        if self._reading:
            # A read is slow: renewals and heartbeats go on regardless.
            self._run(self.member.plan(self._now()))
            return
        self._reading = True
        timeout = self.member.timing.renew
        reading = self._store.read().addTimeout(timeout, self._clock)  # type: ignore[arg-type]
        reading.addCallbacks(self._read, self._unread)

    def _read(self, docs: Mapping[str, Doc]) -> None:
        self._reading = False
        if not self._running:
            return
        now = self._now()
        self.member.observe(docs, now)
        self._run(self.member.plan(now))

    def _unread(self, failure: Failure) -> None:
        self._reading = False
        self.log.warn("cannot read the group's documents: {error}", error=failure.value)
        if self._running:
            # Renewals and heartbeats go on from what is known.
            self._run(self.member.plan(self._now()))

    def _run(self, ops: list[Op]) -> None:
        for op in ops:
            if isinstance(op, (Write, Delete)):
                self._send(op)
            elif isinstance(op, Start):
                self._started(op)
            elif isinstance(op, Stop):
                self._stopping(op)
        self._arm()
        self._settle()

    def _settle(self) -> None:
        # Checkpoint saves written, or refused for good.
        fire: list[tuple[Deferred[None], Optional[LeaseLost]]] = []
        for unit, waiters in list(self._waiters.items()):
            written = self.member.written_generation(unit)
            gone = self.member.valid_until(unit) is None
            keep = []
            for generation, d in waiters:
                if generation <= written:
                    fire.append((d, None))
                elif gone:
                    fire.append((d, LeaseLost(unit)))
                else:
                    keep.append((generation, d))
            if keep:
                self._waiters[unit] = keep
            else:
                del self._waiters[unit]
        # Fired once the books are straight: a waiter may call back in.
        for d, error in fire:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)
        self._check_left()

    def _arm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        deadline = self.member.next_deadline()
        if deadline is not None and self._running:
            self._deadline = self._clock.callLater(max(0.0, deadline - self._now()), self._expire)

    def _expire(self) -> None:
        self._deadline = None
        self._run(self.member.expire(self._now()))

    def _send(self, op: Write | Delete) -> None:
        sent = self._now()
        if isinstance(op, Write):
            d: Deferred[Any] = self._store.write(op.doc, self._stamped(op), op.rev)
        else:
            d = self._store.delete(op.doc, op.rev)
        # Well before the lease ends: a lost answer must not block renewals.
        d.addTimeout(self.member.timing.renew, self._clock)  # type: ignore[arg-type]
        d.addCallbacks(self._sent_ok, self._sent_failed, callbackArgs=(op, sent), errbackArgs=(op, sent))

    def _stamped(self, op: Write) -> dict[str, Any]:
        # Wall-clock times, for people reading the documents (group
        # status): the protocol never reads them.
        wall = self._wall()
        body = dict(op.body, written_at=wall)
        if op.unit is not None:
            last = self._checkpoints.get(op.unit)
            if last is None or last[0] != op.body.get("checkpoint"):
                last = self._checkpoints[op.unit] = (op.body.get("checkpoint"), wall)
            body["checkpoint_at"] = last[1]
        return body

    def _sent_ok(self, rev: Any, op: Write | Delete, sent: float) -> None:
        if isinstance(op, Write) and op.purpose == "release" and op.unit is not None and self._on_ownership:
            self._on_ownership(op.unit, "released", self._now())
        self._run(self.member.written(op, sent, str(rev) if isinstance(op, Write) else "", self._now()))

    def _sent_failed(self, failure: Failure, op: Write | Delete, sent: float) -> None:
        conflict = failure.check(Conflict) is not None or (isinstance(op, Delete) and failure.check(NotFound) is not None)
        if not conflict:
            self.log.warn("cannot write {doc}: {error}", doc=op.doc, error=failure.value)
        self._run(self.member.written(op, sent, CONFLICT if conflict else FAILED, self._now()))

    def _started(self, op: Start) -> None:
        self.log.info("unit {unit} is ours", unit=op.unit)
        if self._on_ownership is not None:
            self._on_ownership(op.unit, "granted", self._now())
        self._units.start(op.unit, op.checkpoint)

    def _stopping(self, op: Stop) -> None:
        now = self._now()
        if self._on_ownership is not None:
            # The last moment it could hand a change over: now, or the
            # lease's end if that came first (a process paused past it).
            end = now if op.until is None else min(now, op.until)
            self._on_ownership(op.unit, "ended", end)
        if op.lost:
            self.log.warn("unit {unit}: lease lost; stopping it", unit=op.unit)
        else:
            self.log.info("unit {unit}: handing it over", unit=op.unit)
        stopping = self._units.stop(op.unit, op.lost)
        stopping.addErrback(lambda f: self.log.failure("unit {unit} did not stop cleanly", f, unit=op.unit))
        if not op.lost:
            stopping.addCallback(lambda _: self._run(self.member.stopped(op.unit, self._now())))
        stopping.addCallback(lambda _: self._settle())
