"""./run test installs and type-checks only when needed, and always on a fresh clone.

Each test copies ./run into a skeleton project whose .venv/bin/python is a
fake that records how it was called (pip, mypy, pytest) and runs nothing.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../calls"
case "$*" in
  "-m mypy"*) exit "${MYPY_STATUS:-0}" ;;
esac
"""


@pytest.fixture
def project(tmp_path):
    """A skeleton of the project with ./run, an installed test server and a fake virtualenv."""
    shutil.copy(ROOT / "run", tmp_path / "run")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "txchanges"\n')
    (tmp_path / "setup.cfg").write_text("[mypy]\nstrict = True\n")
    (tmp_path / "txchanges").mkdir()
    (tmp_path / "txchanges" / "__init__.py").write_text('__version__ = "1.0"\n')
    (tmp_path / "txchanges" / "client.py").write_text("x = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("")
    lock = '{"lockfileVersion": 3}\n'
    (tmp_path / "testserver" / "node_modules").mkdir(parents=True)
    for name in ["package-lock.json", "node_modules/.package-lock.json", "node_modules/.installed-lock.json"]:
        (tmp_path / "testserver" / name).write_text(lock)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def run_test(project, *args, mypy_status=0):
    """Runs ./run test ARGS; returns its exit status and the steps the fake Python was asked for."""
    calls = project / ".venv" / "calls"
    calls.unlink(missing_ok=True)
    env = {"PATH": os.environ["PATH"], "PYTHON": sys.executable, "MYPY_STATUS": str(mypy_status)}
    done = subprocess.run(["./run", "test", *args], cwd=project, env=env, capture_output=True, text=True, timeout=60)
    lines = calls.read_text().splitlines() if calls.exists() else []
    steps = [step for step in ("pip", "mypy", "pytest") if any(f"-m {step}" in line for line in lines)]
    return done.returncode, steps


def test_a_fresh_clone_installs_type_checks_and_runs_every_test(project):
    """With no .venv stamps, a plain ./run test installs, runs mypy and runs pytest with no arguments."""
    assert run_test(project) == (0, ["pip", "mypy", "pytest"])
    assert (project / ".venv" / "calls").read_text().splitlines()[-1] == "-m pytest"


def test_nothing_changed_skips_install_and_mypy(project):
    """A second plain run with nothing changed only runs pytest."""
    run_test(project)
    assert run_test(project) == (0, ["pytest"])


def test_a_changed_source_is_type_checked_again_but_not_reinstalled(project):
    """Editing a module under txchanges/ makes the next plain run type-check again, without pip."""
    run_test(project)
    (project / "txchanges" / "client.py").write_text("x = 2\n")
    assert run_test(project) == (0, ["mypy", "pytest"])
    assert run_test(project, "-x", "-q") == (0, ["pytest"])


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: (p / "pyproject.toml").write_text('[project]\nname = "txchanges"\ndependencies = ["treq"]\n'),
        lambda p: (p / "setup.cfg").write_text("[mypy]\nstrict = False\n"),
        lambda p: (p / "txchanges" / "__init__.py").write_text('__version__ = "1.1"\n'),
    ],
    ids=["pyproject", "setup.cfg", "version"],
)
def test_changed_metadata_reinstalls_and_type_checks(project, edit):
    """A change to pyproject.toml, setup.cfg or the version reinstalls the package and type-checks again."""
    run_test(project)
    edit(project)
    assert run_test(project) == (0, ["pip", "mypy", "pytest"])


@pytest.mark.parametrize("args", [["tests/test_a.py"], ["tests/test_a.py::test_x", "-q"], ["-k", "wait"], ["--lf"]])
def test_arguments_that_select_tests_skip_mypy(project, args):
    """A path, node id, -k or --lf selects tests: the run skips mypy even on a fresh clone, and passes them on."""
    assert run_test(project, *args) == (0, ["pip", "pytest"])
    assert (project / ".venv" / "calls").read_text().splitlines()[-1] == " ".join(["-m", "pytest", *args])


def test_a_failing_mypy_stops_the_run_and_is_run_again(project):
    """When mypy fails, no test runs and the next plain run type-checks again."""
    assert run_test(project, mypy_status=1) == (1, ["pip", "mypy"])
    assert run_test(project) == (0, ["mypy", "pytest"])
