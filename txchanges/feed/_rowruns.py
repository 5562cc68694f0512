"""
Runs of whole rows in the text of a normal feed, parsed a piece at a time.

CouchDB writes each row of a normal feed's ``results`` on a line of its own,
``row,\\r\\n``, so the complete lines of a read are complete rows:
:func:`run_of_rows` finds where they end, and :func:`parse_pieces` parses
them, pieces of about :data:`PIECE` characters each wrapped as one JSON
array, with one call to the parser per piece (see
:func:`~txchanges.feed._rows.parse_array`). Pieces, rather than the whole
read at once: the rows of a piece are handed over while they are still in
the processor's cache, which is measurably faster than parsing a few hundred
rows and then handing them over.

This module is pure (no Twisted); what does not parse here is left to the
row-by-row scan of :class:`~txchanges.feed._normal.RowsProtocol`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Optional

from txchanges.feed._rows import parse_array

__all__ = ["PIECE", "run_of_rows", "parse_pieces"]

#: About how many characters of rows are parsed at once: a few dozen rows.
PIECE = 8192

# The blanks that may end a line of rows (CouchDB ends each with ",\r").
_LINE_END = " \t\r\n"


def _rows_end(text: str, start: int, cut: int) -> int:
    """
    Where the rows before *cut* end: at the comma after the last one, or
    just after it when it has none yet; ``-1`` when what comes before *cut*
    does not end with a row.
    """
    end = cut
    while end > start and text[end - 1] in _LINE_END:
        end -= 1
    if end == start:
        return -1
    last = text[end - 1]
    if last == ",":
        return end - 1
    return end if last == "}" else -1


def run_of_rows(text: str, start: int, cut: int) -> Optional[tuple[int, int]]:
    """
    Where the rows that start at *start* (a row's start, or blanks before
    it) and end before *cut* (a newline) end.

    :return: ``(end, cut)``: the rows are ``text[start:end]``, and
        ``text[end]`` is the comma after the last one, or a blank when it has
        none; the text after *cut* (which, when the end of the results is in
        the text, has moved to the newline before the closing bracket) is
        not theirs. ``None`` when the text before *cut* does not end with a
        row.
    """
    end = _rows_end(text, start, cut)
    if end < 0 or text[end] != ",":
        # No comma after the last line: the end of the results may be here
        # ("\n]" cannot be inside a string).
        close = text.rfind("\n]", start, cut)
        if close > start:
            cut = close
            end = _rows_end(text, start, cut)
        if end < 0:
            return None
    return end, cut


def parse_pieces(text: str, start: int, end: int) -> Generator[list[Any], None, int]:
    """
    Parse the rows ``text[start:end]``, as :func:`run_of_rows` found them,
    a piece of about :data:`PIECE` characters at a time, cut at the end of
    a line of rows.

    :return: Yields the rows of each piece (values that are not objects
        among them, for the caller to refuse); returns *end*, or where the
        first piece that does not parse starts (a row's start, or blanks
        before it).
    """
    while start < end:
        stop = text.find("\n", start + PIECE, end) if end - start > PIECE else -1
        if stop < 0:
            piece = end
        else:
            piece = _rows_end(text, start, stop)
            if piece < 0 or text[piece] != ",":
                piece = end
        rows = parse_array(text[start:piece])
        if rows is None:
            return start
        yield rows
        start = piece + 1
    return end
