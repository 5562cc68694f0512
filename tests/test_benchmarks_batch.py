"""The batch benchmark stays runnable: its clients read the whole feed in batches, and it rewrites only its section."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import batch, clients

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["line", "backlog"])
def feed_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A canned feed server of 300 changes, with each chunking, in its own process."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "feedserver.py"), "--changes", "300", "--exit-with-parent",
         "--chunks", request.param],
        stdout=subprocess.PIPE, cwd=ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    try:
        assert line.startswith("listening http://127.0.0.1:")
        yield line.split()[1]
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(10)


@pytest.mark.parametrize("client", ["consumer-batch", "service-batch"])
def test_batch_clients_count_every_change(feed_url: str, client: str) -> None:
    """Each batch client sees exactly the feed's changes, whatever max_batch."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.clients", client, feed_url, "300", "--max-batch", "7"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["changes"] == 300


def test_the_batch_benchmark_names_clients_that_exist() -> None:
    """benchmarks/batch.py measures clients that benchmarks/clients.py has."""
    for client in batch.CLIENTS:
        assert client.name in clients.CLIENTS


def test_write_section_replaces_only_its_own(tmp_path: Path) -> None:
    """The section goes at the end the first time, then replaces itself; the sections around it stay as they were."""
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Targets\n\nA\n\n## Many databases\n\nB\n")
    batch.write_section(batch.SECTION + "\n\nfirst\n", path)
    batch.write_section(batch.SECTION + "\n\nsecond\n", path)
    assert path.read_text() == "# Benchmarks\n\n## Targets\n\nA\n\n## Many databases\n\nB\n\n" + batch.SECTION + "\n\nsecond\n"
    path.write_text(path.read_text() + "\n## Later\n\nC\n")
    batch.write_section(batch.SECTION + "\n\nthird\n", path)
    assert path.read_text().endswith(batch.SECTION + "\n\nthird\n\n## Later\n\nC\n")
