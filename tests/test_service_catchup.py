"""
ChangesService(catch_up="normal"): a backlog read through pages of the normal
feed, then the continuous feed; with every guarantee of the continuous feed
(checkpoint only what is done, per-document order, a stop saves the
checkpoint, backpressure, failures retried), on the in-memory fake with a
task.Clock and on the test server through a proxy that cuts connections.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task

from txchanges import ChangesService, MemoryCheckpoint, Server
from txchanges.testing import FakeCouchDB

from ._fault_helpers import FailureLog, Tracker, Writer, draw_seed, fast_retry, latest_revs, seeded, wait_for


def fake_with(count: int) -> tuple[task.Clock, FakeCouchDB, dict[int, str]]:
    """A fake holding *count* documents d00, d01...; and the database's seq after each of them."""
    clock = task.Clock()
    fake = FakeCouchDB(clock=clock)
    fake.create_db("db")
    seqs = {}
    for n in range(count):
        fake.save("db", {"_id": f"d{n:02d}"})
        seqs[n + 1] = fake.update_seq("db")
    return clock, fake, seqs


def follow(fake: FakeCouchDB, clock: task.Clock, handler: Any, **options: Any) -> ChangesService:
    settings: dict[str, Any] = dict(clock=clock, catch_up="normal", catch_up_page=10, retry_policy=lambda n: 1.0)
    settings.update(options)
    service = ChangesService(Server(fake.url, http=fake.client())["db"], handler, **settings)
    service.startService()
    return service


def feeds(fake: FakeCouchDB) -> list[tuple[str, str | None, str | None, str | None]]:
    """(feed, since, limit, seq_interval) of every _changes request, oldest first."""
    return [
        (r.query.get("feed", "normal"), r.query.get("since"), r.query.get("limit"), r.query.get("seq_interval"))
        for r in fake.requests if r.path[-1:] == ["_changes"]
    ]


def test_pages_while_a_page_is_pending_then_the_continuous_feed() -> None:
    """35 changes in pages of 10: three pages (limit 10, seq_interval = checkpoint_every), then the continuous feed from the third page's end; each change once, in order, and live ones after."""
    clock, fake, seqs = fake_with(35)
    seen: list[str] = []
    service = follow(fake, clock, lambda row: seen.append(row["id"]), checkpoint_every=3)
    assert seen == [f"d{n:02d}" for n in range(35)]
    assert feeds(fake) == [
        ("normal", None, "10", "3"),
        ("normal", seqs[10], "10", "3"),
        ("normal", seqs[20], "10", "3"),
        ("continuous", seqs[30], None, None),
    ]
    fake.save("db", {"_id": "live"})
    assert seen[-1] == "live" and service.state == "streaming"
    assert service.stats.reconnects == 0


def test_each_page_ends_with_a_checkpoint() -> None:
    """With checkpoints otherwise far apart, the checkpoint is saved at the end of each page, at its last_seq."""
    clock, fake, seqs = fake_with(25)
    store = MemoryCheckpoint()
    follow(fake, clock, lambda row: None, checkpoint=store, checkpoint_every=1000, checkpoint_interval=3600)
    assert store.saves == [seqs[10], seqs[20]]


def test_checkpoint_only_what_is_done_and_a_stop_saves_it() -> None:
    """A change whose handler hangs holds the checkpoint before it; a stop during the catch-up saves that checkpoint, and a restart hands the change over again."""
    clock, fake, seqs = fake_with(25)
    store = MemoryCheckpoint()
    held: list[defer.Deferred[None]] = []
    seen: list[str] = []

    def handler(row: dict[str, Any]) -> Any:
        seen.append(row["id"])
        if row["id"] == "d13":
            held.append(defer.Deferred())
            return held[-1]
        return None

    service = follow(fake, clock, handler, checkpoint=store, checkpoint_every=1, concurrency=4, stop_timeout=5)
    assert "d13" in seen and held and service.state == "streaming"
    stopping = service.stopService()
    clock.advance(5)
    assert stopping.called and store.seq == seqs[13] and service.resume_seq == seqs[13]
    again: list[str] = []
    follow(fake, clock, lambda row: again.append(row["id"]), checkpoint=store, checkpoint_every=1)
    assert again[0] == "d13" and again[-1] == "d24"


