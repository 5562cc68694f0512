"""The fault-injecting TCP proxy, driven by txchanges against the project's test server."""

from __future__ import annotations

import base64
import random
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

from txchanges import Consumer, ConnectionFailed, Server, Stalled, UncleanEnd
from txchanges.feed import _watchdog

from .faultproxy import FaultProxy


def sleep(seconds: float) -> Any:
    return task.deferLater(reactor, seconds, lambda: None)





@pytest.fixture
def quick_watchdog(monkeypatch):
    """A 0.5 s watchdog grace, so that stalls are detected quickly."""
    monkeypatch.setattr(_watchdog, "GRACE", 0.5)


async def fill(db, n: int) -> list[dict[str, Any]]:
    await db.save_docs([{"_id": f"doc-{i:04d}", "n": i, "pad": "x" * 20} for i in range(n)])
    return (await Consumer(db).fetch(since=0))["results"]


def test_url_for_keeps_credentials_and_path():
    """url_for swaps host and port and keeps the user, password, path and query."""
    p = FaultProxy("127.0.0.1", 1)
    p.port = 4321
    assert p.url_for("http://a%40b:s3cr%3At@localhost:5984/db/x?q=1") == (
        "http://a%40b:s3cr%3At@127.0.0.1:4321/db/x?q=1"
    )
    assert p.url_for("http://127.0.0.1:5984/") == "http://127.0.0.1:4321/"


@pytest_twisted.ensureDeferred
async def test_normal_traffic_passes(direct, proxied, proxy):
    """Without faults a fetch through the proxy equals the direct one, and the counters count it."""
    expected = await fill(direct, 30)
    through = await Consumer(proxied).fetch(since=0)
    assert through["results"] == expected and len(expected) == 30
    assert proxy.connections == 1 and proxy.bytes_forwarded > 30 * 40
    assert proxy.faults == {"cuts": 0, "stalls": 0, "refusals": 0, "drops": 0}


@pytest_twisted.ensureDeferred
async def test_cut_after_mid_feed_delivers_a_prefix_of_complete_rows(direct, proxied, proxy):
    """A cut after 3000 bytes fails wait with UncleanEnd at the last complete row delivered."""
    expected = await fill(direct, 200)
    proxy.cut_after(3000)
    rows: list[dict[str, Any]] = []
    with pytest.raises(UncleanEnd) as caught:
        await Consumer(proxied).wait(since=0, heartbeat=500, cb=rows.append)
    assert 0 < len(rows) < 200
    assert rows == expected[: len(rows)]
    assert caught.value.last_seq == rows[-1]["seq"]
    assert proxy.bytes_forwarded == 3000 and proxy.faults["cuts"] == 1


@pytest_twisted.ensureDeferred
async def test_cuts_at_random_offsets_never_deliver_a_partial_row(direct, proxied, proxy):
    """Cuts anywhere (headers, chunk headers, mid-line) end each feed with a typed error and a clean prefix."""
    expected = await fill(direct, 40)
    proxy.cut_after(0, 3000, random.Random(7))
    consumer = Consumer(proxied)
    kinds = set()
    for _ in range(25):
        rows: list[dict[str, Any]] = []
        with pytest.raises((UncleanEnd, ConnectionFailed)) as caught:
            await consumer.wait(since=0, heartbeat=500, cb=rows.append)
        kinds.add(type(caught.value))
        assert rows == expected[: len(rows)]
        if isinstance(caught.value, UncleanEnd):
            assert caught.value.last_seq == (rows[-1]["seq"] if rows else None)
        else:
            assert rows == []
    assert kinds == {UncleanEnd, ConnectionFailed}
    assert proxy.faults["cuts"] == 25


