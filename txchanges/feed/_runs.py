"""
The complete lines of one read, parsed at once: the continuous feed's fast
path, and the batches a batch callback is handed.

A read of a busy feed holds tens or hundreds of change rows and nothing
else. :func:`parse_run` parses them with one parser call per line driven
from C (``map``), checks in C that every one is a change row (a dict with
``seq``, ``id`` and ``changes``), and returns them as one list, a *run*;
only a read that holds something else (a heartbeat, the end row, an error
row, a bad line, ``_db_updates`` rows) takes the line-by-line way of
:func:`~txchanges.feed._rows.iter_lines`, with the same rows and errors in
the same places. Either way the result is an iterator of *items*: a run (a
list of change rows, in order), ``None`` for a heartbeat, or the
:class:`~txchanges.feed._rows.LastSeq` that ends the feed; a bad line is
raised where it stands, after the items before it.

:func:`batches_of` cuts a run into batches: at most *max_batch* changes
each, and never two changes of one document in one batch, so that a handler
may work on a batch's changes in any order or all at once.

This module is pure (no Twisted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Any, Union

from txchanges.errors import FeedError
from txchanges.feed._rows import (
    ChangeRow,
    LastSeq,
    Row,
    _classify,
    _orjson_loads,
    _rows_json,
    _scan_once,
    iter_lines,
)

__all__ = ["Run", "Item", "fast_loads", "parse_run", "iter_items", "item_of", "batches_of", "doc_key", "last_seq_of"]

#: Change rows in feed order: a read's, or a batch.
Run = list[ChangeRow]

#: What :func:`parse_run` yields: a run of changes, ``None`` for a
#: heartbeat, or the end row.
Item = Union[Run, LastSeq, None]

# Raises KeyError or TypeError for anything but a change row.
_change_keys = itemgetter("seq", "id", "changes")


def _json_loads(line: bytes) -> Any:
    """
    One line parsed by the standard library's C scanner; ``ValueError``
    for anything it does not read as exactly one JSON value.
    """
    try:
        text = line.decode("utf-8")
        obj, end = _scan_once(text, 0)
    except (StopIteration, RecursionError):
        raise ValueError(line) from None
    if end != len(text):
        raise ValueError(line)
    return obj


#: Parses one line into a JSON value, raising ``ValueError`` for a line the
#: fast path leaves to :func:`iter_items` (a heartbeat, a bad line, and with
#: orjson what only the standard library reads: NaN, lone surrogates, deep
#: nesting): orjson when it is installed.
fast_loads: Callable[[bytes], Any] = _json_loads if _orjson_loads is None else _orjson_loads


def iter_items(lines: list[bytes]) -> Iterator[Item]:
    """
    The items of *lines*, line by line: the rows of
    :func:`~txchanges.feed._rows.iter_lines`, the changes between two other
    rows gathered in runs. A bad line's error is raised when the iteration
    reaches it, after the run before it.
    """
    return _gathered(iter_lines(lines))


def parse_run(lines: list[bytes]) -> Iterator[Item]:
    """
    Parse complete lines, in order.

    :param lines: Lines without their ``\\n``, none longer than the
        protocol accepts.
    :return: The items of :mod:`this module <txchanges.feed._runs>`: one run
        when every line is a change row; otherwise the rows as
        :func:`~txchanges.feed._rows.iter_lines` gives them, the changes
        between two other rows gathered in runs. A bad line's
        :class:`~txchanges.errors.ErrorRow` or
        :class:`~txchanges.errors.MalformedRow` is raised when the iteration
        reaches it.
    """
    if _orjson_loads is None:
        return _parsed_by_json(lines)
    try:
        parsed = list(map(_orjson_loads, lines))
    except ValueError:
        # A heartbeat, a bad line, or what only the standard library reads
        # (NaN, a lone surrogate, deep nesting).
        return _gathered(iter_lines(lines))
    try:
        list(map(_change_keys, parsed))
    except (KeyError, TypeError):
        return _gathered(_classified(parsed, lines))
    return iter((parsed,))


def _parsed_by_json(lines: list[bytes]) -> Iterator[Item]:
    """
    :func:`parse_run` with the standard library's parser, line by line.
    """
    rows: list[Any] = []
    append = rows.append
    try:
        for row in _rows_json(lines):
            append(row)
    except FeedError as e:
        return _gathered(_then_raise(rows, e))
    try:
        list(map(_change_keys, rows))
    except (KeyError, TypeError):
        return _gathered(iter(rows))
    return iter((rows,))


def _then_raise(rows: list[Row], error: FeedError) -> Iterator[Row]:
    yield from rows
    raise error


def _classified(parsed: list[Any], lines: list[bytes]) -> Iterator[Row]:
    """
    The rows of lines already parsed: what
    :func:`~txchanges.feed._rows.iter_lines` gives, without parsing again.
    """
    for obj, line in zip(parsed, lines):
        if type(obj) is dict and "changes" in obj and "id" in obj and "seq" in obj:
            yield obj
        else:
            yield _classify(obj, line)


def _gathered(rows: Iterator[Row]) -> Iterator[Item]:
    """
    *rows* with the changes between two other rows gathered in runs; an
    error is raised after the run before it.
    """
    run: Run = []
    try:
        for row in rows:
            if isinstance(row, dict):
                run.append(row)
                continue
            if run:
                yield run
                run = []
            yield row
    except Exception:
        if run:
            yield run
        raise
    if run:
        yield run


def item_of(obj: Any, line: bytes) -> Iterator[Item]:
    """
    The item of a line already parsed into *obj* that is not a change row:
    a ``_db_updates`` row (as a run of one), the end row, or, when the
    iteration reaches it, its error.
    """
    row = _classify(obj, line)
    yield [row] if isinstance(row, dict) else row


def doc_key(row: ChangeRow) -> Any:
    """
    What keeps two changes apart in a batch: the document id (the database
    name for a ``_db_updates`` row).
    """
    key = row.get("id")
    if key is None:
        key = row.get("db_name")
    try:
        hash(key)
    except TypeError:
        # Not an id CouchDB would send, but one a broken server could.
        return repr(key)
    return key


def batches_of(run: Run, max_batch: int) -> list[Run]:
    """
    Cut *run* into batches, in order: a new batch begins where one would
    hold more than *max_batch* changes or two changes of one document.

    :return: The batches; ``[run]`` itself, not a copy, when it is one
        batch already.
    """
    if len(run) <= max_batch:
        try:
            ids = set(map(_id, run))
        except (KeyError, TypeError):
            pass
        else:
            if len(ids) == len(run):
                return [run]
    batches: list[Run] = []
    batch: Run = []
    keys: set[Any] = set()
    for row in run:
        key = doc_key(row)
        if key in keys or len(batch) >= max_batch:
            batches.append(batch)
            batch = []
            keys = set()
        batch.append(row)
        keys.add(key)
    if batch:
        batches.append(batch)
    return batches


_id = itemgetter("id")


def last_seq_of(run: Run) -> Any:
    """
    The newest seq in *run*: its last row's, or with ``seq_interval`` (rows
    whose seq is ``null``) the last one that is not ``None``; ``None`` when
    there is none.
    """
    for row in reversed(run):
        seq = row.get("seq")
        if seq is not None:
            return seq
    return None
