#!/usr/bin/env python3
"""
The cost per change at the limit, and batch delivery, in one command:

    python benchmarks/batch.py                        # measure, print the section
    python benchmarks/batch.py --write                # ... and put it in BENCHMARKS.md
    python benchmarks/batch.py --before DIR --write   # ... next to the per-change path of another checkout
    python benchmarks/batch.py --quick                # small feeds: checks that it works

Every figure is instructions per change from ``valgrind --tool=callgrind``
(each client run at two feed sizes, the difference divided by the
difference in changes, so start-up cancels out), on the canned CouchDB-3
feed of :mod:`benchmarks.feedserver` with both chunkings: one HTTP chunk per
line (a live feed) and ~1490-byte chunks (a backlog, or a feed after a proxy
or TLS). Next to txchanges, the same run measures the limit a Python
consumer can reach: a raw socket, a de-chunking loop and ``orjson.loads``
per line (``raw-orjson`` in :mod:`benchmarks.clients`).

With ``--before DIR`` (another checkout of the project, e.g. ``git worktree
add ../before main``), the per-change clients of that checkout are measured
too, against the same feed servers, for the "no worse than before" target
and for the profile: where the instructions of a change go, by C function
of the interpreter and its extensions (callgrind sees no Python function),
before and after.

The section written in BENCHMARKS.md is ``## Batch delivery and the cost
per change``; the rest of the file is left as it is.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import FEED_TITLES, FeedServers, callgrind_total, machine, progress, versions  # noqa: E402

SECTION = "## Batch delivery and the cost per change"

#: The targets, as ratios to the raw socket + orjson loop of the same feed.
BATCH_CONSUMER = 1.10
BATCH_SERVICE = 1.15
PER_CHANGE_BACKLOG = 1.25


@dataclass(frozen=True)
class Client:
    label: str
    name: str


RAW = Client("raw socket + orjson.loads", "raw-orjson")
CONSUMER = Client("Consumer.wait, a callback per change", "consumer")
CONSUMER_BATCH = Client("Consumer.wait, a batch callback", "consumer-batch")
SERVICE = Client("ChangesService, handler", "service")
SERVICE_BATCH = Client("ChangesService, batch_handler", "service-batch")
CLIENTS = [RAW, CONSUMER, CONSUMER_BATCH, SERVICE, SERVICE_BATCH]
#: The clients measured in the --before checkout too.
PER_CHANGE = [CONSUMER, SERVICE]
FEEDS = ["line", "backlog"]

#: The profile's groups: a name, and a pattern on callgrind's ``file:function``.
GROUPS = [
    ("the interpreter running Python code (ceval, frames, calls)",
     r"ceval|_PyEval|frame\.c|pycore_frame|_PyFrame|pystate\.c|call\.c|classobject|methodobject|initialize_locals"
     r"|vectorcall|PyObject_Call|_Py_CheckFunctionResult"),
    ("orjson: parsing a line into a dict, and the dict's strings and lists",
     r"orjson|insertdict|insert_to_emptydict|new_keys_object|PyUnicode_New|PyDict_New|PyList_New|_Py_NewReference"
     r"|PyObject_Calloc|list_append|unicode_hash|siphash|dict_ass_sub|PyDict_SetItem"),
    ("splitting a read into lines (bytes.split), and copying", r"split\.h|bytes_split|memmove|memcpy|bytes_join|stringlib/join"),
    ("de-chunking: the search for CRLF", r"fastsearch|find\.h|find_internal|_Py_bytes_tailmatch|sre_"),
    ("dict lookups: a change row's keys, attributes", r"lookup|dict_subscript|PyDict_GetItem|PyDict_Contains|GetAttr|_PyType_Lookup|GetMethod|eq\.h|memcmp"),
    ("memory: allocating and freeing (dict, list, str, bytes)",
     r"obmalloc|malloc\.c|_int_malloc|_int_free|dealloc|free_keys_object|PyObject_Free|PyObject_Malloc|unlink_chunk|memset"),
    ("the cyclic garbage collector", r"gcmodule|visit_|_traverse|PyObject_GC"),
]
OTHER = "everything else (sockets, the reactor, integers, ...)"


@dataclass
class Settings:
    small: int
    large: int
    jobs: int
    before: Optional[Path]
    profile_feed: str


def run_callgrind(code: Path, client: Client, url: str, size: int, out: Path) -> int:
    """Run one client under callgrind from the checkout *code*; return its instruction total."""
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
               "-m", "benchmarks.clients", client.name, url, str(size)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=code,
                          env=dict(os.environ, PYTHONHASHSEED="0"), timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"{client.name} from {code} failed: {done.stdout[-300:]} {done.stderr[-1500:]}")
    return callgrind_total(out)


def functions(path: Path) -> dict[str, int]:
    """Self instructions by function in a callgrind output file."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", str(path)],
                          capture_output=True, text=True, check=True).stdout
    costs: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+)\s+\([ \d.]+%\)\s+(.*)$", line)
        if not match or "PROGRAM TOTALS" in line:
            continue
        name = re.sub(r"\s*\[.*\]$", "", match.group(2))
        name = re.sub(r"'\d+$", "", name.rsplit("/", 1)[-1])
        if "orjson" in match.group(2):
            name = "orjson:" + name
        costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def profile(small: Path, large: Path, changes: int) -> dict[str, float]:
    """Instructions per change by group, from the runs at two sizes."""
    a, b = functions(small), functions(large)
    groups: dict[str, float] = {}
    for name in set(a) | set(b):
        cost = (b.get(name, 0) - a.get(name, 0)) / changes
        group = next((g for g, pattern in GROUPS if re.search(pattern, name)), OTHER)
        groups[group] = groups.get(group, 0.0) + cost
    return groups


