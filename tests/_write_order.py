"""What a checkpoint file's write does, in order: for the tests of the stores that write files atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest


def record_write_order(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """
    Patch ``os.fsync`` and ``os.replace`` (for the rest of the test) to note
    each file or directory synced and each rename, within one directory or
    across; the calls still happen.

    :return: The list they append to.
    """
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append("replace within the directory" if Path(src).parent == Path(dst).parent else "replace across")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events
