"""
The lease protocol of a worker group, as a state machine without I/O: it is
told what the coordination store holds and how its writes ended, with the
time on the worker's own monotonic clock, and answers with what to do
(:class:`Write`, :class:`Delete`, :class:`Start`, :class:`Stop`). The
:class:`~txchanges.group._coordinator.Coordinator` runs it against CouchDB;
the tests run the same machine against a simulated store.

The rules, with *ttl* and *margin* in seconds:

- A worker's lease on a unit is valid until the moment it *sent* the write
  that last succeeded on the lease document, plus ``ttl - margin``, on its
  own clock. It hands over no change of the unit after that moment.
- Another worker may take the lease only after it has seen the lease
  document keep one revision for ``ttl + margin`` on its own clock, and only
  by a write that names that revision (CouchDB refuses it with 409 if the
  document changed meanwhile).
- A member is alive while its heartbeat document changes at least every
  *ttl* seconds, on the observer's clock. Clocks are never compared.
- Both judgements are made as of the last read that succeeded: a worker
  that cannot read the group for a while keeps the view it had, rather than
  counting every other member dead and every lease free.
- A write that failed (no answer, a refused connection) is sent again at
  the next poll: a renewal, while the lease lasts; a release, until the
  lease would have ended anyway.

Each write carries a *token* unique to the worker; a write whose answer was
lost is recognised by it when the document is read again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from txchanges.group._assign import assign
from txchanges.group._lease_types import (
    CONFLICT,
    FAILED,
    Delete,
    Doc,
    Op,
    Start,
    Stop,
    Timing,
    Write,
    config_id,
    lease_id,
    member_id,
    op_key,
)

__all__ = [
    "Doc", "Write", "Delete", "Start", "Stop", "Op", "Member", "Timing", "CONFLICT", "FAILED",
    "member_id", "lease_id", "config_id",
]


@dataclass
class _Held:
    rev: str
    valid_until: float
    checkpoint: Any
    # Checkpoint generations: the newest asked for, and the newest written.
    wanted: int = 0
    written: int = 0
    renewed_at: float = 0.0
    # "running", "stopping" (given up, waiting for stopped()), "releasing".
    state: str = "running"


@dataclass
class _Seen:
    rev: str
    since: float
    body: Mapping[str, Any] = field(default_factory=dict)


class Member:
    """
    One worker's view of the group and its leases.

    :param group: The group's name (the documents' id prefix).
    :param me: This worker's id, unique in the group for the life of the
        process.
    :param units: Every unit of the group.
    :param timing: The durations.
    :param now: The time it starts, on its monotonic clock.
    :param info: Fields added to its heartbeat document (host, pid...), for
        ``group status``.
    """

    def __init__(
        self, group: str, me: str, units: Sequence[str], timing: Timing, now: float,
        info: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.group = group
        self.me = me
        self.units = list(units)
        self.timing = timing
        self._info = dict(info or {})
        self._seen: dict[str, _Seen] = {}
        # When the last read that succeeded came back.
        self._read_at = now
        self._held: dict[str, _Held] = {}
        # The write or delete in flight on each document, by its key.
        self._inflight: dict[str, str] = {}
        # Lease writes sent and not answered: token -> (time sent, generation).
        self._sent: dict[str, tuple[float, int]] = {}
        self._tokens = 0
        self._beat_rev: Optional[str] = None
        self._beat_at: Optional[float] = None
        self._beats = 0
        self._leaving = False
        self._wanted: frozenset[str] = frozenset()
        self.started = now
        #: Counters: rebalances (changes of the units wanted), renewals,
        #: renewals failed, acquisitions, losses (leases expired or taken).
        self.counts = dict.fromkeys(("rebalances", "renewals", "renewals_failed", "acquired", "lost"), 0)

    # -- what the worker asks ------------------------------------------------------

    @property
    def held(self) -> list[str]:
        """The units whose lease this worker holds and whose follower runs."""
        return sorted(u for u, h in self._held.items() if h.state == "running")

    @property
    def leaving(self) -> bool:
        return self._leaving

    @property
    def done(self) -> bool:
        """Whether, after :meth:`leave`, nothing is held and nothing is in flight."""
        return self._leaving and not self._held and not self._inflight

    def valid(self, unit: str, now: float) -> bool:
        """Whether this worker may hand over a change of *unit* at *now*."""
        held = self._held.get(unit)
        return held is not None and held.state == "running" and now < held.valid_until

    def valid_until(self, unit: str) -> Optional[float]:
        held = self._held.get(unit)
        return None if held is None else held.valid_until

    def next_deadline(self) -> Optional[float]:
        """The earliest moment a running unit's lease ends, for a timer."""
        ends = [h.valid_until for h in self._held.values() if h.state == "running"]
        return min(ends) if ends else None

    def checkpoint(self, unit: str) -> Any:
        held = self._held.get(unit)
        return None if held is None else held.checkpoint

    def save(self, unit: str, checkpoint: Any) -> Optional[int]:
        """
        Ask for *checkpoint* to be written with *unit*'s next lease write.

        :return: Its generation (see :meth:`written_generation`), or
            ``None`` when the lease is not held.
        """
        held = self._held.get(unit)
        if held is None:
            return None
        held.checkpoint = checkpoint
        held.wanted += 1
        return held.wanted

    def flush(self, unit: str, now: float) -> list[Op]:
        """A lease write carrying *unit*'s newest checkpoint, unless one is in flight."""
        held = self._held.get(unit)
        if held is None or held.state == "releasing" or held.wanted <= held.written:
            return []
        return self._lease_write(unit, held, "renew", now)

    def written_generation(self, unit: str) -> int:
        """The newest checkpoint generation of *unit* written under the lease."""
        held = self._held.get(unit)
        return 0 if held is None else held.written

    def leave(self) -> list[Op]:
        """
        Leave the group: stop every unit, then release each lease, then
        delete the heartbeat. The heartbeat goes first, so that the others
        stop counting on this worker at once.
        """
        self._leaving = True
        ops: list[Op] = []
        for unit, held in sorted(self._held.items()):
            if held.state == "running":
                held.state = "stopping"
                ops.append(Stop(unit, lost=False, until=held.valid_until))
        beat = member_id(self.group, self.me)
        if self._beat_rev is not None and beat not in self._inflight:
            self._inflight[beat] = op_key(Delete(beat, self._beat_rev))
            ops.append(Delete(beat, self._beat_rev))
        return ops

    # -- what the store tells ------------------------------------------------------

    def observe(self, docs: Mapping[str, Doc], now: float) -> None:
        """
        The group's documents, as one read returned them at *now*. A
        document's clock starts when a new revision of it is first seen.
        """
        seen: dict[str, _Seen] = {}
        for doc_id, doc in docs.items():
            old = self._seen.get(doc_id)
            since = old.since if old is not None and old.rev == doc.rev else now
            seen[doc_id] = _Seen(doc.rev, since, doc.body)
        self._seen = seen
        self._read_at = now
        self._adopt_lost_answers()

    def _adopt_lost_answers(self) -> None:
        # A lease write whose answer was lost may have landed: its token
        # says so, and its lease runs from when it was sent.
        for unit, held in self._held.items():
            seen = self._seen.get(lease_id(self.group, unit))
            if seen is None or seen.rev == held.rev:
                continue
            token = str(seen.body.get("token"))
            sent = self._sent.pop(token, None)
            if seen.body.get("holder") == self.me and sent is not None:
                held.rev = seen.rev
                held.valid_until = max(held.valid_until, sent[0] + self.timing.ttl - self.timing.margin)
                held.written = max(held.written, sent[1])
                doc = lease_id(self.group, unit)
                if self._inflight.get(doc) == token:
                    # Its answer, when it comes, is old news.
                    del self._inflight[doc]

    def live_members(self) -> list[str]:
        """
        The members whose heartbeat had changed within *ttl* when the group
        was last read, this worker included unless leaving.
        """
        prefix = member_id(self.group, "")
        live = {
            s.body.get("worker", doc_id[len(prefix):])
            for doc_id, s in self._seen.items()
            if doc_id.startswith(prefix) and self._read_at - s.since < self.timing.ttl
        }
        live.discard(self.me)
        if not self._leaving:
            live.add(self.me)
        return sorted(str(m) for m in live)

    def plan(self, now: float) -> list[Op]:
        """What to do now: heartbeat, give up, renew, acquire, and stop what expired."""
        ops: list[Op] = self.expire(now)
        if self._leaving:
            return ops + self._retry_writes(now)
        ops += self._heartbeat(now)
        owners = assign(self.units, self.live_members())
        wanted = frozenset(u for u, m in owners.items() if m == self.me)
        if wanted != self._wanted:
            self._wanted = wanted
            self.counts["rebalances"] += 1
        t = self.timing
        for unit, held in sorted(self._held.items()):
            seen = self._seen.get(lease_id(self.group, unit))
            if held.state == "running" and seen is not None and seen.rev != held.rev and seen.body.get("holder") != self.me:
                ops.append(self._lose(unit))  # taken: its lease had ended
                continue
            if held.state == "running" and unit not in wanted:
                held.state = "stopping"
                ops.append(Stop(unit, lost=False, until=held.valid_until))
            if held.state == "releasing":
                # Sent again when it failed, until the lease ends.
                ops += self._lease_write(unit, held, "release", now)
                continue
            # A unit that is stopping renews too: its last handler calls
            # finish under the lease, and its last checkpoint is written.
            if now - held.renewed_at >= t.renew or held.wanted > held.written:
                ops += self._lease_write(unit, held, "renew", now)
        for unit in sorted(wanted - self._held.keys()):
            ops += self._acquire(unit, now)
        return ops + self._sweep(now)

    def _sweep(self, now: float) -> list[Op]:
        # The heartbeat of a worker silent for ten lifetimes is removed, so
        # that the group's documents do not grow with every crash.
        ops: list[Op] = []
        prefix = member_id(self.group, "")
        for doc, seen in sorted(self._seen.items()):
            if doc.startswith(prefix) and doc not in self._inflight and self._read_at - seen.since > 10 * self.timing.ttl:
                op = Delete(doc, seen.rev)
                self._inflight[doc] = op_key(op)
                ops.append(op)
        return ops

    def _retry_writes(self, now: float) -> list[Op]:
        # While leaving: the last checkpoints and the releases that failed
        # are written again, until the leases end.
        ops: list[Op] = []
        for unit, held in sorted(self._held.items()):
            if held.state == "releasing":
                ops += self._lease_write(unit, held, "release", now)
            elif held.wanted > held.written:
                ops += self._lease_write(unit, held, "renew", now)
        return ops

    def expire(self, now: float) -> list[Op]:
        """
        Stop every running unit whose lease has ended by *now*; forget those
        being given up whose lease ended before they could be released (their
        last checkpoint is then refused, and the next owner repeats a little).
        """
        ops: list[Op] = []
        for unit, held in sorted(self._held.items()):
            if now < held.valid_until:
                continue
            if held.state == "running":
                ops.append(self._lose(unit))
            else:
                del self._held[unit]
                self.counts["lost"] += 1
        return ops

    def _lose(self, unit: str) -> Stop:
        # Gone: the unit stops, and what it saves from now on is refused.
        held = self._held.pop(unit)
        self.counts["lost"] += 1
        return Stop(unit, lost=True, until=held.valid_until)

    def _heartbeat(self, now: float) -> list[Op]:
        doc = member_id(self.group, self.me)
        if doc in self._inflight or (self._beat_at is not None and now - self._beat_at < self.timing.renew):
            return []
        seen = self._seen.get(doc)
        rev = self._beat_rev if self._beat_rev is not None else (seen.rev if seen is not None else None)
        self._beats += 1
        self._tokens += 1
        body = dict(
            self._info, type="member", worker=self.me, beats=self._beats, units=self.held,
            token=f"{self.me}:{self._tokens}",
        )
        self._beat_at = now
        op = Write(doc, body, rev)
        self._inflight[doc] = op_key(op)
        return [op]

    def _acquire(self, unit: str, now: float) -> list[Op]:
        doc = lease_id(self.group, unit)
        seen = self._seen.get(doc)
        token = str(seen.body.get("token")) if seen is not None else ""
        if seen is not None and seen.body.get("holder") == self.me and token in self._sent:
            # Won by a write whose answer was lost: the lease runs from
            # when that write was sent.
            sent, _ = self._sent.pop(token)
            if self._inflight.get(doc) == token:
                del self._inflight[doc]
            return self._won(unit, seen.rev, seen.body.get("checkpoint"), sent, now)
        if doc in self._inflight:
            return []
        if seen is None:
            return [self._write(unit, None, None, "acquire", now)]
        holder = seen.body.get("holder")
        t = self.timing
        # Seen unchanged for ttl + margin by the last read: a later moment
        # proves nothing, as the lease may have been renewed since.
        if holder is None or self._read_at - seen.since >= t.ttl + t.margin:
            return [self._write(unit, seen.rev, seen.body.get("checkpoint"), "acquire", now)]
        return []

    def _won(self, unit: str, rev: str, checkpoint: Any, sent: float, now: float) -> list[Op]:
        until = sent + self.timing.ttl - self.timing.margin
        held = self._held[unit] = _Held(rev, until, checkpoint, renewed_at=sent)
        self.counts["acquired"] += 1
        if now < until and not self._leaving:
            return [Start(unit, checkpoint)]
        # Too late, or leaving meanwhile: give it back at once.
        return self._release(unit, held, now)

    def _lease_write(self, unit: str, held: _Held, purpose: str, now: float) -> list[Op]:
        if lease_id(self.group, unit) in self._inflight:
            return []
        held.renewed_at = now
        holder = None if purpose == "release" else self.me
        return [self._write(unit, held.rev, held.checkpoint, purpose, now, holder, held.wanted)]

    def _write(
        self, unit: str, rev: Optional[str], checkpoint: Any, purpose: str, now: float,
        holder: Optional[str] = "", generation: int = 0,
    ) -> Write:
        self._tokens += 1
        token = f"{self.me}:{self._tokens}"
        self._sent[token] = (now, generation)
        body = {
            "type": "lease", "unit": unit, "holder": self.me if holder == "" else holder,
            "checkpoint": checkpoint, "token": token,
        }
        doc = lease_id(self.group, unit)
        self._inflight[doc] = token
        return Write(doc, body, rev, unit, purpose, generation)

    def written(self, op: Union[Write, Delete], sent: float, result: str, now: float) -> list[Op]:
        """
        How a write or delete sent at *sent* ended: the new revision, or
        :data:`CONFLICT`, or :data:`FAILED`.
        """
        if self._inflight.get(op.doc) != op_key(op):
            return []  # an answer already learnt from a read
        del self._inflight[op.doc]
        if isinstance(op, Delete):
            if op.doc == member_id(self.group, self.me):
                self._beat_rev = None
            return []
        if op.unit is None:
            self._beat_rev = None if result in (CONFLICT, FAILED) else result
            if result in (CONFLICT, FAILED):
                self._beat_at = None
            return []
        token = op.body["token"]
        ops: list[Op] = []
        held = self._held.get(op.unit)
        ok = result not in (CONFLICT, FAILED)
        if ok:
            self._sent.pop(token, None)
        if op.purpose == "acquire":
            if ok:
                ops += self._won(op.unit, result, op.body["checkpoint"], sent, now)
        elif held is not None and op.purpose == "renew":
            if ok:
                held.rev = result
                held.valid_until = max(held.valid_until, sent + self.timing.ttl - self.timing.margin)
                held.written = max(held.written, op.generation)
                self.counts["renewals"] += 1
            else:
                self.counts["renewals_failed"] += 1
                if result == CONFLICT and self._taken(op.unit):
                    if held.state == "running":
                        ops.append(self._lose(op.unit))
                    else:
                        del self._held[op.unit]
                else:
                    # Sent again at the next poll, not a whole renewal later.
                    held.renewed_at = 0.0
        elif held is not None and op.purpose == "release" and result != FAILED:
            # Released, or refused: the document changed (a lost answer to
            # this very release, or a taker once the lease had ended).
            del self._held[op.unit]
        if not ok:
            self._drop_stale_tokens(now)
        held = self._held.get(op.unit)
        if held is not None and held.state == "releasing" and op.purpose != "release":
            ops += self._lease_write(op.unit, held, "release", now)
        elif ok and held is not None and held.wanted > held.written and held.state != "releasing":
            ops += self._lease_write(op.unit, held, "renew", now)
        return ops

    def _taken(self, unit: str) -> bool:
        # A conflict: the document changed. It is ours still only if the
        # last read shows our own write (the answer to which was lost).
        seen = self._seen.get(lease_id(self.group, unit))
        return seen is None or seen.body.get("holder") != self.me or str(seen.body.get("token")) not in self._sent

    def _drop_stale_tokens(self, now: float) -> None:
        # A write older than the ttl cannot give a lease that is still valid.
        horizon = now - 2 * self.timing.ttl
        for token in [t for t, sent in self._sent.items() if sent[0] < horizon]:
            del self._sent[token]

    def stopped(self, unit: str, now: float) -> list[Op]:
        """
        The follower of *unit*, given up, has stopped and asked for its last
        checkpoint: write it, then release the lease (one write does both).
        """
        held = self._held.get(unit)
        if held is None:
            return []
        return self._release(unit, held, now)

    def _release(self, unit: str, held: _Held, now: float) -> list[Op]:
        held.state = "releasing"
        doc = lease_id(self.group, unit)
        if doc in self._inflight:
            # Sent once the write in flight ends: see retry_release().
            return []
        return self._lease_write(unit, held, "release", now)
