#!/usr/bin/env python3
"""
The txchanges benchmark, in one command:

    python benchmarks/run.py            # the full run; rewrites BENCHMARKS.md but the sections of other scripts
    python benchmarks/run.py --quick    # a short run that checks everything works

It starts the canned feed server (:mod:`benchmarks.feedserver`) as separate
processes, runs every client (:mod:`benchmarks.clients`) in a process of its
own, alternating between them round after round, and reports:

- changes per second, the median of the rounds, with the ratios to the two
  baselines of the same run (a plain treq loop and a raw socket loop);
- instructions per change from ``valgrind --tool=callgrind``, each client
  run at two feed sizes so that start-up cancels out (repeatable within 1%,
  where wall-clock figures on a shared machine swing by tens of percent);
- peak resident memory at two feed sizes;
- the latency from a document write to the handler on the project's
  CouchDB-compatible test server (which needs ``testserver/node_modules``);

and checks each against the targets. Every client counts the changes it
saw and fails unless it saw exactly as many as the feed holds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.sections import kept_sections  # noqa: E402

MIB = 1024 * 1024

# The targets the figures are checked against.
MAX_INSTR_JSON = 20_000
MAX_INSTR_ORJSON = 15_000
MAX_SERVICE_RATIO = 1.2
MAX_RSS_GROWTH_MIB = 5.0


@dataclass(frozen=True)
class Client:
    """One way of reading the feed: a client of benchmarks.clients and its flags."""

    label: str
    name: str
    flags: tuple[str, ...] = ()

    @property
    def parser(self) -> str:
        if self.name in ("raw-json", "treq-lines") or "--no-orjson" in self.flags:
            return "json"
        return "orjson" if self.name != "normal-stream" else "json (C scanner)"


CONSUMER = Client("txchanges Consumer.wait", "consumer")
CONSUMER_JSON = Client("txchanges Consumer.wait", "consumer", ("--no-orjson",))
CONSUMER_TREQ = Client("txchanges Consumer.wait, feeds through treq", "consumer", ("--treq-feeds",))
SERVICE = Client("txchanges ChangesService", "service")
SERVICE_JSON = Client("txchanges ChangesService", "service", ("--no-orjson",))
NORMAL_STREAM = Client("txchanges Consumer.fetch_rows (feed=normal)", "normal-stream")
FETCH = Client("txchanges Consumer.fetch (feed=normal, whole)", "fetch")
TREQ = Client("treq + LineOnlyReceiver + json.loads", "treq-lines")
RAW_JSON = Client("raw socket + json.loads", "raw-json")
RAW_ORJSON = Client("raw socket + orjson.loads", "raw-orjson")

#: (feed, client) pairs timed, in the order they run in each round.
THROUGHPUT = [
    ("line", CONSUMER), ("line", CONSUMER_JSON), ("line", SERVICE), ("line", SERVICE_JSON),
    ("line", CONSUMER_TREQ), ("line", TREQ), ("line", RAW_JSON), ("line", RAW_ORJSON),
    ("backlog", CONSUMER), ("backlog", CONSUMER_JSON), ("backlog", SERVICE), ("backlog", SERVICE_JSON),
    ("backlog", TREQ), ("backlog", RAW_JSON), ("backlog", RAW_ORJSON),
    ("line", NORMAL_STREAM),
]
#: With --docs: the same feed with a ~300-byte document in each row.
DOCS = [("docs", CONSUMER), ("docs", CONSUMER_JSON), ("docs", SERVICE), ("docs", TREQ),
        ("docs", RAW_JSON), ("docs", RAW_ORJSON)]
#: (feed, client) pairs measured under callgrind.
CALLGRIND = [
    ("line", CONSUMER), ("line", CONSUMER_JSON), ("line", SERVICE), ("line", SERVICE_JSON),
    ("backlog", CONSUMER), ("backlog", CONSUMER_JSON), ("backlog", SERVICE), ("backlog", SERVICE_JSON),
    ("line", NORMAL_STREAM), ("line", TREQ), ("line", RAW_JSON), ("line", RAW_ORJSON),
]
#: Clients whose peak memory is measured at the small and the big size.
MEMORY = [CONSUMER, SERVICE, NORMAL_STREAM, FETCH]

FEEDS = {
    "line": ("--chunks", "line"),
    "backlog": ("--chunks", "backlog"),
    "docs": ("--chunks", "line", "--docs"),
}
FEED_TITLES = {
    "line": "one HTTP chunk per line (a live feed)",
    "backlog": "~1490-byte chunks (how CouchDB sends a backlog)",
    "docs": "one chunk per line, ~300-byte documents (include_docs)",
}


@dataclass
class Settings:
    changes: int
    big: int
    runs: int
    callgrind: tuple[int, int] | None
    latency_writes: int
    docs: bool
    jobs: int


@dataclass
class Results:
    settings: Settings
    seconds: dict[tuple[str, Client], list[float]] = field(default_factory=dict)
    rss_kib: dict[tuple[Client, int], int] = field(default_factory=dict)
    instructions: dict[tuple[str, Client], float] = field(default_factory=dict)
    latency: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- processes -------------------------------------------------------------------


class FeedServers:
    """The canned feed servers, one process per (feed, size), started on first use."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, int], tuple[subprocess.Popen[bytes], str]] = {}

    def url(self, feed: str, changes: int) -> str:
        key = (feed, changes)
        if key not in self._running:
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "feedserver.py"), "--changes", str(changes),
                 "--prerender", "--exit-with-parent", *FEEDS[feed]],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
            )
            assert process.stdout is not None
            line = process.stdout.readline().decode()
            if not line.startswith("listening "):
                process.kill()
                raise RuntimeError(f"the feed server did not start: {line!r}")
            self._running[key] = (process, line.split()[1])
        return self._running[key][1]

    def stop(self) -> None:
        for process, _ in self._running.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                process.wait(10)
        self._running.clear()