@dataclass
class Results:
    per_change: dict[tuple[str, str, str], float]  # (code, feed, client) -> instructions per change
    profiles: dict[tuple[str, str], dict[str, float]]  # (code, client) -> group -> instructions


def measure(settings: Settings) -> Results:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    codes = [("after", ROOT)] + ([("before", settings.before)] if settings.before else [])
    jobs = [(label, code, feed, client, size)
            for label, code in codes
            for feed in FEEDS
            for client in (CLIENTS if label == "after" else PER_CHANGE)
            for size in (settings.small, settings.large)]
    servers = FeedServers()
    totals: dict[tuple[str, str, str, int], int] = {}
    results = Results({}, {})
    with tempfile.TemporaryDirectory() as tmp:
        def one(job: tuple[str, Path, str, Client, int]) -> None:
            label, code, feed, client, size = job
            out = Path(tmp) / f"{label}.{feed}.{client.name}.{size}.out"
            totals[(label, feed, client.name, size)] = run_callgrind(code, client, servers.url(feed, size), size, out)
            progress(f"{label}: {client.name} on {feed} at {size:,}")

        try:
            for label, code, feed, client, size in jobs:
                servers.url(feed, size)  # start them all first
            with ThreadPoolExecutor(settings.jobs) as pool:
                for _ in pool.map(one, jobs):
                    pass
        finally:
            servers.stop()
        span = settings.large - settings.small
        for (label, feed, name, size), total in totals.items():
            if size == settings.large:
                results.per_change[(label, feed, name)] = (total - totals[(label, feed, name, settings.small)]) / span
        for label, _ in codes:
            for client in PER_CHANGE:
                stem = Path(tmp) / f"{label}.{settings.profile_feed}.{client.name}"
                results.profiles[(label, client.name)] = profile(
                    Path(f"{stem}.{settings.small}.out"), Path(f"{stem}.{settings.large}.out"), span)
    return results


def fmt(value: float) -> str:
    return f"{value:,.0f}"


def section(settings: Settings, results: Results, command: str) -> str:
    per = results.per_change
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M')}  ",
        f"Machine: {machine()}  ",
        f"Versions: {versions()}",
        "",
        f"Instructions per change from callgrind runs at {settings.small:,} and {settings.large:,} changes, "
        "one run each, orjson parsing; the ratio is to the raw socket + orjson loop of the same feed and "
        "run, the limit a Python consumer can reach. These figures supersede the orjson instructions per "
        "change of the tables above, which come from an earlier full run."
        + (" *Before* is the per-change path of the checkout given to `--before`, measured in the same run."
           if settings.before else ""),
        "",
        "| chunking | client | instructions/change | vs raw loop |" + (" before | vs before |" if settings.before else ""),
        "| --- | --- | ---: | ---: |" + (" ---: | ---: |" if settings.before else ""),
    ]
    for feed in FEEDS:
        raw = per[("after", feed, RAW.name)]
        for client in CLIENTS:
            value = per[("after", feed, client.name)]
            row = f"| {FEED_TITLES[feed]} | {client.label} | {fmt(value)} | {value / raw:.2f}x |"
            if settings.before:
                old = per.get(("before", feed, client.name))
                row += f" {fmt(old)} | {value / old - 1:+.1%} |" if old else " - | - |"
            lines.append(row)
    lines += ["", "| target | measured | |", "| --- | --- | --- |"]
    for target, figure, met in targets(settings, results):
        verdict = "not measured" if met is None else "met" if met else "**not met**"
        lines.append(f"| {target} | {figure} | {verdict} |")
    lines += [
        "",
        f"Where a change's instructions go, {FEED_TITLES[settings.profile_feed]}: the self cost of the C "
        "functions, grouped (callgrind sees the interpreter, not the Python functions it runs; what the "
        "interpreter costs is what the Python code costs).",
        "",
    ]
    lines += profile_table(settings, results)
    lines += ["", *notes(results, settings), ""]
    return "\n".join(lines)


