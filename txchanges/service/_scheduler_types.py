"""
What a :class:`~txchanges.service._scheduler.Scheduler` speaks of: the
handler it calls, the listener it tells, and the record it keeps of a change
that is not done at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from twisted.python.failure import Failure

__all__ = ["Handler", "SchedulerListener", "Job", "key_of"]

#: Called with each change row; may return a Deferred or a coroutine.
Handler = Callable[[dict[str, Any]], Any]


class SchedulerListener(Protocol):
    """
    What a :class:`~txchanges.service._scheduler.Scheduler` tells its owner.
    """

    def pause(self) -> None:
        """The buffer is full: read no more changes for now."""

    def resume(self) -> None:
        """Half the buffer is free again: read on."""

    def failed(self, failure: Failure) -> None:
        """The handler failed with ``on_error="stop"``: nothing more starts."""

    def dropped(self, row: dict[str, Any]) -> None:
        """A change taken will never be done: dropped by
        :meth:`Scheduler.halt
        <txchanges.service._scheduler.Scheduler.halt>`, or its handler failed with
        ``on_error="stop"``."""

    def checkpoint(self) -> None:
        """The resume point moved and *checkpoint_every* changes are done
        (handled, skipped or discarded) since the last call."""


@dataclass(eq=False, slots=True)
class Job:
    """
    A change waiting for its turn, or whose handler call returned a
    Deferred or failed.

    :ivar ticket: Its place in the :class:`~txchanges.service._progress.Progress`.
    :ivar key: What serialises it with other changes (see :func:`key_of`).
    :ivar attempts: The handler calls made on it so far.
    :ivar retry: The delayed call of its next attempt, while one waits.
    """

    row: dict[str, Any]
    ticket: int
    key: Any
    attempts: int = 0
    retry: Any = field(default=None, repr=False)


def key_of(row: dict[str, Any]) -> Any:
    """
    What serialises changes: the document id (the database name for
    ``_db_updates`` rows).
    """
    key = row.get("id")
    if key is None:
        key = row.get("db_name")
    return key