def run_client(client: Client, url: str, changes: int, timeout: float = 3600) -> dict[str, Any]:
    """Run one client process; return its JSON report."""
    command = [sys.executable, "-m", "benchmarks.clients", client.name, url, str(changes), *client.flags]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{client.label} {' '.join(client.flags)} failed ({done.returncode}): "
            f"{done.stdout[-500:]} {done.stderr[-2000:]}"
        )
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def callgrind_total(path: Path) -> int:
    """The total instruction count in a callgrind output file."""
    text = path.read_text(errors="replace")
    match = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
    if match is None:
        raise RuntimeError(f"no instruction total in {path}")
    return int(match.group(1))


# -- the measurements -------------------------------------------------------------


def measure_throughput(settings: Settings, servers: FeedServers, results: Results) -> None:
    pairs = THROUGHPUT + (DOCS if settings.docs else [])
    for round_number in range(settings.runs):
        # Rotate the order, so that no client always runs right after another.
        shift = round_number % len(pairs)
        for feed, client in pairs[shift:] + pairs[:shift]:
            report = run_client(client, servers.url(feed, settings.changes), settings.changes)
            results.seconds.setdefault((feed, client), []).append(report["seconds"])
            if feed == "line":
                key = (client, settings.changes)
                results.rss_kib[key] = max(results.rss_kib.get(key, 0), report["max_rss_kib"])
        progress(f"throughput round {round_number + 1}/{settings.runs} done")


def measure_memory(settings: Settings, servers: FeedServers, results: Results) -> None:
    for size in (settings.changes, settings.big):
        for client in MEMORY:
            key = (client, size)
            if key in results.rss_kib and size == settings.changes and client is not FETCH:
                continue
            report = run_client(client, servers.url("line", size), size)
            results.rss_kib[key] = max(results.rss_kib.get(key, 0), report["max_rss_kib"])
        progress(f"memory at {size:,} changes done")


