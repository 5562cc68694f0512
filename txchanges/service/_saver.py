"""
The checkpoint store seen from a running follower: made ready at start-up,
then saved to when asked (every N changes done, counted by the scheduler) or
every T seconds, one save at a time, and a last time on stop; a store that
keeps failing stops the follower.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, cast

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.service._retry import is_terminal
from txchanges._reactor import Clock
from txchanges.service.checkpoint import CheckpointError, CheckpointStore, FileCheckpoint, LocalDocCheckpoint
from txchanges.errors import TxChangesError

__all__ = ["CheckpointSaver", "SavesTo", "prepare_store", "GIVE_UP_FAILURES", "GIVE_UP_SECONDS"]

#: A save that fails for a reason waiting does not fix by itself (a file
#: that cannot be written, a refused document) is tried again at the next
#: occasion, and the follower is stopped once this many saves have failed
#: in a row over at least :data:`GIVE_UP_SECONDS`: time enough to free a
#: full disk, too little to run for hours with a resume point that no
#: longer moves.
GIVE_UP_FAILURES = 3
GIVE_UP_SECONDS = 30.0


class SavesTo(Protocol):
    """
    What a :class:`CheckpointSaver` needs of a store: a
    :class:`~txchanges.CheckpointStore`, or anything else that saves a value
    that moves.
    """

    def save(self, seq: Any) -> "Deferred[None]": ...

    def describe(self) -> str: ...


def prepare_store(store: CheckpointStore, identity: Optional[str]) -> "Deferred[None]":
    """
    Make *store* ready for the follower of a feed, before it is loaded: a
    :class:`~txchanges.FileCheckpoint` or
    :class:`~txchanges.LocalDocCheckpoint` made without an identity takes
    *identity*, and the store's ``check()``, when it has one, runs.

    :param identity: The feed's :func:`~txchanges.checkpoint_identity`, or
        ``None`` when the store was given its own.
    :return: A Deferred firing with ``None``, or failing with
        :class:`~txchanges.CheckpointError` when the store cannot be written.
    """
    if identity is not None and isinstance(store, (FileCheckpoint, LocalDocCheckpoint)) and store.identity is None:
        store.identity = identity
    check = getattr(store, "check", None)
    if check is None:
        return succeed(None)
    return maybeDeferred(check)


def _passing(error: BaseException) -> bool:
    # A server that is down or busy (5xx, 408, 429, a refused connection):
    # the feed retries through it, and so do saves, for as long as it lasts.
    return isinstance(error, TxChangesError) and not is_terminal(error)


class CheckpointSaver:
    """
    Saves a moving resume point to a store.

    :param store: Where to save it.
    :param resume: Returns the current resume point (``None``: nothing to
        save yet).
    :param interval: Seconds between saves made by the clock, besides those
        asked for with :meth:`save_if_moved`.
    :param clock: Time.
    :param saved: What the store holds already.
    :param failed: Called with a :class:`~txchanges.CheckpointError` once,
        when the saver gives up while running: from the clock, never from
        inside :meth:`save_if_moved` (:meth:`flush` raises it instead).
    """

    log = Logger()

    def __init__(
        self,
        store: SavesTo,
        resume: Callable[[], Any],
        interval: float,
        clock: Clock,
        saved: Any,
        failed: Callable[[Failure], object],
    ) -> None:
        self._store = store
        self._resume = resume
        self._clock = clock
        self._failed = failed
        self.saved = saved
        self.count = 0
        self._saving: Optional[Deferred[None]] = None
        # Saves failed in a row for a lasting reason, since when, and the last.
        self._failures = 0
        self._failing_since = 0.0
        self._last_error: Optional[BaseException] = None
        self._gave_up = False
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock  # type: ignore[assignment]
        self._ticker.start(interval, now=False)

    def save_if_moved(self) -> None:
        """
        Save the resume point if it differs from the saved one; a save
        already in flight saves again when it finishes.
        """
        seq = self._resume()
        if self._gave_up or seq is None or seq == self.saved or self._saving is not None:
            return
        self._saving = self._store.save(seq)
        self._saving.addCallbacks(self._saved, self._not_saved, callbackArgs=(seq,), errbackArgs=(seq,))

    def _saved(self, _: object, seq: Any) -> None:
        self._saving = None
        self.saved = seq
        self.count += 1
        self._failures = 0
        self.save_if_moved()

    def _not_saved(self, failure: Failure, seq: Any) -> None:
        self._saving = None
        error = cast(BaseException, failure.value)
        where = self._store.describe()
        if _passing(error):
            self.log.warn("cannot save checkpoint {seq} to {where} ({error}); will retry", seq=seq, where=where, error=error)
            return
        if self._failures == 0:
            self._failing_since = self._clock.seconds()
        self._failures += 1
        self._last_error = error
        self.log.error(
            "cannot save checkpoint {seq} to {where} ({error}); failed {failures} time(s) in a row, will retry",
            seq=seq, where=where, error=error, failures=self._failures,
        )

    def _tick(self) -> None:
        # The service notices a terminal error while it waits on the reactor,
        # so giving up is decided here, on the clock, not in a save's callback
        # (which may run inside the service's own loop).
        self.save_if_moved()
        failing_for = self._clock.seconds() - self._failing_since
        if self._failures >= GIVE_UP_FAILURES and failing_for >= GIVE_UP_SECONDS:
            self._failed(Failure(self._give_up(f"{self._failures} saves failed in a row over {failing_for:.0f}s")))

    def _give_up(self, what: str) -> CheckpointError:
        self._gave_up = True
        if self._ticker.running:
            self._ticker.stop()
        error = self._last_error
        reason = error.reason if isinstance(error, CheckpointError) else str(error)
        return CheckpointError(self._store.describe(), f"{what}, the last with: {reason}")

    async def flush(self) -> None:
        """
        Stop the timer, then save what is not saved yet.

        :raises CheckpointError: when that save failed for a lasting reason:
            there is no later to retry it.
        """
        if self._ticker.running:
            self._ticker.stop()
        while self._saving is not None:
            await self._saving
        self.save_if_moved()
        while self._saving is not None:
            await self._saving
        if self._failures and not self._gave_up:
            raise self._give_up("the last save, on stop, failed")
