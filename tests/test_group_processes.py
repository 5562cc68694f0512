"""
Worker groups as separate processes against the test server: three workers
share a database that keeps receiving writes; one is killed, one is added,
one leaves with SIGTERM, one is frozen with SIGSTOP for longer than the TTL
and resumed. Directly, and through the fault proxy.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from typing import Any

import pytest
import pytest_twisted

from ._service_helpers import sleep, wait_for

TTL = 2.5
UNITS = 8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Takeover times measured (seconds from SIGKILL to the units granted elsewhere), for the summary.
MEASURED: list[float] = []


class Worker:
    """A worker process, its stdout read into events by a thread."""

    def __init__(self, name: str, url: str, db: str, coord: str) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.group_worker", url, db, coord, name, str(TTL), str(UNITS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.killed_at: float | None = None

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.append(json.loads(line))

    def owned(self) -> set[str]:
        units: set[str] = set()
        for event in list(self.events):
            if event["e"] == "granted":
                units.add(event["unit"])
            elif event["e"] == "ended":
                units.discard(event["unit"])
        return units if self.killed_at is None else set()

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        self.killed_at = time.time()
        self.signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        assert self.process.stderr is not None
        return self.process.stderr.read()


def intervals(workers: list[Worker]) -> dict[str, list[tuple[float, float, str]]]:
    """Each unit's ownership intervals, by worker; one open at a kill ends at the kill, one open at the end now."""
    spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for w in workers:
        start: dict[str, float] = {}
        for event in w.events:
            if event["e"] == "granted":
                start[event["unit"]] = event["t"]
            elif event["e"] == "ended":
                spans[event["unit"]].append((start.pop(event["unit"]), event["t"], w.name))
        for unit, t in start.items():
            spans[unit].append((t, w.killed_at or time.time(), w.name))
    return spans


def current_revs(couch_server: Any, db: str) -> set[tuple[str, str]]:
    status, body = couch_server.request("GET", f"{db}/_all_docs")
    assert status == 200, body
    return {(row["id"], row["value"]["rev"]) for row in body["rows"]}


def write(couch_server: Any, db: str, rng: random.Random, count: int) -> None:
    """Create or update *count* documents."""
    ids = [f"doc-{rng.randrange(150):03d}" for _ in range(count)]
    status, body = couch_server.request("POST", f"{db}/_all_docs", {"keys": sorted(set(ids))})
    assert status == 200, body
    docs = []
    for row in body["rows"]:
        doc = {"_id": row["key"], "n": rng.random()}
        if "value" in row and not row["value"].get("deleted"):
            doc["_rev"] = row["value"]["rev"]
        docs.append(doc)
    status, body = couch_server.request("POST", f"{db}/_bulk_docs", {"docs": docs})
    assert status == 201, body