def measure_instructions(settings: Settings, servers: FeedServers, results: Results) -> None:
    assert settings.callgrind is not None
    if shutil.which("valgrind") is None:
        results.notes.append("valgrind is not installed: no instruction counts")
        return
    small, large = settings.callgrind
    jobs = [(feed, client, size) for feed, client in CALLGRIND for size in (small, large)]
    for feed, client, size in jobs:
        servers.url(feed, size)  # start them all first
    totals: dict[tuple[str, Client, int], int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pending = list(jobs)
        running: list[tuple[tuple[str, Client, int], subprocess.Popen[str], Path]] = []
        while pending or running:
            while pending and len(running) < settings.jobs:
                feed, client, size = pending.pop(0)
                out = Path(tmp) / f"{len(pending)}.callgrind"
                command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                           "-m", "benchmarks.clients", client.name, servers.url(feed, size), str(size),
                           *client.flags]
                # The same hash seed in every run, so that dict layouts repeat too.
                process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                    env=dict(os.environ, PYTHONHASHSEED="0"),
                )
                running.append(((feed, client, size), process, out))
            time.sleep(0.2)
            for entry in list(running):
                key, process, out = entry
                if process.poll() is None:
                    continue
                running.remove(entry)
                stdout, stderr = process.communicate()
                if process.returncode != 0:
                    raise RuntimeError(f"{key[1].label} under callgrind failed: {stdout[-300:]} {stderr[-1500:]}")
                totals[key] = callgrind_total(out)
                progress(f"callgrind: {key[1].label} {' '.join(key[1].flags)} on {key[0]} at {key[2]:,}")
    for feed, client in CALLGRIND:
        per_change = (totals[(feed, client, large)] - totals[(feed, client, small)]) / (large - small)
        results.instructions[(feed, client)] = per_change


#: (follower, flags) measured for latency.
LATENCY = [("service", ()), ("service", ("--treq-feeds",)), ("consumer", ()), ("consumer", ("--treq-feeds",))]


