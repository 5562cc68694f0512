"""ChangesService against the project's test server through the fault-injecting
proxy (tests/faultproxy.py): soak under seeded chaos, exactly-once delivery
with the de-duplication window, terminal versus transient failures,
``give_up_after``, and a clean stop in the middle of chaos.

The chaos tests draw a new seed each run (reported in the run's summary;
``TXCHANGES_FAULT_SEED=N`` replays one) and assert only what must hold for
any seed: no change lost, none handled twice at once, every reconnect
accounted for by a logged failure or a clean end.

The service always reaches the database THROUGH the proxy; the writer and
every check read and write the database DIRECTLY, so that faults touch only
the follower. Handlers record ``(id, rev)``; a change counts as handled when
the handler's call finished.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from txchanges import ChangesService, ConnectionFailed, MemoryCheckpoint, NotFound, Server, Shard
from txchanges.feed import _watchdog
from txchanges.service._progress import Progress
from txchanges.service._scheduler import Scheduler

from .memorynet import MemoryNet
from .scriptedfeed import FeedServer, feed_of, held_back, seq
from ._fault_helpers import (FailureLog, Tracker, Writer, draw_seed, fast_retry, latest_revs, report, seeded, sleep,
                             wait_for)
from .test_progress import Listener

#: The heartbeat the service asks for, in ms; with GRACE below a silence of
#: 0.5 * 1.25 + 0.2 = 0.825 s trips the watchdog.
HEARTBEAT = 500
GRACE = 0.2
RUNNING_STATES = ("connecting", "streaming", "waiting")


@pytest.fixture(autouse=True)
def quick_watchdog(monkeypatch):
    """A 0.2 s watchdog grace, so that stalls are detected within a second."""
    monkeypatch.setattr(_watchdog, "GRACE", GRACE)





def ids_in(data: bytes) -> list[str]:
    """The document ids of the change rows in a piece of a continuous feed's body."""
    return [m.decode() for m in re.findall(rb'"id":"([^"]+)"', data)]


async def reached(moment: Any, seconds: float) -> bool:
    """Wait (at most *seconds*) for *moment()* to hold; return whether it did."""
    try:
        await wait_for(moment, seconds, "a moment", step=0.002)
    except AssertionError:
        return False
    return True


def make_service(db, handler, **options: Any) -> ChangesService:
    settings: dict[str, Any] = dict(
        heartbeat=HEARTBEAT, concurrency=4, retry_policy=fast_retry, checkpoint_every=20
    )
    settings.update(options)
    return ChangesService(db, handler, **settings)


async def stop_within(service: ChangesService, seconds: float) -> float:
    """Call stopService and return how long it took to fire; fail if it takes over *seconds*."""
    start = time.monotonic()
    d = service.stopService()
    await wait_for(lambda: d.called, seconds, "stopService() to fire")
    await d
    return time.monotonic() - start


async def failure_within(d: Deferred, seconds: float) -> BaseException:
    """Wait (at most *seconds*) for *d* to fail, and return the exception."""
    await wait_for(lambda: d.called, seconds, "when_stopped() to fire")
    try:
        await d
    except Exception as e:
        return e
    raise AssertionError("when_stopped() fired with None: the service stopped without an error")


async def caught_up(tracker: Tracker, direct, seconds: float, what: str) -> dict[str, str]:
    """Wait until every document's newest revision (read directly) was handled; return those revisions."""
    expected = await latest_revs(direct)
    deadline = time.monotonic() + seconds
    while tracker.missing(expected):
        if time.monotonic() > deadline:
            missing = tracker.missing(expected)
            raise AssertionError(f"{what}: {len(missing)} of {len(expected)} newest revisions never handled, "
                                 f"e.g. {missing[:5]}")
        await sleep(0.05)
    return expected


