"""Prometheus metrics: the collector's numbers, and the /metrics endpoint."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.python import usage

from txchanges import ChangesService, DatabasesService, DatabasesStats, MemoryCheckpoint, ServiceStats, State
from txchanges.cli import _options
from txchanges.cli._tap import Options
from txchanges.metrics import MetricsServer, render_metrics

from ._service_helpers import wait_for

DB = "http://127.0.0.1:5984/orders"


class FakeFollower:
    """The four attributes a collector reads, set by hand."""

    def __init__(self, url: str = DB) -> None:
        self.db = type("Db", (), {"url": url})()
        self.state = "streaming"
        self.stats = ServiceStats()
        self.resume_seq: Any = None


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_collector_reports_the_stats_state_and_resume_point():
    """Counters, the pending and idle gauges, the state and the resume seq come from the follower at scrape time."""
    clock, follower = Clock(), FakeFollower()
    follower.stats = ServiceStats(handled=7, duplicates=2, other_shards=5, handler_failures=1, reconnects=3, checkpoints=4,
                                  pending=11, last_activity=100.0)
    follower.resume_seq = "42-g1AAAAB"
    clock.advance(112.5)
    found = samples(render_metrics([follower], clock=clock))
    db = (("db", DB),)
    assert found[("txchanges_changes_handled_total", db)] == 7
    assert found[("txchanges_changes_duplicate_total", db)] == 2
    assert found[("txchanges_changes_other_shards_total", db)] == 5
    assert found[("txchanges_handler_failures_total", db)] == 1
    assert found[("txchanges_reconnects_total", db)] == 3
    assert found[("txchanges_checkpoints_saved_total", db)] == 4
    assert found[("txchanges_changes_pending", db)] == 11
    assert found[("txchanges_idle_seconds", db)] == 12.5
    assert {s.value: found[("txchanges_state", (("db", DB), ("state", s.value)))] for s in State} == {
        s.value: (1.0 if s == "streaming" else 0.0) for s in State
    }
    assert found[("txchanges_resume_seq_info", (("db", DB), ("seq", "42-g1AAAAB")))] == 1


def test_unknown_values_are_left_out_and_non_string_seqs_are_json():
    """Unknown pending, no byte yet and no resume point give no sample; an integer or list seq is shown as JSON."""
    clock, follower = Clock(), FakeFollower()
    assert not [k for k in samples(render_metrics([follower], clock=clock))
                if k[0] in ("txchanges_changes_pending", "txchanges_idle_seconds", "txchanges_resume_seq_info")]
    follower.resume_seq = [3, "g1AAA"]
    assert ("txchanges_resume_seq_info", (("db", DB), ("seq", '[3,"g1AAA"]'))) in samples(render_metrics([follower], clock=clock))
    follower.resume_seq = 17
    assert ("txchanges_resume_seq_info", (("db", DB), ("seq", "17"))) in samples(render_metrics([follower], clock=clock))



def test_idle_seconds_is_never_negative():
    """A last byte stamped after the scrape's time (clocks that disagree) shows as 0 idle seconds, not a negative gauge."""
    clock, follower = Clock(), FakeFollower()
    clock.advance(50.0)
    follower.stats.last_activity = 50.25
    assert samples(render_metrics([follower], clock=clock))[("txchanges_idle_seconds", (("db", DB),))] == 0.0