def measure_latency(settings: Settings, results: Results) -> None:
    """
    Time writes to the test server until they reach the follower: a warm-up
    run first (the server's JIT), then two rounds of every follower in turn,
    the second in reverse order, each with half the writes, pooled.
    """
    try:
        from tests import couchserver

        server = couchserver.start()
    except Exception as e:  # the test server is optional for the rest
        results.notes.append(f"latency not measured: {e}")
        return

    def run_one(follower: str, flags: tuple[str, ...], writes: int) -> dict[str, Any]:
        command = [sys.executable, "-m", "benchmarks.clients", "latency", server.admin_url,
                   str(writes), "--follower", follower, *flags]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"latency ({follower}) failed: {done.stdout} {done.stderr[-2000:]}")
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return report

    try:
        # The test server gets faster for a while as its JIT warms up.
        run_one("consumer", (), max(20, settings.latency_writes))
        pooled: dict[tuple[str, tuple[str, ...]], list[dict[str, Any]]] = {}
        for order in (LATENCY, LATENCY[::-1]):
            for follower, flags in order:
                pooled.setdefault((follower, flags), []).append(
                    run_one(follower, flags, max(1, settings.latency_writes // 2)))
        for (follower, flags), reports in pooled.items():
            delays = [d for r in reports for d in r["delays_ms"]]
            results.latency.append({
                "follower": follower,
                "fast_feeds": "--treq-feeds" not in flags,
                "writes": len(delays),
                "median_ms": statistics.median(delays),
                "p95_ms": percentile(delays, 95),
                "write_ms": statistics.median(r["write_ms"] for r in reports),
            })
        progress("latency done")
    finally:
        server.stop()


def percentile(values: list[float], p: float) -> float:
    """The *p*-th percentile of *values* (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, int(-(-len(ordered) * p // 100)) - 1)]


# -- the report ----------------------------------------------------------------------


def median_rate(results: Results, feed: str, client: Client) -> float:
    return results.settings.changes / statistics.median(results.seconds[(feed, client)])


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def throughput_table(results: Results, feed: str, pairs: list[tuple[str, Client]]) -> list[str]:
    rows = [(f, c) for f, c in pairs if f == feed and (f, c) in results.seconds]
    if not rows:
        return []
    treq = median_rate(results, feed, TREQ) if (feed, TREQ) in results.seconds else None
    raw = median_rate(results, feed, RAW_JSON) if (feed, RAW_JSON) in results.seconds else None
    lines = [
        f"#### {results.settings.changes:,} changes, {FEED_TITLES[feed]}",
        "",
        "| client | parser | changes/s | vs treq loop | vs raw json loop | instructions/change |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for f, client in rows:
        rate = median_rate(results, f, client)
        instructions = results.instructions.get((f, client))
        vs_treq = f"{rate / treq:.2f}x" if treq else "-"
        vs_raw = f"{rate / raw:.2f}x" if raw else "-"
        lines.append(
            f"| {client.label} | {client.parser} | {fmt_int(rate)} | {vs_treq} | {vs_raw} | "
            f"{fmt_int(instructions) if instructions else '-'} |"
        )
    return lines + [""]


def memory_table(results: Results) -> list[str]:
    small, big = results.settings.changes, results.settings.big
    lines = [
        f"| client | peak RSS at {small:,} | peak RSS at {big:,} | growth |",
        "| --- | ---: | ---: | ---: |",
    ]
    for client in MEMORY:
        a, b = results.rss_kib.get((client, small)), results.rss_kib.get((client, big))
        if a is None or b is None:
            continue
        lines.append(f"| {client.label} | {a / 1024:.1f} MiB | {b / 1024:.1f} MiB | {(b - a) / 1024:+.1f} MiB |")
    return lines + [""]


def latency_table(results: Results) -> list[str]:
    if not results.latency:
        return []
    lines = [
        "| follower | feed reader | writes | median | 95th percentile | the write's own answer (median) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for entry in results.latency:
        follower = "ChangesService" if entry["follower"] == "service" else "Consumer.wait"
        reader = "txchanges HTTP/1.1 reader" if entry["fast_feeds"] else "treq"
        lines.append(
            f"| {follower} | {reader} | {entry['writes']:,} | {entry['median_ms']:.2f} ms | "
            f"{entry['p95_ms']:.2f} ms | {entry['write_ms']:.2f} ms |"
        )
    return lines + [""]


def targets(results: Results) -> list[tuple[str, str, Optional[bool]]]:
    """(target, the figure, met) for each target; met is None when not measured."""
    out: list[tuple[str, str, Optional[bool]]] = []
    ins = results.instructions
    small, big = results.settings.changes, results.settings.big

    def instr(feed: str, client: Client) -> Optional[float]:
        return ins.get((feed, client))

    for client, limit in ((CONSUMER_JSON, MAX_INSTR_JSON), (CONSUMER, MAX_INSTR_ORJSON)):
        value = instr("line", client)
        out.append((
            f"Consumer.wait, {client.parser}: at most {limit:,} instructions per change",
            f"{fmt_int(value)}" if value else "not measured",
            None if value is None else value <= limit,
        ))
    for service, consumer in ((SERVICE_JSON, CONSUMER_JSON), (SERVICE, CONSUMER)):
        a, b = instr("line", service), instr("line", consumer)
        out.append((
            f"ChangesService within {MAX_SERVICE_RATIO}x of Consumer.wait ({service.parser})",
            f"{a / b:.2f}x ({fmt_int(a)} / {fmt_int(b)} instructions)" if a and b else "not measured",
            None if not (a and b) else a <= MAX_SERVICE_RATIO * b,
        ))
    for client in (CONSUMER_JSON, CONSUMER, SERVICE_JSON, SERVICE):
        a, b = instr("backlog", client), instr("line", client)
        out.append((
            f"{client.label.replace('txchanges ', '')} ({client.parser}): ~1490-byte chunks cheaper than a chunk per line",
            f"{fmt_int(a)} vs {fmt_int(b)} instructions" if a and b else "not measured",
            None if not (a and b) else a < b,
        ))
    for client in (CONSUMER, SERVICE, NORMAL_STREAM):
        a, b = results.rss_kib.get((client, small)), results.rss_kib.get((client, big))
        out.append((
            f"{client.label.replace('txchanges ', '')}: peak RSS at {big:,} at most "
            f"{MAX_RSS_GROWTH_MIB:g} MiB above {small:,}",
            f"{(b - a) / 1024:+.1f} MiB" if a and b else "not measured",
            None if not (a and b) else (b - a) / 1024 <= MAX_RSS_GROWTH_MIB,
        ))
    return out


def report(results: Results, command: str) -> str:
    settings = results.settings
    lines = [
        "# Benchmarks",
        "",
        "How fast txchanges reads a CouchDB `_changes` feed, next to the simplest clients, "
        "measured by `benchmarks/run.py` (see its docstring for what each figure means). "
        "Wall-clock rates on a shared machine swing by tens of percent between runs: compare "
        "the ratios within one run, and the instruction counts (from callgrind, repeatable "
        "within 1%) across runs.",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}  ",
        f"Machine: {machine()}  ",
        f"Versions: {versions()}",
        "",
        f"Each rate is the median of {settings.runs} runs; instructions per change come from "
        + (f"callgrind runs at {settings.callgrind[0]:,} and {settings.callgrind[1]:,} changes "
           "(the difference divided by the difference in changes, so start-up cancels out)."
           if settings.callgrind else "nowhere (callgrind was not run).")
        + " The feed: opaque ~60-character string seqs, 32-hex ids, a deleted row every 50, "
        "then the `last_seq` row; every client counts the changes it saw and fails unless it saw "
        "them all.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
    ]
    for target, figure, met in targets(results):
        verdict = "not measured" if met is None else "met" if met else "**not met**"
        lines.append(f"| {target} | {figure} | {verdict} |")
    lines += ["", "## Throughput", ""]
    pairs = THROUGHPUT + (DOCS if settings.docs else [])
    for feed in ("line", "backlog", "docs"):
        lines += throughput_table(results, feed, pairs)
    lines += ["## Memory", "", memory_note(), ""] + memory_table(results)
    if results.latency:
        lines += ["## Latency", "",
                  "From sending a document write to the project's test server (CouchDB-compatible, "
                  "on PouchDB) to the handler's call, each write sent once the previous one arrived; "
                  "after a warm-up run, two rounds of every follower (the second in reverse order), pooled.",
                  ""] + latency_table(results)
    if results.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in results.notes] + [""]
    return "\n".join(lines)


def memory_note() -> str:
    return ("Peak resident set of the client process; the service keeps its checkpoint in memory "
            "(`MemoryCheckpoint`, which also lists every seq it saved). `Consumer.fetch` parses the "
            "normal feed as one document and is shown for contrast.")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        memory = f", {kib / MIB:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs{memory}, {platform.system()} {platform.release()}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"CPython {platform.python_version()}"]
    for name in ("twisted", "treq", "orjson"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    valgrind = shutil.which("valgrind")
    if valgrind:
        out = subprocess.run([valgrind, "--version"], capture_output=True, text=True).stdout.strip()
        parts.append(out)
    return ", ".join(parts)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def feed_servers() -> Iterator[FeedServers]:
    servers = FeedServers()
    try:
        yield servers
    finally:
        servers.stop()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark txchanges against the simplest feed clients.")
    parser.add_argument("--quick", action="store_true",
                        help="small feeds and 3 runs: checks that everything works; writes no BENCHMARKS.md")
    parser.add_argument("--changes", type=int, help="changes in the timed feeds (200,000; --quick 20,000)")
    parser.add_argument("--big", type=int, help="the larger feed for memory (1,000,000; --quick 100,000)")
    parser.add_argument("--runs", type=int, help="timed runs per client (5; --quick 3)")
    parser.add_argument("--callgrind", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                        help="the two feed sizes run under callgrind (40,000 200,000; --quick 4,000 20,000)")
    parser.add_argument("--no-callgrind", action="store_true", help="skip the instruction counts")
    parser.add_argument("--latency-writes", type=int, help="writes timed for latency (1,000; --quick 100; 0 skips)")
    parser.add_argument("--docs", action="store_true", help="also time a feed with ~300-byte documents")
    parser.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                        help="callgrind runs at once")
    parser.add_argument("--markdown", type=Path, help="where to write the report (BENCHMARKS.md unless --quick)")
    args = parser.parse_args(argv)
    quick = args.quick
    settings = Settings(
        changes=args.changes or (20_000 if quick else 200_000),
        big=args.big or (100_000 if quick else 1_000_000),
        runs=args.runs or (3 if quick else 5),
        callgrind=None if args.no_callgrind else tuple(args.callgrind or ((4_000, 20_000) if quick else (40_000, 200_000))),  # type: ignore[arg-type]
        latency_writes=args.latency_writes if args.latency_writes is not None else (100 if quick else 1000),
        docs=args.docs,
        jobs=args.jobs,
    )
    results = Results(settings)
    command = "python benchmarks/run.py" + ("" if not argv else " " + " ".join(argv))
    started = time.monotonic()
    with feed_servers() as servers:
        measure_throughput(settings, servers, results)
        measure_memory(settings, servers, results)
        if settings.callgrind:
            measure_instructions(settings, servers, results)
    if settings.latency_writes:
        measure_latency(settings, results)
    text = report(results, command)
    print(text)
    target = args.markdown or (None if quick else ROOT / "BENCHMARKS.md")
    if target is not None:
        # The sections other scripts write (benchmarks/sections.py) stay.
        target.write_text(text + "\n" + kept_sections(target))
        progress(f"wrote {target}")
    progress(f"finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
