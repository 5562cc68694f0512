"""
The benchmark stays runnable: its canned feed server answers as CouchDB 3
does, and every client of ``benchmarks/run.py`` reads the whole feed and
counts it right (tiny feeds, no timing, no valgrind).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import clients, feedserver, run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def feed_url() -> Iterator[str]:
    """A canned feed server of 300 changes, one chunk per line, in its own process."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "feedserver.py"), "--changes", "300", "--exit-with-parent"],
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


def get(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def test_continuous_feed_is_couchdb_shaped(feed_url: str) -> None:
    """The continuous feed: N rows with opaque ~60-char seqs and 32-hex ids, deleted rows, then last_seq."""
    lines = get(feed_url + "db/_changes?feed=continuous&since=0").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 301 and rows[-1] == {"last_seq": feedserver.seq(300), "pending": 0}
    changes = rows[:-1]
    assert all(isinstance(r["seq"], str) and len(r["seq"]) == 60 for r in changes)
    assert all(len(r["id"]) == 32 and int(r["id"], 16) >= 0 for r in changes)
    assert sum(1 for r in changes if r.get("deleted")) == 300 // feedserver.DELETED_EVERY


def test_one_chunk_per_line_and_backlog_chunks() -> None:
    """Line mode frames each line as a chunk; backlog mode cuts ~1490-byte chunks across lines; both end with the last chunk."""
    line_mode = feedserver.Feed(40, False, "line").continuous()
    assert line_mode.count(b"\r\n0\r\n\r\n") == 1 and line_mode.count(b"\n\r\n") == 41 + 1
    backlog = feedserver.Feed(40, True, "backlog").continuous()
    assert backlog.startswith(b"5d2\r\n") and backlog.endswith(b"\r\n0\r\n\r\n")


def test_normal_feed_pages_with_since_and_limit(feed_url: str) -> None:
    """The normal feed is one document; since and limit page through it."""
    whole = json.loads(get(feed_url + "db/_changes"))
    assert len(whole["results"]) == 300 and whole["last_seq"] == feedserver.seq(300)
    page = json.loads(get(feed_url + "db/_changes?since=" + feedserver.seq(100) + "&limit=50"))
    assert [r["seq"] for r in page["results"]] == [feedserver.seq(n) for n in range(101, 151)]
    assert page["pending"] == 150
    info = json.loads(get(feed_url + "db"))
    assert info["update_seq"] == feedserver.seq(300) and info["doc_count"] == 300


def test_a_client_fails_on_a_wrong_count(feed_url: str) -> None:
    """A client that sees another number of changes than expected exits with status 1."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.clients", "raw-json", feed_url, "301"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 1 and json.loads(done.stdout)["changes"] == 300


def test_every_client_through_the_runner(tmp_path: Path) -> None:
    """run.py with tiny feeds runs every client on every feed, each seeing exactly the feed's changes, and writes its report."""
    out = tmp_path / "report.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--changes", "200", "--big", "400", "--runs", "1",
         "--no-callgrind", "--latency-writes", "0", "--docs", "--markdown", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for client in {c.label for _, c in run.THROUGHPUT + run.DOCS}:
        assert client in text
    assert "## Targets" in text and "## Memory" in text


def test_latency_client(couch_server: object) -> None:
    """The latency client follows a database on the test server and times every write."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.clients", "latency", couch_server.admin_url, "20",  # type: ignore[attr-defined]
         "--follower", "consumer"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["writes"] == 20 and 0 < result["median_ms"] <= result["p95_ms"]


def test_clients_listed() -> None:
    """The runner only names clients that exist."""
    for _, client in run.THROUGHPUT + run.DOCS + run.CALLGRIND:
        assert client.name in clients.CLIENTS


def test_the_many_databases_benchmark_runs_and_sees_every_write() -> None:
    """``benchmarks/many.py --quick``: every write reaches the handler (it fails otherwise), and the report names both targets."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "many.py"), "--quick"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "## Many databases" in done.stdout
    assert "p99 write-to-handler" in done.stdout and "per idle followed database" in done.stdout
