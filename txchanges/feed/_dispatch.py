"""
Handing each change to a consumer's callbacks: the registered ones, then the
feed's own, in order; the Deferreds they return are kept so that a late
failure still fails the feed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Callback", "Dispatcher"]

#: A callback receives one change row, as the server sent it.
Callback = Callable[[dict[str, Any]], Any]


class Dispatcher:
    """
    Hands rows to a consumer's callbacks and keeps track of the Deferreds
    they return, so that a late failure is not lost.

    :param registered: The consumer's registered callbacks, read again for
        every row: one registered or unregistered while a feed runs takes
        effect from the next row.
    :param cb: The feed's own callback, called after them.
    :param log: Where a failing callback is logged: the consumer's logger.
    """

    def __init__(self, registered: Sequence[Callback], cb: Optional[Callback], log: Logger) -> None:
        self._registered = registered
        self._cb = cb
        self._logger = log
        self._outstanding: list[Deferred[Any]] = []
        self._failure: Optional[Failure] = None
        #: Called when a callback's Deferred fails, to end the feed.
        self.on_failure: Callable[[], object] = lambda: None

    def row(self, row: dict[str, Any]) -> None:
        # A copy: a callback may unregister itself.
        callbacks = list(self._registered)
        if self._cb is not None:
            callbacks.append(self._cb)
        for callback in callbacks:
            try:
                result = callback(row)
            except Exception:
                self._log(Failure(), callback, row)
                raise
            # Most callbacks return None; isinstance on Deferred (an ABC) is
            # not free.
            if result is not None and isinstance(result, Deferred):
                self._watch(result, callback, row)

    def _watch(self, d: "Deferred[Any]", callback: Callback, row: dict[str, Any]) -> None:
        def failed(f: Failure) -> None:
            self._log(f, callback, row)
            if self._failure is None:
                self._failure = f
                self.on_failure()

        def done(_: object) -> None:
            self._outstanding.remove(d)

        d.addErrback(failed)
        if not d.called:
            self._outstanding.append(d)
            d.addBoth(done)

    def _log(self, f: Failure, callback: Callback, row: dict[str, Any]) -> None:
        self._logger.failure(
            "changes callback {callback!r} failed on change {id!r} at seq {seq!r}",
            f,
            callback=callback,
            id=row.get("id", row.get("db_name")),
            seq=row.get("seq"),
        )

    async def drain(self) -> None:
        """
        Wait for every callback's Deferred, then raise the first failure.
        """
        if self._outstanding:
            await DeferredList(list(self._outstanding))
        if self._failure is not None:
            self._failure.raiseException()
