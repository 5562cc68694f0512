"""
Delivering a continuous feed's changes at the least cost per change.

:class:`RunReader` is the :class:`~txchanges.feed._body.BodyReader` of the
continuous feed (:class:`~txchanges.feed._protocol.ChangesProtocol` adds the
splitting into lines). A read's complete lines come to :meth:`RunReader._deliver`
unparsed, and the common case, a line that is a change row, costs one loop
step: parse it, check that it is a dict with ``seq``, ``id`` and
``changes``, hand it to the callable. Nothing else is done per change:

- the loop runs over a list iterator, and a pause or a stop from the
  callable ends it by moving that iterator to the end of the list
  (:meth:`RunReader._cut`), so that the loop checks no flag between two
  changes;
- :attr:`~txchanges.feed._body.BodyReader.last_seq` is set once the loop
  ends, from the last change it handed over;
- each change is dropped once handed over, so a read's rows never pile up
  for the garbage collector.

A line that is anything else (a heartbeat, the end row, an error row, a bad
line, a ``_db_updates`` row) takes the way of
:func:`~txchanges.feed._runs.iter_items`, with the same rows and errors in
the same places as line by line, and the loop goes on after it.

What a read holds is delivered from *items*: :class:`Lines` (unparsed),
runs (lists of change rows parsed already), :class:`Rest` (what a pause
held back of a run), ``None`` for a heartbeat, and the
:class:`~txchanges.feed._rows.LastSeq` that ends the body. A subclass that
hands over batches (:class:`~txchanges.feed._batches.BatchProtocol`)
overrides :meth:`RunReader._deliver_lines` and :meth:`RunReader._deliver_run`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain
from operator import length_hint
from typing import Any, Optional, Protocol, Union

from twisted.python.failure import Failure

from txchanges.errors import FeedError
from txchanges.feed._body import BodyReader
from txchanges.feed._runs import Item, Run, fast_loads, item_of, iter_items

__all__ = ["RunReader", "Lines", "Rest", "Delivery", "Watcher"]


class Lines:
    """
    Complete lines of the body, not parsed yet, from *start* on.
    """

    __slots__ = ("lines", "start")

    def __init__(self, lines: list[bytes], start: int = 0) -> None:
        self.lines = lines
        self.start = start


class Rest:
    """
    The changes of a run from *start* on: what a pause held back.
    """

    __slots__ = ("run", "start")

    def __init__(self, run: Run, start: int) -> None:
        self.run = run
        self.start = start


#: What :meth:`RunReader._deliver` delivers from.
Delivery = Union[Item, Lines, Rest]


class Watcher(Protocol):
    """
    What a :class:`RunReader`'s owner may want to choose and know of the
    calls made for each change: the reader asks it what to call before each
    loop over a read's changes, and tells it what no plain call says.
    """

    #: Whether :meth:`passed` is wanted.
    counting: bool

    def pick(self) -> Callable[[dict[str, Any]], object]:
        """What the next changes are handed to, until one of the other
        methods returns ``True`` or :meth:`RunReader.repick` is called."""

    def passed(self, on_row: Any, count: int, seq: Any) -> None:
        """*on_row* returned ``None`` for *count* more changes; *seq* is the
        newest seq among them that is not ``None``, if any."""

    def returned(self, on_row: Any, row: dict[str, Any], result: Any) -> bool:
        """*on_row* returned *result*, not ``None``, for *row*.

        :return: Whether to pick again before the next change."""

    def raised(self, on_row: Any, row: dict[str, Any], failure: Failure) -> bool:
        """*on_row* raised for *row*.

        :return: Whether that is taken care of (delivery goes on, and what
            to call is picked again); if not, the body fails with it."""


class RunReader(BodyReader):
    """
    A :class:`~txchanges.feed._body.BodyReader` that delivers changes one by
    one with as little work per change as it can; see the module docstring.

    :ivar watcher: Chooses what each change is handed to and hears what it
        returned or raised (see :class:`Watcher`); without one, every change
        goes to the callable given at construction and what it returns is
        ignored.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # While a list of lines or of changes is being delivered: the list
        # and the iterator on it, so that a pause or a stop from the
        # callable can end that loop (see _cut); where the rest of the list
        # starts once cut; and where the changes not yet told to the
        # watcher's passed() start.
        self._delivering: Optional[tuple[list[Any], Iterator[Any]]] = None
        self._cut_at: Optional[int] = None
        self._reported = 0
        self.watcher: Optional[Watcher] = None

    def repick(self) -> None:
        """
        What the changes are handed to may have changed: ask the watcher
        again before the next change (after the call under way, if any).
        """
        self._cut()

    def _deliver(self, items: Iterator[Delivery]) -> bool:
        """
        Deliver *items* in order, until the end row or a pause, a stop or a
        failure.

        :return: Whether the body is still going and *items* ran out; when
            paused, what is left is the backlog.
        """
        try:
            while True:
                for item in items:
                    kind = type(item)
                    if kind is Lines or kind is Rest or kind is list:
                        going = self._deliver_changes(item, items)  # type: ignore[arg-type]
                        if going is None:
                            return False
                        if going is not items:
                            # What to go on with first: the item of a line
                            # that is not a change, the rest of the list.
                            items = going
                            break
                    elif item is None:
                        self.heartbeats += 1
                    else:
                        self._end_row(item)  # type: ignore[arg-type]
                        return False
                else:
                    return True
        except FeedError as e:
            self._fail(e)
            return False

    def _deliver_changes(self, item: Union[Lines, Rest, Run], items: Iterator[Delivery]) -> Optional[Iterator[Delivery]]:
        """
        Hand the changes of *item* (lines, or a run parsed already) to what
        :meth:`_pick` chooses, one by one.

        :return: ``None`` when delivery is over for now (paused: the rest is
            the backlog); *items* when *item* was delivered whole; otherwise
            what to go on with, then *items*.
        """
        if isinstance(item, Lines):
            return self._deliver_lines(item, items)
        if isinstance(item, Rest):
            return self._deliver_run(item.run, item.start, items)
        return self._deliver_run(item, 0, items)

    def _pick(self) -> Callable[[dict[str, Any]], object]:
        return self._on_row if self.watcher is None else self.watcher.pick()

    def _deliver_lines(self, unparsed: Lines, items: Iterator[Delivery]) -> Optional[Iterator[Delivery]]:
        """
        Parse the lines and hand each change over, until a line that is not
        a change row, or a pause, a stop, a failure or a change of callable.
        """
        lines = unparsed.lines
        start = unparsed.start
        rows = iter(lines)
        if start:
            rows.__setstate__(start)  # type: ignore[attr-defined]
        loads = fast_loads
        on_row = self._pick()
        row: Any = None
        other: Any = _NOTHING
        self._delivering = (lines, rows)
        self._reported = start
        try:
            for line in rows:
                try:
                    row = loads(line)
                except ValueError:
                    other = None
                    break
                try:
                    # A change row is a dict with these three keys; for
                    # anything else one of them raises.
                    row["changes"]
                    row["id"]
                    row["seq"]
                except (KeyError, TypeError):
                    other = row
                    break
                result = on_row(row)
                if result is not None:
                    self._report_returned(on_row, row, result, lines)
        except Exception as e:
            at = self._stop_point(len(lines), -1)
            if not self._raised(on_row, row, lines, at):
                # The change whose callable raised does not count.
                self._lines_passed(on_row, lines, start, at, None)
                self._fail(e)
                return None
            self._lines_passed(on_row, lines, start, at + 1, row)
            return self._go_on(Lines(lines, at + 1), at + 1 < len(lines), items)
        if other is not _NOTHING:
            at = self._stop_point(len(lines), -1)
            self._lines_passed(on_row, lines, start, at, None)
            line = lines[at]
            first = iter_items([line]) if other is None else item_of(other, line)
            return chain(first, (Lines(lines, at + 1),), items)
        at = self._stop_point(len(lines), 0)
        self._lines_passed(on_row, lines, start, at, row)
        return self._go_on(Lines(lines, at), at < len(lines), items)

    def _deliver_run(self, run: Run, start: int, items: Iterator[Delivery]) -> Optional[Iterator[Delivery]]:
        """
        Hand the changes of *run* from *start* on over, one by one, until a
        pause, a stop, a failure or a change of callable.
        """
        rows = iter(run)
        if start:
            rows.__setstate__(start)  # type: ignore[attr-defined]
        on_row = self._pick()
        self._delivering = (run, rows)
        self._reported = start
        row: Any = None
        try:
            for row in rows:
                result = on_row(row)
                if result is not None:
                    self._report_returned(on_row, row, result, run)
        except Exception as e:
            at = self._stop_point(len(run), -1)
            if not self._raised(on_row, row, run, at):
                self._run_passed(on_row, run, start, at)
                self._fail(e)
                return None
            self._run_passed(on_row, run, start, at + 1)
            return self._go_on(Rest(run, at + 1), at + 1 < len(run), items)
        at = self._stop_point(len(run), 0)
        self._run_passed(on_row, run, start, at)
        return self._go_on(Rest(run, at), at < len(run), items)

    def _go_on(self, rest: Union[Lines, Rest], more: bool, items: Iterator[Delivery]) -> Optional[Iterator[Delivery]]:
        """
        After a loop: stop, pause (the *rest* of the list, if *more*, then
        *items* are the backlog), or go on.
        """
        if self._done:
            self._fire_stopped()
            return None
        if self._paused:
            self._backlog = chain((rest,), items) if more else items
            return None
        if more:
            # Paused and resumed by the same call, or what to call changed.
            return chain((rest,), items)
        return items

    # -- what the watcher is told --------------------------------------------

    def _position(self, length: int) -> int:
        """
        Where the loop under way is: the index of the item after the one
        being delivered.
        """
        if self._cut_at is not None:
            return self._cut_at
        assert self._delivering is not None
        return length - length_hint(self._delivering[1])

    def _report_returned(self, on_row: Any, row: dict[str, Any], result: Any, listed: list[Any]) -> None:
        watcher = self.watcher
        if watcher is None:
            return
        at = self._position(len(listed)) - 1
        self._report(on_row, listed, at)
        self._reported = at + 1
        if watcher.returned(on_row, row, result):
            self._cut()

    def _raised(self, on_row: Any, row: dict[str, Any], listed: list[Any], at: int) -> bool:
        """
        In the except clause that caught what the callable raised for the
        item at *at*: whether the watcher took care of it.
        """
        watcher = self.watcher
        if watcher is None:
            return False
        self._report(on_row, listed, at)
        self._reported = at + 1
        return watcher.raised(on_row, row, Failure())

    def _report(self, on_row: Any, listed: list[Any], end: int) -> None:
        """
        Tell the watcher that the changes from the last one told to *end*
        were passed.
        """
        watcher = self.watcher
        begin = self._reported
        if watcher is None or not watcher.counting or end <= begin:
            return
        if type(listed[0]) is bytes:
            seq = _newest_seq(listed, begin, end)
        else:
            seq = _run_seq(listed, begin, end)
        watcher.passed(on_row, end - begin, seq)

    def _stop_point(self, length: int, back: int) -> int:
        """
        End the loop under way: where did it stop?

        :param length: The length of the list it ran over.
        :param back: ``-1`` when the loop stopped on the item it had just
            taken (a line that is not a change, a callable that raised),
            which therefore is not delivered; else ``0``.
        :return: The index of the first item not delivered.
        """
        at = self._position(length) + back
        self._delivering = None
        self._cut_at = None
        return at

    def _lines_passed(self, on_row: Any, lines: list[bytes], start: int, end: int, last: Any) -> None:
        """
        Move :attr:`last_seq` past the changes of ``lines[start:end]``, and
        tell the watcher about those it was not told of.

        :param last: The last of them, if at hand; else (or when its seq is
            ``null``) the lines are parsed again, from the end.
        """
        if end <= start:
            return
        seq = None if last is None else last["seq"]
        if seq is None:
            seq = _newest_seq(lines, start, end)
        if seq is not None:
            self.last_seq = seq
        reported = self._reported
        if end > reported and self.watcher is not None and self.watcher.counting:
            if reported != start and (last is None or last["seq"] is None):
                seq = _newest_seq(lines, reported, end)
            self.watcher.passed(on_row, end - reported, seq)

    def _run_passed(self, on_row: Any, run: Run, start: int, end: int) -> None:
        """
        :meth:`_lines_passed` for a run.
        """
        seq = _run_seq(run, start, end)
        if seq is not None:
            self.last_seq = seq
        reported = self._reported
        if end > reported and self.watcher is not None and self.watcher.counting:
            self.watcher.passed(on_row, end - reported, seq if reported == start else _run_seq(run, reported, end))

    def _cut(self) -> None:
        """
        End the loop under way after the call in progress: its iterator is
        moved to the end of its list, and where the rest starts is kept.
        """
        if self._delivering is not None and self._cut_at is None:
            lines, rows = self._delivering
            self._cut_at = len(lines) - length_hint(rows)
            rows.__setstate__(len(lines))  # type: ignore[attr-defined]

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self._cut()

    def _discard(self) -> None:
        # Stopped or failed: nothing more of the loop under way either.
        self._cut()


# What _deliver_lines stopped on, when not a line that is not a change.
_NOTHING = object()


def _newest_seq(lines: list[bytes], start: int, end: int) -> Any:
    """
    The newest seq that is not ``None`` among the change rows of
    ``lines[start:end]``, parsed again: only for a feed with
    ``seq_interval``, whose rows mostly carry ``"seq": null``.
    """
    for line in reversed(lines[start:end]):
        seq = fast_loads(line)["seq"]
        if seq is not None:
            return seq
    return None


def _run_seq(run: Run, start: int, end: int) -> Any:
    """
    The newest seq that is not ``None`` among ``run[start:end]``.
    """
    for i in range(end - 1, start - 1, -1):
        seq = run[i]["seq"]
        if seq is not None:
            return seq
    return None