@pytest_twisted.ensureDeferred
async def test_cut_all_ends_an_open_feed(direct, proxied, proxy):
    """cut_all aborts an open feed, which fails with UncleanEnd after the rows it delivered."""
    expected = await fill(direct, 5)
    rows: list[dict[str, Any]] = []
    d = Consumer(proxied).wait(since=0, heartbeat=500, cb=rows.append)
    while len(rows) < 5:
        await sleep(0.02)
    assert proxy.cut_all() == 1
    with pytest.raises(UncleanEnd) as caught:
        await d
    assert rows == expected and caught.value.last_seq == expected[-1]["seq"]
    await sleep(0.05)
    assert proxy.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_stall_trips_the_consumer_watchdog(quick_watchdog, direct, proxied, proxy):
    """A stalled proxy keeps the connection open and wait fails with Stalled after heartbeat*1.25+grace."""
    await fill(direct, 3)
    proxy.stall()
    start = time.monotonic()
    d = Consumer(proxied).wait(since=0, heartbeat=200)
    await sleep(0.3)
    assert proxy.open_connections == 1 and proxy.bytes_forwarded == 0
    with pytest.raises(Stalled):
        await d
    elapsed = time.monotonic() - start
    assert 0.2 * 1.25 + 0.5 - 0.05 <= elapsed < 0.2 * 1.25 + 0.5 + 1.0
    assert proxy.faults["stalls"] == 1


@pytest_twisted.ensureDeferred
async def test_unstall_delivers_held_rows_in_order(direct, proxied, proxy):
    """Rows written during a stall arrive after unstall, in order, none lost and none early."""
    await fill(direct, 2)
    rows: list[dict[str, Any]] = []
    c = Consumer(proxied)
    d = c.wait(since=0, heartbeat=2000, cb=rows.append)
    while len(rows) < 2:
        await sleep(0.02)
    proxy.stall()
    await direct.save_docs([{"_id": f"late-{i}"} for i in range(20)])
    await sleep(0.3)
    assert len(rows) == 2
    proxy.unstall()
    deadline = time.monotonic() + 5
    while len(rows) < 22 and time.monotonic() < deadline:
        await sleep(0.02)
    c.stop()
    await d
    assert [r["id"] for r in rows[2:]] == [f"late-{i}" for i in range(20)]


@pytest_twisted.ensureDeferred
async def test_stall_holds_a_whole_response_and_its_close(direct, proxied, proxy):
    """A fetch during a stall gets nothing until unstall, then the whole body."""
    expected = await fill(direct, 10)
    proxy.stall()
    d = Consumer(proxied).fetch(since=0)
    await sleep(0.3)
    assert not d.called and proxy.bytes_forwarded == 0
    proxy.unstall()
    assert (await d)["results"] == expected


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_pauses_the_server_side(couch_server, direct, proxy):
    """A client that stops reading stops the proxy reading the server, and reading again resumes it."""
    total = 8
    await direct.save_docs([{"_id": f"big-{i}", "blob": "x" * 1_000_000} for i in range(total)])
    auth = base64.b64encode(":".join(couch_server.admin).encode()).decode()
    request = (f"GET /{direct.name}/_changes?include_docs=true HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Basic {auth}\r\nConnection: close\r\n\r\n")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", proxy.port))
        s.sendall(request.encode())
        await sleep(0.5)
        held = proxy.bytes_forwarded
        await sleep(0.3)
        assert proxy.bytes_forwarded == held < (total - 2) * 1_000_000
        s.setblocking(False)
        received, deadline = bytearray(), time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                data = s.recv(1 << 20)
            except BlockingIOError:
                await sleep(0.005)
                continue
            if not data:  # the server's close, forwarded after the body
                break
            received += data
    assert len(received) == proxy.bytes_forwarded > total * 1_000_000
    assert received.count(b'"_id":"big-') == total


@pytest_twisted.ensureDeferred
async def test_refuse_gives_connection_refused_then_accept_restores(couch_server, direct, proxied, proxy):
    """While refusing, fetch fails with ConnectionFailed naming the proxy; an open feed survives; accept restores."""
    await fill(direct, 3)
    rows: list[dict[str, Any]] = []
    c = Consumer(proxied)
    d = c.wait(since=0, heartbeat=300, cb=rows.append)
    while len(rows) < 3:
        await sleep(0.02)
    await proxy.refuse()
    fresh = Server(proxy.url_for(couch_server.admin_url))
    try:
        with pytest.raises(ConnectionFailed) as caught:
            await Consumer(fresh[direct.name]).fetch()
        assert (caught.value.host, caught.value.port) == ("127.0.0.1", proxy.port)
        assert "refused" in caught.value.reason.lower()
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", proxy.port)) != 0
        await direct.save_doc({"_id": "during-refusal"})
        while len(rows) < 4:
            await sleep(0.02)
        await proxy.accept()
        assert len((await Consumer(fresh[direct.name]).fetch())["results"]) == 4
    finally:
        c.stop()
        await d
        await fresh.close()
    assert proxy.faults["refusals"] == 1


