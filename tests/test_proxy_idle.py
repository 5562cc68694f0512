"""Load balancers and proxies that close idle connections or buffer
responses, between a follower and CouchDB (tests/httpproxy.py in front of
the test server). Each scenario asserts that no change is lost and reports
its measured recovery in the run's summary (the "txchanges" section).

Times are scaled down: a 1 s idle timeout stands for nginx's 60 s
``proxy_read_timeout``, and the retry policy starts at 0.1 s where the
default starts at 1 s.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.application.internet import backoffPolicy
from twisted.internet import reactor

from txchanges import ChangesService, Database, MemoryCheckpoint, Server
from txchanges.cli._longpoll import LongpollFollower
from txchanges.feed import _watchdog

from ._fault_helpers import report
from ._service_helpers import change_key, wait_for
from .httpproxy import HTTPProxy

IDLE_TIMEOUT = 1.0
SCALED_RETRY = backoffPolicy(initialDelay=0.1, maxDelay=6.0, factor=1.5, jitter=lambda: 0)


class Handled:
    """The handler: when each document's change was handled, and every (id, rev) in order."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.keys: list[tuple[str, str]] = []

    def __call__(self, row: dict[str, Any]) -> None:
        self.at.setdefault(row["id"], time.monotonic())
        self.keys.append(change_key(row))


async def write_and_wait(direct: Database, handled: Handled, docid: str) -> float:
    """Write one document directly; return the seconds until the follower handled it."""
    written = time.monotonic()
    await direct.save_doc({"_id": docid})
    await wait_for(lambda: docid in handled.at, 20, f"{docid} to be handled")
    return handled.at[docid] - written


def feed_requests(proxy: HTTPProxy) -> list[float]:
    """When each feed request reached the proxy."""
    return [t for (_, target), t in zip(proxy.requests, proxy.request_times) if "/_changes" in target]


def behind(couch_server: Any, **options: Any) -> tuple[HTTPProxy, Server]:
    proxy = HTTPProxy(("127.0.0.1", couch_server.port), **options).start()
    return proxy, Server(proxy.url(userinfo="admin:secret"))


@pytest_twisted.ensureDeferred
async def test_a_heartbeat_shorter_than_the_idle_timeout_keeps_the_feed_open(couch_server, direct, report_summary):
    """Behind a proxy that closes connections silent for 1 s, a 0.3 s heartbeat keeps one feed open for three idle timeouts: no cut, no reconnect, and a change written then is handled at once."""
    proxy, server = behind(couch_server, idle_timeout=IDLE_TIMEOUT)
    handled = Handled()
    service = ChangesService(server[direct.name], handled, heartbeat=300)
    service.startService()
    try:
        await wait_for(lambda: service.state == "streaming", 10, "the feed to open")
        opened = reactor.seconds()
        await wait_for(lambda: reactor.seconds() - opened > 3 * IDLE_TIMEOUT, 10, "three idle timeouts to pass")
        latency = await write_and_wait(direct, handled, "after-quiet")
    finally:
        await service.stopService()
        await server.close()
        await proxy.stop()
    assert proxy.idle_drops == [] and service.stats.reconnects == 0 and len(feed_requests(proxy)) == 1
    report(report_summary, "idle-closing proxy (1 s), heartbeat 0.3 s", cuts=0, reconnects=0,
           change_latency=f"{latency:.3f}s")


@pytest_twisted.ensureDeferred
async def test_an_idle_timeout_shorter_than_the_heartbeat_cuts_the_quiet_feed_and_nothing_is_lost(
    couch_server, direct, report_summary
):
    """Behind a proxy that closes connections silent for 1 s, a 3 s heartbeat lets every quiet feed be cut: the service reconnects from where it was and each change written after a cut is handled once; the delay from a cut to the next request and from a write to its handling are reported."""
    proxy, server = behind(couch_server, idle_timeout=IDLE_TIMEOUT)
    handled = Handled()
    service = ChangesService(server[direct.name], handled, heartbeat=3000, retry_policy=SCALED_RETRY)
    service.startService()
    latencies = []
    try:
        for n in range(3):
            cuts = len(proxy.idle_drops)
            await wait_for(lambda: len(proxy.idle_drops) > cuts, 10, "the proxy to cut the quiet feed")
            latencies.append(await write_and_wait(direct, handled, f"after-cut-{n}"))
        cuts = len(proxy.idle_drops)
        await wait_for(lambda: len(proxy.idle_drops) >= cuts + 4, 20, "four cuts in a row without a change")
        after_quiet = await write_and_wait(direct, handled, "after-quiet")
    finally:
        await service.stopService()
        await server.close()
        await proxy.stop()
    assert sorted(handled.keys) == sorted(set(handled.keys)) and len(handled.keys) == 4
    requests = feed_requests(proxy)
    reconnects = [min(t for t in requests if t > cut) - cut for cut in proxy.idle_drops if requests[-1] > cut]
    assert len(reconnects) >= 7 and service.stats.reconnects >= 7
    report(report_summary, "idle-closing proxy (1 s), heartbeat 3 s", cuts=len(proxy.idle_drops),
           cut_to_request=f"{min(reconnects):.2f}-{max(reconnects):.2f}s",
           latency_after_a_cut=f"{max(latencies):.2f}s max", latency_after_4_quiet_cuts=f"{after_quiet:.2f}s")