def targets(settings: Settings, results: Results) -> list[tuple[str, str, Optional[bool]]]:
    per = results.per_change
    out: list[tuple[str, str, Optional[bool]]] = []
    for client, limit in ((CONSUMER_BATCH, BATCH_CONSUMER), (SERVICE_BATCH, BATCH_SERVICE)):
        for feed in FEEDS:
            value, raw = per[("after", feed, client.name)], per[("after", feed, RAW.name)]
            out.append((f"{client.label}, {feed} chunks: within {limit:.2f}x of the raw loop",
                        f"{value / raw:.2f}x ({fmt(value)} / {fmt(raw)})", value <= limit * raw))
    for client in PER_CHANGE:
        value, raw = per[("after", "backlog", client.name)], per[("after", "backlog", RAW.name)]
        out.append((f"{client.label}, ~1490-byte chunks: within {PER_CHANGE_BACKLOG:.2f}x of the raw loop",
                    f"{value / raw:.2f}x ({fmt(value)} / {fmt(raw)})", value <= PER_CHANGE_BACKLOG * raw))
    for client in PER_CHANGE:
        for feed in FEEDS:
            old = per.get(("before", feed, client.name))
            value = per[("after", feed, client.name)]
            out.append((f"{client.label}, {feed} chunks: no worse than before",
                        f"{fmt(value)} vs {fmt(old)}" if old else "not measured (no --before)",
                        None if old is None else value <= old))
    return out


def profile_table(settings: Settings, results: Results) -> list[str]:
    labels = ["before", "after"] if settings.before else ["after"]
    head = "| where | " + " | ".join(f"{client.label}, {label}" for client in PER_CHANGE for label in labels) + " |"
    lines = [head, "| --- |" + " ---: |" * (len(PER_CHANGE) * len(labels))]
    for group in [g for g, _ in GROUPS] + [OTHER]:
        cells = []
        for client in PER_CHANGE:
            for label in labels:
                groups = results.profiles[(label, client.name)]
                total = sum(groups.values())
                value = groups.get(group, 0.0)
                cells.append(f"{fmt(value)} ({value / total:.0%})")
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    totals = [fmt(sum(results.profiles[(label, c.name)].values())) for c in PER_CHANGE for label in labels]
    lines.append("| total | " + " | ".join(totals) + " |")
    return lines


def notes(results: Results, settings: Settings) -> list[str]:
    per = results.per_change
    raw = per[("after", "backlog", RAW.name)]
    batch = per[("after", "backlog", CONSUMER_BATCH.name)]
    one = per[("after", "backlog", CONSUMER.name)]
    cheaper = batch < one
    return [
        "What is left above the raw loop, per change: the key lookups that make sure a line is a change row "
        "before it is handed over (the raw loop checks one); a call of the handler (the raw loop counts "
        "inline); and, for a batch, the set of document ids that keeps two changes of one document apart "
        "and the garbage collector walking the rows a batch holds (a change handed over alone is freed "
        "before the collector runs). The change rows of one read are parsed with one call, as the elements "
        f"of one JSON array. With ~1490-byte chunks a batch costs {fmt(batch)} and a change handed over "
        f"alone {fmt(one)}, against {fmt(raw)} for the loop: "
        + ("batch delivery is also the cheaper way to read a backlog, on top of what a handler saves by "
           "sharing its own work between changes (one `_bulk_docs` request for many)."
           if cheaper else
           "batch delivery is for handlers whose own work shares a cost between changes (one `_bulk_docs` "
           "request for many), not for cheaper delivery."),
    ]


def write_section(text: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Put *text* in place of the section in *path*, or at its end; leave the rest as it is."""
    current = path.read_text()
    start = current.find(SECTION)
    if start == -1:
        path.write_text(current.rstrip("\n") + "\n\n" + text)
        return
    end = current.find("\n## ", start + len(SECTION))
    rest = "" if end == -1 else "\n" + current[end + 1:]
    path.write_text(current[:start] + text.rstrip("\n") + "\n" + rest)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4,000 and 20,000 changes: checks that it works")
    parser.add_argument("--callgrind", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                        help="the two feed sizes (40,000 200,000; --quick 4,000 20,000)")
    parser.add_argument("--before", type=Path, help="another checkout whose per-change clients are measured too")
    parser.add_argument("--profile-feed", choices=FEEDS, default="backlog", help="the chunking the profile is of")
    parser.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)), help="callgrind runs at once")
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = parser.parse_args(argv)
    small, large = args.callgrind or ((4_000, 20_000) if args.quick else (40_000, 200_000))
    before = args.before.resolve() if args.before else None
    if before is not None and not (before / "benchmarks" / "clients.py").is_file():
        parser.error(f"--before {args.before}: no benchmarks/clients.py there")
    settings = Settings(small, large, args.jobs, before, args.profile_feed)
    started = time.monotonic()
    results = measure(settings)
    shown = [a if not (before and a == str(args.before)) else "DIR" for a in (argv if argv is not None else sys.argv[1:])]
    text = section(settings, results, " ".join(["python benchmarks/batch.py", *shown]))
    print(text)
    if args.write:
        write_section(text)
        progress("wrote the section in BENCHMARKS.md")
    progress(f"finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
