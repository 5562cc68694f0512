"""
benchmarks/backlog.py stays runnable: with a tiny backlog it installs nano,
runs every client (each must see every change), and writes its own section
of the report, leaving the rest of the file as it was (no timing checked).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks import backlog, sections

ROOT = Path(__file__).resolve().parent.parent


def test_backlog_benchmark_writes_its_section(tmp_path: Path) -> None:
    """A tiny run measures every client and puts its section after the report's own text, which stays intact."""
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\nthe other sections\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "backlog.py"), "--changes", "600", "--small", "300",
         "--runs", "1", "--markdown", str(report)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    assert text.startswith("# Benchmarks\n\nthe other sections\n")
    for client in backlog.CLIENTS:
        assert f"| {client.label} | {client.reads} |" in text
    assert text.count("<!-- section: backlog -->") == 1


def test_a_section_is_replaced_and_kept(tmp_path: Path) -> None:
    """Writing a section again replaces it in place; what run.py rewrites gets the sections back."""
    report = tmp_path / "B.md"
    report.write_text("# Top\n")
    sections.write_section(report, "one", "first")
    sections.write_section(report, "two", "second")
    sections.write_section(report, "one", "again")
    text = report.read_text()
    assert text.index("again") < text.index("second") and "first" not in text
    assert sections.kept_sections(report) == (
        "\n<!-- section: one -->\nagain\n<!-- end of section: one -->\n"
        "\n<!-- section: two -->\nsecond\n<!-- end of section: two -->\n"
    )
