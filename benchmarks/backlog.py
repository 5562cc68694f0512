#!/usr/bin/env python3
"""
Catching up on a large backlog: a follower's first job, reading a database's
whole history once, timed for txchanges next to nano (the official CouchDB
client for Node.js) and a raw socket loop, in one command:

    python benchmarks/backlog.py            # 1,000,000 changes; updates its section of BENCHMARKS.md
    python benchmarks/backlog.py --changes 2000 --small 1000 --runs 1 --markdown /tmp/report.md

It installs nano (``npm ci`` in ``benchmarks/node``, skipped when the lock
file has not changed), starts the canned CouchDB-3-style feed server
(:mod:`benchmarks.feedserver`, ~1490-byte chunks as CouchDB sends a backlog)
in a process of its own, runs every client once untimed (so that the server
has rendered every body it serves), then times every client, each in a
process of its own, round after round in a rotating order:

- ``Consumer.fetch_rows`` on the normal feed, with ``seq_interval=100``: the
  body nano's ``changesReader.spool`` asks for (it sends
  ``seq_interval=batchSize``, 100 by default); with orjson, and with the
  standard library's parser; and without ``seq_interval``;
- nano's ``changesReader.spool`` (``benchmarks/node/spool.js``);
- a blocking socket, a de-chunking loop and ``orjson.loads`` per row over
  the same body: the floor for a Python client;
- ``ChangesService`` catching up from ``since=0`` through pages of the
  normal feed (``catch_up="normal"``), and through the continuous feed
  (``catch_up="continuous"``), each until its checkpoint reaches the last
  change: the faster of the two should be the service's default.

It reports the median rate of each, its ratio to nano's and to the raw loop's
from the same rounds, and peak resident memory at a smaller feed and at the
full one (one untimed run each), and checks the targets. Every client counts
the changes it saw and fails unless it saw them all.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import FeedServers, machine, progress, versions  # noqa: E402
from benchmarks.sections import write_section  # noqa: E402

NODE_DIR = ROOT / "benchmarks" / "node"
SECTION = "backlog"
#: nano's spool asks for seq_interval=batchSize; the others ask for the same.
SEQ_INTERVAL = 100
#: fetch_rows at least this many times nano's spool rate.
MIN_VS_NANO = 1.2
MAX_RSS_GROWTH_MIB = 5.0


@dataclass(frozen=True)
class Client:
    """One way of reading the backlog: a label, what it reads, and the command after its URL and count."""

    label: str
    reads: str
    kind: str
    args: tuple[str, ...] = ()

    def command(self, url: str, changes: int) -> list[str]:
        if self.kind == "node":
            return ["node", str(NODE_DIR / "spool.js"), url, str(changes), str(SEQ_INTERVAL)]
        return [sys.executable, "-m", "benchmarks.clients", self.kind, url, str(changes), *self.args]


SI = ("--seq-interval", str(SEQ_INTERVAL))
NORMAL_SI = f"normal feed, seq_interval={SEQ_INTERVAL}"
FETCH_ROWS = Client("txchanges Consumer.fetch_rows (orjson)", NORMAL_SI, "normal-stream", SI)
FETCH_ROWS_JSON = Client("txchanges Consumer.fetch_rows (json)", NORMAL_SI, "normal-stream", SI + ("--no-orjson",))
FETCH_ROWS_FULL = Client("txchanges Consumer.fetch_rows (orjson)", "normal feed, every seq", "normal-stream")
NANO = Client("nano changesReader.spool", NORMAL_SI, "node")
RAW = Client("raw socket + orjson.loads", NORMAL_SI, "raw-normal-orjson", SI)
CATCH_UP = Client('txchanges ChangesService, catch_up="normal"',
                  f"pages of the normal feed, seq_interval={SEQ_INTERVAL}", "service-catch-up")
CONTINUOUS = Client('txchanges ChangesService, catch_up="continuous"', "continuous feed, every seq", "service")
CLIENTS = [FETCH_ROWS, FETCH_ROWS_JSON, FETCH_ROWS_FULL, NANO, RAW, CATCH_UP, CONTINUOUS]


def install_nano() -> None:
    """``npm ci`` in benchmarks/node, unless what it installed is what the lock file says."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("error: node and npm are needed for nano (install Node.js 20 or newer)")
    lock = NODE_DIR / "package-lock.json"
    stamp = NODE_DIR / "node_modules" / ".installed-lock.json"
    if stamp.exists() and stamp.read_bytes() == lock.read_bytes():
        return
    progress("installing nano (npm ci in benchmarks/node)")
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True,
                   stdout=subprocess.DEVNULL)
    shutil.copyfile(lock, stamp)


