"""
Parsing a continuous feed's lines fast, and cutting changes into batches.

The continuous feed's readers (:mod:`txchanges.feed._delivery`,
:mod:`txchanges.feed._batches`) parse a read's complete lines in a loop of
their own with :data:`fast_loads`, and check that each is a change row (a
dict with ``seq``, ``id`` and ``changes``) with three lookups that raise
for anything else. Only a line that is something else (a heartbeat, the
end row, an error row, a bad line, a ``_db_updates`` row, what only the
standard library reads) takes the line-by-line way of
:func:`~txchanges.feed._rows.iter_lines`, through :func:`iter_items` or
:func:`item_of`, with the same rows and errors in the same places.

What a reader delivers from are *items*: a run (a list of change rows, in
order), ``None`` for a heartbeat, or the
:class:`~txchanges.feed._rows.LastSeq` that ends the feed; a bad line's
error is raised where it stands, after the items before it.

:func:`batches_of` cuts a run into batches: at most *max_batch* changes
each, and never two changes of one document in one batch, so that a handler
may work on a batch's changes in any order or all at once.

This module is pure (no Twisted).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from operator import itemgetter
from typing import Any, Optional, Union

from txchanges.feed._rows import (
    ChangeRow,
    LastSeq,
    Row,
    _classify,
    _orjson_loads,
    _scan_once,
    iter_lines,
)

__all__ = [
    "Run",
    "Item",
    "fast_loads",
    "parse_changes",
    "UNPARSED",
    "LIMIT",
    "iter_items",
    "item_of",
    "batches_of",
    "doc_key",
    "last_seq_of",
]

#: Change rows in feed order: a read's, or a batch.
Run = list[ChangeRow]

#: What a continuous feed's reader delivers from: a run of changes,
#: ``None`` for a heartbeat, or the end row.
Item = Union[Run, LastSeq, None]

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


def parse_changes(lines: list[bytes], start: int, limit: int) -> tuple[Run, int, Any, bool]:
    """
    Parse lines from *start* on while they are change rows, *limit* of them
    at most.

    :return: ``(run, end, other, unique)``: the changes parsed, in order;
        the index of the first line not parsed (``len(lines)`` when there is
        none); what that line parsed into when it is not a change row
        (:data:`UNPARSED` when it did not parse, :data:`LIMIT` when it is
        left for the next batch); and whether the changes are of as many
        documents as there are changes.
    """
    stop = min(len(lines), start + limit)
    if stop - start > 1:
        whole = _parse_together(lines, start, stop)
        if whole is not None:
            return whole[0], stop, LIMIT if stop < len(lines) else UNPARSED, whole[1]
    run: Run = []
    append = run.append
    ids: set[Any] = set()
    add = ids.add
    loads = fast_loads
    other: Any = LIMIT
    for line in islice(lines, start, start + limit):
        try:
            row = loads(line)
        except ValueError:
            other = UNPARSED
            break
        try:
            # A change row is a dict with these three keys; for anything
            # else one of them raises (an id that cannot be hashed too:
            # the slower way takes that one).
            row["changes"]
            row["seq"]
            add(row["id"])
        except (KeyError, TypeError):
            other = row
            break
        append(row)
    end = start + len(run)
    return run, end, other if end < len(lines) else UNPARSED, len(ids) == len(run)


def _parse_together(lines: list[bytes], start: int, stop: int) -> Optional[tuple[Run, bool]]:
    """
    ``lines[start:stop]`` parsed with one call, as the elements of one JSON
    array, when every one of them is a change row: no Python code runs per
    row, which makes a read of a backlog cheaper than a loop of its own.

    :return: ``(run, unique)`` as for :func:`parse_changes`; ``None`` when
        one of the lines is anything else (a heartbeat, the end row, a bad
        line), for the loop of :func:`parse_changes` to find which.
    """
    # The brackets go on the first and last lines, so that the text is
    # copied once, by the join.
    text = lines[start:stop]
    text[0] = b"[" + text[0]
    text[-1] += b"]"
    try:
        run = fast_loads(b",".join(text))
    except ValueError:
        return None
    # A line holding two values, or none, would shift the rows.
    if len(run) != stop - start:
        return None
    try:
        # Each raises for anything but a dict with the key (and the set
        # for an id that cannot be hashed).
        ids = set(map(_id, run))
        deque(map(_seq, run), 0)
        deque(map(_changes, run), 0)
    except (KeyError, TypeError):
        return None
    return run, len(ids) == len(run)


#: What :func:`parse_changes` says of a line that did not parse...
UNPARSED = object()
#: ...and of one it left for the next batch.
LIMIT = object()


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
    if not run:
        return []
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


def _parsed_keys(*names: str) -> list[str]:
    """
    *names* as the parser makes them when it reads them as keys. orjson
    keeps the key strings it has made and makes each new row's keys of
    them: a lookup with the very string it put in a row finds the key
    without comparing its text (any string equal to a key finds it too).
    """
    text = b"{" + b",".join(b'"%s":0' % name.encode() for name in names) + b"}"
    return list(fast_loads(text))


_ID, _SEQ, _CHANGES = _parsed_keys("id", "seq", "changes")
_id = itemgetter(_ID)
_seq = itemgetter(_SEQ)
_changes = itemgetter(_CHANGES)


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