@pytest_twisted.ensureDeferred
async def test_soak_under_chaos_handles_every_latest_revision(direct, proxied, proxy, report_summary):
    """Through 10 s of chaos of every kind (plus cuts at random byte counts, and a final stall longer than the watchdog allows) while 2,050 documents are written and updated, the service handles every document's newest revision, never runs two calls for one document at once, keeps running, and makes one new request for each failure or clean end it logged."""
    seed = draw_seed()
    tracker = Tracker(seeded(seed, "tracker"))
    writer = Writer(direct, seeded(seed, "writer"))
    service = make_service(proxied, tracker)
    with FailureLog() as failures:
        service.startService()
        try:
            # Cuts anywhere in the first 6000 response bytes of each connection
            # (mid-headers, mid-chunk-header and mid-line) for the first half
            # of the writing.
            proxy.cut_after(0, 6000, seeded(seed, "cuts"))
            chaos = proxy.chaos(seeded(seed, "chaos"), duration=10.0, gap=(0.05, 0.25), length=(0.15, 1.2))
            # Bursts of 100 new documents and 8 updates: a backlog at every
            # burst, so that backpressure pauses the feed now and then.
            writing = Deferred.fromCoroutine(writer.run(docs=2000, batch=100, updates=8, pause=0.4))
            await wait_for(lambda: writer.created >= 1000, 30, "half of the documents to be written")
            proxy.cut_after(None)
            await writing
            await chaos
            # One more stall, longer than the 0.825 s of silence the watchdog
            # allows whatever state the service is in, while 50 more
            # documents are written.
            proxy.stall(1.5)
            await writer.run(docs=2050, batch=50, updates=0, pause=0.0)
            await wait_for(lambda: not proxy.stalled, 5, "the stall to end")
            expected = await caught_up(tracker, direct, 30.0, "after the chaos")
            await wait_for(lambda: service.state == "streaming", 5, "the feed to be open again")
            failures.check_reconnects(service)
            stats = service.stats
        finally:
            elapsed = await stop_within(service, 5.0)
    assert service.state == "stopped"
    failures.check_no_unhandled()
    # The feed shows each document once, at the revision the writer wrote last.
    assert expected == writer.revs and len(expected) == 2050 and writer.updates == 20 * 8
    assert tracker.overlaps == [], f"calls for one document ran concurrently: {tracker.overlaps[:5]}"
    assert 1 < tracker.max_running <= 4, "calls ran one at a time, or more than concurrency at once"
    assert stats.handled == len(tracker.handled)
    # The final stall was noticed by the watchdog, whatever the seed did before.
    assert failures.errors["Stalled"] >= 1, failures.errors
    report(report_summary, "soak under faults",
           seed=seed, faults=dict(proxy.faults), chaos=len(proxy.history), reconnects=stats.reconnects,
           failures=dict(failures.errors), changes_written=writer.changes_written,
           handled=len(tracker.handled), duplicates=tracker.duplicates(), stop=f"{elapsed:.2f}s")