@pytest_twisted.ensureDeferred
async def test_longpoll_follower_through_a_proxy_that_buffers_whole_responses(couch_server, direct, report_summary):
    """Through a proxy that holds every response until it ends, the longpoll follower handles each change soon after it is written, and never stalls: each request ends by its own timeout, so the proxy passes it on."""
    proxy, server = behind(couch_server, buffering="all")
    handled = Handled()
    follower = LongpollFollower(server[direct.name], handled, since=0, checkpoint=MemoryCheckpoint(), heartbeat=500,
                                give_up_after=None, limit=None, clock=reactor)
    follower.start()
    try:
        await wait_for(lambda: len(feed_requests(proxy)) >= 3, 10, "three quiet longpoll requests to end")
        latencies = [await write_and_wait(direct, handled, f"doc-{n}") for n in range(5)]
    finally:
        await follower.stop()
        await server.close()
        await proxy.stop()
    assert sorted(handled.keys) == sorted(set(handled.keys)) and len(handled.keys) == 5
    assert follower.stats.reconnects == 0
    report(report_summary, "proxy buffering whole responses, --feed longpoll (0.5 s)",
           latency=f"{max(latencies):.3f}s max", requests=len(feed_requests(proxy)), failed_requests=0)


@pytest.fixture
def quick_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0.2 s watchdog grace: with a 0.5 s heartbeat, 0.825 s of silence is a stall."""
    monkeypatch.setattr(_watchdog, "GRACE", 0.2)


@pytest_twisted.ensureDeferred
async def test_continuous_service_through_a_proxy_that_buffers_in_blocks_loses_nothing(
    couch_server, direct, report_summary, quick_watchdog
):
    """Through a proxy that passes bodies on in 4 KiB blocks (nginx's proxy_buffering), a trickle of changes waits in the proxy while the service stalls and reconnects; once the changes fill a block they all arrive, none lost, none twice; how long the trickle waited is reported."""
    proxy, server = behind(couch_server, buffering=4096)
    handled = Handled()
    service = ChangesService(server[direct.name], handled, heartbeat=500, retry_policy=SCALED_RETRY)
    service.startService()
    try:
        await wait_for(lambda: service.state == "streaming", 10, "the feed to open")
        started = time.monotonic()
        await direct.save_docs([{"_id": f"trickle-{n}"} for n in range(5)])
        await wait_for(lambda: service.stats.reconnects >= 3, 20, "three stalls")
        waited = [name for name in handled.at if name.startswith("trickle")]
        await direct.save_docs([{"_id": f"burst-{n:02}"} for n in range(60)])
        await wait_for(lambda: len(handled.at) == 65, 20, "every change")
    finally:
        await service.stopService()
        await server.close()
        await proxy.stop()
    assert sorted(handled.keys) == sorted(set(handled.keys)) and len(handled.keys) == 65
    trickle_wait = max(handled.at[f"trickle-{n}"] for n in range(5)) - started
    report(report_summary, "proxy buffering 4 KiB blocks, continuous, heartbeat 0.5 s",
           trickle_handled_before_the_burst=len(waited), trickle_wait=f"{trickle_wait:.2f}s",
           stalls=service.stats.reconnects)


@pytest_twisted.ensureDeferred
async def test_continuous_service_through_a_proxy_that_buffers_whole_responses_follows_with_longpoll(
    couch_server, direct, report_summary, quick_watchdog
):
    """Through a proxy that holds every response until it ends, a continuous feed never brings a byte; after two such stalls in a row the service follows with longpoll requests that end within a heartbeat, and every change arrives, once."""
    proxy, server = behind(couch_server, buffering="all")
    handled = Handled()
    service = ChangesService(server[direct.name], handled, heartbeat=500, retry_policy=SCALED_RETRY)
    started = time.monotonic()
    service.startService()
    try:
        await direct.save_docs([{"_id": f"early-{n}"} for n in range(3)])
        await wait_for(lambda: len(handled.at) == 3, 20, "the changes written before the switch")
        switched = time.monotonic() - started
        latencies = [await write_and_wait(direct, handled, f"doc-{n}") for n in range(5)]
    finally:
        await service.stopService()
        await server.close()
        await proxy.stop()
    assert sorted(handled.keys) == sorted(set(handled.keys)) and len(handled.keys) == 8
    assert any("feed=longpoll" in target for _, target in proxy.requests)
    report(report_summary, "proxy buffering whole responses, continuous service, heartbeat 0.5 s",
           first_change_after=f"{switched:.2f}s", latency_after=f"{max(latencies):.3f}s max")