@pytest_twisted.ensureDeferred
async def test_collector_follows_a_real_service(db):
    """Driving a service over the test server (on a task.Clock), the metrics count its changes and checkpoints, show its state, and the seconds since its last byte by that clock."""
    await db.save_docs([{"_id": f"doc-{i}"} for i in range(5)])
    handled: list[str] = []
    store = MemoryCheckpoint()
    clock = Clock()
    clock.advance(100.0)
    service = ChangesService(db, lambda change: handled.append(change["id"]), checkpoint=store, checkpoint_every=5,
                             clock=clock)
    before = samples(render_metrics([service], clock=clock))
    assert before[("txchanges_state", (("db", db.url), ("state", "stopped")))] == 1
    service.startService()
    try:
        await wait_for(lambda: len(handled) == 5 and service.stats.checkpoints == 1, 10, "five changes and a checkpoint")
        # Every byte so far arrived at clock time 100.0.
        assert service.stats.last_activity == 100.0
        clock.advance(12.5)
        running = samples(render_metrics([service], clock=clock))
    finally:
        await service.stopService()
    label = (("db", db.url),)
    assert running[("txchanges_changes_handled_total", label)] == 5
    assert running[("txchanges_checkpoints_saved_total", label)] == 1
    assert running[("txchanges_state", (("db", db.url), ("state", "streaming")))] == 1
    assert running[("txchanges_resume_seq_info", (("db", db.url), ("seq", store.seq)))] == 1
    assert running[("txchanges_idle_seconds", label)] == 12.5
    after = samples(render_metrics([service], clock=clock))
    assert after[("txchanges_state", (("db", db.url), ("state", "stopped")))] == 1


@pytest_twisted.ensureDeferred
async def test_endpoint_answers_get_metrics_in_the_prometheus_text_format():
    """MetricsServer serves /metrics as Prometheus text (or OpenMetrics when asked), and stops listening when stopped."""
    follower = FakeFollower()
    follower.stats.handled = 3
    server = MetricsServer([follower], 0, "127.0.0.1", reactor=reactor)
    server.startService()
    url = f"http://127.0.0.1:{server.port.getHost().port}/metrics"
    try:
        response = await treq.get(url, persistent=False)
        body = await response.content()
        assert response.code == 200
        assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4")
        assert samples(body)[("txchanges_changes_handled_total", (("db", DB),))] == 3
        assert b"process_cpu_seconds_total" in body
        open_metrics = await treq.get(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}, persistent=False)
        assert open_metrics.headers.getRawHeaders("content-type")[0].startswith("application/openmetrics-text")
        assert (await open_metrics.content()).endswith(b"# EOF\n")
        missing = await treq.get(url.replace("/metrics", "/other"), persistent=False)
        await missing.content()
        assert missing.code == 404
    finally:
        await server.stopService()
    assert server.port is None


def test_plugin_adds_the_metrics_server_when_asked():
    """--metrics-port gives the plugin's MultiService a 'metrics' service on that interface and port, started first."""
    from txchanges.cli._tap import makeService

    options = Options(environ={})
    options.parseOptions(["--url", "http://127.0.0.1:5984/", "--db", "orders", "--handler",
                          "tests.handlers_for_tests:record", "--metrics-port", "0", "--metrics-interface", "::1"])
    top = makeService(options)
    metrics = top.getServiceNamed("metrics")
    assert isinstance(metrics, MetricsServer)
    assert list(top)[0] is metrics  # started before the follower: a busy port fails before any change
    assert (metrics._wanted, metrics._interface) == (0, "::1")


def test_metrics_port_without_prometheus_client_is_a_usage_error(monkeypatch):
    """Asking for --metrics-port without prometheus_client installed is a usage error naming the extra to install."""
    monkeypatch.setattr(_options, "have_prometheus_client", lambda: False)
    options = Options(environ={})
    with pytest.raises(usage.UsageError, match=r"pip install 'txchanges\[metrics\]'"):
        options.parseOptions(["--url", "http://127.0.0.1:5984/", "--db", "orders", "--handler",
                              "tests.handlers_for_tests:record", "--metrics-port", "9100"])


# -- a follower of many databases ---------------------------------------------

SERVER = "http://127.0.0.1:5984/"


class FakeDatabasesFollower:
    """The three attributes a collector reads of a follower of many databases, set by hand."""

    def __init__(self) -> None:
        self.server = type("Server", (), {"url": SERVER})()
        self.state = "following"
        self.stats = DatabasesStats()


