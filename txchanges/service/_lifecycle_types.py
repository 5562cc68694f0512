"""
What a follower's lifecycle (:mod:`txchanges.service._lifecycle`) speaks of:
the states a follower shows, the inputs that can happen to it, what is in
flight in a state, and the :class:`Core` of hooks its owner gives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txchanges._reactor import Clock

__all__ = ["State", "Inputs", "Core", "Request", "Cancellable"]


class State(str, Enum):
    """
    What a follower is doing. Each value is a ``str`` (``State.STREAMING ==
    "streaming"``), the name logs and metrics show.
    """

    #: Not started yet, or stopped by ``stopService()``.
    STOPPED = "stopped"
    #: Loading the checkpoint (and resolving ``since="now"``).
    STARTING = "starting"
    #: A feed request is sent; its response has not arrived.
    CONNECTING = "connecting"
    #: Reading the feed.
    STREAMING = "streaming"
    #: Waiting to retry after a failure.
    WAITING = "waiting"
    #: Ending the request, waiting for running handler calls, saving the
    #: checkpoint.
    STOPPING = "stopping"
    #: Stopped by an error that retrying cannot fix.
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class Cancellable(Protocol):
    """The start-up in flight, or a retry waiting on the clock."""

    def cancel(self) -> None: ...


class Request(Protocol):
    """A feed request in flight."""

    #: Fires once the request is over, however it ended.
    done: "Deferred[Any]"

    def stop(self) -> None:
        """End it now; :attr:`done` fires once it is over."""


class Inputs(Protocol):
    """What can happen to a follower."""

    def start(self) -> None:
        """``startService()``."""

    def stop(self, done: "Deferred[None]") -> None:
        """``stopService()``: *done* fires once stopped."""

    def when_stopped(self, done: "Deferred[None]") -> None:
        """*done* fires once stopped, or fails with the error that stopped it."""

    def started(self) -> None:
        """The start-up steps are done."""

    def start_failed(self, startup: Cancellable, delay: float) -> None:
        """A start-up step failed; *startup* goes on after *delay* seconds."""

    def retry_start(self, startup: Cancellable) -> None:
        """The wait before going on with *startup* is over."""

    def opened(self, request: Request) -> None:
        """The response arrived; its body is being read."""

    def ended(self) -> None:
        """The feed ended cleanly (at ``last_seq``): ask again at once."""

    def lost(self, delay: float) -> None:
        """The request failed; ask again after *delay* seconds."""

    def reconnect(self) -> None:
        """The wait before asking again is over."""

    def crash(self, failure: Failure) -> None:
        """Stop with *failure*: what retrying cannot fix, a handler that
        failed, or failures for longer than ``give_up_after``."""

    def disconnected(self) -> None:
        """The request a stop ended is over."""

    def drained(self, failure: Optional[Failure]) -> None:
        """Running handler calls are done and the checkpoint saved."""

    def unsaved(self, failure: Failure) -> None:
        """Running handler calls are done, but the last checkpoint could
        not be saved: stop with *failure*."""


@dataclass(eq=False)
class Core:
    """
    What the machine works with: its owner's hooks, time, and who waits for
    the end.
    """

    #: Runs the start-up steps (new when given ``None``, else going on with
    #: the one given) and returns them.
    start_up: Callable[[Inputs, Optional[Cancellable]], Cancellable]
    #: Sends the next feed request and returns it.
    connect: Callable[[Inputs], Request]
    #: Starts no more handler calls.
    halt: Callable[[], None]
    #: Waits for running handler calls and saves the checkpoint; fails only
    #: when that last save could not be made.
    finish: Callable[[], "Deferred[None]"]
    #: Told how the run ended (``None``: by a stop), before anyone waiting is.
    ended: Callable[[Optional[Failure]], None]
    #: Told that a request is sent again after a failure.
    retrying: Callable[[], None]
    clock: Clock
    state: State = State.STOPPED
    stop_waiters: list["Deferred[None]"] = field(default_factory=list)
    end_waiters: list["Deferred[None]"] = field(default_factory=list)