def test_a_slow_handler_pauses_the_page_and_keeps_order() -> None:
    """With a handler that answers later, the page waits: at most concurrency calls run, and each change is handed over once, in feed order, as they finish."""
    clock, fake, seqs = fake_with(15)
    running: list[tuple[str, defer.Deferred[None]]] = []
    started: list[str] = []

    def handler(row: dict[str, Any]) -> "defer.Deferred[None]":
        started.append(row["id"])
        d: defer.Deferred[None] = defer.Deferred()
        running.append((row["id"], d))
        return d

    service = follow(fake, clock, handler, concurrency=2, max_buffered=2, max_ahead=2)
    while running:
        assert len(running) <= 2
        running.pop(0)[1].callback(None)
    assert started == [f"d{n:02d}" for n in range(15)] and service.resume_seq == seqs[15]


def test_a_failed_page_is_retried_and_a_failure_pages_again() -> None:
    """A page answered with 500 is asked again after the backoff from the same place; after the continuous feed fails, the next request is a page again."""
    clock, fake, seqs = fake_with(25)
    fake.fail_next(status=500, only=lambda r: r.query.get("feed") == "normal" and r.query.get("since") == seqs[10])
    seen: list[str] = []
    service = follow(fake, clock, lambda row: seen.append(row["id"]))
    assert seen == [f"d{n:02d}" for n in range(10)] and service.state == "waiting"
    clock.advance(1)
    assert seen == [f"d{n:02d}" for n in range(25)] and service.state == "streaming"
    fake.cut_feeds()
    clock.advance(1)
    assert feeds(fake) == [
        ("normal", None, "10", "100"),
        ("normal", seqs[10], "10", "100"),
        ("normal", seqs[10], "10", "100"),
        ("continuous", seqs[20], None, None),
        ("normal", seqs[25], "10", "100"),
        ("continuous", seqs[25], None, None),
    ]
    assert seen == [f"d{n:02d}" for n in range(25)]


@pytest.mark.parametrize("options", [
    {"catch_up": "continuous"},
    {"filter_name": "app/odd"},
    {"limit": 100},
])
def test_no_pages(options: dict[str, Any]) -> None:
    """With catch_up="continuous", a filter or a limit, the first request is the continuous feed."""
    clock, fake, seqs = fake_with(15)
    fake.register_filter("app/odd", lambda doc, req: True, db="db")
    follow(fake, clock, lambda row: None, **options)
    assert feeds(fake)[0][0] == "continuous"


@pytest.mark.parametrize("options", [{"catch_up": "pages"}, {"catch_up_page": 0}, {"catch_up_page": True}])
def test_bad_catch_up_options(options: dict[str, Any]) -> None:
    """An unknown catch_up, or a page that is not a positive number of changes, is a ValueError at once."""
    with pytest.raises(ValueError):
        ChangesService(Server("http://127.0.0.1:1/")["db"], print, **options)


@pytest_twisted.ensureDeferred
async def test_catch_up_through_cut_connections(direct: Any, proxied: Any, proxy: Any) -> None:
    """On the test server, through a proxy that cuts every connection after a random number of bytes, a catch-up in pages handles every document's newest revision, never two calls for one document at once, and checkpoints the end."""
    seed = draw_seed()
    writer = Writer(direct, seeded(seed, "writer"))
    await writer.run(docs=400, batch=100, updates=1, pause=0.0)
    expected = await latest_revs(direct)
    tracker = Tracker(seeded(seed, "tracker"))
    store = MemoryCheckpoint()
    proxy.cut_after(1_000, 12_000, seeded(seed, "cuts"))
    service = ChangesService(proxied, tracker, catch_up="normal", catch_up_page=40, concurrency=4,
                             checkpoint=store, checkpoint_every=7, retry_policy=fast_retry, heartbeat=1000)
    with FailureLog() as failures:
        service.startService()
        try:
            await wait_for(lambda: not tracker.missing(expected), 60, f"every document handled (seed {seed})")
            proxy.cut_after(None)
            end = (await direct.info())["update_seq"]
            await wait_for(lambda: store.seq == end, 30, "the checkpoint at the end")
        finally:
            await service.stopService()
    failures.check_no_unhandled()
    assert tracker.overlaps == [] and proxy.faults["cuts"] > 0