@pytest.mark.parametrize("through", ["direct", "proxy"])
@pytest_twisted.ensureDeferred
async def test_workers_join_leave_die_and_freeze(couch_server, db_name, proxy, report_summary, through):
    """Every final revision is handled; no unit is owned twice at once; a killed worker's units move within TTL + 5 s."""
    coord = db_name + "-coord"
    couch_server.create_db(db_name)
    url = couch_server.admin_url if through == "direct" else proxy.url_for(couch_server.admin_url)
    rng = random.Random(7)
    workers = [Worker(f"w{i}", url, db_name, coord) for i in (1, 2, 3)]
    chaos = None
    try:
        everyone = lambda: set().union(*(w.owned() for w in workers))  # noqa: E731
        await wait_for(
            lambda: len(everyone()) == UNITS and all(len(w.owned()) >= 2 for w in workers), 30,
            "the three workers sharing every unit",
        )
        if through == "proxy":
            # Cuts, stalls and refusals between the workers and the server, for as long as the test runs.
            chaos = proxy.chaos(rng, 40.0, gap=(0.3, 1.0), length=(0.05, 0.3))
        write(couch_server, db_name, rng, 60)

        # SIGKILL: its units are taken over after the TTL.
        victim = workers[0]
        lost = victim.owned()
        victim.kill()
        others = workers[1:]
        await wait_for(lambda: lost <= set().union(*(w.owned() for w in others)), TTL + 10, "the killed worker's units taken over")
        grants = [e["t"] for w in others for e in w.events if e["e"] == "granted" and e["unit"] in lost and e["t"] > victim.killed_at]
        taken = max(grants) - victim.killed_at
        MEASURED.append(taken)
        report_summary(f"group takeover after SIGKILL ({through}): {taken:.2f}s for {len(lost)} units (TTL {TTL}s)")
        assert taken <= TTL + 5

        # A worker joins, one leaves with SIGTERM, one is frozen past the TTL.
        write(couch_server, db_name, rng, 40)
        workers.append(Worker("w4", url, db_name, coord))
        await wait_for(lambda: len(workers[3].owned()) >= 2, 20, "the new worker taking its share")
        leaving = workers[1]
        before = len(leaving.events)
        write(couch_server, db_name, rng, 40)
        # SIGTERM while its last changes are not checkpointed yet: its stop
        # saves them before it releases the units, so nobody repeats them.
        await wait_for(lambda: len(leaving.events) > before, 10, "the leaver handling new changes")
        assert "Traceback" not in leaving.stop()
        assert leaving.events[-1] == {"e": "left"}
        await wait_for(lambda: len(everyone()) == UNITS, 20, "the leaver's units taken")
        frozen = workers[2]
        held = frozen.owned()
        frozen.signal(signal.SIGSTOP)
        stopped_at = time.time()
        write(couch_server, db_name, rng, 40)
        await sleep(TTL + 1.5)
        frozen.signal(signal.SIGCONT)
        resumed_at = time.time()
        # Its own clock told it, once it ran again, that its leases had
        # ended while it was frozen: it stopped those units.
        ended = lambda: {e["unit"]: e["t"] for e in list(frozen.events) if e["e"] == "ended" and e["t"] > stopped_at - 1}  # noqa: E731
        await wait_for(lambda: held <= ended().keys(), 10, "the frozen worker stopping its units")
        assert held and all(ended()[u] < resumed_at for u in held)
        write(couch_server, db_name, rng, 40)
        final = current_revs(couch_server, db_name)
        handled = lambda: {(e["id"], e["rev"]) for w in workers for e in list(w.events) if e["e"] == "handled"}  # noqa: E731
        try:
            await wait_for(lambda: final <= handled(), 30, "every final revision handled")
        except AssertionError as e:
            missing = sorted(final - handled())
            owners = {w.name: sorted(w.owned()) for w in workers}
            raise AssertionError(f"{e}: {len(missing)} missing, e.g. {missing[:3]}; owners {owners}") from None
    finally:
        if chaos is not None:
            chaos.cancel()
        for w in workers:
            if w.killed_at is None:
                w.signal(signal.SIGCONT)
                w.stop()

    spans = intervals(workers)
    for unit, owned in spans.items():
        owned.sort()
        for (s1, e1, w1), (s2, e2, w2) in zip(owned, owned[1:]):
            assert s2 >= e1, f"unit {unit}: {w1} owned it until {e1}, {w2} from {s2}"
    for w in workers:
        for e in w.events:
            if e["e"] == "handled":
                assert any(n == w.name and a <= e["t"] <= b for a, b, n in spans[e["unit"]]), (w.name, e)
    # Repeats come only from a worker that did not hand the unit over
    # cleanly: killed, frozen, or unable to write its last checkpoint
    # before its lease ended (through the proxy's faults).
    first: dict[tuple[str, str], tuple[str, float, str]] = {}
    calls = sorted((e["t"], w.name, e) for w in workers for e in w.events if e["e"] == "handled")
    for at_now, who, e in calls:
        key = (e["id"], e["rev"])
        if key not in first:
            first[key] = (who, at_now, e["unit"])
            continue
        name, at, unit = first[key]
        if name == who:
            continue  # the same worker again: a change CouchDB itself sent twice
        owner = next(x for x in workers if x.name == name)
        released = [r["t"] for r in owner.events if r["e"] == "released" and r["unit"] == unit and r["t"] > at]
        end = min((b for a, b, n in spans[unit] if n == name and a <= at <= b), default=None)
        clean = bool(released) and end is not None and min(released) >= end
        assert not clean, f"{key} repeated by {who} after {name} released unit {unit} cleanly"
        if through == "direct":
            # Without network faults, only the killed and the frozen worker leave repeats.
            assert name in ("w1", "w3"), (key, name, who)
    assert any(e["e"] == "released" for e in workers[1].events), "the leaver released nothing"
