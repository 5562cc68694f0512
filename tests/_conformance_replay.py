"""Replays the 56 recorded CouchDB 3 exchanges against the test server.

The recordings were made in one run against one CouchDB node; the replay
rebuilds the same data on fresh test servers and sends every recorded
request again, performing the recorded side actions (writes and deletes on
other connections) at their recorded times. Times, and the `timeout` and
`heartbeat` parameters with them, are scaled by SCALE to keep the suite fast.

Cases that touch the same database run in recording order on one thread,
because later cases see the documents earlier side actions wrote; cases on
other databases run on their own threads, and the _db_updates cases, which
see every database event of the node, on a second server of their own.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import couchserver
from ._conformance_compare import FIXED_REV
from ._conformance_http import Exchange, exchange

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "couchdb-3"
SCALE = 0.4
# The recordings' credentials, so recorded Authorization headers stay valid.
RECORDED_ADMIN = ("admin", "changes-test")

DESIGN = {
    "filters": {"by_type": "function(doc, req) { return doc.type === req.query.type; }"},
    "views": {"by_type": {"map": "function(doc) { if (doc.type) { emit(doc.type, null); } }"}},
}
# The recorded side-action writes share two revision ids, so they had two
# bodies; the filtered cases show which type each one carried.
FRUIT = {"type": "fruit"}
VEGETABLE = {"type": "vegetable"}
SIDE_BODIES: dict[str, dict[str, Any]] = {
    "lp-doc-1": FRUIT, "lp-fruit": FRUIT, "live-1": FRUIT, "live-3": FRUIT,
    "lp-doc-2": VEGETABLE, "lp-veg": VEGETABLE, "live-2": VEGETABLE, "live-veg": VEGETABLE,
    "live-fruit": {"type": "fruit", "name": "Kiwi"},
}


@dataclass
class Case:
    name: str
    meta: dict[str, Any]

    @property
    def raw(self) -> str:
        return str(self.meta["request"]["raw"])

    @property
    def path(self) -> str:
        return str(self.meta["request"]["path"])

    @property
    def database(self) -> str:
        return urllib.parse.unquote(self.path.lstrip("/").split("?")[0].split("/")[0])

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))

    @property
    def open_ended_s(self) -> float | None:
        """How long the recording's client read an endless feed, if it was one."""
        m = re.search(r"stopped reading after ([\d.]+)s", self.meta["response"]["ended_by"])
        return float(m.group(1)) if m else None

    @property
    def side_actions(self) -> list[dict[str, Any]]:
        return list(self.meta.get("side_actions") or [])


def load_cases() -> list[Case]:
    """All recorded cases, in the order they were recorded."""
    metas = [json.loads(p.read_text("utf-8")) for p in FIXTURES.glob("*.json")]
    metas.sort(key=lambda m: m["captured_at"])
    return [Case(m["name"], m) for m in metas]


@dataclass
class Outcome:
    """What one replayed case produced, plus what the comparison needs: the
    case database's writes as the case ended, ``(id, rev)`` in order, and
    each document's leaf revisions."""

    response: Exchange | None = None
    error: str = ""
    writes: list[tuple[str, str]] = field(default_factory=list)
    leaves: dict[str, set[str]] = field(default_factory=dict)


