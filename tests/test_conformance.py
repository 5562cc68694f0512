"""The test server answers the 56 recorded CouchDB 3.5 requests as CouchDB did.

Every recorded exchange in fixtures/couchdb-3 is replayed against fresh test
servers (see _conformance_replay) and compared with the recording (see
_conformance_compare): status, error body, rows in order, seq numbers, end of
feed and framing. What a single in-memory shard cannot reproduce is relaxed
case by case in RELAXED below, each relaxation with its reason; a relaxation
that is no longer needed fails too, so that the table stays exact. The test
server's own seqs and revisions are also checked exactly against the
replay's writes.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from . import couchserver
from ._conformance_compare import (
    DBS_ROWS,
    HEADERS_DELAYED_MS,
    HEARTBEAT_TIMING,
    LAST_SEQ_NUMBER,
    ROW_ORDER,
    ROWS,
    SEQ_NUMBERS,
    Parsed,
    differences,
    own_write_differences,
    parse,
)
from ._conformance_replay import RECORDED_ADMIN, SCALE, Case, Outcome, Replay, load_cases

# Why a case cannot come out the same from one in-memory shard.
_MERGE_ORDER = ("CouchDB (q=2) merges the rows of its two shards, which puts them out of write order; "
                "one shard sends them in write order")
_MERGE_SEQS = ("CouchDB numbers a row by the sum of its two shards' positions where its merge reached "
               "that row; one shard numbers it by the write that made it")
_LIMIT = ("CouchDB's `limit` takes the first rows of its two-shard merge ({rows}); one shard takes the "
          "oldest rows in write order")
_NEXT_PAGE_SEQ = "the first page's last_seq, where this page starts, is a different row on each side"
_DESCENDING_SEQ = ("newest first, last_seq is the oldest row sent, which the two-shard merge and one "
                   "shard disagree on")
_GLOBAL_SEQS = ("`_global_changes` numbers every database event of the recording node since it was "
                "set up, more than the replay's fresh server has seen")
_HISTORY = ("the normal _db_updates feed is the node's history as `_global_changes` batched and folded "
            "it during the recording run (the re-created database's second `created` was folded into "
            "its first, before its `deleted`); a fresh server replaying the same events orders them by "
            "their last occurrence")
_DBS = ("CouchDB writes the `_dbs` row in the same batch as the event that caused it, in no fixed "
        "order")
# Not a difference of the server's: when heartbeats fall, against the rest of
# the body, depends on the timers' phase, on CouchDB as here.
_TIMERS = "heartbeats fall where the timers' phase puts them"
TIMING = {HEARTBEAT_TIMING}

RELAXED: dict[str, dict[str, str]] = {
    "normal-since-0": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "normal-limit-2": {ROWS: _LIMIT.format(rows="no-type, doc-to-delete"), SEQ_NUMBERS: _MERGE_SEQS},
    "normal-limit-2-next-page": {ROWS: _LIMIT.format(rows="banana, café-ümläut after the first page"),
                                 SEQ_NUMBERS: _MERGE_SEQS, LAST_SEQ_NUMBER: _NEXT_PAGE_SEQ},
    "normal-descending": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS, LAST_SEQ_NUMBER: _DESCENDING_SEQ},
    "normal-include-docs": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "normal-style-all-docs": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "normal-all-docs-conflicts-include-docs": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "normal-seq-interval-3": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "deleted-doc-include-docs": {SEQ_NUMBERS: _MERGE_SEQS},
    "filter-ddoc-query-param": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "filter-doc-ids-post": {SEQ_NUMBERS: _MERGE_SEQS},
    "filter-doc-ids-get": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "filter-selector-post": {SEQ_NUMBERS: _MERGE_SEQS},
    "filter-selector-include-docs-fields": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "filter-view": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "filter-design": {SEQ_NUMBERS: _MERGE_SEQS},
    "longpoll-immediate": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "longpoll-heartbeat-then-write": {HEARTBEAT_TIMING: _TIMERS},
    "continuous-since-0-timeout": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "continuous-heartbeat-live": {HEARTBEAT_TIMING: _TIMERS},
    "continuous-heartbeat-overrides-timeout": {HEARTBEAT_TIMING: _TIMERS},
    "continuous-include-docs-filter-live": {HEARTBEAT_TIMING: _TIMERS},
    "continuous-seq-interval-live": {ROW_ORDER: _MERGE_ORDER, SEQ_NUMBERS: _MERGE_SEQS},
    "continuous-since-0-limit-2": {ROWS: _LIMIT.format(rows="no-type, doc-to-delete"), SEQ_NUMBERS: _MERGE_SEQS},
    "continuous-db-deleted-mid-feed": {HEARTBEAT_TIMING: _TIMERS},
    "eventsource-since-0-timeout": {ROWS: _LIMIT.format(rows="no-type, doc-to-delete, banana"),
                                    SEQ_NUMBERS: _MERGE_SEQS},
    "db-updates-normal": {ROW_ORDER: _HISTORY, SEQ_NUMBERS: _GLOBAL_SEQS, LAST_SEQ_NUMBER: _GLOBAL_SEQS},
    "db-updates-since-now": {LAST_SEQ_NUMBER: _GLOBAL_SEQS},
    "db-updates-continuous-live": {DBS_ROWS: _DBS, SEQ_NUMBERS: _GLOBAL_SEQS, HEARTBEAT_TIMING: _TIMERS},
    "db-updates-longpoll-wait": {SEQ_NUMBERS: _GLOBAL_SEQS, LAST_SEQ_NUMBER: _GLOBAL_SEQS},
    "db-updates-continuous-timeout": {LAST_SEQ_NUMBER: _GLOBAL_SEQS},
}
CASES = load_cases()
#: The cases reproduced identically (timing aside): every case with no
#: relaxation but TIMING. test_conformance_score checks it is exactly so.
IDENTICAL = {c.name for c in CASES if not set(RELAXED.get(c.name, {})) - TIMING}


@pytest.fixture(scope="module")
def conformance_run() -> Iterator[dict[str, Outcome]]:
    changes_server = couchserver.start(RECORDED_ADMIN)
    updates_server = couchserver.start(RECORDED_ADMIN)
    try:
        yield Replay(changes_server, updates_server).run()
    finally:
        changes_server.stop()
        updates_server.stop()


def recorded(case: Case) -> Parsed:
    r = case.meta["response"]
    chunks = [c["data"].encode("utf-8") for c in r["chunks"]]
    if r["framing"] != "chunked":
        chunks = [r["body"].encode("utf-8")]
    return parse(case.path, r["status"], [tuple(h) for h in r["headers"]], chunks,
                 r["complete"], case.meta["recv_timeline"][0]["t_ms"], HEADERS_DELAYED_MS)


def replayed(case: Case, outcome: Outcome) -> Parsed:
    ex = outcome.response
    assert ex is not None, outcome.error
    return parse(case.path, ex.status, ex.headers, [data for _, data in ex.chunks],
                 ex.complete, ex.header_ms, HEADERS_DELAYED_MS * SCALE)


def compare(case: Case, outcome: Outcome, relaxed: frozenset[str]) -> list[str]:
    if outcome.response is None or outcome.error:
        return [f"replay failed: {outcome.error}"]
    return [f"{aspect}: {text}" for aspect, text in
            differences(case.path, recorded(case), replayed(case, outcome), relaxed)]


def test_every_relaxation_names_a_recorded_case_and_an_aspect() -> None:
    """The table of relaxations speaks of recorded cases and of aspects the comparison knows, each with a reason."""
    from ._conformance_compare import ASPECTS

    assert set(RELAXED) <= {c.name for c in CASES}
    for name, relaxations in RELAXED.items():
        assert relaxations and set(relaxations) <= set(ASPECTS), name
        assert all(reason.strip() for reason in relaxations.values()), name


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replayed_exchange_matches_recording(case: Case, conformance_run: dict[str, Outcome]) -> None:
    """The replayed request gets the recorded status, error, rows, seq numbers, end of feed and framing, but
    for the aspects RELAXED names for it; each of those (timing aside) still differs, and the test server's
    seqs and revisions are those of the replay's own writes."""
    outcome = conformance_run[case.name]
    relaxed = RELAXED.get(case.name, {})
    diffs = compare(case, outcome, frozenset(relaxed))
    assert diffs == [], "\n".join(diffs)
    for aspect in set(relaxed) - TIMING:
        assert compare(case, outcome, frozenset(relaxed) - {aspect}), (
            f"{case.name} comes out the same without relaxing {aspect!r}: remove it from RELAXED")
    if "_changes" in case.path and outcome.response is not None and outcome.response.status == 200:
        own = own_write_differences(case.path, replayed(case, outcome), outcome.writes, outcome.leaves)
        assert own == [], "\n".join(own)


