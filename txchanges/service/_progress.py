"""
Which rows are done, and the resume point that follows from it.

Rows are handled out of order when several run at once; the resume point is
the newest sequence before which *every* row is done, so that a restart from
it loses nothing. Sequences are opaque: order comes from arrival, never from
comparing them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["Progress", "DedupWindow"]


class Progress:
    """
    A watermark over rows in arrival order.

    :param resume: The resume point before any row arrives.
    """

    def __init__(self, resume: Any) -> None:
        self.resume = resume
        # Tickets are consecutive: _head is the oldest not yet behind the
        # resume point, _next the one the next row gets. Rows done out of
        # order wait in _done until the rows before them are done too.
        self._head = 0
        self._next = 0
        self._seqs: dict[int, Any] = {}
        self._done: set[int] = set()

    @property
    def tracked(self) -> int:
        """
        How many rows are past the resume point: not done, or done behind
        one that is not.
        """
        return self._next - self._head

    @property
    def in_flight(self) -> int:
        """
        How many rows have arrived and are not done.
        """
        return self._next - self._head - len(self._done)

    def begin(self, seq: Any) -> int:
        """
        Note a row's arrival.

        :param seq: Its sequence; ``None`` (``seq_interval`` rows) never
            becomes the resume point, but still holds it back until done.
        :return: A ticket for :meth:`finish`.
        """
        ticket = self._next
        self._next = ticket + 1
        self._seqs[ticket] = seq
        return ticket

    def finish(self, ticket: int) -> bool:
        """
        Note that a row's handling is done.

        :return: Whether the resume point moved.
        """
        if ticket != self._head:
            self._done.add(ticket)
            return False
        seqs, done = self._seqs, self._done
        moved = False
        while True:
            seq = seqs.pop(ticket)
            if seq is not None:
                self.resume = seq
                moved = True
            ticket += 1
            if ticket not in done:
                break
            done.remove(ticket)
        self._head = ticket
        return moved

    def done_at_once(self, seq: Any) -> bool:
        """
        Note a row that arrived and is already done: what :meth:`begin`
        then :meth:`finish` do, without a ticket, for the caller that knows
        no row is tracked (:attr:`tracked` is 0).

        :param seq: Its sequence, the new resume point unless ``None``.
        :return: Whether the resume point moved.
        """
        if seq is None:
            return False
        self.resume = seq
        return True

    def passed(self, seq: Any) -> bool:
        """
        Note a position the feed reached without a row to handle (the
        ``last_seq`` that ends a feed, which with a filter is past every
        row).

        :return: Whether the resume point moved.
        """
        return self.finish(self.begin(seq))


class DedupWindow:
    """
    Remembers the last *size* ``(id, revisions)`` pairs seen, so that a
    change CouchDB sends again (after a reconnect or a rewind) can be
    recognised.

    :param size: How many pairs to remember; ``0`` remembers none.
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"dedup window size must be >= 0, not {size!r}")
        self.size = size
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()

    @staticmethod
    def key(row: dict[str, Any]) -> tuple[Any, ...] | None:
        """
        What identifies a change: its id and revisions; ``None`` for rows
        without both.
        """
        docid = row.get("id")
        changes = row.get("changes")
        if docid is None or not isinstance(changes, list):
            return None
        revs = tuple(c.get("rev") for c in changes if isinstance(c, dict))
        return (docid, row.get("deleted", False), revs)

    def forget(self, row: dict[str, Any]) -> None:
        """
        Forget *row*: it was received but will not be handled (dropped at a
        stop, or its handler failed), so when the server sends it again it
        is no replay.
        """
        key = self.key(row)
        if key is not None:
            self._seen.pop(key, None)

    def seen(self, row: dict[str, Any]) -> bool:
        """
        Whether *row* was seen before; remembers it either way.
        """
        if not self.size:
            return False
        key = self.key(row)
        if key is None:
            return False
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return False
