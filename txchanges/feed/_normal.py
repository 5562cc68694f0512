"""
Read a ``feed=normal`` body row by row, as it arrives.

A normal feed is one JSON document, ``{"results": [row, row, ...],
"last_seq": ..., "pending": N}``; parsed whole, a large one holds every row
in memory at once (over a gigabyte at a million changes). :class:`RowsProtocol`
instead parses each row of ``results`` as soon as the row is complete, hands
it over, and keeps only the unparsed rest of the body, so memory stays flat
however long the feed is.

It reads any layout of that document (CouchDB puts each row on a line of its
own; PouchDB sends it on one line) with the standard library's C scanner. A
body whose first key is not ``results`` is read whole and then handed over
row by row, which is correct if not flat.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from txchanges.feed._protocol import Stopped, _describe_end
from txchanges.errors import FeedError, LineTooLong, MalformedRow, UncleanEnd

__all__ = ["RowsProtocol"]

_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_HEAD = re.compile(r'\s*\{\s*"results"\s*:\s*\[')
_BLANKS = re.compile(r"\s*")

#: How much of the body start is enough to tell whether ``results`` comes first.
_HEAD_WINDOW = 64

_HEAD_STATE, _ROW, _COMMA, _TAIL, _WHOLE = range(5)


def _ran_out(error: BaseException, length: int) -> bool:
    """
    Whether the scanner failed because the text ended (a row cut short)
    rather than on something that is not JSON.
    """
    if isinstance(error, StopIteration):
        return bool(error.value == length)
    if isinstance(error, json.JSONDecodeError):
        return error.pos >= length or error.msg.startswith("Unterminated string")
    return False


class RowsProtocol(Protocol):
    """
    Parse a normal feed's body and hand each row of ``results`` to a
    callable as soon as it is complete.

    :ivar finished: A Deferred that fires, once every row was handed over
        and every Deferred *on_row* returned has fired, with the rest of the
        body: ``{"last_seq": ..., "pending": N}``; with
        :class:`~txchanges.feed._protocol.Stopped` after :meth:`stop`. It fails
        with :class:`~txchanges.errors.MalformedRow` when the body is not a
        normal feed, :class:`~txchanges.errors.LineTooLong` for a row over
        the bound, :class:`~txchanges.errors.UncleanEnd` when the body is
        cut short, and with what *on_row* raised or its Deferred failed
        with. Every :class:`~txchanges.errors.FeedError` carries
        ``last_seq``, the seq of the last row handed over.
    :ivar last_seq: The seq of the last row handed over (rows with a null
        seq leave it), then the body's ``last_seq``.
    """

    def __init__(
        self,
        on_row: Callable[[dict[str, Any]], object],
        on_activity: Optional[Callable[[], object]] = None,
        max_row_length: int = 64 * 1024 * 1024,
        *,
        pause: Optional[Callable[[], object]] = None,
        resume: Optional[Callable[[], object]] = None,
    ) -> None:
        """
        :param on_row: Called with each row (a dict, exactly as parsed), in
            order. If it returns a Deferred, no further row is handed over
            until that fires; if it raises, or the Deferred fails, the feed
            fails with that.
        :param on_activity: Called for every piece of body data received.
        :param max_row_length: The longest row accepted, in characters.
        :param pause: Asks whoever reads the body to pause it (so that its
            idle watchdog pauses too) while a row's Deferred is pending;
            :meth:`pauseProducing` is used when omitted.
        :param resume: Undoes *pause*.
        """
        self._on_row = on_row
        self._on_activity = on_activity
        self._max = max_row_length
        self._pause_hook = pause or self.pauseProducing
        self._resume_hook = resume or self.resumeProducing
        self.finished: Deferred[Any] = Deferred()
        self.last_seq: Any = None
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._state = _HEAD_STATE
        self._retry_at = 0
        self._ended: Optional[Failure] = None
        self._waiting: Optional[Deferred[Any]] = None
        self._backlog: Optional[Iterator[Any]] = None
        self._tail: Optional[dict[str, Any]] = None
        self._paused = False
        self._done = False

    # -- the transport's side ------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        if self._on_activity is not None:
            self._on_activity()
        try:
            self._text += self._decoder.decode(data)
        except UnicodeDecodeError as e:
            self._fail(MalformedRow(data, f"not UTF-8: {e}"))
            return
        self._parse()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._done:
            return
        if reason.check(ResponseDone, PotentialDataLoss) and self._state != _WHOLE:
            try:
                self._text += self._decoder.decode(b"", final=True)
            except UnicodeDecodeError as e:
                self._fail(MalformedRow(self._text[-200:], f"not UTF-8: {e}"))
                return
        self._ended = reason
        self._parse()

    def pauseProducing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self.transport is not None and not self._done:
            self.transport.resumeProducing()

    def stop(self) -> None:
        """
        Stop reading: hand over no further row, drop the connection, and
        fire :attr:`finished` with :class:`Stopped` at once.
        """
        if self._done:
            return
        self._done = True
        self._text = ""
        if self.transport is not None:
            self.transport.stopProducing()
        self.finished.callback(Stopped(self.last_seq))

    # -- parsing -------------------------------------------------------------

    def _parse(self) -> None:
        """
        Hand over every complete row in the buffer, then end the feed if the
        body has ended.
        """
        if self._waiting is not None or self._done:
            return
        try:
            pos = self._rows()
        except Exception:
            # A malformed body, or what on_row raised, with its traceback.
            self._fail(Failure())
            return
        if self._done:
            return
        self._text = self._text[pos:]
        if self._waiting is None and self._ended is not None:
            self._end()
        elif self._state in (_ROW, _COMMA) and len(self._text) > self._max:
            self._fail(LineTooLong(self._max, self._text[:1024]))

    def _rows(self) -> int:
        """
        Parse from the start of the buffer as far as it goes.

        :return: How much of the buffer was used up.
        """
        if self._backlog is not None:
            for row in self._backlog:
                if not self._hand_over(row):
                    return 0
            self._backlog = None
            return 0
        text = self._text
        # Only a clean end makes an unparsed rest final; after an unclean
        # one the complete rows still go, then the feed fails.
        ended = self._ended is not None and self._ended.check(ResponseDone, PotentialDataLoss) is not None
        pos = 0
        if self._state == _HEAD_STATE:
            match = _HEAD.match(text)
            if match is None:
                if len(text) < _HEAD_WINDOW and not ended:
                    return 0
                self._state = _WHOLE
            else:
                pos = match.end()
                self._state = _ROW
        if self._state == _WHOLE:
            if ended:
                self._whole(text)
                return self._rows()
            return 0
        scan = _scan_once
        end = len(text)
        while self._state in (_ROW, _COMMA):
            pos = _BLANKS.match(text, pos).end()  # type: ignore[union-attr]
            if pos == end:
                return pos
            char = text[pos]
            if char == "]":
                self._state = _TAIL
                pos += 1
                break
            if self._state == _COMMA:
                if char != ",":
                    raise MalformedRow(text[pos:pos + 200], "expected a comma between rows")
                pos += 1
                self._state = _ROW
                continue
            if end - pos < self._retry_at and not ended:
                # The row was incomplete when last tried: wait for twice as
                # much, so that a huge row is not rescanned on every read.
                return pos
            try:
                row, after = scan(text, pos)
            except (StopIteration, ValueError, RecursionError) as e:
                if ended:
                    if _ran_out(e, end):
                        raise UncleanEnd("the body ended inside a row") from None
                    raise MalformedRow(text[pos:pos + 200], "not a JSON row") from None
                # Measured from the row's start, where the buffer will start.
                self._retry_at = 2 * (end - pos)
                return pos
            self._retry_at = 0
            pos = after
            self._state = _COMMA
            if not self._hand_over(row):
                return pos
        return pos

    def _hand_over(self, row: Any) -> bool:
        """
        Give one row to *on_row*.

        :return: Whether to go on (no Deferred is pending).
        """
        if type(row) is not dict:
            raise MalformedRow(json.dumps(row)[:200], "a row that is not a JSON object")
        result = self._on_row(row)
        seq = row.get("seq")
        if seq is not None:
            self.last_seq = seq
        if result is not None and isinstance(result, Deferred) and not result.called:
            self._waiting = result
            self._pause_hook()
            result.addCallbacks(self._row_done, self._row_failed)
            return False
        if isinstance(result, Deferred):
            # Already fired: take its failure, if any, at once.
            failures: list[Failure] = []
            result.addErrback(failures.append)
            if failures:
                failures[0].raiseException()
        return not self._done

    def _row_done(self, _: object) -> None:
        self._waiting = None
        if self._done:
            return
        self._parse()
        if not self._done and self._waiting is None:
            self._resume_hook()

    def _row_failed(self, failure: Failure) -> None:
        self._waiting = None
        if not self._done:
            self._fail(failure)

    def _whole(self, text: str) -> None:
        """
        A body that does not start with ``results``: parse it whole; its
        rows are then handed over from a backlog.
        """
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            raise MalformedRow(text[:200], "not a normal feed body") from None
        if type(body) is not dict or type(body.get("results")) is not list:
            raise MalformedRow(text[:200], 'not a normal feed body: no "results" list')
        self._backlog = iter(body.pop("results"))
        self._tail = body
        self._text = ""
        self._state = _TAIL

    def _end(self) -> None:
        """
        The body has ended and every row was handed over: fire with the rest
        of the body, or fail if it was cut short or malformed.
        """
        reason = self._ended
        assert reason is not None
        if not reason.check(ResponseDone, PotentialDataLoss):
            self._fail(UncleanEnd(_describe_end(reason)))
            return
        if self._state != _TAIL:
            self._fail(UncleanEnd("the body ended before the end of its results"))
            return
        tail = self._tail
        if tail is None:
            rest = self._text.strip()
            try:
                tail = {} if rest == "}" else json.loads("{" + rest[1:]) if rest[:1] == "," else None
            except (ValueError, RecursionError):
                tail = None
            if type(tail) is not dict:
                if rest.endswith("}"):
                    self._fail(MalformedRow(rest[:200], "not the end of a normal feed body"))
                else:
                    self._fail(UncleanEnd("the body ended inside its last_seq"))
                return
        if "last_seq" in tail:
            self.last_seq = tail["last_seq"]
        self._done = True
        self.finished.callback(tail)

    def _fail(self, error: BaseException | Failure) -> None:
        if self._done:
            return
        self._done = True
        self._text = ""
        self._backlog = None
        failure = error if isinstance(error, Failure) else Failure(error)
        if isinstance(failure.value, FeedError):
            failure.value.last_seq = self.last_seq
        if self.transport is not None:
            self.transport.stopProducing()
        self.finished.errback(failure)