@pytest_twisted.ensureDeferred
async def test_refuse_for_seconds_accepts_by_itself(couch_server, direct, proxied, proxy):
    """refuse(seconds) listens again on the same port when the time is up."""
    port = proxy.port
    await proxy.refuse(0.2)
    assert proxy.pending_timers == ["accept"]
    with pytest.raises(ConnectionFailed):
        await Consumer(proxied).fetch()
    await sleep(0.3)
    assert not proxy.refusing and proxy.port == port and proxy.pending_timers == []
    assert (await Consumer(proxied).fetch())["results"] == []


@pytest_twisted.ensureDeferred
async def test_drop_new_fails_fetch_with_connection_failed(direct, proxied, proxy):
    """drop_new closes each new connection at once, so fetch fails with ConnectionFailed until accept."""
    await fill(direct, 3)
    proxy.drop_new()
    with pytest.raises(ConnectionFailed) as caught:
        await Consumer(proxied).fetch()
    assert caught.value.port == proxy.port
    assert proxy.faults["drops"] == 1 and proxy.bytes_forwarded == 0
    await proxy.accept()
    assert len((await Consumer(proxied).fetch())["results"]) == 3


async def follow(consumer: Consumer, seen: list[str], errors: list[Exception], done: list[bool]) -> None:
    """Keep a continuous feed open, resuming from the last seq after every failure."""
    since: Any = 0

    def got(row: dict[str, Any]) -> None:
        seen.append(row["id"])

    while not done:
        try:
            since = await consumer.wait(since=since, heartbeat=100, cb=got)
        except (UncleanEnd, Stalled) as e:
            errors.append(e)
            since = since if e.last_seq is None else e.last_seq
        except ConnectionFailed as e:
            errors.append(e)
            await sleep(0.02)


@pytest_twisted.ensureDeferred
async def test_chaos_injects_every_kind_and_stops_clean(monkeypatch, direct, proxied, proxy):
    """Seeded chaos injects cuts, stalls, refusals and drops, no change is lost, and stop leaves nothing behind."""
    monkeypatch.setattr(_watchdog, "GRACE", 0.1)
    consumer = Consumer(proxied)
    seen: list[str] = []
    errors: list[Exception] = []
    done: list[bool] = []
    follower = Deferred.fromCoroutine(follow(consumer, seen, errors, done))
    chaos = proxy.chaos(random.Random(3), duration=2.0, gap=(0.05, 0.15), length=(0.25, 0.4))
    written = []
    while not chaos.called:
        batch = [{"_id": f"c-{len(written) + i:04d}"} for i in range(5)]
        await direct.save_docs(batch)
        written += [doc["_id"] for doc in batch]
        await sleep(0.02)
    await chaos
    assert proxy.pending_timers == [] and not proxy.stalled and not proxy.refusing
    deadline = time.monotonic() + 5
    while not set(written) <= set(seen) and time.monotonic() < deadline:
        await sleep(0.05)
    done.append(True)
    consumer.stop()
    await follower
    assert set(written) <= set(seen)
    assert all(proxy.faults[k] > 0 for k in ("cuts", "stalls", "refusals", "drops")), proxy.faults
    assert {type(e) for e in errors} == {UncleanEnd, Stalled, ConnectionFailed}
    await proxy.stop()
    assert proxy.open_connections == 0 and proxy.pending_timers == []
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", proxy.port)) != 0


@pytest_twisted.ensureDeferred
async def test_stop_during_chaos_ends_it_and_every_connection(proxied, proxy):
    """stop() while chaos runs and a feed is open ends both, cancels every timer and stops listening."""
    feed = Consumer(proxied).wait(since=0, heartbeat=10000)
    while proxy.bytes_forwarded == 0:
        await sleep(0.02)
    chaos = proxy.chaos(random.Random(1), duration=30.0, kinds=("stall",))
    await sleep(0.2)
    await proxy.stop()
    assert chaos.called and proxy.pending_timers == [] and proxy.open_connections == 0
    with pytest.raises(UncleanEnd):
        await feed
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", proxy.port)) != 0