def test_collector_reports_a_follower_of_many_databases():
    """Every DatabasesStats field is a gauge or a counter labelled with the server, and the state is one-hot, next to a follower of one database."""
    many, one = FakeDatabasesFollower(), FakeFollower()
    many.stats = DatabasesStats(databases=12, open_feeds=3, waiting=4, oldest_wait=2.5, handled=40, handler_failures=1,
                                catch_ups=17, catch_up_failures=2, scans=5, deleted=6, reconnects=7, checkpoints=8)
    one.stats.handled = 9
    found = samples(render_metrics([one, many], clock=Clock()))
    server = (("server", SERVER),)
    assert {name: found[(name, server)] for name in (
        "txchanges_databases_followed", "txchanges_databases_open_feeds", "txchanges_databases_waiting",
        "txchanges_databases_oldest_wait_seconds", "txchanges_databases_changes_handled_total",
        "txchanges_databases_handler_failures_total", "txchanges_databases_catch_ups_total",
        "txchanges_databases_catch_up_failures_total", "txchanges_databases_scans_total",
        "txchanges_databases_deleted_total", "txchanges_databases_reconnects_total",
        "txchanges_databases_checkpoints_saved_total",
    )} == {
        "txchanges_databases_followed": 12, "txchanges_databases_open_feeds": 3, "txchanges_databases_waiting": 4,
        "txchanges_databases_oldest_wait_seconds": 2.5, "txchanges_databases_changes_handled_total": 40,
        "txchanges_databases_handler_failures_total": 1, "txchanges_databases_catch_ups_total": 17,
        "txchanges_databases_catch_up_failures_total": 2, "txchanges_databases_scans_total": 5,
        "txchanges_databases_deleted_total": 6, "txchanges_databases_reconnects_total": 7,
        "txchanges_databases_checkpoints_saved_total": 8,
    }
    states = {labels[1][1]: value for (name, labels), value in found.items() if name == "txchanges_databases_state"}
    assert states == {"starting": 0, "scanning": 0, "following": 1, "stopping": 0, "stopped": 0}
    assert found[("txchanges_changes_handled_total", (("db", DB),))] == 9


def test_a_follower_of_many_databases_alone_gives_no_empty_families_of_one():
    """Serving only a follower of many databases shows no txchanges_changes_* family without samples."""
    text = render_metrics([FakeDatabasesFollower()], clock=Clock()).decode()
    assert "txchanges_databases_followed" in text and "txchanges_changes_handled_total" not in text


@pytest_twisted.ensureDeferred
async def test_collector_follows_a_real_databases_service(server):
    """Over the test server, the metrics of a DatabasesService count its databases, changes and scan, and show it following."""
    prefix = f"metrics-{secrets.token_hex(4)}-"
    names = [prefix + "a", prefix + "b"]
    for name in names:
        db = await server.create_db(name)
        await db.save_docs([{"_id": f"doc-{i}"} for i in range(3)])
    handled: list[tuple[str, str]] = []
    service = DatabasesService(server, lambda db, change: handled.append((db, change["id"])), match=f"{prefix}.*",
                               heartbeat=1000, checkpoint_interval=0.1)
    service.startService()
    try:
        await wait_for(lambda: len(handled) == 6 and service.state == "following" and service.stats.checkpoints > 0,
                       10, "six changes, the scan and a save")
        found = samples(render_metrics([service]))
    finally:
        await service.stopService()
        for name in names:
            await server.delete_db(name)
    label = (("server", server.url),)
    assert found[("txchanges_databases_followed", label)] == 2
    assert found[("txchanges_databases_changes_handled_total", label)] == 6
    assert found[("txchanges_databases_scans_total", label)] == 1
    assert found[("txchanges_databases_checkpoints_saved_total", label)] >= 1
    assert found[("txchanges_databases_state", (("server", server.url), ("state", "following")))] == 1
