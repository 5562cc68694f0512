"""
Parse the lines of a continuous ``_changes`` or ``_db_updates`` feed.

A continuous feed is one JSON object per ``\\n``-terminated line. Each line is
one of:

- a change row ``{"seq": ..., "id": ..., "changes": [...]}``, with optional
  ``deleted`` and ``doc``;
- a ``_db_updates`` row ``{"db_name": ..., "type": ..., "seq": ...}``;
- the end row ``{"last_seq": ..., "pending": N}``: a :class:`LastSeq`;
- an empty line, a heartbeat: ``None``;
- an error row ``{"error": ..., "reason": ...}``: :class:`ErrorRow` is raised;
- anything else: :class:`MalformedRow` is raised.

This module is pure (no Twisted): it turns bytes into rows and nothing else.

Representation
--------------
A change or ``_db_updates`` row is the dict the JSON parser built, unchanged:
users get the row exactly as the server sent it (unknown fields included),
and handing over the parser's own object costs nothing. Only the end row,
which the feed reads itself, is a class of its own, :class:`LastSeq`.

Cost
----
``json.loads`` on bytes detects the encoding first, and ``json.loads`` on
``str`` runs a whitespace regex around the decoder, so :func:`iter_rows`
takes every complete line of a received buffer, decodes it to ``str`` and
hands it straight to the C scanner behind
:meth:`json.JSONDecoder.raw_decode`, falling back to the strict slow path
only when that fails. When `orjson <https://pypi.org/project/orjson/>`_ is
installed (the ``orjson`` extra) it parses each line's bytes instead, about
twice as fast; a line it refuses goes the standard library's way, so the
rows are the same either way, but for one thing: orjson reads an integer
beyond 64 bits as a float. :data:`PARSER` says which one is in use.
Splitting off the unfinished last line, and bounding its length, is the
protocol's job.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional, Union

from txchanges.errors import ErrorRow, MalformedRow

__all__ = [
    "PARSER",
    "LastSeq",
    "ChangeRow",
    "Row",
    "parse_line",
    "iter_lines",
    "iter_rows",
    "parse_array",
]

_orjson_loads: Optional[Callable[[Union[bytes, str]], Any]]
try:
    from orjson import loads as _orjson_loads
except ImportError:
    _orjson_loads = None

#: The parser that reads feed lines: ``"orjson"`` when it is installed,
#: else ``"json"``.
PARSER = "json" if _orjson_loads is None else "orjson"

# raw_decode skips the whitespace handling json.loads adds around it; we
# check what it left over ourselves.
_raw_decode = json.JSONDecoder().raw_decode
# The C scanner raw_decode wraps: one Python call less per line. It raises
# StopIteration where raw_decode raises JSONDecodeError.
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class LastSeq:
    """
    The row that ends a continuous feed cleanly (on ``timeout``, ``limit``,
    or when the database is deleted under the feed).

    :ivar last_seq: Where the feed stopped: the ``since`` to resume from. With
        a filter it is past the last delivered row.
    :ivar pending: How many changes remain after ``last_seq``, or ``None``
        when the server did not say (``_db_updates``, CouchDB 1.x).
    :ivar row: The row exactly as sent.
    """

    last_seq: Any
    pending: int | None
    row: dict[str, Any]


#: What a change callback receives: a change (or ``_db_updates``) row, the
#: dict exactly as the server sent it.
ChangeRow = dict[str, Any]

#: What one line parses into; ``None`` is a heartbeat.
Row = Union[ChangeRow, LastSeq, None]


def _classify(obj: Any, line: str | bytes) -> Row:
    """
    Turn one parsed JSON value into a row.

    :param obj: The parsed value.
    :param line: The line it came from, for error messages.
    :raises ErrorRow: For an ``{"error": ...}`` row.
    :raises MalformedRow: For anything that is not a known row shape.
    """
    if type(obj) is not dict:
        raise MalformedRow(line, f"a JSON {type(obj).__name__}, not an object")
    # The common case first.
    if "changes" in obj and "id" in obj and "seq" in obj:
        return obj
    if "last_seq" in obj:
        return LastSeq(obj["last_seq"], obj.get("pending"), obj)
    if "error" in obj:
        error = obj["error"]
        reason = obj.get("reason", "")
        raise ErrorRow(
            error if isinstance(error, str) else json.dumps(error),
            reason if isinstance(reason, str) else json.dumps(reason),
            obj,
        )
    if "db_name" in obj and "type" in obj and "seq" in obj:
        return obj
    raise MalformedRow(line, f"unknown row shape with keys {sorted(obj)[:10]}")


def _parse_text(line: str) -> Row:
    """
    Parse one line already decoded to ``str``; see :func:`parse_line`.
    """
    if not line:
        return None
    if line[-1] == "\r":
        line = line[:-1]
        if not line:
            return None
    try:
        obj, end = _raw_decode(line)
    except (ValueError, RecursionError):
        return _parse_slowly(line)
    if end != len(line):
        return _parse_slowly(line)
    return _classify(obj, line)


def _parse_slowly(line: str) -> Row:
    """
    The strict path for lines the fast decoder rejected: surrounding
    whitespace is allowed, a whitespace-only line is a heartbeat, anything
    else that is not one JSON value is malformed.
    """
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise MalformedRow(line, f"not JSON: {e}") from None
    except RecursionError:
        # A hostile or broken server can nest arrays deeper than the parser
        # recurses; that is a bad line, not a crash of the protocol.
        raise MalformedRow(line, "not JSON: nested too deeply") from None
    return _classify(obj, line)


def parse_line(line: str | bytes) -> Row:
    """
    Parse one line of a continuous feed.

    :param line: The line without its ``\\n``; a trailing ``\\r`` is ignored.
        Bytes must be UTF-8.
    :return: A change or ``_db_updates`` row (the dict, as parsed), a
        :class:`LastSeq`, or ``None`` for a heartbeat (an empty line).
    :raises ErrorRow: For an ``{"error": ..., "reason": ...}`` row.
    :raises MalformedRow: For a line that is not UTF-8, not JSON, not an
        object, or an object of no known shape.
    """
    if isinstance(line, bytes):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedRow(line, f"not UTF-8: {e}") from None
        return _parse_text(text)
    return _parse_text(line)


def _rows_json(lines: list[bytes]) -> Iterator[Row]:
    """
    :func:`iter_lines` with the standard library's parser.
    """
    scan = _scan_once
    for line in lines:
        try:
            text = line.decode("utf-8")
            obj, end = scan(text, 0)
        except (StopIteration, ValueError, RecursionError):
            # Heartbeats, blanks, bad lines, lines that are not UTF-8.
            yield parse_line(line)
            continue
        if end == len(text) and type(obj) is dict and "changes" in obj and "id" in obj and "seq" in obj:
            yield obj
            continue
        # A "\r" ending, surrounding blanks, or another kind of row.
        yield _parse_text(text) if end != len(text) else _classify(obj, text)


def _rows_orjson(lines: list[bytes]) -> Iterator[Row]:
    """
    :func:`iter_lines` with orjson, which parses UTF-8 bytes directly.
    """
    assert _orjson_loads is not None
    loads = _orjson_loads
    for line in lines:
        try:
            obj = loads(line)
        except ValueError:
            # Heartbeats, blanks, bad lines, and what only the standard
            # library accepts (NaN, lone surrogates, deep nesting).
            yield parse_line(line)
            continue
        if type(obj) is dict and "changes" in obj and "id" in obj and "seq" in obj:
            yield obj
            continue
        yield _classify(obj, line)


def iter_lines(lines: list[bytes]) -> Iterator[Row]:
    """
    Parse lines lazily, in order.

    The rows are parsed one at a time as the iteration asks for them; a
    row's error is raised only when the iteration reaches that row, so the
    rows before it can be delivered first, and lines after a stop are never
    parsed.

    :param lines: Lines without their ``\\n``.
    :return: An iterator of rows, as :func:`parse_line` returns them.
    :raises ErrorRow: See :func:`parse_line`, raised by the iterator.
    :raises MalformedRow: See :func:`parse_line`, raised by the iterator.
    """
    if _orjson_loads is None:
        return _rows_json(lines)
    return _rows_orjson(lines)


def iter_rows(lines: bytes) -> Iterator[Row]:
    """
    Parse complete lines lazily, in order; see :func:`iter_lines`.

    :param lines: One or more complete lines, each ending in ``\\n``.
    :return: An iterator of rows, as :func:`parse_line` returns them.
    :raises ErrorRow: See :func:`parse_line`, raised by the iterator.
    :raises MalformedRow: See :func:`parse_line`, raised by the iterator.
    """
    split = lines.split(b"\n")
    # The buffer ends in "\n", so the last piece is always empty.
    del split[-1]
    return iter_lines(split)


def parse_array(items: str) -> Optional[list[Any]]:
    """
    Parse a run of comma-separated JSON values in one call, as the elements
    of one array.

    :param items: The text between an array's brackets.
    :return: The values, or ``None`` when *items* is not such a run (or
        only the standard library accepts it: the caller's slower path
        then reads it the standard library's way).
    """
    text = "[" + items + "]"
    if _orjson_loads is not None:
        try:
            values = _orjson_loads(text)
        except ValueError:
            return None
        return values  # type: ignore[no-any-return]
    try:
        values, end = _scan_once(text, 0)
    except (StopIteration, ValueError, RecursionError):
        return None
    return values if end == len(text) else None

