"""
Read a ``feed=normal`` body row by row, as it arrives.

A normal feed is one JSON document, ``{"results": [row, row, ...],
"last_seq": ..., "pending": N}``; parsed whole, a large one holds every row
in memory at once (over a gigabyte at a million changes). :class:`RowsProtocol`
instead parses each row of ``results`` as soon as the row is complete, hands
it over, and keeps only the unparsed rest of the body, so memory stays flat
however long the feed is.

Cost: CouchDB puts each row on a line of its own (``row,\r\n``), so the
complete lines of a read are complete rows. They are parsed in one call,
wrapped as one JSON array, by orjson when it is installed or else by the
standard library's C scanner, and handed over from the list it returns: no
Python work per row but the call of the callable. Any other layout (PouchDB
sends the document on one line; a pretty-printed body splits rows across
lines), and a read whose lines are not only rows, is scanned row by row
instead, with the same result. A body whose first key is not ``results`` is
read whole and then handed over row by row, which is correct if not flat.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from txchanges.feed._body import BodyReader
from txchanges.feed._ends import describe_end
from txchanges.feed._rowruns import parse_pieces, run_of_rows
from txchanges.feed._rows import LastSeq
from txchanges.errors import LineTooLong, MalformedRow, UncleanEnd

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


class RowsProtocol(BodyReader):
    """
    Parse a normal feed's body and hand each row of ``results`` to a
    callable as soon as it is complete.

    Pausing, holding rows back and the end of the body are
    :class:`~txchanges.feed._body.BodyReader`'s: a Deferred from *on_row* pauses
    the body until it fires. This class parses.

    :ivar finished: A Deferred that fires, once every row was handed over
        and every Deferred *on_row* returned has fired, with the rest of the
        body: ``{"last_seq": ..., "pending": N}``; with
        :class:`~txchanges.feed._ends.Stopped` after :meth:`stop`. It fails
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
        super().__init__(on_row, on_activity)
        self._max = max_row_length
        self._pause_hook = pause or self.pauseProducing
        self._resume_hook = resume or self.resumeProducing
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._state = _HEAD_STATE
        self._retry_at = 0
        # How the body ended, once it has: the rest of the text is final.
        self._end: Optional[Failure] = None
        self._tail: Optional[dict[str, Any]] = None

    # -- the base's hooks ----------------------------------------------------

    def _read(self, data: bytes) -> Optional[Iterator[Any]]:
        try:
            decoded = self._decoder.decode(data)
        except UnicodeDecodeError as e:
            self._fail(MalformedRow(data, f"not UTF-8: {e}"))
            return None
        if self._state == _HEAD_STATE:
            text = self._text + decoded
            match = _HEAD.match(text)
            if match is None:
                # Not yet, or not at all: the row-by-row scan decides.
                self._text = text
                return self._rows()
            self._text = ""
            self._state = _ROW
            decoded = text[match.end():]
        state = self._state
        if state == _ROW or state == _COMMA:
            # Only this read can have completed a line.
            cut = decoded.rfind("\n")
            if cut >= 0:
                text = self._text + decoded
                start = 0
                if state == _COMMA:
                    start = _BLANKS.match(text).end()  # type: ignore[union-attr]
                    start = start + 1 if text[start:start + 1] == "," else -1
                run = run_of_rows(text, start, len(text) - len(decoded) + cut) if start >= 0 else None
                if run is not None:
                    return chain.from_iterable(self._pieces(text, start, *run))
                self._text = text
                return self._rows()
        self._text += decoded
        return self._rows()

    def _body_ended(self, reason: Failure) -> None:
        if reason.check(ResponseDone, PotentialDataLoss) and self._state != _WHOLE:
            try:
                self._text += self._decoder.decode(b"", final=True)
            except UnicodeDecodeError as e:
                self._fail(MalformedRow(self._text[-200:], f"not UTF-8: {e}"))
                return
        self._end = reason
        self._deliver_now(self._rows())

    def _not_a_change(self, row: Any) -> bool:
        # A batch is not checked row by row: what is not a dict (nor the
        # end) shows here, as a malformed row.
        if type(row) is LastSeq:
            self._end_row(row)
        else:
            self._fail(MalformedRow(json.dumps(row)[:200], "a row that is not a JSON object"))
        return False

    def _end_row(self, end: LastSeq) -> None:
        if "last_seq" in end.row:
            self.last_seq = end.last_seq
        self._finish(end.row)

    def _discard(self) -> None:
        self._text = ""

    # -- parsing -------------------------------------------------------------

    def _rows(self) -> Iterator[Any]:
        """
        Parse from the start of the buffer as far as it goes, lazily: each
        row as the base asks for it, then, once the body has ended, the rest
        of the body as a :class:`~txchanges.feed._rows.LastSeq`.

        :raises FeedError: from the iterator, for a malformed or cut body.
        """
        text = self._text
        # Only a clean end makes an unparsed rest final; after an unclean
        # one the complete rows still go, then the feed fails.
        clean = self._end is not None and self._end.check(ResponseDone, PotentialDataLoss) is not None
        pos = 0
        if self._state == _HEAD_STATE:
            match = _HEAD.match(text)
            if match is None:
                if len(text) >= _HEAD_WINDOW or clean:
                    self._state = _WHOLE
            else:
                pos = match.end()
                self._state = _ROW
        if self._state == _WHOLE:
            if clean:
                yield from self._whole(text)
                yield self._rest()
            elif self._end is not None:
                raise UncleanEnd(describe_end(self._end))
            return
        scan = _scan_once
        end = len(text)
        while self._state in (_ROW, _COMMA):
            pos = _BLANKS.match(text, pos).end()  # type: ignore[union-attr]
            if pos == end:
                break
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
            if end - pos < self._retry_at and not clean:
                # The row was incomplete when last tried: wait for twice as
                # much, so that a huge row is not rescanned on every read.
                break
            try:
                row, after = scan(text, pos)
            except (StopIteration, ValueError, RecursionError) as e:
                if clean:
                    if _ran_out(e, end):
                        raise UncleanEnd("the body ended inside a row") from None
                    raise MalformedRow(text[pos:pos + 200], "not a JSON row") from None
                # Measured from the row's start, where the buffer will start.
                self._retry_at = 2 * (end - pos)
                break
            self._retry_at = 0
            pos = after
            self._state = _COMMA
            if type(row) is not dict:
                raise MalformedRow(json.dumps(row)[:200], "a row that is not a JSON object")
            # While the base holds this iterator back, nothing else reads
            # the buffer: it is cut once, when the iterator runs out.
            yield row
        self._text = text = text[pos:]
        if self._end is None:
            if self._state in (_ROW, _COMMA) and len(text) > self._max:
                raise LineTooLong(self._max, text[:1024])
            return
        if not clean:
            raise UncleanEnd(describe_end(self._end))
        if self._state != _TAIL:
            raise UncleanEnd("the body ended before the end of its results")
        yield self._rest()

    def _pieces(self, text: str, start: int, end: int, cut: int) -> Iterator[Iterable[Any]]:
        """
        The rows ``text[start:end]`` that end a line before *cut*, a list
        per piece parsed; then the rows the rest of the text completes, or
        of the text from the first piece that does not parse, scanned row by
        row. A value that is not an object among the rows shows as one.
        """
        stopped = yield from parse_pieces(text, start, end)
        if stopped == end:
            self._text = text[cut + 1:]
            # After the comma of the last row, or after a last row without.
            self._state = _ROW if text[end] == "," else _COMMA
        else:
            self._text = text[stopped:]
            self._state = _ROW
        self._retry_at = 0
        # The rest of the read, an unfinished row as a rule, goes the slow way.
        yield self._rows()

    def _returned(self, result: object) -> None:
        """
        *on_row* returned something: a Deferred pauses the body until it
        fires.
        """
        if not isinstance(result, Deferred):
            return
        if not result.called:
            self._pause_hook()
            result.addCallbacks(self._row_done, self._row_failed)
            return
        # Already fired: take its failure, if any, at once.
        failures: list[Failure] = []
        result.addErrback(failures.append)
        if failures:
            failures[0].raiseException()

    def _row_done(self, _: object) -> None:
        self._resume_hook()

    def _row_failed(self, failure: Failure) -> None:
        self._fail(failure)

    def _whole(self, text: str) -> Iterator[dict[str, Any]]:
        """
        A body that does not start with ``results``: parse it whole, then
        hand its rows over one by one.
        """
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            raise MalformedRow(text[:200], "not a normal feed body") from None
        if type(body) is not dict or type(body.get("results")) is not list:
            raise MalformedRow(text[:200], 'not a normal feed body: no "results" list')
        self._tail = body
        self._text = ""
        self._state = _TAIL
        for row in body.pop("results"):
            if type(row) is not dict:
                raise MalformedRow(json.dumps(row)[:200], "a row that is not a JSON object")
            yield row

    def _rest(self) -> LastSeq:
        """
        The rest of a body that ended cleanly after its results.

        :raises FeedError: when it is cut short or malformed.
        """
        tail = self._tail
        if tail is None:
            rest = self._text.strip()
            try:
                tail = {} if rest == "}" else json.loads("{" + rest[1:]) if rest[:1] == "," else None
            except (ValueError, RecursionError):
                tail = None
            if type(tail) is not dict:
                if rest.endswith("}"):
                    raise MalformedRow(rest[:200], "not the end of a normal feed body")
                raise UncleanEnd("the body ended inside its last_seq")
        return LastSeq(tail.get("last_seq"), tail.get("pending"), tail)