def run_client(client: Client, url: str, changes: int) -> dict[str, Any]:
    """Run one client process; return its JSON report."""
    done = subprocess.run(client.command(url, changes), capture_output=True, text=True, cwd=ROOT, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{client.label} ({client.reads}) failed ({done.returncode}): "
                           f"{done.stdout[-500:]} {done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


@dataclass
class Results:
    changes: int
    small: int
    runs: int
    seconds: dict[Client, list[float]]
    rss_kib: dict[tuple[Client, int], int]

    def rate(self, client: Client) -> float:
        return self.changes / statistics.median(self.seconds[client])


def measure(changes: int, small: int, runs: int) -> Results:
    results = Results(changes, small, runs, {c: [] for c in CLIENTS}, {})
    servers = FeedServers()
    try:
        url = servers.url("backlog", changes)
        for client in CLIENTS:
            results.rss_kib[(client, changes)] = run_client(client, url, changes)["max_rss_kib"]
        progress("warm-up round done")
        for number in range(runs):
            shift = number % len(CLIENTS)
            for client in CLIENTS[shift:] + CLIENTS[:shift]:
                report = run_client(client, url, changes)
                results.seconds[client].append(report["seconds"])
                key = (client, changes)
                results.rss_kib[key] = max(results.rss_kib[key], report["max_rss_kib"])
            progress(f"round {number + 1}/{runs} done")
        small_url = servers.url("backlog", small)
        for client in CLIENTS:
            results.rss_kib[(client, small)] = run_client(client, small_url, small)["max_rss_kib"]
        progress(f"memory at {small:,} changes done")
    finally:
        servers.stop()
    return results


def catch_up_default() -> str:
    """
    The service's default *catch_up*, asked of a process of its own: on
    Linux a child's peak RSS starts at its parent's (it is kept across
    ``exec``), so this process imports nothing it need not.
    """
    code = "from txchanges.service._service import CATCH_UP_DEFAULT; print(CATCH_UP_DEFAULT)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return done.stdout.strip()


def targets(results: Results) -> list[tuple[str, str, bool]]:
    """(target, the figure, met) for each target."""
    default = catch_up_default()
    fetch, nano, catch_up, continuous = (results.rate(c) for c in (FETCH_ROWS, NANO, CATCH_UP, CONTINUOUS))
    out = [(
        f"Consumer.fetch_rows (orjson) at least {MIN_VS_NANO}x nano's spool, the same body",
        f"{fetch / nano:.2f}x ({fetch:,.0f} / {nano:,.0f} changes/s)",
        fetch >= MIN_VS_NANO * nano,
    ), (
        f'ChangesService: its default, catch_up="{default}", the faster of "normal" and "continuous"',
        f'"normal" {catch_up / continuous:.2f}x "continuous" ({catch_up:,.0f} / {continuous:,.0f} changes/s)',
        (catch_up > continuous) == (default == "normal"),
    )]
    for client in (FETCH_ROWS, CATCH_UP):
        a, b = results.rss_kib[(client, results.small)], results.rss_kib[(client, results.changes)]
        out.append((
            f"{client.label.replace('txchanges ', '')}: peak RSS at {results.changes:,} at most "
            f"{MAX_RSS_GROWTH_MIB:g} MiB above {results.small:,}",
            f"{(b - a) / 1024:+.1f} MiB",
            (b - a) / 1024 <= MAX_RSS_GROWTH_MIB,
        ))
    return out


def node_versions() -> str:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    package = json.loads((NODE_DIR / "node_modules" / "nano" / "package.json").read_text())
    return f"Node.js {node}, nano {package['version']}"


def report(results: Results, command: str) -> str:
    nano, raw = results.rate(NANO), results.rate(RAW)
    lines = [
        "## Catching up on a backlog: the normal feed",
        "",
        "A follower's first job is often to read a database's whole history once. Measured by "
        "`benchmarks/backlog.py` (see its docstring): every client reads the canned feed of "
        f"{results.changes:,} changes from `since=0` (opaque ~60-character seqs, 32-hex ids, a deleted row "
        "every 50, ~1490-byte chunks as CouchDB sends a backlog), each in a process of its own; the rates are "
        f"the median of {results.runs} round{'s' if results.runs != 1 else ''} in a rotating order, the ratios from the same rounds. The "
        "service keeps its checkpoint in memory and is done when the checkpoint reaches the last change.",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}  ",
        f"Machine: {machine()}  ",
        f"Versions: {versions()}, {node_versions()}",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
    ]
    for target, figure, met in targets(results):
        lines.append(f"| {target} | {figure} | {'met' if met else '**not met**'} |")
    lines += [
        "",
        f"| client | reads | changes/s | vs nano spool | vs raw loop | peak RSS at {results.small:,} "
        f"| peak RSS at {results.changes:,} |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for client in CLIENTS:
        rate = results.rate(client)
        small, big = results.rss_kib[(client, results.small)], results.rss_kib[(client, results.changes)]
        lines.append(f"| {client.label} | {client.reads} | {rate:,.0f} | {rate / nano:.2f}x | {rate / raw:.2f}x "
                     f"| {small / 1024:.1f} MiB | {big / 1024:.1f} MiB |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Time catching up on a large backlog: txchanges, nano, a raw loop.")
    parser.add_argument("--changes", type=int, default=1_000_000, help="changes in the backlog (1,000,000)")
    parser.add_argument("--small", type=int, default=200_000, help="the smaller backlog for memory (200,000)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (5)")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md",
                        help="the file whose section this run writes (BENCHMARKS.md)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    install_nano()
    results = measure(args.changes, args.small, args.runs)
    command = "python benchmarks/backlog.py" + ("" if not argv else " " + " ".join(argv))
    text = report(results, command)
    print(text)
    write_section(args.markdown, SECTION, text)
    progress(f"wrote its section of {args.markdown}; finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