@pytest_twisted.ensureDeferred
async def test_dedup_window_gives_exactly_once_through_faults_and_a_rewind(direct, proxied, proxy, report_summary):
    """With dedup_window covering every change, each (id, rev) is handled exactly once through chaos, and also after a restart from a rewound checkpoint replays the feed, the replayed changes being counted as duplicates."""
    seed = draw_seed()
    tracker = Tracker(seeded(seed, "tracker"))
    writer = Writer(direct, seeded(seed, "writer"))
    store = MemoryCheckpoint()
    service = make_service(proxied, tracker, checkpoint=store, dedup_window=10000)
    with FailureLog() as failures:
        service.startService()
        try:
            proxy.cut_after(0, 6000, seeded(seed, "cuts"))
            chaos = proxy.chaos(seeded(seed, "chaos"), duration=6.0, gap=(0.05, 0.2), length=(0.15, 1.0))
            writing = Deferred.fromCoroutine(writer.run(docs=1000, batch=40, updates=4, pause=0.12))
            await wait_for(lambda: writer.created >= 500, 30, "half of the documents to be written")
            proxy.cut_after(None)
            await writing
            await chaos
            faults = dict(proxy.faults)
            await caught_up(tracker, direct, 30.0, "after the chaos")
            await wait_for(lambda: service.state == "streaming", 5, "the feed to be open again")
            failures.check_reconnects(service)
            assert writer.changes_written <= 10000
            before_rewind = Counter(tracker.handled)
            assert max(before_rewind.values()) == 1, [k for k, n in before_rewind.items() if n > 1][:5]
            # A rewind (as after a CouchDB node failure): restart the same
            # service from a checkpoint saved early on, so that the server
            # sends everything after it again.
            await stop_within(service, 5.0)
            rewound = store.saves[len(store.saves) // 4]
            replayed = len((await direct.server.request_json(
                "GET", direct.path("_changes"), [("since", rewound)]))["results"])
            assert replayed > 100
            store.seq = rewound
            duplicates_before = service.stats.duplicates
            service.startService()
            await wait_for(lambda: service.stats.duplicates - duplicates_before >= replayed, 15,
                           "the replayed changes to be recognised")
            stats = service.stats
        finally:
            await stop_within(service, 5.0)
    failures.check_no_unhandled()
    counts = Counter(tracker.handled)
    assert [k for k, n in counts.items() if n > 1] == [], "a change was handled twice"
    assert not tracker.missing(await latest_revs(direct))
    assert stats.duplicates - duplicates_before == replayed
    assert tracker.overlaps == []
    report(report_summary, "exactly once with dedup",
           seed=seed, faults=faults, reconnects=stats.reconnects, failures=dict(failures.errors),
           handled=len(tracker.handled), changes_written=writer.changes_written,
           duplicates_suppressed=stats.duplicates, replayed_after_rewind=replayed)


@pytest_twisted.ensureDeferred
async def test_refusal_is_retried_and_a_deleted_database_stops_with_not_found(couch_server, direct, proxied, proxy, report_summary):
    """While the proxy refuses, the service keeps retrying (each refused attempt logged, none handled, not stopped) and catches up after accept(); a database deleted under the feed then stops it with NotFound after one reconnect."""
    tracker = Tracker(seeded(draw_seed(), "tracker"))
    await direct.save_docs([{"_id": f"a-{i:03d}"} for i in range(20)])
    service = make_service(proxied, tracker)
    with FailureLog() as failures:
        service.startService()
        stopped = service.when_stopped()
        try:
            await caught_up(tracker, direct, 10.0, "before the refusal")
            await proxy.refuse()
            assert proxy.cut_all() == 1  # the open feed; refusing alone leaves it alone
            await direct.save_docs([{"_id": f"b-{i:03d}"} for i in range(20)])
            reconnects = service.stats.reconnects
            await wait_for(lambda: failures.errors["ConnectionFailed"] >= 3, 10, "three refused attempts")
            # Still at it: nothing handled from the new documents, not stopped.
            assert service.running and service.state in ("connecting", "waiting"), service.state
            assert not stopped.called
            assert service.stats.reconnects - reconnects >= 3
            assert len(tracker.handled) == 20
            await proxy.accept()
            expected = await caught_up(tracker, direct, 10.0, "after accept()")
            assert len(expected) == 40
            await wait_for(lambda: service.state == "streaming", 2.0, "the feed to be open again")
            failures.check_reconnects(service)
            reconnects = service.stats.reconnects
            await direct.server.delete_db(direct.name)
            error = await failure_within(stopped, 5.0)
        finally:
            await stop_within(service, 5.0)
    failures.check_no_unhandled()
    assert isinstance(error, NotFound) and error.status == 404, repr(error)
    assert service.state == "failed" and not service.running
    # The feed ended cleanly (last_seq) when the database went, and the
    # request that followed got the 404.
    assert service.stats.reconnects == reconnects + 1
    assert tracker.overlaps == []
    report(report_summary, "refusal then deleted database",
           retries_while_refused=failures.errors["ConnectionFailed"], reconnects=service.stats.reconnects)


@pytest.mark.parametrize("when", ["from_start", "after_a_good_feed"])
@pytest_twisted.ensureDeferred
async def test_give_up_after_stops_with_connection_failed(direct, proxied, proxy, when):
    """With the proxy refusing for good and give_up_after=1.0, when_stopped() fails with ConnectionFailed once the service has been failing for more than a second, and not before, having retried meanwhile."""
    tracker = Tracker(seeded(draw_seed(), "tracker"))
    service = make_service(proxied, tracker, give_up_after=1.0)
    if when == "from_start":
        await proxy.refuse()
    else:
        await direct.save_docs([{"_id": f"g-{i}"} for i in range(5)])
        service.startService()
        await caught_up(tracker, direct, 10.0, "before the refusal")
        await proxy.refuse()
        proxy.cut_all()
    with FailureLog() as failures:
        if when == "from_start":
            service.startService()
        stopped = service.when_stopped()
        try:
            error = await failure_within(stopped, 5.0)
        finally:
            await stop_within(service, 5.0)
    assert isinstance(error, ConnectionFailed), repr(error)
    assert error.port == proxy.port and "refused" in error.reason.lower()
    # It gave up once, at the first failure after a second of failing.
    assert len(failures.gave_up) == 1 and failures.gave_up[0] > 1.0, failures.gave_up
    assert service.state == "failed" and not service.running
    assert failures.retries(service) >= 2 and service.stats.reconnects >= 2  # it did retry before giving up
    if when == "after_a_good_feed":
        assert len(tracker.handled) == 5


@pytest_twisted.ensureDeferred
async def test_stop_during_chaos_is_prompt_and_leaves_nothing_unhandled_before_the_checkpoint(direct, proxied, proxy, report_summary):
    """stopService() in the middle of chaos fires within 5 s with no handler call running, and every document whose newest change lies before the saved checkpoint was handled at that revision; the service then resumes from there."""
    seed = draw_seed()
    tracker = Tracker(seeded(seed, "tracker"))
    writer = Writer(direct, seeded(seed, "writer"))
    store = MemoryCheckpoint()
    service = make_service(proxied, tracker, checkpoint=store, checkpoint_every=10)
    rng = seeded(seed, "moments")
    checked: list[int] = []
    stop_times: list[float] = []
    states: list[str] = []
    with FailureLog() as failures:
        service.startService()
        try:
            chaos = proxy.chaos(seeded(seed, "chaos"), duration=10.0, gap=(0.05, 0.2), length=(0.15, 1.0))
            writing = Deferred.fromCoroutine(writer.run(docs=1200, batch=30, updates=4, pause=0.1))
            # Stop at moments that matter, each waited for (bounded) once the
            # service has handled a random number of further changes: a
            # handler call running, the feed silent in a stall, a connection
            # being made, and anywhere.
            moments = [
                ("handler running", lambda: bool(tracker.running)),
                ("stalled", lambda: proxy.stalled and service.state in ("connecting", "streaming")),
                ("connecting", lambda: service.state == "connecting"),
                ("anywhere", lambda: True),
            ]
            for name, moment in moments:
                # Once the writer is done there may be no further change to
                # wait for: the moment is then looked for at once.
                progress = len(tracker.handled) + rng.randint(50, 200)
                await wait_for(lambda: len(tracker.handled) >= progress or writing.called, 30,
                               "the service to handle more changes")
                hit = await reached(moment, 3.0)
                states.append(f"{name}:{'hit' if hit else 'missed'}:{service.state}")
                stop_times.append(await stop_within(service, 5.0))
                assert service.state == "stopped" and not tracker.running
                tracker.closed = True
                saved = store.seq
                assert saved is not None and saved == service.resume_seq
                # Judged with the writer held: the test server's reads are not
                # snapshots, and a document updated during a read is left out
                # of it (it shows in the next one, at its new seq).
                await writer.hold()
                everything = await latest_revs(direct)
                after = await latest_revs(direct, since=saved)
                writer.release()
                before = {i: r for i, r in everything.items() if i not in after}
                unhandled = tracker.missing(before)
                assert unhandled == [], f"{len(unhandled)} changes before the checkpoint never handled: {unhandled[:5]}"
                checked.append(len(before))
                assert tracker.calls_after == 0, "the handler was called after stopService() fired"
                tracker.closed = False
                service.startService()
            await writing
            await chaos
            await caught_up(tracker, direct, 30.0, "after the last restart")
        finally:
            await stop_within(service, 5.0)
    failures.check_no_unhandled()
    assert tracker.overlaps == []
    # Some documents were judged (not a monotonic count: an update moves a
    # document past an earlier checkpoint).
    assert len(checked) == len(moments) and sum(checked) > 0, checked
    report(report_summary, "stop during chaos",
           seed=seed, stop_seconds=[round(t, 2) for t in stop_times], stopped_at=states,
           docs_checked_before_checkpoint=checked, faults=dict(proxy.faults),
           duplicates=tracker.duplicates())


@pytest.mark.parametrize("dedup_window", [0, 100])
@pytest_twisted.ensureDeferred
async def test_a_change_dropped_by_a_stop_is_handled_after_a_restart(dedup_window):
    """A change still waiting for a handler slot when the service stops is handled once the same service is started again, with or without a dedup window (it was received, never handled)."""
    gate: Deferred[None] = Deferred()
    calls: list[str] = []

    def handler(row: dict[str, Any]) -> Any:
        calls.append(row["id"])
        return gate if row["id"] == "first" else None

    feed = feed_of([(seq(1), "first", "1-a"), (seq(2), "second", "1-b"), (seq(3), "third", "1-c")])
    handed: list[str] = []
    server = FeedServer(feed, chunk=None)
    net = MemoryNet(server, reactor, tap=lambda data: handed.extend(ids_in(data)))
    # concurrency=1 and max_buffered=2: 'first' runs, 'second' waits, and
    # the feed is paused before 'third'.
    service = ChangesService(Server("http://127.0.0.1:5984/", reactor=net)["db"], handler, concurrency=1,
                             max_buffered=2, dedup_window=dedup_window)
    service.startService()
    try:
        await wait_for(lambda: bool(net.pipes), 5.0, "the connection")
        # 'second' reached the service, which then stopped reading: it waits
        # for the one slot.
        assert await held_back(net.pipes[0], server), "the service read the whole feed"
        assert handed == ["first", "second"] and calls == ["first"]
        stopping = service.stopService()
        gate.callback(None)
        await stopping
        assert calls == ["first"] and service.stats.handled == 1  # 'second' was dropped by the stop
        service.startService()
        await wait_for(lambda: server.quiet_requests, 5.0, "the restarted service to reach last_seq")
    finally:
        await stop_within(service, 5.0)
    assert server.feed_requests == ["0", seq(1)], "the restart resumes after 'first'"
    assert calls == ["first", "second", "third"], (calls, service.stats)


@pytest.mark.parametrize("dedup_window", [0, 100])
@pytest_twisted.ensureDeferred
async def test_a_change_whose_handler_failed_is_retried_after_a_restart(direct, dedup_window):
    """With on_error="stop", the change whose handler failed is handed over again when the same service is started again, with or without a dedup window (the checkpoint stayed before it)."""
    calls: list[str] = []

    def handler(row: dict[str, Any]) -> None:
        calls.append(row["id"])
        if calls == ["ok-1", "bad"]:
            raise RuntimeError("a transient failure of the handler")

    await direct.save_docs([{"_id": "ok-1"}, {"_id": "bad"}, {"_id": "ok-2"}])
    service = ChangesService(direct, handler, heartbeat=HEARTBEAT, on_error="stop", dedup_window=dedup_window)
    service.startService()
    try:
        error = await failure_within(service.when_stopped(), 5.0)
        assert isinstance(error, RuntimeError) and calls == ["ok-1", "bad"]
        service.startService()
        await wait_for(lambda: "ok-2" in calls, 5.0, "'ok-2' to be handled after the restart")
    finally:
        await stop_within(service, 5.0)
    assert calls == ["ok-1", "bad", "bad", "ok-2"], (calls, service.stats)


@pytest.mark.parametrize("behind", [2, 400])
def test_scheduler_pump_survives_handlers_that_finish_at_once(behind):
    """When a slow change finishes and the changes waiting behind it (2, or 400: deeper than the recursion limit allows if each one nested) finish synchronously, the scheduler runs them all, in order, leaves nothing running and raises nothing into the handler's Deferred."""
    gate: Deferred[None] = Deferred()
    calls: list[str] = []

    def handler(row: dict[str, Any]) -> Any:
        calls.append(row["id"])
        return gate if row["id"] == "d0000" else None

    progress = Progress(None)
    scheduler = Scheduler(handler, progress, Listener(), concurrency=1, max_buffered=behind + 1, on_error="stop",
                          clock=Clock(), retry_delay=fast_retry)
    ids = [f"d{n:04d}" for n in range(behind + 1)]
    for n, docid in enumerate(ids):
        scheduler.submit({"id": docid, "seq": f"{n}-x", "changes": [{"rev": "1-x"}]}, progress.begin(f"{n}-x"))
    assert calls == ["d0000"] and scheduler.buffered == behind + 1
    errors: list[Failure] = []
    gate.addErrback(errors.append)  # after the scheduler's own callbacks
    gate.callback(None)
    assert errors == [], errors[0].getTraceback()
    assert (len(calls), scheduler.handled, scheduler.buffered) == (behind + 1, behind + 1, 0)
    assert calls == ids
    assert progress.resume == f"{behind}-x"


@pytest_twisted.ensureDeferred
async def test_shards_under_chaos_share_every_latest_revision(direct, proxied, proxy, report_summary):
    """Two shards through the same chaos: each handles every newest revision of its own documents and nothing of the other's, passes over the other's changes, and makes one new request for each failure or clean end it logged."""
    seed = draw_seed()
    trackers = [Tracker(seeded(seed, f"tracker-{i}")) for i in range(2)]
    services = [make_service(proxied, trackers[i], shard=Shard(i, 2)) for i in range(2)]
    writer = Writer(direct, seeded(seed, "writer"))
    with FailureLog() as failures:
        for service in services:
            service.startService()
        try:
            chaos = proxy.chaos(seeded(seed, "chaos"), duration=4.0, gap=(0.05, 0.25), length=(0.15, 1.0))
            await writer.run(docs=600, batch=50, updates=6, pause=0.2)
            await chaos
            assert not (proxy.stalled or proxy.refusing or proxy.dropping)
            expected = await latest_revs(direct)
            for i, tracker in enumerate(trackers):
                mine = {d: r for d, r in expected.items() if Shard(i, 2).owns(d)}
                await wait_for(lambda: not tracker.missing(mine), 30.0, f"shard {i} to catch up")
            for service in services:
                await wait_for(lambda: service.state == "streaming", 5, "the feed to be open again")
                failures.check_reconnects(service)
            stats = [service.stats for service in services]
        finally:
            for service in services:
                await stop_within(service, 5.0)
    failures.check_no_unhandled()
    assert expected == writer.revs and len(expected) == 600
    for i, tracker in enumerate(trackers):
        assert tracker.handled and all(Shard(i, 2).owns(d) for d, _ in tracker.handled)
        assert tracker.overlaps == []
    assert all(s.other_shards > 0 for s in stats), stats
    report(report_summary, "shards under faults", seed=seed, faults=dict(proxy.faults),
           handled=[len(t.handled) for t in trackers], reconnects=[s.reconnects for s in stats])
