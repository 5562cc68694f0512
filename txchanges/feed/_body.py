"""
The one base of every protocol that reads a response body: pausing, holding
back what arrives while paused, and how the body ends.

:class:`BodyReader` is handed to ``IResponse.deliverBody``. A subclass says
only how one read becomes rows (:meth:`BodyReader._read`) and what the end
of the body means (:meth:`BodyReader._body_ended`); the base hands the rows
to a callable in order and owns the rest:

- **pausing**: :meth:`~BodyReader.pauseProducing`, also from inside the
  callable, holds back the rest of the read being delivered (parsed lazily,
  so nothing more is parsed) and every read that arrives after it, until
  :meth:`~BodyReader.resumeProducing` delivers them, in order;
- **re-entrance**: a read, a resume or the end of the body that happens
  while the callable runs waits until it returns, so that rows are never
  delivered out of order;
- **the end**: :attr:`~BodyReader.finished` fires once, with the end row,
  with :class:`~txchanges.feed._ends.Stopped` after
  :meth:`~BodyReader.stop`, or fails; an end of the body while rows are held
  back is reported after them.

The HTTP layer hands over bytes with ``dataReceived``; a subclass that takes
lines already split provides
:class:`~txchanges.http._linereceiver.ILineReceiver`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from txchanges.feed._ends import Stopped
from txchanges.feed._rows import LastSeq
from txchanges.errors import FeedError, TxChangesError

__all__ = ["BodyReader"]


class BodyReader(Protocol):
    """
    Deliver a body's rows, in order, to a callable; see the module
    docstring.

    :ivar finished: A Deferred that fires once: with what ended the body (an
        end row, or what the subclass makes of a clean end), with
        :class:`Stopped` after :meth:`stop`; it fails with a
        :class:`~txchanges.errors.FeedError` (carrying :attr:`last_seq`), or
        with the very exception the callable or *on_activity* raised. Once
        it has fired nothing more is delivered, and on a failure before the
        body ended the transport is told to stop producing.
    :ivar last_seq: The seq of the newest row whose callable returned (rows
        with ``"seq": null`` leave it), then the end row's ``last_seq``;
        ``None`` until then.
    :ivar heartbeats: How many heartbeats (empty lines) arrived.
    """

    finished: Deferred[Any]
    last_seq: Any
    heartbeats: int

    def __init__(
        self,
        on_row: Callable[[dict[str, Any]], object],
        on_activity: Optional[Callable[[], object]] = None,
    ) -> None:
        """
        :param on_row: Called with each row (a dict, exactly as parsed), in
            order. If it raises, the body fails with that exception.
        :param on_activity: Called with no arguments for every piece of body
            data received, so that a stall watchdog can be reset.
        """
        self._on_row = on_row
        self._on_activity = on_activity
        self.finished = Deferred()
        self.last_seq = None
        self.heartbeats = 0
        self._done = False
        self._stopped = False
        self._paused = False
        # Set while rows are being delivered: what the callable causes then
        # (a read, a resume, the end) waits until it returns.
        self._busy = False
        self._body_over = False
        # Held back: the rest of a read's rows, the reads that arrived after
        # it, and how the body ended if it did meanwhile.
        self._backlog: Optional[Iterator[Any]] = None
        self._held: list[bytes] = []
        self._lost: Optional[Failure] = None

    # -- what a subclass provides --------------------------------------------

    def _read(self, data: bytes) -> Optional[Iterator[Any]]:
        """
        Take one read of the body.

        :return: The rows it completes, parsed lazily: dicts, ``None`` for a
            heartbeat, a :class:`~txchanges.feed._rows.LastSeq` for the end row;
            the iterator may raise a :class:`~txchanges.errors.FeedError`.
            ``None`` when there are none.
        """
        raise NotImplementedError

    def _body_ended(self, reason: Failure) -> None:
        """
        The body ended, with nothing held back: finish, fail, or deliver what
        the end completes with :meth:`_deliver_now`.
        """
        raise NotImplementedError

    def _discard(self) -> None:
        """
        Forget what is buffered: nothing more will be delivered.
        """

    def _returned(self, result: object) -> None:
        """
        The callable returned *result*, not ``None``: ignored here; a
        subclass may pause until it fires, or raise to fail the body.
        """

    # -- the transport's side ------------------------------------------------

    @property
    def done(self) -> bool:
        """
        Whether :attr:`finished` has fired, or is about to once the callable
        that called :meth:`stop` returns: no more rows will be delivered.
        """
        return self._done

    @property
    def paused(self) -> bool:
        """
        Whether :meth:`pauseProducing` holds the body back.
        """
        return self._paused

    def connectionMade(self) -> None:
        if self._stopped:
            self._stop_transport()
        elif self._paused and self.transport is not None:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._arrived(data):
            self._deliver_now(self._read(data))

    def _arrived(self, data: bytes | list[bytes]) -> bool:
        """
        Note that body data arrived, and hold it back while paused, while
        rows are held, or while the callable runs.

        :param data: Bytes, or complete lines without their ``\\n``.
        :return: Whether to read it now.
        """
        if self._done:
            # Nothing after the end is delivered: after an end row, at most
            # CouchDB's closing newline; anything else lies past last_seq,
            # where the next request resumes.
            return False
        if self._on_activity is not None:
            try:
                self._on_activity()
            except Exception as e:
                self._fail(e)
                return False
        if self._paused or self._busy or self._backlog is not None or self._held:
            self._held.append(data if isinstance(data, bytes) else b"\n".join(data) + b"\n")
            return False
        return True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._done:
            return
        self._body_over = True
        if self._busy or self._backlog is not None or self._held:
            # Reported once the rows held back are delivered: it may well be
            # a clean end.
            self._lost = reason
            return
        self._ended(reason)

    def _ended(self, reason: Failure) -> None:
        if isinstance(reason.value, TxChangesError):
            # The HTTP layer ended the body with an error of its own (a time
            # limit ran out): that is why the body failed.
            self._fail(reason)
        else:
            self._body_ended(reason)

    # -- flow control --------------------------------------------------------

    def pauseProducing(self) -> None:
        """
        Deliver no further row, even one already received, and ask the
        transport to stop reading, until :meth:`resumeProducing`. Called
        from the callable, it takes effect after that row.
        """
        self._paused = True
        if self.transport is not None and not self._done:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Deliver what :meth:`pauseProducing` held back, in order, then let the
        transport read again (unless the callable paused once more). Called
        from the callable, delivery goes on once it returns.
        """
        self._paused = False
        if self._done:
            return
        if not self._busy:
            self._drain()
            if self._done or self._paused:
                return
        if self.transport is not None:
            self.transport.resumeProducing()

    def stop(self) -> None:
        """
        Stop reading: deliver no further row, even one already received,
        stop the transport, and fire :attr:`finished` with :class:`Stopped`
        at once, or, called from the callable, once it returns (so that the
        row it handled counts, or fails if it raises). Does nothing once
        :attr:`finished` has fired.
        """
        if self._done:
            return
        self._stopped = True
        self._done = True
        self._drop()
        self._stop_transport()
        if not self._busy:
            self._fire_stopped()

    # -- delivery ------------------------------------------------------------

    def _deliver_now(self, rows: Optional[Iterator[Any]]) -> None:
        """
        Deliver *rows* from a read that nothing held back, then whatever
        arrived while the callable ran.
        """
        if rows is None:
            return
        self._busy = True
        try:
            going = self._deliver(rows)
        finally:
            self._busy = False
        if going and (self._held or self._lost is not None):
            self._drain()

    def _drain(self) -> None:
        """
        Deliver what was held back, in order, until paused or done; then
        report an end of the body that came meanwhile.
        """
        self._busy = True
        try:
            while not self._paused:
                rows = self._backlog
                if rows is not None:
                    self._backlog = None
                elif self._held:
                    rows = self._read(self._held.pop(0))
                    if rows is None:
                        if self._done:
                            return
                        continue
                else:
                    break
                if not self._deliver(rows):
                    return
        finally:
            self._busy = False
        if self._lost is not None and not self._paused:
            lost, self._lost = self._lost, None
            self._ended(lost)

    def _deliver(self, rows: Iterator[Any]) -> bool:
        """
        Hand rows to the callable, in order, until one ends the body or the
        callable pauses or stops it.

        :return: Whether the body is still going and *rows* ran out; when
            paused, the rest of *rows* is the backlog.
        """
        on_row = self._on_row
        try:
            for row in rows:
                if type(row) is dict:
                    try:
                        result = on_row(row)
                        # Most callables return nothing: one comparison,
                        # no call, for them.
                        if result is not None:
                            self._returned(result)
                    except Exception as e:
                        self._fail(e)
                        return False
                    seq = row.get("seq")
                    if seq is not None:
                        self.last_seq = seq
                    # The callable may have called stop(): the row it
                    # returned from is done, and nothing after it is.
                    if self._done:
                        self._fire_stopped()
                        return False
                    if self._paused:
                        self._backlog = rows
                        return False
                elif not self._not_a_change(row):
                    return False
        except FeedError as e:
            self._fail(e)
            return False
        return True

    # -- the end -------------------------------------------------------------

    def _not_a_change(self, row: Any) -> bool:
        """
        Take what the rows hold besides changes: ``None``, a heartbeat, or
        the :class:`~txchanges.feed._rows.LastSeq` that ends the body.

        :return: Whether delivery goes on.
        """
        if row is None:
            self.heartbeats += 1
            return True
        self._end_row(row)
        return False

    def _end_row(self, end: LastSeq) -> None:
        """
        The row that ends the body cleanly: fire :attr:`finished` with it.
        """
        self.last_seq = end.last_seq
        self._finish(end)

    def _finish(self, result: Any) -> None:
        # The server ends the response itself after a clean end; leaving the
        # transport alone lets the connection be reused.
        self._done = True
        self._drop()
        self.finished.callback(result)

    def _fire_stopped(self) -> None:
        if not self.finished.called:
            self.finished.callback(Stopped(self.last_seq))

    def _fail(self, error: BaseException | Failure) -> None:
        # A callable that called stop() and then raised still fails the
        # body: its exception is not swallowed.
        if self.finished.called:
            return
        self._done = True
        self._drop()
        failure = error if isinstance(error, Failure) else None
        value = error if failure is None else failure.value
        if isinstance(value, FeedError):
            value.last_seq = self.last_seq
        if not self._body_over:
            self._stop_transport()
        if failure is not None:
            self.finished.errback(failure)
        elif sys.exc_info()[1] is error:
            # Keep the traceback of a raising callable for whoever logs it.
            self.finished.errback()
        else:
            self.finished.errback(error)

    def _drop(self) -> None:
        self._backlog = None
        self._held = []
        self._lost = None
        self._discard()

    def _stop_transport(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()