def test_conformance_score(conformance_run: dict[str, Outcome],
                           report_summary: Callable[[str], None]) -> None:
    """Exactly the cases without a relaxation (timing aside) are reproduced identically: an improvement or a
    regression both show."""
    identical = {c.name for c in CASES
                 if not compare(c, conformance_run[c.name], frozenset(RELAXED.get(c.name, {})) & TIMING)}
    relaxed = Counter(a for name in set(RELAXED) - IDENTICAL for a in RELAXED[name] if a not in TIMING)
    report_summary(f"CouchDB 3 conformance: {len(identical)}/{len(CASES)} recorded exchanges identical; "
                   f"the other {len(CASES) - len(IDENTICAL)} relax, with the reasons in RELAXED: "
                   + ", ".join(f"{a} ({n})" for a, n in sorted(relaxed.items())))
    assert identical == IDENTICAL, {"newly identical": sorted(identical - IDENTICAL),
                                    "no longer identical": sorted(IDENTICAL - identical)}


# -- Test-server behaviour the recordings cannot show --------------------------

def _open_feeds(server: couchserver.RunningServer) -> int:
    status, body = server.request("GET", "_testserver")
    assert status == 200, body
    return int(body["open_feeds"]["changes"])


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_closed_feeds_are_cancelled(couch_server: couchserver.RunningServer,
                                    db_url: str, db_name: str) -> None:
    """Feeds whose clients disconnected are dropped by the server at once."""
    baseline = _open_feeds(couch_server)
    auth = couch_server.auth_header()["Authorization"]
    request = (f"GET /{db_name}/_changes?feed=continuous&since=now&heartbeat=60000 "
               f"HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n").encode()
    socks = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", couch_server.port), timeout=5)
        sock.sendall(request)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        socks.append(sock)
    assert _wait_for(lambda: _open_feeds(couch_server) == baseline + 20)
    for sock in socks:
        sock.close()
    assert _wait_for(lambda: _open_feeds(couch_server) == baseline)


def test_refused_database_delete_leaves_server_usable(
        couch_server: couchserver.RunningServer, db_url: str, db_name: str) -> None:
    """An anonymous DELETE /db is refused with CouchDB's 401 and later
    requests are still answered (stock express-pouchdb hung from then on)."""
    req = urllib.request.Request(couch_server.url + db_name, method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=5)
    assert refused.value.code == 401
    assert json.loads(refused.value.read()) == {
        "error": "unauthorized", "reason": "You are not a server admin."}
    assert couch_server.request("PUT", f"{db_name}/after", {"ok": 1})[0] == 201
    assert couch_server.request("GET", f"{db_name}/after")[0] == 200


def test_admin_party_without_admin() -> None:
    """Started without an admin, the server lets anonymous clients do anything."""
    with couchserver.start(admin=None) as server:
        assert server.admin_url == server.url
        assert server.request("PUT", "party")[0] == 201
        with urllib.request.urlopen(server.url + "party/_changes", timeout=5) as resp:
            assert json.loads(resp.read())["results"] == []
