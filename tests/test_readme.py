"""The README is a manual that works: its code runs, and what it points to exists."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]


def test_exactly_two_setup_commands_at_the_top():
    """The README opens with exactly the two commands: follow and test, both through ./run."""
    lang, first = BLOCKS[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert lang == "sh" and commands == ["./run follow", "./run test"]
    assert README.index("```sh") < README.index("\n## ")


def test_ci_runs_the_readme_test_command():
    """CI's entry point runs the README's test command."""
    assert "./run test" in (ROOT / ".ci" / "run").read_text()


def test_every_python_block_is_run_or_mirrored():
    """Each Python block either runs as it is (and is run below) or names an example that exists."""
    assert PYTHON
    for code in PYTHON:
        first = code.splitlines()[0]
        if first.startswith("# Runnable: "):
            example = ROOT / first.removeprefix("# Runnable: ").strip()
            assert example.is_file(), example
        else:
            assert first.startswith("# Runs as it is"), first


def example_tests() -> dict[str, set[str]]:
    """The examples each test function of the suite declares it runs (its runs_example marker), by test name."""
    declared: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        module = importlib.import_module(f"tests.{path.stem}")
        for name, obj in vars(module).items():
            if name.startswith("test") and callable(obj):
                scripts = {s for mark in getattr(obj, "pytestmark", []) if mark.name == "runs_example" for s in mark.args}
                if scripts:
                    declared[f"{path.stem}::{name}"] = scripts
    return declared


def test_every_example_is_tested():
    """Every script in examples/ is run by a test: the scripts the suite's tests declare they run (and, conftest
    checks, do run) are exactly examples/*.py."""
    declared = example_tests()
    run = set().union(*declared.values())
    assert run == {p.name for p in (ROOT / "examples").glob("*.py")}, declared


def _run(code, timeout=60):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def python_blocks_in(heading):
    """The Python blocks of the README section with that heading, up to the next heading of any level."""
    lines, fenced, inside = [], False, False
    for line in README.splitlines(keepends=True):
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            inside = line.rstrip("\n") == heading
        elif inside:
            lines.append(line)
    return [code for lang, code in re.findall(r"```(\w+)\n(.*?)```", "".join(lines), re.S) if lang == "python"]


#: The sections whose "Runs as it is" block a test below runs.
RUN_SECTIONS = ["## Quick start", "### Monitoring", "## Testing your handlers", "### Batch delivery"]


def test_every_block_that_runs_as_it_is_is_run():
    """Each block that says it runs as it is lies in a section whose block a test runs."""
    claimed = [code for code in PYTHON if code.startswith("# Runs as it is")]
    run = [code for heading in RUN_SECTIONS for code in python_blocks_in(heading)]
    assert sorted(claimed) == sorted(run)


def test_quick_start_runs_twice(couch_server, db_name):
    """The quick start runs against a real server and prints what it promises, and runs again on the database it made."""
    (code,) = python_blocks_in("## Quick start")
    assert "http://admin:secret@127.0.0.1:5984/" in code and '"mydb"' in code
    code = code.replace("http://admin:secret@127.0.0.1:5984/", couch_server.admin_url).replace('"mydb"', repr(db_name))
    first = _run(code)
    assert "next change:" in first and first.count("got ") == 3 and "resume from " in first
    second = _run(code)
    assert "next change:" in second and second.count("got ") == 6 and "resume from " in second


def test_testing_block_runs():
    """The txchanges.testing example runs as it is, with no server."""
    (code,) = python_blocks_in("## Testing your handlers")
    assert code.startswith("# Runs as it is")
    _run(code)


def test_batch_block_runs():
    """The batch handler example runs as it is, with no server, and checks the batches it was handed."""
    (code,) = python_blocks_in("### Batch delivery")
    assert code.startswith("# Runs as it is") and "batch_handler=" in code and "assert batches ==" in code
    _run(code)


def test_metrics_block_serves_what_the_follower_did():
    """The MetricsServer example follows an in-memory database and scrapes its handled change from /metrics."""
    (code,) = python_blocks_in("### Monitoring")
    assert code.startswith("# Runs as it is") and "MetricsServer(" in code
    out = _run(code)
    assert "['txchanges_changes_handled_total{db=\"http://couchdb.fake:5984/orders\"} 1.0']" in out.splitlines()
