"""
The command's output: each change a JSON line on stdout (with its database's
name when following many), and a quiet end when the reader of stdout goes
away.
"""

from __future__ import annotations

import json
import os
from typing import Any, BinaryIO, Callable, Optional

__all__ = ["Printer", "DatabasesPrinter", "silence_stdout"]


class Printer:
    """
    The follower's handler: writes each change as a JSON line and flushes
    it before the change counts as done; after *limit* changes, or when
    stdout is closed, it stops the follower from inside the call, so that
    no further change is printed.
    """

    def __init__(self, out: BinaryIO, limit: Optional[int], stop: Callable[[], object]) -> None:
        self._out = out
        self._left = limit
        self._stop = stop

    def __call__(self, change: dict[str, Any]) -> None:
        if self._left is not None and self._left <= 0:
            raise RuntimeError("a change arrived after --limit was reached")
        try:
            self._out.write(json.dumps(change, ensure_ascii=False).encode("utf-8") + b"\n")
            self._out.flush()
        except BrokenPipeError:
            # The reader is gone: a normal end. Stopping first makes the
            # failure below quiet, and it keeps this change unacknowledged.
            silence_stdout(self._out)
            self._stop()
            raise
        if self._left is not None:
            self._left -= 1
            if self._left == 0:
                self._stop()


class DatabasesPrinter:
    """
    The output of a follower of many databases: each change as a JSON line
    that starts with its database's name, ``{"db": NAME, "seq": ...}``, and
    ``{"db": NAME, "db_deleted": true}`` for a followed database that was
    deleted. A closed stdout stops the follower, as with :class:`Printer`.
    """

    def __init__(self, out: BinaryIO, stop: Callable[[], object]) -> None:
        self._printer = Printer(out, None, stop)

    def change(self, db: str, change: dict[str, Any]) -> None:
        """The handler: ``handler(db_name, change)``."""
        self._printer({"db": db, **change})

    def deleted(self, db: str) -> None:
        """Told of a deleted database (``on_deleted``)."""
        self._printer({"db": db, "db_deleted": True})


def silence_stdout(out: BinaryIO) -> None:
    """
    The reader of *out* is gone: send what is left to ``/dev/null``, so
    that the final flush at exit does not fail a second time.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