class Replay:
    def __init__(self, changes_server: couchserver.RunningServer,
                 updates_server: couchserver.RunningServer) -> None:
        self.a = changes_server
        self.b = updates_server
        self.cases = {c.name: c for c in load_cases()}
        self.outcomes: dict[str, Outcome] = {}
        self.writes: dict[str, list[tuple[str, str]]] = {}
        self.leaves: dict[str, dict[str, set[str]]] = {}
        self.stale_since: str | None = None
        self.lock = threading.Lock()

    # -- writes, tracked so that seqs and revisions can be judged ------------

    def _note_write(self, db: str, doc_id: str, rev: str, replaces: str | None) -> None:
        """One write of *doc_id* that made *rev*, a new leaf (replacing the
        leaf *replaces*, if any); the database's seq counts every write."""
        with self.lock:
            self.writes.setdefault(db, []).append((doc_id, rev))
            leaves = self.leaves.setdefault(db, {}).setdefault(doc_id, set())
            leaves.discard(replaces)  # type: ignore[arg-type]
            leaves.add(rev)

    def _forget(self, db: str) -> None:
        with self.lock:
            self.writes[db] = []
            self.leaves[db] = {}

    def _ok(self, server: couchserver.RunningServer, method: str, path: str,
            body: Any = None) -> Any:
        status, answer = server.request(method, path, body)
        if status >= 300:
            raise AssertionError(f"setup {method} /{path} answered {status}: {answer}")
        return answer

    def put_doc(self, server: couchserver.RunningServer, db: str, doc_id: str,
                body: dict[str, Any]) -> str:
        path = quote(db) + "/" + quote_id(doc_id)
        answer = self._ok(server, "PUT", path, body)
        self._note_write(db, doc_id, str(answer["rev"]), body.get("_rev"))
        return str(answer["rev"])

    def build_fixture_db(self) -> None:
        server, db = self.a, "fixture-db"
        self._ok(server, "PUT", db)
        self.put_doc(server, db, "_design/app", DESIGN)
        apple = self.put_doc(server, db, "apple", {"type": "fruit", "name": "Apple", "color": "red"})
        self.put_doc(server, db, "banana", {"type": "fruit", "name": "Banana", "color": "yellow"})
        self.put_doc(server, db, "carrot", {"type": "vegetable", "name": "Carrot"})
        doomed = self.put_doc(server, db, "doc-to-delete", {"type": "vegetable", "name": "Leek"})
        self.put_doc(server, db, "no-type", {"note": "document without a type field"})
        self.put_doc(server, db, "apple",
                     {"_rev": apple, "type": "fruit", "name": "Apple", "color": "green"})
        deleted = self._ok(server, "DELETE", f"{db}/doc-to-delete?rev={doomed}")
        self._note_write(db, "doc-to-delete", str(deleted["rev"]), doomed)
        self._ok(server, "POST", f"{db}/_bulk_docs", {"new_edits": False, "docs": [{
            "_id": "banana", "_rev": FIXED_REV, "type": "fruit", "name": "Banana", "color": "brown"}]})
        # A second leaf: banana is in conflict.
        self._note_write(db, "banana", FIXED_REV, None)
        self.put_doc(server, db, "café-ümläut", {"type": "fruit", "name": "unicode id"})

    def build_recreated(self) -> None:
        server, db = self.a, "fixture-recreated"
        self._ok(server, "PUT", db)
        for i in range(3):
            self.put_doc(server, db, f"old-{i}", {"n": i})
        self.stale_since = self._ok(server, "GET", f"{db}/_changes")["last_seq"]
        self._ok(server, "DELETE", db)
        self._ok(server, "PUT", db)
        self._forget(db)
        self.put_doc(server, db, "new-0", {"n": 0})

    def build_doomed(self) -> None:
        self._ok(self.a, "PUT", "fixture-doomed")
        self.put_doc(self.a, "fixture-doomed", "d1", {"n": 1})

    def build_db_history(self) -> None:
        """The database events the recorded node went through before its
        _db_updates cases, so the normal feed has the same (db, type) pairs."""
        s = self.b
        self._ok(s, "PUT", "fixture-db")
        self._ok(s, "PUT", "fixture-db/apple", {"type": "fruit"})
        self._ok(s, "PUT", "fixture-doomed")
        self._ok(s, "PUT", "fixture-doomed-lp")
        self._ok(s, "DELETE", "fixture-doomed-lp")
        self._ok(s, "PUT", "fixture-recreated")
        self._ok(s, "DELETE", "fixture-recreated")
        self._ok(s, "PUT", "fixture-recreated")
        self._ok(s, "PUT", "fixture-doomed/d1", {"n": 1})
        self._ok(s, "PUT", "fixture-recreated/new-0", {"n": 0})
        self._ok(s, "DELETE", "fixture-doomed")
        # "updated" events follow their write by one tick: wait until the
        # last one is in the history.
        deadline = time.monotonic() + 5
        while ("fixture-recreated", "updated") not in {
                (r["db_name"], r["type"]) for r in self._ok(s, "GET", "_db_updates")["results"]}:
            assert time.monotonic() < deadline, "the last `updated` event never showed in _db_updates"
            time.sleep(0.01)

    # -- one case ------------------------------------------------------------

    def request_bytes(self, case: Case, server: couchserver.RunningServer) -> bytes:
        head, sep, body = case.raw.partition("\r\n\r\n")
        lines = head.split("\r\n")
        method, target, version = lines[0].split(" ")
        target = re.sub(r"([?&](?:timeout|heartbeat)=)(\d+)",
                        lambda m: m.group(1) + str(max(1, round(int(m.group(2)) * SCALE))),
                        target)
        since = self.substitute_since(case)
        if since is not None:
            target = re.sub(r"([?&]since=)[^&]*", lambda m: m.group(1) + quote(since), target)
        lines[0] = " ".join([method, target, version])
        lines = [f"Host: 127.0.0.1:{server.port}" if ln.lower().startswith("host:") else ln
                 for ln in lines]
        return ("\r\n".join(lines) + sep + body).encode("utf-8")

    def substitute_since(self, case: Case) -> str | None:
        """Recorded seqs are CouchDB's; these cases need this server's own."""
        if case.name == "normal-limit-2-next-page":
            previous = self.outcomes["normal-limit-2"].response
            assert previous is not None
            return str(json.loads(previous.body)["last_seq"])
        if case.name == "normal-stale-since-after-db-recreated":
            return self.stale_since
        return None

    def side_action(self, server: couchserver.RunningServer, what: str) -> None:
        method, path = what.split(" (")[0].split(" ", 1)
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if len(parts) == 1:
            self._ok(server, method, quote(parts[0]))
        else:
            self.put_doc(server, parts[0], parts[1], SIDE_BODIES.get(parts[1], {"x": 1}))

    def run_case(self, case: Case, server: couchserver.RunningServer) -> None:
        outcome = Outcome()
        self.outcomes[case.name] = outcome
        raw = self.request_bytes(case, server)
        actions = case.side_actions
        failures: list[str] = []

        def perform() -> None:
            start = time.monotonic()
            for action in actions:
                delay = action["t_ms"] / 1000.0 * SCALE - (time.monotonic() - start)
                if delay > 0:
                    time.sleep(delay)
                try:
                    self.side_action(server, action["what"])
                except Exception as err:  # reported with the case
                    failures.append(f"side action {action['what']}: {err}")

        actor = threading.Thread(target=perform, daemon=True) if actions else None
        read_for = case.open_ended_s
        try:
            if actor:
                actor.start()
            outcome.response = exchange(
                "127.0.0.1", server.port, raw,
                read_for=None if read_for is None else read_for * SCALE,
                limit=15.0)
        except Exception as err:
            outcome.error = f"{type(err).__name__}: {err}"
        if actor:
            actor.join(15.0)
        if failures:
            outcome.error = "; ".join([outcome.error] + failures if outcome.error else failures)
        with self.lock:
            outcome.writes = list(self.writes.get(case.database, []))
            outcome.leaves = {d: set(r) for d, r in self.leaves.get(case.database, {}).items()}

    # -- the whole run -------------------------------------------------------

    def run(self) -> dict[str, Outcome]:
        cases = list(self.cases.values())
        by_db: dict[str, list[Case]] = {}
        for case in cases:
            by_db.setdefault(case.database, []).append(case)
        updates = [c for c in cases if c.database == "_db_updates"]
        main = [c for c in cases if c.database in ("fixture-db", "no-such-db")]

        def run_main() -> None:
            self.build_fixture_db()
            for case in main:
                self.run_case(case, self.a)

        def run_recreated() -> None:
            self.build_recreated()
            for case in by_db["fixture-recreated"]:
                self.run_case(case, self.a)

        def run_doomed() -> None:
            self.build_doomed()
            for case in by_db["fixture-doomed"]:
                self.run_case(case, self.a)

        def run_doomed_lp() -> None:
            self._ok(self.a, "PUT", "fixture-doomed-lp")
            for case in by_db["fixture-doomed-lp"]:
                self.run_case(case, self.a)

        def run_updates() -> None:
            first, rest = updates[0], updates[1:]
            assert first.name == "db-updates-without-global-changes-db"
            self._ok(self.b, "DELETE", "_global_changes")
            self.run_case(first, self.b)
            self._ok(self.b, "PUT", "_global_changes")
            self.build_db_history()
            for case in rest:
                self.run_case(case, self.b)

        groups = [run_main, run_recreated, run_doomed, run_doomed_lp, run_updates]
        errors: list[BaseException] = []

        def guarded(fn: Any) -> None:
            try:
                fn()
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=guarded, args=(g,), daemon=True) for g in groups]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        if errors:
            raise errors[0]
        if any(t.is_alive() for t in threads):
            raise TimeoutError("the replay did not finish within 120 s")
        return self.outcomes


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def quote_id(doc_id: str) -> str:
    # Design and local documents keep their slash, as CouchDB expects.
    for prefix in ("_design/", "_local/"):
        if doc_id.startswith(prefix):
            return prefix + quote(doc_id[len(prefix):])
    return quote(doc_id)
