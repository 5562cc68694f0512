"""
The protocol that reads a continuous feed's response body.

:class:`ChangesProtocol` is handed to ``IResponse.deliverBody``. It splits the
body into lines, parses them with :mod:`txchanges.feed._rows`, hands each change to
a callable, and fires :attr:`ChangesProtocol.finished` once when the feed ends
however it ends.

It is a :class:`~twisted.internet.protocol.Protocol` rather than a
``LineOnlyReceiver`` because the body transport never reports
``disconnecting`` (so a stop needs a flag of its own), because
``LineOnlyReceiver`` copies its whole buffer on every read (quadratic for a
long ``include_docs`` line arriving in many pieces), and because decoding and
parsing a whole read at once is cheaper than one line at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from txchanges.feed._rows import LastSeq, iter_lines
from txchanges.errors import FeedError, LineTooLong, UncleanEnd

__all__ = ["ChangesProtocol", "Stopped", "DEFAULT_MAX_LINE_LENGTH"]

#: The default bound on one line, in bytes. CouchDB refuses documents over
#: 8 MB by default (``max_document_size``), but ``include_docs`` rows can also
#: carry ``_conflicts`` and base64 inline attachments and servers can raise
#: the limit; 64 MiB leaves room for all of that while still stopping a
#: runaway line long before it exhausts memory.
DEFAULT_MAX_LINE_LENGTH = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Stopped:
    """
    What :attr:`ChangesProtocol.finished` fires with after
    :meth:`ChangesProtocol.stop`: the feed did not end, we left it.

    :ivar last_seq: :attr:`ChangesProtocol.last_seq` when it stopped: the
        seq of the newest row whose callback had returned (the place to resume
        from), or ``None`` if there was none.
    """

    last_seq: Any


class ChangesProtocol(Protocol):
    """
    Read a continuous feed's body and deliver its rows.

    :ivar finished: A :class:`Deferred` that fires once, with:

        - the :class:`~txchanges.feed._rows.LastSeq` row when the server ended the
          feed with one (whatever follows it is ignored: it lies past
          ``last_seq``, where the next request resumes);
        - :class:`Stopped` at once when :meth:`stop` is called;

        and fails with:

        - :class:`~txchanges.errors.ErrorRow` for an ``{"error": ...}`` row;
        - :class:`~txchanges.errors.MalformedRow` for a line that is not a
          row;
        - :class:`~txchanges.errors.LineTooLong` for a line longer than
          ``max_line_length``;
        - :class:`~txchanges.errors.UncleanEnd` when the body ends, for
          whatever reason, without a ``last_seq`` row;
        - the very exception ``on_change`` or ``on_activity`` raised.

        Every :class:`~txchanges.errors.FeedError` carries :attr:`last_seq`.
        Once it has fired nothing more is delivered, and on a failure the
        transport is told to stop producing.
    :ivar last_seq: The newest known position in the feed: the seq of the
        newest row that ``on_change`` accepted (rows with ``"seq": null``
        leave it as it was), then the ``last_seq`` of the end row; ``None``
        until then. A row whose callback raised does not count.
    :ivar heartbeats: How many heartbeats (empty lines) arrived.
    """

    finished: Deferred[LastSeq | Stopped]
    last_seq: Any
    heartbeats: int

    def __init__(
        self,
        on_change: Callable[[Any], object],
        on_activity: Callable[[], object] | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        *,
        raw_rows: bool = False,
    ) -> None:
        """
        :param on_change: Called with each :class:`~txchanges.feed._rows.Change`
            (or :class:`~txchanges.feed._rows.DbUpdate` on ``_db_updates``), in
            order; its return value is ignored. If it raises, the feed fails
            with that exception.
        :param on_activity: Called with no arguments for every piece of body
            data received, heartbeats included, so that a stall watchdog can
            be reset.
        :param max_line_length: The longest line accepted, in bytes. Memory
            held for an unfinished line stays below this plus one read.
        :param raw_rows: Hand *on_change* each row's dict, exactly as parsed,
            instead of a view over it: cheaper, for callers that want the
            dict anyway.
        """
        if max_line_length < 1:
            raise ValueError(f"max_line_length must be positive, not {max_line_length!r}")
        self._on_change = on_change
        self._on_activity = on_activity
        self._max = max_line_length
        self._raw = raw_rows
        self.finished = Deferred()
        self.last_seq = None
        self.heartbeats = 0
        self._done = False
        self._stopped = False
        self._paused = False
        self._in_callback = False
        # The start of an unfinished line, in pieces, so that a long line
        # arriving in many reads is joined once rather than once per read.
        self._pending: list[bytes] = []
        self._pending_length = 0
        # While paused: the rest of a read's parsed rows, the reads that
        # arrived after it, and how the body ended if it did meanwhile.
        self._backlog: Iterator[Any] | None = None
        self._held: list[bytes] = []
        self._lost: Failure | None = None

    @property
    def done(self) -> bool:
        """
        Whether :attr:`finished` has fired: the feed ended, failed or was
        stopped, and no more rows will be delivered.
        """
        return self._done

    def connectionMade(self) -> None:
        if self._stopped:
            self._stop_transport()
        elif self._paused:
            self.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._arrived(data):
            self._process(data)

    def lines_received(self, lines: list[bytes]) -> None:
        """
        Like :meth:`dataReceived`, for a transport that has split the body
        into lines already: *lines* are complete lines without their
        ``\\n`` (the first one continues an unfinished line, if any).
        """
        if not self._arrived(lines):
            return
        if self._pending:
            lines[0] = b"".join(self._pending) + lines[0]
            self._pending = []
            self._pending_length = 0
        self._deliver_lines(lines)

    def _arrived(self, data: bytes | list[bytes]) -> bool:
        """
        Note that body data arrived, and hold it back while paused.

        :return: Whether to process it now.
        """
        if self._done:
            # Nothing after the end is delivered. After a clean end that is
            # at most CouchDB's closing newline; anything else a server sent
            # there lies past last_seq, so resuming from it fetches it again.
            return False
        if self._on_activity is not None:
            try:
                self._on_activity()
            except Exception as e:
                self._fail(e)
                return False
        if self._paused or self._backlog is not None or self._held:
            # Paused: rows already parsed wait in the backlog, and what the
            # transport still hands over waits behind them, unparsed.
            self._held.append(data if isinstance(data, bytes) else b"\n".join(data) + b"\n")
            return False
        return True

    def _process(self, data: bytes) -> None:
        if self._pending:
            if b"\n" not in data:
                self._add_pending(data)
                return
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending = []
            self._pending_length = 0
        lines = data.split(b"\n")
        # The last piece is the start of an unfinished line, or b"".
        rest = lines.pop()
        if lines and not self._deliver_lines(lines):
            return
        if rest:
            self._add_pending(rest)

    def _add_pending(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_length += len(data)
        if self._pending_length > self._max:
            self._fail_too_long(b"".join(self._pending))

    def _deliver_lines(self, lines: list[bytes]) -> bool:
        """
        Deliver complete lines, up to the first one that is too long, and
        fail there if there is one.

        :return: Whether the feed is still going.
        """
        if max(map(len, lines)) <= self._max:
            return self._deliver(iter_lines(lines, self._raw))
        first = next(i for i, line in enumerate(lines) if len(line) > self._max)
        if not first or self._deliver(iter_lines(lines[:first], self._raw)):
            self._fail_too_long(lines[first])
        return False

    def _deliver(self, rows: Iterator[Any]) -> bool:
        """
        Hand parsed rows to the callback, in order, until one ends the feed.

        :param rows: An iterator of rows from
            :func:`~txchanges.feed._rows.iter_lines`, which may raise a
            :class:`~txchanges.errors.FeedError` when it reaches a bad line.
        :return: Whether the feed is still going.
        """
        on_change = self._on_change
        raw = self._raw
        # Nothing but on_change can call stop() while this loop runs (the
        # parser cannot), so the flag is set around the loop, not per row;
        # restored, not cleared, for a resumeProducing() from a callback.
        outer = self._in_callback
        self._in_callback = True
        try:
            for row in rows:
                if row is None:
                    self.heartbeats += 1
                elif type(row) is LastSeq:
                    self.last_seq = row.last_seq
                    self._finish(row)
                    return False
                else:
                    try:
                        on_change(row)
                    except Exception as e:
                        self._fail(e)
                        return False
                    seq = (row if raw else row.row)["seq"]
                    if seq is not None:
                        self.last_seq = seq
                    # The callback may have called stop(): the row it
                    # returned from is done, and nothing after it is.
                    if self._done:
                        self._fire_stopped()
                        return False
                    if self._paused:
                        # Backpressure: the rest of this read waits, parsed
                        # lazily, until resumeProducing().
                        self._backlog = rows
                        return True
        except FeedError as e:
            self._fail(e)
            return False
        finally:
            self._in_callback = outer
        return True

    def stop(self) -> None:
        """
        Stop reading the feed: deliver no further row, even one already
        received, stop the transport, and fire :attr:`finished` with
        :class:`Stopped` at once. Does nothing once :attr:`finished` has fired.
        """
        if self._done:
            return
        self._stopped = True
        self._done = True
        self._drop_pending()
        self._stop_transport()
        # Called from on_change: finished fires once the callback returns,
        # so that the row it handled counts, or fails if it raises.
        if not self._in_callback:
            self._fire_stopped()

    def _fire_stopped(self) -> None:
        if not self.finished.called:
            self.finished.callback(Stopped(self.last_seq))

    def pauseProducing(self) -> None:
        """
        Backpressure: deliver no further row, even one already received,
        and ask the transport to stop reading, until :meth:`resumeProducing`.
        Called from ``on_change``, it takes effect after that row.
        """
        self._paused = True
        if self.transport is not None and not self._done:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Deliver the rows held back by :meth:`pauseProducing`, in order, then
        let the transport read again (unless a callback paused once more).
        """
        self._paused = False
        if self._done:
            return
        if self._backlog is not None:
            rows, self._backlog = self._backlog, None
            if not self._deliver(rows) or self._paused:
                return
        while self._held:
            self._process(self._held.pop(0))
            if self._done or self._paused:
                return
        if self._lost is not None:
            self.connectionLost(self._lost)
            return
        if self.transport is not None:
            self.transport.resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._done:
            return
        if self._backlog is not None or self._held:
            # The body ended while rows still wait for resumeProducing(); its
            # end is reported after them (it may well be a clean one).
            self._lost = reason
            return
        self._done = True
        pending = self._pending_length
        self._drop_pending()
        why = _describe_end(reason)
        if pending:
            why += f"; {pending} bytes of an unfinished line dropped"
        error = UncleanEnd(why)
        error.last_seq = self.last_seq
        self.finished.errback(error)

    def _finish(self, row: LastSeq) -> None:
        # The server ends the response itself right after this row; leaving
        # the transport alone lets the connection be reused.
        self._done = True
        self._drop_pending()
        self.finished.callback(row)

    def _fail(self, error: BaseException) -> None:
        # A callback that called stop() and then raised still fails the
        # feed: its exception is not swallowed.
        if self.finished.called:
            return
        self._done = True
        self._drop_pending()
        if isinstance(error, FeedError):
            error.last_seq = self.last_seq
        self._stop_transport()
        if sys.exc_info()[1] is error:
            # Keep the traceback of a raising callback for whoever logs it.
            self.finished.errback()
        else:
            self.finished.errback(error)

    def _fail_too_long(self, line: bytes) -> None:
        self._fail(LineTooLong(self._max, line[:1024]))

    def _drop_pending(self) -> None:
        self._pending = []
        self._pending_length = 0
        self._backlog = None
        self._held = []
        self._lost = None

    def _stop_transport(self) -> None:
        stop_producing = getattr(self.transport, "stopProducing", None)
        if stop_producing is not None:
            stop_producing()


def _describe_end(reason: Failure) -> str:
    """
    Say in words why a feed's body ended without a ``last_seq`` row.
    """
    value = reason.value
    if isinstance(value, ResponseDone):
        return "the response ended without a last_seq row"
    if isinstance(value, PotentialDataLoss):
        return (
            "the connection closed before a last_seq row, and the response "
            "had no framing to tell whether it was complete"
        )
    if isinstance(value, ResponseFailed):
        causes = "; ".join(
            f"{type(f.value).__name__}: {f.value}" for f in value.reasons
        )
        return f"the response failed before a last_seq row ({causes})"
    return f"the connection was lost before a last_seq row ({type(value).__name__}: {value})"
