"""
The progress line the command draws on a terminal while it catches up.
"""

from __future__ import annotations

from typing import Any, BinaryIO, TextIO

from twisted.internet.task import LoopingCall

from txchanges._reactor import Clock
from txchanges.service._pending import PendingProbe

__all__ = ["ProgressLine", "show_progress"]


def show_progress(out: BinaryIO, err: TextIO) -> bool:
    """
    :return: Whether to draw the progress line: *err* is a terminal and
        *out* is not (when it is, the printed changes are the progress).
    """
    return _isatty(err) and not _isatty(out)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressLine:
    """
    A one-line progress report on a terminal while catching up: changes
    handled, changes pending (asked of the server with ``limit=0``), and
    the rate; the line is cleared once nothing is pending.
    """

    def __init__(self, stream: TextIO, clock: Clock, follower: Any, interval: float = 1.0) -> None:
        self._stream = stream
        self._clock = clock
        self._follower = follower
        self._last = (clock.seconds(), follower.stats.handled)
        self._rate = 0.0
        self._shown = False
        # The line is drawn when the answer arrives, so that the pending
        # count is as fresh as the number handled beside it.
        self._probe = PendingProbe(
            follower.db, lambda: follower.resume_seq, lambda: follower.stats.handled, self._draw, clock
        )
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock  # type: ignore[assignment]
        self._loop.start(interval, now=False)

    def _tick(self) -> None:
        now, handled = self._clock.seconds(), self._follower.stats.handled
        then, before = self._last
        self._rate = (handled - before) / (now - then) if now > then else 0.0
        self._last = (now, handled)
        self._probe.ask()

    def _draw(self, pending: int) -> None:
        if pending and self._loop.running:
            self._write(f"\r{self._follower.stats.handled} changes, {pending} pending, {self._rate:.0f}/s\x1b[K")
            self._shown = True
        elif self._shown:
            self._clear()

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def _clear(self) -> None:
        self._write("\r\x1b[K")
        self._shown = False

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self._probe.stop()
        if self._shown:
            self._clear()
