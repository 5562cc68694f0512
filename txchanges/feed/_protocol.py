"""
The protocol that reads a continuous feed's response body.

:class:`ChangesProtocol` is handed to ``IResponse.deliverBody``. It splits the
body into lines, parses them with :mod:`txchanges.feed._rows`, hands each change to
a callable, and fires :attr:`ChangesProtocol.finished` once when the feed ends
however it ends.

It is a :class:`~txchanges.feed._body.BodyReader`, which owns pausing, holding
rows back and the end of the body, rather than a ``LineOnlyReceiver``
because the body transport never reports
``disconnecting`` (so a stop needs a flag of its own), because
``LineOnlyReceiver`` copies its whole buffer on every read (quadratic for a
long ``include_docs`` line arriving in many pieces), and because decoding and
parsing a whole read at once is cheaper than one line at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Optional

from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from txchanges.feed._delivery import Delivery, Lines, RunReader
from txchanges.feed._ends import Stopped, describe_end
from txchanges.http._linereceiver import ILineReceiver
from txchanges.errors import LineTooLong, UncleanEnd

__all__ = ["ChangesProtocol", "Stopped", "DEFAULT_MAX_LINE_LENGTH"]

#: The default bound on one line, in bytes. CouchDB refuses documents over
#: 8 MB by default (``max_document_size``), but ``include_docs`` rows can also
#: carry ``_conflicts`` and base64 inline attachments and servers can raise
#: the limit; 64 MiB leaves room for all of that while still stopping a
#: runaway line long before it exhausts memory.
DEFAULT_MAX_LINE_LENGTH = 64 * 1024 * 1024


@implementer(ILineReceiver)
class ChangesProtocol(RunReader):
    """
    Read a continuous feed's body and deliver its rows.

    Pausing, holding rows back and the end of the body are
    :class:`~txchanges.feed._body.BodyReader`'s, and handing each change
    over at the least cost :class:`~txchanges.feed._delivery.RunReader`'s;
    this class splits the body into lines and bounds their length.

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

    def __init__(
        self,
        on_change: Callable[[dict[str, Any]], object],
        on_activity: Optional[Callable[[], object]] = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        """
        :param on_change: Called with each change (or ``_db_updates``) row,
            the dict exactly as the server sent it, in order; its return
            value is ignored. If it raises, the feed fails with that
            exception.
        :param on_activity: Called with no arguments for every piece of body
            data received, heartbeats included, so that a stall watchdog can
            be reset.
        :param max_line_length: The longest line accepted, in bytes. Memory
            held for an unfinished line stays below this plus one read.
        """
        if max_line_length < 1:
            raise ValueError(f"max_line_length must be positive, not {max_line_length!r}")
        super().__init__(on_change, on_activity)
        self._max = max_line_length
        # The start of an unfinished line, in pieces, so that a long line
        # arriving in many reads is joined once rather than once per read.
        self._pending: list[bytes] = []
        self._pending_length = 0

    def lines_received(self, lines: list[bytes]) -> None:
        """
        Like :meth:`dataReceived`, for a transport that has split the body
        into lines already; see
        :class:`~txchanges.http._linereceiver.ILineReceiver`.
        """
        if not self._arrived(lines):
            return
        if self._pending:
            lines[0] = b"".join(self._pending) + lines[0]
            self._pending = []
            self._pending_length = 0
        self._deliver_now(self._rows(lines, None))

    def _read(self, data: bytes) -> Optional[Iterator[Delivery]]:
        if self._pending:
            if b"\n" not in data:
                self._add_pending(data)
                return None
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending = []
            self._pending_length = 0
        lines = data.split(b"\n")
        # The last piece is the start of an unfinished line, or b"".
        rest = lines.pop()
        too_long = None
        if rest:
            self._pending.append(rest)
            self._pending_length += len(rest)
            if self._pending_length > self._max:
                too_long = b"".join(self._pending)
        if lines:
            # No line of a read shorter than the bound can be too long.
            return self._rows(lines, too_long, len(data) <= self._max)
        if too_long is not None:
            self._fail_too_long(too_long)
        return None

    def _add_pending(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_length += len(data)
        if self._pending_length > self._max:
            self._fail_too_long(b"".join(self._pending))

    def _rows(self, lines: list[bytes], unfinished_too_long: Optional[bytes], short: bool = False) -> Iterator[Delivery]:
        """
        What complete lines hold, to be parsed as they are delivered; if a
        line, or the unfinished one after them, is too long, the lines
        before it and then :class:`LineTooLong`.

        :param short: Whether the lines are known to be short enough.
        """
        if unfinished_too_long is None and (short or max(map(len, lines)) <= self._max):
            return iter((Lines(lines),))
        return self._rows_up_to_too_long(lines, unfinished_too_long)

    def _rows_up_to_too_long(self, lines: list[bytes], unfinished: Optional[bytes]) -> Iterator[Delivery]:
        first = next((i for i, line in enumerate(lines) if len(line) > self._max), None)
        if first is not None:
            unfinished = lines[first]
            del lines[first:]
        if lines:
            yield Lines(lines)
        assert unfinished is not None
        raise LineTooLong(self._max, unfinished[:1024])

    def _fail_too_long(self, line: bytes) -> None:
        self._fail(LineTooLong(self._max, line[:1024]))

    def _body_ended(self, reason: Failure) -> None:
        pending = self._pending_length
        self._discard()
        why = describe_end(reason)
        if pending:
            why += f"; {pending} bytes of an unfinished line dropped"
        self._fail(UncleanEnd(why))

    def _discard(self) -> None:
        super()._discard()
        self._pending = []
        self._pending_length = 0
