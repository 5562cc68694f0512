"""
Running the scripts in ``examples/`` from tests, so that the suite can show
that every example is run.

A test that runs examples is marked ``@pytest.mark.runs_example("a.py", ...)``
and runs them through :func:`run_example` only; ``conftest.py`` checks after
each test that it ran exactly the scripts it declares, and
``test_readme.py`` that the declared scripts are all of ``examples/*.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["EXAMPLES", "ran", "run_example", "start_example"]

#: The examples directory.
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: The name of every script run so far in this process, in order.
ran: list[str] = []


def run_example(script: str, *args: str, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    """Run ``examples/SCRIPT`` with *args* in a new interpreter and return what it did."""
    path = EXAMPLES / script
    if not path.is_file():
        raise FileNotFoundError(path)
    ran.append(script)
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout)


def start_example(script: str, *args: str) -> "subprocess.Popen[str]":
    """Start ``examples/SCRIPT`` with *args* in a new interpreter, its stdout and stderr piped, and return it."""
    path = EXAMPLES / script
    if not path.is_file():
        raise FileNotFoundError(path)
    ran.append(script)
    return subprocess.Popen(
        [sys.executable, str(path), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
