"""
Sections of BENCHMARKS.md that a benchmark script other than
``benchmarks/run.py`` writes, each between two markers of its own:

    <!-- section: NAME -->
    ...
    <!-- end of section: NAME -->

A script replaces its own section (or adds it at the end) and leaves the rest
of the file as it was; ``run.py``, which rewrites the file, keeps them.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["write_section", "kept_sections"]

_SECTION = re.compile(r"^<!-- section: (?P<name>[\w.-]+) -->\n.*?^<!-- end of section: (?P=name) -->\n", re.M | re.S)


def _block(name: str, text: str) -> str:
    return f"<!-- section: {name} -->\n{text.strip()}\n<!-- end of section: {name} -->\n"


def write_section(path: Path, name: str, text: str) -> None:
    """
    Put *text* in the section *name* of the file at *path*: in place of the
    section's old text, or at the end of the file.
    """
    old = path.read_text() if path.exists() else ""
    block = _block(name, text)
    for match in _SECTION.finditer(old):
        if match.group("name") == name:
            path.write_text(old[:match.start()] + block + old[match.end():])
            return
    path.write_text(old.rstrip("\n") + "\n\n" + block if old.strip() else block)


def kept_sections(path: Path) -> str:
    """
    The sections of the file at *path*, each with its markers, for a script
    that rewrites the rest of the file to add back; ``""`` when none.
    """
    if not path.exists():
        return ""
    return "".join("\n" + m.group(0) for m in _SECTION.finditer(path.read_text()))
