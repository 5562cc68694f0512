"""The test server answers the 56 recorded CouchDB 3.5 requests as CouchDB did.

Every recorded exchange in fixtures/couchdb-3 is replayed against fresh test
servers (see _conformance_replay) and compared with the recording (see
_conformance_compare): status, error body, rows, end of feed and framing.
A few cases cannot come out the same from a single in-memory shard; they are
listed below with the reason and compared on what still can be compared.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from . import couchserver
from ._conformance_compare import HEADERS_DELAYED_MS, Parsed, differences, parse
from ._conformance_replay import RECORDED_ADMIN, SCALE, Case, Outcome, Replay, load_cases

_SHARD_MERGE = (
    "CouchDB's `limit` takes the first rows of its two-shard merge ({rows}); "
    "one shard returns the oldest rows in write order instead"
)
KNOWN_EXCEPTIONS = {
    "normal-limit-2": _SHARD_MERGE.format(rows="no-type, doc-to-delete"),
    "normal-limit-2-next-page": _SHARD_MERGE.format(
        rows="banana, café-ümläut after the first page"),
    "continuous-since-0-limit-2": _SHARD_MERGE.format(rows="no-type, doc-to-delete"),
    "eventsource-since-0-timeout": _SHARD_MERGE.format(rows="no-type, doc-to-delete, banana"),
    "db-updates-normal": (
        "the normal _db_updates feed is the whole node's history as _global_changes "
        "batched and folded it during the recording run (the re-created database's "
        "second `created` was folded into its first, before its `deleted`); a fresh "
        "server replaying the same events orders them by their last occurrence"
    ),
}
TARGET = 48
CASES = load_cases()


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


def compare(case: Case, outcome: Outcome, shape_only: bool) -> list[str]:
    if outcome.response is None or outcome.error:
        return [f"replay failed: {outcome.error}"]
    return differences(case.path, recorded(case), replayed(case, outcome),
                       outcome.write_order, shape_only=shape_only)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replayed_exchange_matches_recording(case: Case, conformance_run: dict[str, Outcome]) -> None:
    """The replayed request gets the recorded status, error, rows, end of feed
    and framing (known exceptions: everything but which rows)."""
    diffs = compare(case, conformance_run[case.name], shape_only=case.name in KNOWN_EXCEPTIONS)
    assert diffs == [], "\n".join(diffs)


def test_conformance_score(conformance_run: dict[str, Outcome],
                           report_summary: Callable[[str], None]) -> None:
    """At least TARGET of the recorded exchanges are reproduced identically."""
    identical = [c.name for c in CASES if not compare(c, conformance_run[c.name], shape_only=False)]
    report_summary(f"CouchDB 3 conformance: {len(identical)}/{len(CASES)} recorded exchanges "
                   f"identical (target {TARGET})")
    for name, reason in KNOWN_EXCEPTIONS.items():
        report_summary(f"  known exception {name}: {reason}")
    assert len(identical) >= TARGET, sorted(set(c.name for c in CASES) - set(identical))


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
