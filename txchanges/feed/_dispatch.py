"""
Handing changes to a consumer's callbacks: the registered ones, then the
feed's own, in order; the Deferreds they return are kept so that a late
failure still fails the feed, and a batch callback's Deferred holds the
next batch back.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.feed._delivery import RunReader

__all__ = ["Callback", "BatchCallback", "Callbacks", "Dispatcher"]

#: A callback receives one change row, as the server sent it.
Callback = Callable[[dict[str, Any]], Any]

#: A batch callback receives a list of change rows, in feed order.
BatchCallback = Callable[[list[dict[str, Any]]], Any]


class Callbacks:
    """
    A consumer's registered callbacks, in the order registered.

    The tuples are replaced, never changed in place, so that a feed reads
    them again for every change (or batch) without copying them, and a
    callback that registers or unregisters one does not disturb the loop
    that called it.

    :ivar entries: ``(callback, takes_batches)`` pairs.
    :ivar plain: The callbacks when none takes batches, else ``None``.
    """

    def __init__(self) -> None:
        self.entries: tuple[tuple[Callable[[Any], Any], bool], ...] = ()
        self.plain: Optional[tuple[Callback, ...]] = ()
        #: Called after each change of the callbacks.
        self.listeners: list[Callable[[], object]] = []

    @property
    def batched(self) -> bool:
        """
        Whether a batch callback is registered.
        """
        return self.plain is None

    def add(self, callback: Callable[[Any], Any], batch: bool) -> None:
        self._set(self.entries + ((callback, batch),))

    def remove(self, callback: Callable[[Any], Any]) -> None:
        """
        :raises ValueError: when *callback* is not registered.
        """
        for i, (registered, _) in enumerate(self.entries):
            if registered == callback:
                self._set(self.entries[:i] + self.entries[i + 1:])
                return
        raise ValueError(f"{callback!r} is not a registered callback")

    def _set(self, entries: tuple[tuple[Callable[[Any], Any], bool], ...]) -> None:
        self.entries = entries
        self.plain = None if any(batch for _, batch in entries) else tuple(c for c, _ in entries)
        for listener in list(self.listeners):
            listener()


class Dispatcher:
    """
    Hands changes to a consumer's callbacks, one by one (:meth:`row`) or a
    batch at a time (:meth:`batch`), and keeps track of the Deferreds they
    return, so that a late failure is not lost.

    :param registered: The consumer's callbacks, read again for every
        change or batch: one registered or unregistered while a feed runs
        takes effect from the next one.
    :param cb: The feed's own callback, called with each change after them.
    :param log: Where a failing callback is logged: the consumer's logger.
    """

    def __init__(self, registered: Callbacks, cb: Optional[Callback], log: Logger) -> None:
        self._registered = registered
        self._cb = cb
        self._logger = log
        self._outstanding: list[Deferred[Any]] = []
        self._failure: Optional[Failure] = None
        #: Called when a callback's Deferred fails, to end the feed.
        self.on_failure: Callable[[], object] = lambda: None
        #: Called when a batch callback returned a Deferred, and when every
        #: one returned for that batch has fired: the feed is paused
        #: meanwhile.
        self.hold: Callable[[], object] = lambda: None
        self.release: Callable[[], object] = lambda: None
        self._protocol: Optional[RunReader] = None

    def current(self) -> Callback:
        """
        What a feed that delivers changes one by one should call with each:
        the one callback itself when there is one (no call in between, the
        common case), else :meth:`row`.
        """
        plain = self._registered.plain
        if plain is not None:
            if len(plain) == 1 and self._cb is None:
                return plain[0]
            if not plain and self._cb is not None:
                return self._cb
        return self.row

    def attach(self, protocol: RunReader) -> None:
        """
        Be *protocol*'s :class:`~txchanges.feed._delivery.Watcher`: what it
        calls follows the consumer's registrations from the next change on
        (see :meth:`current`), and what a callback it calls itself returns or
        raises comes back here.
        """
        self._protocol = protocol
        protocol.watcher = self
        self._registered.listeners.append(self._changed)

    def detach(self) -> None:
        """
        The feed is over: stop following the registrations.
        """
        if self._protocol is not None:
            self._protocol = None
            self._registered.listeners.remove(self._changed)

    def _changed(self) -> None:
        if self._protocol is not None:
            self._protocol.repick()

    # -- what a Watcher is told ------------------------------------------------

    #: Passed changes are not counted here.
    counting = False

    def pick(self) -> Callback:
        return self.current()

    def passed(self, callback: Any, count: int, seq: Any) -> None:
        pass

    def returned(self, callback: Any, row: dict[str, Any], result: Any) -> bool:
        """
        A callback the feed called itself returned *result*.
        """
        if isinstance(result, Deferred):
            self._watch(result, callback, row)
        return False

    def raised(self, callback: Any, row: dict[str, Any], failure: Failure) -> bool:
        """
        A callback the feed called itself raised (:meth:`row` and
        :meth:`batch` say so themselves): the feed fails with it.
        """
        if callback != self.row and callback != self.batch:
            self._log(failure, callback, row)
        return False

    @property
    def batched(self) -> bool:
        """
        Whether a batch callback is registered: the feed is then best read
        a batch at a time.
        """
        return self._registered.batched

    def row(self, row: dict[str, Any]) -> None:
        """
        Hand one change to every callback, in order; a batch callback gets
        it as a batch of one.
        """
        plain = self._registered.plain
        if plain is None:
            self.batch([row])
            return
        callback: Any = None
        try:
            for callback in plain:
                result = callback(row)
                # Most callbacks return None; isinstance on Deferred (an
                # ABC) is not free.
                if result is not None and isinstance(result, Deferred):
                    self._watch(result, callback, row)
            callback = self._cb
            if callback is not None:
                result = callback(row)
                if result is not None and isinstance(result, Deferred):
                    self._watch(result, callback, row)
        except Exception:
            self._log(Failure(), callback, row)
            raise

    def batch(self, rows: list[dict[str, Any]]) -> Optional["Deferred[Any]"]:
        """
        Hand a batch of changes to every callback, in order: a batch
        callback gets the list, any other each change of it in turn.

        :return: ``None``, or when batch callbacks returned Deferreds, one
            that fires once they all have (the feed is held meanwhile).
        """
        held: list[Deferred[Any]] = []
        callback: Any = None
        row: Any = None
        batched = False
        try:
            for callback, batched in self._registered.entries:
                if batched:
                    result = callback(rows)
                    if result is not None and isinstance(result, Deferred):
                        self._watch(result, callback, None, rows)
                        held.append(result)
                    continue
                for row in rows:
                    result = callback(row)
                    if result is not None and isinstance(result, Deferred):
                        self._watch(result, callback, row)
            batched = False
            callback = self._cb
            if callback is not None:
                for row in rows:
                    result = callback(row)
                    if result is not None and isinstance(result, Deferred):
                        self._watch(result, callback, row)
        except Exception:
            self._log(Failure(), callback, row, rows if batched else None)
            raise
        held = [d for d in held if not d.called]
        if not held:
            return None
        self.hold()
        waiting: Deferred[Any] = gatherResults(held, consumeErrors=True)
        waiting.addBoth(lambda _: self.release())
        return waiting

    def _watch(
        self, d: "Deferred[Any]", callback: Any, row: Any, batch: Optional[list[dict[str, Any]]] = None
    ) -> None:
        def failed(f: Failure) -> None:
            self._log(f, callback, row, batch)
            if self._failure is None:
                self._failure = f
                self.on_failure()

        def done(_: object) -> None:
            self._outstanding.remove(d)

        d.addErrback(failed)
        if not d.called:
            self._outstanding.append(d)
            d.addBoth(done)

    def _log(self, f: Failure, callback: Any, row: Any, batch: Optional[list[dict[str, Any]]] = None) -> None:
        if batch is not None:
            self._logger.failure(
                "changes batch callback {callback!r} failed on a batch of {count} changes from seq {first!r} to {last!r}",
                f,
                callback=callback,
                count=len(batch),
                first=batch[0].get("seq") if batch else None,
                last=batch[-1].get("seq") if batch else None,
            )
            return
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
