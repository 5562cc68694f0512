"""
Prometheus metrics of running followers.

Needs the optional ``prometheus_client`` package (``pip install
'txchanges[metrics]'``). :class:`ServiceCollector` reads a follower's
:attr:`~txchanges.ChangesService.stats`, ``state`` and ``resume_seq`` at
scrape time, so nothing is counted twice and nothing runs between scrapes.
:class:`MetricsServer` serves them at ``/metrics`` from the reactor thread:
unlike ``prometheus_client.twisted.MetricsResource``, which runs the
exposition in the reactor's thread pool, it never reads a follower's state
from another thread, and it does not need the global reactor at import.

The metrics, each labelled with ``db`` (the database URL, never with
credentials):

==========================================  =======  ==========================================
``txchanges_changes_handled_total``         counter  changes the handler finished
``txchanges_changes_duplicate_total``       counter  changes dropped by the de-duplication window
``txchanges_changes_other_shards_total``    counter  changes of documents another shard owns
``txchanges_handler_failures_total``        counter  handler calls that failed
``txchanges_reconnects_total``              counter  requests made after the first
``txchanges_checkpoints_saved_total``       counter  checkpoints saved
``txchanges_changes_pending``               gauge    changes past the resume point, when known (see below)
``txchanges_idle_seconds``                  gauge    seconds since the last byte (row or heartbeat)
``txchanges_state``                         gauge    1 for the current ``state`` label, 0 for the others
``txchanges_resume_seq_info``               info     ``seq``: the resume point, as JSON when not a string
==========================================  =======  ==========================================

A follower of many databases (a :class:`~txchanges.DatabasesService`) has
metrics of its own, over all its databases, each labelled with ``server``
(the server's URL, never with credentials):

================================================  =======  ====================================
``txchanges_databases_followed``                  gauge    databases followed
``txchanges_databases_open_feeds``                gauge    catch-up feeds open now
``txchanges_databases_waiting``                   gauge    databases waiting for a feed
``txchanges_databases_oldest_wait_seconds``       gauge    how long the longest of them waited
``txchanges_databases_changes_handled_total``     counter  changes the handler finished
``txchanges_databases_handler_failures_total``    counter  handler calls that failed
``txchanges_databases_catch_ups_total``           counter  catch-up requests (pages) made
``txchanges_databases_catch_up_failures_total``   counter  catch-up requests that failed
``txchanges_databases_scans_total``               counter  scans of every database finished
``txchanges_databases_deleted_total``             counter  followed databases seen deleted
``txchanges_databases_reconnects_total``          counter  ``_db_updates`` requests after the first
``txchanges_databases_checkpoints_saved_total``   counter  batches of checkpoints saved
``txchanges_databases_state``                     gauge    1 for the current ``state`` label
================================================  =======  ====================================

``txchanges_changes_pending`` is what the server last said: in the row that
ends a feed (rare on a continuous feed), or in the answer to the probe that
``pending_interval`` (``--pending-interval``) sets up.

``txchanges_resume_seq_info`` gets a new label value at every checkpoint:
fine to read the current position, costly to keep for long in a time-series
database; drop it with a relabelling rule when that matters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Protocol, Union, cast

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry
from twisted.application.service import Service
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from txchanges.many import DatabasesStats
from txchanges.group._service import GroupService
from txchanges.service._lifecycle_types import State
from txchanges.service._stats import ServiceStats
from txchanges._reactor import Clock
from txchanges._reactor import default_clock, default_reactor

__all__ = ["ServiceCollector", "DatabasesCollector", "render_metrics", "metrics_registry", "MetricsResource", "MetricsServer"]


class Followed(Protocol):
    """
    What a collector reads: a :class:`~txchanges.ChangesService`, or
    anything with the same four attributes.
    """

    @property
    def db(self) -> Any: ...  # has a credential-free ``url``

    @property
    def state(self) -> str: ...  # a State, or any other name

    @property
    def stats(self) -> ServiceStats: ...

    @property
    def resume_seq(self) -> Any: ...


_COUNTERS = (
    ("txchanges_changes_handled", "Changes the handler finished.", "handled"),
    ("txchanges_changes_duplicate", "Changes dropped by the de-duplication window.", "duplicates"),
    ("txchanges_changes_other_shards", "Changes of documents another shard owns, passed over.", "other_shards"),
    ("txchanges_handler_failures", "Handler calls that failed.", "handler_failures"),
    ("txchanges_reconnects", "Changes requests made after the first.", "reconnects"),
    ("txchanges_checkpoints_saved", "Checkpoints saved.", "checkpoints"),
)


class ServiceCollector:
    """
    A ``prometheus_client`` collector of followers' statistics, read at
    scrape time.

    :param followers: The followers, each with a different database URL.
    :param clock: Gives the time :attr:`ServiceStats.last_activity` is
        compared with: the followers' clock; the global reactor when omitted.
    """

    def __init__(self, followers: Sequence[Union[Followed, GroupService]], *, clock: Optional[Clock] = None) -> None:
        clock = default_clock(clock)
        self._followers = list(followers)
        self._clock: Clock = clock

    def collect(self) -> Iterable[Metric]:
        """
        :return: The metric families, with one sample per follower.
        """
        counters = {name: CounterMetricFamily(name, doc, labels=["db"]) for name, doc, _ in _COUNTERS}
        pending = GaugeMetricFamily(
            "txchanges_changes_pending", "Changes past the resume point, as the server last reported.", labels=["db"]
        )
        idle = GaugeMetricFamily(
            "txchanges_idle_seconds", "Seconds since the last byte (row or heartbeat) arrived.", labels=["db"]
        )
        state = GaugeMetricFamily(
            "txchanges_state", "1 for the follower's current state, 0 for the others.", labels=["db", "state"]
        )
        resume = InfoMetricFamily(
            "txchanges_resume_seq", "Where a restart would resume (opaque).", labels=["db"]
        )
        now = self._clock.seconds()
        yield from _group_metrics([f for f in self._followers if isinstance(f, GroupService)])
        for follower in self._followers:
            if isinstance(follower, GroupService):
                continue
            db = follower.db.url
            stats = follower.stats
            for name, _, attribute in _COUNTERS:
                counters[name].add_metric([db], getattr(stats, attribute))
            if stats.pending is not None:
                pending.add_metric([db], stats.pending)
            if stats.last_activity is not None:
                idle.add_metric([db], max(0.0, now - stats.last_activity))
            current = str(follower.state)
            names = [s.value for s in State]
            for name in names if current in names else (*names, current):
                state.add_metric([db, name], 1.0 if name == current else 0.0)
            seq = follower.resume_seq
            if seq is not None:
                text = seq if isinstance(seq, str) else json.dumps(seq, separators=(",", ":"))
                resume.add_metric([db], {"seq": text})
        yield from counters.values()
        yield from (pending, idle, state, resume)


class FollowedDatabases(Protocol):
    """
    What a :class:`DatabasesCollector` reads: a
    :class:`~txchanges.DatabasesService`, or anything with the same three
    attributes.
    """

    @property
    def server(self) -> Any: ...  # has a credential-free ``url``

    @property
    def state(self) -> str: ...

    @property
    def stats(self) -> DatabasesStats: ...


#: Any follower a :class:`MetricsServer` serves.
AnyFollower = Union[Followed, FollowedDatabases, GroupService]

_DATABASES_GAUGES = (
    ("txchanges_databases_followed", "Databases followed.", "databases"),
    ("txchanges_databases_open_feeds", "Catch-up feeds open now (_db_updates aside).", "open_feeds"),
    ("txchanges_databases_waiting", "Databases with changes to read, waiting for a feed.", "waiting"),
    ("txchanges_databases_oldest_wait_seconds", "Seconds the database waiting longest has waited.", "oldest_wait"),
)
_DATABASES_COUNTERS = (
    ("txchanges_databases_changes_handled", "Changes the handler finished, over every database.", "handled"),
    ("txchanges_databases_handler_failures", "Handler calls that failed.", "handler_failures"),
    ("txchanges_databases_catch_ups", "Catch-up requests made (a page of one database's changes each).", "catch_ups"),
    ("txchanges_databases_catch_up_failures", "Catch-up requests that failed.", "catch_up_failures"),
    ("txchanges_databases_scans", "Scans of every database finished.", "scans"),
    ("txchanges_databases_deleted", "Followed databases seen deleted.", "deleted"),
    ("txchanges_databases_reconnects", "_db_updates requests made after the first.", "reconnects"),
    ("txchanges_databases_checkpoints_saved", "Batches of checkpoints saved.", "checkpoints"),
)
_DATABASES_STATES = ("starting", "scanning", "following", "stopping", "stopped")


class DatabasesCollector:
    """
    A ``prometheus_client`` collector of followers of many databases, read
    at scrape time.

    :param followers: The followers, each of a different server URL.
    """

    def __init__(self, followers: Sequence[FollowedDatabases]) -> None:
        self._followers = list(followers)

    def collect(self) -> Iterable[Metric]:
        """
        :return: The metric families, with one sample per follower.
        """
        gauges = {name: GaugeMetricFamily(name, doc, labels=["server"]) for name, doc, _ in _DATABASES_GAUGES}
        counters = {name: CounterMetricFamily(name, doc, labels=["server"]) for name, doc, _ in _DATABASES_COUNTERS}
        state = GaugeMetricFamily(
            "txchanges_databases_state", "1 for the follower's current state, 0 for the others.",
            labels=["server", "state"],
        )
        for follower in self._followers:
            server = follower.server.url
            stats = follower.stats
            for families, table in ((gauges, _DATABASES_GAUGES), (counters, _DATABASES_COUNTERS)):
                for name, _, attribute in table:
                    families[name].add_metric([server], getattr(stats, attribute))
            current = str(follower.state)
            names = _DATABASES_STATES if current in _DATABASES_STATES else (*_DATABASES_STATES, current)
            for name in names:
                state.add_metric([server, name], 1.0 if name == current else 0.0)
        yield from gauges.values()
        yield from counters.values()
        yield state


#: A worker group's counters and gauges: name, help, GroupStats attribute.
_GROUP = (
    ("txchanges_group_units_owned", "Units whose lease the worker holds.", "units_owned", GaugeMetricFamily),
    ("txchanges_group_members", "Live members of the group the worker sees.", "members", GaugeMetricFamily),
    ("txchanges_group_rebalances", "Times the units the worker should own changed.", "rebalances", CounterMetricFamily),
    ("txchanges_group_lease_renewals", "Lease writes that succeeded.", "renewals", CounterMetricFamily),
    ("txchanges_group_lease_renewals_failed", "Lease writes that failed or were refused.", "renewals_failed",
     CounterMetricFamily),
    ("txchanges_group_leases_lost", "Leases that ended before they were renewed, or were taken.", "lost",
     CounterMetricFamily),
    ("txchanges_group_changes_handled", "Changes handled by the worker's running units.", "handled",
     CounterMetricFamily),
)


def _group_metrics(workers: Sequence[GroupService]) -> Iterable[Metric]:
    families = {name: kind(name, doc, labels=["group", "worker"]) for name, doc, _, kind in _GROUP}
    for worker in workers:
        stats = worker.stats
        for name, _, attribute, _ in _GROUP:
            families[name].add_metric([worker.group, worker.worker], getattr(stats, attribute))
    if workers:
        yield from families.values()


def metrics_registry(
    followers: Sequence[AnyFollower], *, clock: Optional[Clock] = None, process: bool = True
) -> CollectorRegistry:
    """
    :return: A new registry with a :class:`ServiceCollector` of the
        followers of one database among *followers*, a
        :class:`DatabasesCollector` of those of many, and, when *process*,
        the process' CPU and memory (``process_*``).
    """
    many = [f for f in followers if isinstance(f.stats, DatabasesStats)]
    single = [f for f in followers if not isinstance(f.stats, DatabasesStats)]
    registry = CollectorRegistry(auto_describe=False)
    if single or not many:
        registry.register(ServiceCollector(single, clock=clock))
    if many:
        registry.register(DatabasesCollector(many))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render_metrics(followers: Sequence[AnyFollower], *, clock: Optional[Clock] = None) -> bytes:
    """
    :return: The Prometheus text exposition (format 0.0.4) of *followers*.
    """
    return generate_latest(metrics_registry(followers, clock=clock, process=False))


class MetricsResource(Resource):
    """
    A Twisted Web resource answering ``GET`` with a registry's metrics, in
    the format the ``Accept`` header asks for (Prometheus text by default,
    or OpenMetrics).

    :param registry: The registry to expose.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader("accept") or ""
        encoder, content_type = choose_encoder(accept)
        request.setHeader("content-type", content_type)
        return encoder(self._registry)


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class MetricsServer(Service):
    """
    Serves followers' metrics at ``http://INTERFACE:PORT/metrics`` while
    running.

    :param followers: The followers to expose: of one database or of many.
    :param port: The TCP port; ``0`` picks a free one (see :attr:`port`).
    :param interface: The address to listen on; the loopback one by default.
    :param reactor: The reactor; the global one when omitted.
    :ivar port: The listening port while running, else ``None``; its
        ``getHost().port`` is the port number.
    """

    log = Logger()

    def __init__(
        self,
        followers: Sequence[AnyFollower],
        port: int,
        interface: str = "127.0.0.1",
        *,
        reactor: Any = None,
    ) -> None:
        reactor = default_reactor(reactor)
        self._reactor = reactor
        self._wanted = port
        self._interface = interface
        root = _Root()
        root.putChild(b"metrics", cast(IResource, MetricsResource(metrics_registry(followers, clock=reactor))))
        self.site = Site(root)
        self.site.noisy = False
        self.port: Any = None  # an IListeningPort

    def startService(self) -> None:
        """
        Listen; a port that cannot be bound raises
        :class:`~twisted.internet.error.CannotListenError` here.
        """
        self.port = self._reactor.listenTCP(self._wanted, self.site, interface=self._interface)
        super().startService()
        address = self.port.getHost()
        self.log.info("serving metrics at http://{host}:{port}/metrics", host=address.host, port=address.port)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
