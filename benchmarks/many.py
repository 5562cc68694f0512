#!/usr/bin/env python3
"""
The benchmark of following many databases with ``DatabasesService``:

    python benchmarks/many.py            # the full run (a few minutes)
    python benchmarks/many.py --write    # ... and put its section in BENCHMARKS.md
    python benchmarks/many.py --quick    # a short run that checks everything works

Against the project's test server (PouchDB in memory, started here), it
measures:

- with 1,000 databases of which a random 50 change every second, the delay
  from a write's response to the handler (median, p99, max), and the
  follower's CPU time per change; the writer is a process of its own, so
  the follower's CPU is its own;
- with 10,000 databases, the time from start to following (no checkpoints,
  and again with every checkpoint, as after a restart) and the memory per
  idle followed database (Python heap by ``tracemalloc``, and resident set).

Each side runs in a process of its own, started from this script
(``follow``, ``write`` and ``idle`` are its sub-commands).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECTION = "## Many databases"


# -- helpers shared by the processes --------------------------------------------


def request(url: str, method: str = "GET", body: Any = None) -> Any:
    # urllib does not send a URL's credentials by itself.
    parts = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if parts.username is not None:
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as response:
        return json.loads(response.read())


def create_databases(url: str, names: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: request(url + name, "PUT"), names))


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# -- the follower: handled changes, and CPU over the measured window ------------


def follow(url: str, prefix: str, start: float, seconds: float, written_path: str, out: str) -> int:
    from twisted.internet import reactor, task

    from txchanges import DatabasesService, Server

    handled: dict[str, float] = {}
    marks: dict[str, float] = {}

    def handler(db: str, change: dict[str, Any]) -> None:
        handled.setdefault(f"{db}/{change['id']}", time.time())

    service = DatabasesService(Server(url), handler, match=re.escape(prefix) + ".*")

    def mark(name: str) -> None:
        marks[name] = cpu_seconds()
        marks[name + "_handled"] = len(handled)

    def until_written_are_handled() -> None:
        # Once the writer is done (its file exists), until every write it
        # made is handled, or a minute has passed.
        path = Path(written_path)
        deadline = time.time() + 60
        if path.exists() and (all(key in handled for key in json.loads(path.read_text())) or time.time() > deadline):
            Path(out).write_text(json.dumps({"handled": handled, "marks": marks}))
            service.stopService().addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
        else:
            task.deferLater(reactor, 0.2, until_written_are_handled)

    service.startService()
    now = time.time()
    task.deferLater(reactor, max(0.0, start - now), mark, "begin")
    task.deferLater(reactor, max(0.0, start + seconds - now), mark, "end")
    task.deferLater(reactor, max(0.0, start + seconds - now), until_written_are_handled)
    reactor.run()  # type: ignore[attr-defined]
    return 0


# -- the writer: a random few databases a second, each write timed ---------------


def write(url: str, prefix: str, databases: int, rate: int, start: float, seconds: float, out: str) -> int:
    names = [f"{prefix}{n:05d}" for n in range(databases)]
    rng = random.Random()
    # A random *rate* databases each second, their writes spread over it,
    # as independent clients would make them; several in flight at once, so
    # that a slow response does not hold the next write back.
    planned = [
        (start + second + i / rate, name, f"w{second:04d}-{i:03d}")
        for second in range(int(seconds))
        for i, name in enumerate(rng.sample(names, rate))
    ]

    def one(at: float, name: str, doc_id: str) -> tuple[str, float]:
        time.sleep(max(0.0, at - time.time()))
        request(f"{url}{name}/{doc_id}", "PUT", {"at": at})
        return f"{name}/{doc_id}", time.time()

    with ThreadPoolExecutor(16) as pool:
        written = dict(pool.map(lambda plan: one(*plan), planned))
    Path(out).write_text(json.dumps(written))
    return 0


# -- idle databases: start-up time and memory per database ----------------------


def idle(url: str, prefix: str, databases: int, out: str) -> int:
    from twisted.internet import defer, reactor, task

    from txchanges import DatabasesService, MemoryCheckpoints, Server

    report: dict[str, Any] = {}

    async def run() -> None:
        async def until_following(s: DatabasesService) -> float:
            began = time.monotonic()
            s.startService()
            while s.state != "following":
                await task.deferLater(reactor, 0.01, lambda: None)
            return time.monotonic() - began

        server = Server(url)
        store = MemoryCheckpoints()
        tracemalloc.start()
        heap0, rss0 = tracemalloc.get_traced_memory()[0], rss_bytes()
        s = DatabasesService(server, lambda db, change: None, match=re.escape(prefix) + ".*", checkpoint=store)
        report["start_seconds"] = await until_following(s)
        while s.stats.open_feeds or s.stats.waiting:
            await task.deferLater(reactor, 0.01, lambda: None)
        report["followed"] = s.stats.databases
        report["catch_ups"] = s.stats.catch_ups
        report["heap_per_db"] = (tracemalloc.get_traced_memory()[0] - heap0) / databases
        report["rss_per_db"] = (rss_bytes() - rss0) / databases
        await s.stopService()
        again = DatabasesService(server, lambda db, change: None, match=re.escape(prefix) + ".*", checkpoint=store)
        report["restart_seconds"] = await until_following(again)
        report["restart_catch_ups"] = again.stats.catch_ups
        await again.stopService()
        await server.close()

    def done(result: Any) -> None:
        Path(out).write_text(json.dumps(report))
        reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()).addBoth(done))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


# -- the parent: the runs and the report -------------------------------------


def sub(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], cwd=ROOT)


def measure_active(url: str, databases: int, rate: int, seconds: float, tmp: Path) -> dict[str, Any]:
    prefix = f"active{random.randrange(10**6):06d}-"
    create_databases(url, [f"{prefix}{n:05d}" for n in range(databases)])
    warm_up = 5.0
    start = time.time() + warm_up
    follower = sub("follow", url, prefix, str(start), str(seconds), str(tmp / "write.json"), str(tmp / "follow.json"))
    writer = sub("write", url, prefix, str(databases), str(rate), str(start), str(seconds), str(tmp / "write.json"))
    if writer.wait() != 0 or follower.wait() != 0:
        raise RuntimeError("a benchmark process failed")
    written: dict[str, float] = json.loads((tmp / "write.json").read_text())
    followed = json.loads((tmp / "follow.json").read_text())
    handled, marks = followed["handled"], followed["marks"]
    missing = [key for key in written if key not in handled]
    if missing:
        raise RuntimeError(f"{len(missing)} writes never reached the handler, e.g. {missing[:3]}")
    delays = [handled[key] - at for key, at in written.items()]
    last_write = max(written.values())
    changes = marks["end_handled"] - marks["begin_handled"]
    return {
        "databases": databases, "rate": rate, "writes": len(written),
        "writes_per_second": len(written) / (last_write - start),
        "median_ms": statistics.median(delays) * 1000, "p99_ms": percentile(delays, 99) * 1000,
        "max_ms": max(delays) * 1000,
        "cpu_us_per_change": (marks["end"] - marks["begin"]) / max(1, changes) * 1e6,
    }


def measure_idle(url: str, databases: int, tmp: Path) -> dict[str, Any]:
    prefix = f"idle{random.randrange(10**6):06d}-"
    began = time.monotonic()
    create_databases(url, [f"{prefix}{n:05d}" for n in range(databases)])
    created = time.monotonic() - began
    process = sub("idle", url, prefix, str(databases), str(tmp / "idle.json"))
    if process.wait() != 0:
        raise RuntimeError("the idle benchmark process failed")
    report: dict[str, Any] = json.loads((tmp / "idle.json").read_text())
    report["databases"] = databases
    report["create_seconds"] = created
    return report


def section(active: dict[str, Any], idle_: dict[str, Any], command: str) -> str:
    p99_ok = active["p99_ms"] < 1000
    memory_ok = idle_["heap_per_db"] < 2048 and idle_["rss_per_db"] < 2048
    lines = [
        SECTION,
        "",
        f"Measured with `{command}` on this machine (2 cores), against the project's test server (PouchDB in"
        " memory: its costs are its own, not CouchDB's); the follower, the writer and the server are separate"
        " processes.",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
        f"| p99 write-to-handler under 1 s, {active['databases']:,} databases, {active['rate']} changing a second"
        f" | {active['p99_ms']:.0f} ms | {'met' if p99_ok else 'missed'} |",
        f"| under 2 KiB per idle followed database ({idle_['databases']:,} databases)"
        f" | {idle_['heap_per_db']:.0f} B heap, {idle_['rss_per_db']:.0f} B resident"
        f" | {'met' if memory_ok else 'missed'} |",
        "",
        f"{active['databases']:,} databases, a random {active['rate']} written each second for"
        f" {active['writes'] // active['rate']} s ({active['writes']:,} writes; the server took"
        f" {active['writes_per_second']:.0f} a second): write-to-handler median"
        f" {active['median_ms']:.0f} ms, p99 {active['p99_ms']:.0f} ms, max {active['max_ms']:.0f} ms;"
        f" the follower's CPU {active['cpu_us_per_change']:.0f} µs per change (one catch-up request each).",
        "",
        f"{idle_['databases']:,} idle databases: start to following {idle_['start_seconds']:.1f} s with no"
        f" checkpoint ({idle_['catch_ups']} catch-up requests: an empty database takes its checkpoint from the"
        f" scan), {idle_['restart_seconds']:.1f} s with every checkpoint (a restart,"
        f" {idle_['restart_catch_ups']} catch-ups).",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text()
    start = current.find(SECTION)
    if start == -1:
        path.write_text(current.rstrip("\n") + "\n\n" + text)
        return
    end = current.find("\n## ", start + len(SECTION))
    path.write_text(current[:start] + text + ("" if end == -1 else current[end + 1:]))


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "follow":
        url, prefix, start, seconds, written, out = argv[1:]
        return follow(url, prefix, float(start), float(seconds), written, out)
    if argv and argv[0] == "write":
        url, prefix, databases, rate, start, seconds, out = argv[1:]
        return write(url, prefix, int(databases), int(rate), float(start), float(seconds), out)
    if argv and argv[0] == "idle":
        url, prefix, databases, out = argv[1:]
        return idle(url, prefix, int(databases), out)
    parser = argparse.ArgumentParser(description="Benchmark DatabasesService against the test server.")
    parser.add_argument("--quick", action="store_true", help="a short run that checks everything works")
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = parser.parse_args(argv)
    from tests import couchserver

    import tempfile

    server = couchserver.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.quick:
                active = measure_active(server.admin_url, 50, 5, 3, Path(tmp))
                idle_ = measure_idle(server.admin_url, 100, Path(tmp))
            else:
                active = measure_active(server.admin_url, 1000, 50, 30, Path(tmp))
                idle_ = measure_idle(server.admin_url, 10000, Path(tmp))
    finally:
        server.stop()
    command = "python benchmarks/many.py" + (" --quick" if args.quick else "")
    text = section(active, idle_, command)
    print(text)
    if args.write and not args.quick:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
