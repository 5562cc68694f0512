"""
The continuous feed a batch at a time: :class:`BatchProtocol` hands its
callable every change parsed from one read of the body as one list.

The changes of a read are parsed together (see
:func:`~txchanges.feed._runs.parse_changes`) and cut into batches by
:func:`~txchanges.feed._runs.batches_of`: at most *max_batch* changes each,
and never two changes of one document in one batch. Heartbeats, the end
row and errors end the batch before them; an error is raised after the
batch of the changes before it. What costs per change when changes are
handed over one by one (a call, the seq bookkeeping, the checks between two
changes) is paid once per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Any, Callable, Optional

from txchanges.feed._delivery import Delivery, Lines
from txchanges.feed._protocol import DEFAULT_MAX_LINE_LENGTH, ChangesProtocol
from txchanges.feed._runs import LIMIT, Run, batches_of, iter_items, last_seq_of, parse_changes

__all__ = ["BatchProtocol", "DEFAULT_MAX_BATCH", "check_max_batch"]

#: The most changes in one batch unless said otherwise. A 64 KiB read of a
#: backlog holds about 400 changes without documents; a batch of 200 is
#: large enough that what a batch costs is lost in the cost of its changes,
#: and small enough that the rows it holds (two or three objects each) stay
#: below the count of new objects that starts a pass of the cyclic garbage
#: collector (700), which larger batches pay for once or more each.
DEFAULT_MAX_BATCH = 200


def check_max_batch(max_batch: object) -> int:
    """
    :raises ValueError: unless *max_batch* is a positive int.
    """
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, not {max_batch!r}")
    return max_batch


class BatchProtocol(ChangesProtocol):
    """
    Read a continuous feed's body and hand its changes over in batches.

    Everything else is :class:`~txchanges.feed._protocol.ChangesProtocol`'s:
    :attr:`finished`, :attr:`last_seq` (the newest seq of the batches whose
    callable returned), pausing (from the callable, it holds back the next
    batch), :meth:`stop`.

    :param on_batch: Called with each batch, a non-empty list of change
        rows in feed order (the dicts exactly as the server sent them); the
        list is the callable's to keep. Its return value is ignored; if it
        raises, the feed fails with that exception.
    :param on_activity: As for ``ChangesProtocol``.
    :param max_line_length: As for ``ChangesProtocol``.
    :param max_batch: The most changes in one batch.
    """

    def __init__(
        self,
        on_batch: Callable[[list[dict[str, Any]]], object],
        on_activity: Optional[Callable[[], object]] = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        super().__init__(on_batch, on_activity, max_line_length)  # type: ignore[arg-type]
        self._max_batch = check_max_batch(max_batch)

    def _deliver_lines(self, unparsed: Lines, items: Iterator[Delivery]) -> Optional[Iterator[Delivery]]:
        lines = unparsed.lines
        run, end, other, unique = parse_changes(lines, unparsed.start, self._max_batch)
        if other is LIMIT:
            # A batch is full: the rest of the lines are parsed once it is
            # handed over, so that at most one batch is held.
            items = chain((Lines(lines, end),), items)
        elif end < len(lines):
            # A line that is not a change: the rest of the read line by line
            # (the rows of a _db_updates feed are batched that way).
            items = chain(iter_items(lines[end:]), items)
        if not run:
            return items
        if unique and len(run) <= self._max_batch:
            return self._deliver_batches([run], items)
        return self._deliver_batches(batches_of(run, self._max_batch), items)

    def _deliver_run(self, run: Run, start: int, items: Iterator[Delivery]) -> Optional[Iterator[Delivery]]:
        return self._deliver_batches(batches_of(run[start:] if start else run, self._max_batch), items)

    def _deliver_batches(self, batches: list[Run], items: Iterator[Delivery]) -> Optional[Iterator[Delivery]]:
        """
        Hand *batches* over, in order, until a pause, a stop or a failure.

        :return: What to go on with (*items*); ``None`` when delivery is
            over for now (paused: the batches left, then *items*, are the
            backlog).
        """
        on_batch: Callable[[Run], object] = self._on_row  # type: ignore[assignment]
        for i, batch in enumerate(batches):
            # Before the call: the batch is the callable's to change.
            seq = last_seq_of(batch)
            try:
                on_batch(batch)
            except Exception as e:
                self._fail(e)
                return None
            if seq is not None:
                self.last_seq = seq
            if self._done:
                self._fire_stopped()
                return None
            if self._paused:
                rest = batches[i + 1:]
                self._backlog = chain(rest, items) if rest else items
                return None
        return items
