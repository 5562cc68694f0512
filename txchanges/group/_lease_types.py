"""
What the lease protocol (:mod:`txchanges.group._lease`) speaks of: the
documents of a group and their ids, its durations, and the operations it
asks its driver to carry out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

__all__ = [
    "Doc", "Write", "Delete", "Start", "Stop", "Op", "Timing", "CONFLICT", "FAILED",
    "member_id", "lease_id", "config_id", "op_key",
]

#: A write refused because the document changed (HTTP 409).
CONFLICT = "conflict"
#: A write whose outcome is unknown (no answer, a 5xx, a timeout).
FAILED = "failed"


def member_id(group: str, worker: str) -> str:
    """The id of *worker*'s heartbeat document."""
    return f"{group}:member:{worker}"


def lease_id(group: str, unit: str) -> str:
    """The id of *unit*'s lease document, which holds its checkpoint too."""
    return f"{group}:lease:{unit}"


def config_id(group: str) -> str:
    """The id of the group's settings document."""
    return f"{group}:config"


@dataclass(frozen=True)
class Doc:
    """A document of the group as read: its revision and body (no ``_id``/``_rev``)."""

    rev: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Timing:
    """
    The protocol's durations, in seconds.

    :ivar ttl: How long a lease or a heartbeat lasts without renewal.
    :ivar margin: Taken off a holder's lease and added to an observer's
        wait: it covers the drift between two clocks over *ttl*.
    :ivar renew: Seconds between renewals (and heartbeats).
    :ivar poll: Seconds between reads of the group's documents.
    """

    ttl: float
    margin: float
    renew: float
    poll: float

    @classmethod
    def for_ttl(cls, ttl: float) -> "Timing":
        """The defaults for *ttl*: margin ttl/10, renewal every ttl/3, a read every ttl/6."""
        if not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        return cls(ttl=ttl, margin=ttl / 10, renew=ttl / 3, poll=ttl / 6)


@dataclass(frozen=True)
class Write:
    """Write *body* to document *doc* over revision *rev* (``None``: create it)."""

    doc: str
    body: dict[str, Any]
    rev: Optional[str]
    #: The unit a lease write is for (``None`` for a heartbeat).
    unit: Optional[str] = None
    #: What it is: ``"heartbeat"``, ``"acquire"``, ``"renew"``, ``"release"``.
    purpose: str = "heartbeat"
    #: The checkpoint generation the body carries (see :meth:`Member.save`).
    generation: int = 0


@dataclass(frozen=True)
class Delete:
    """Delete document *doc* at revision *rev*."""

    doc: str
    rev: str


@dataclass(frozen=True)
class Start:
    """Start following *unit* from *checkpoint* (``None``: from the start); its lease is held."""

    unit: str
    checkpoint: Any


@dataclass(frozen=True)
class Stop:
    """
    Stop following *unit*: at once, no change handed over from now on.
    *lost* says the lease is gone (it expired or was taken); otherwise the
    unit is given up and :meth:`Member.stopped` must be told when its
    checkpoint is saved, to release the lease.
    """

    unit: str
    lost: bool
    #: When the lease ends (or ended), on this worker's clock.
    until: Optional[float] = None


Op = Union[Write, Delete, Start, Stop]


def op_key(op: Union[Write, Delete]) -> str:
    """What tells one write or delete from the next on the same document."""
    if isinstance(op, Delete):
        return f"delete {op.rev}"
    return str(op.body["token"])
