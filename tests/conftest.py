"""Shared pytest fixtures.

Setup and teardown here are synchronous (subprocess and urllib): under
pytest-twisted the reactor runs in a greenlet, and fixtures must not need it.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_twisted

from txchanges import Database, Server

from . import couchserver, examplerun
from .faultproxy import FaultProxy


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "runs_example(*scripts): the test runs these scripts of examples/ (through tests/examplerun.py)"
    )


@pytest.fixture(autouse=True)
def examples_run_as_declared(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: it ran exactly the examples its runs_example marker names."""
    marker = request.node.get_closest_marker("runs_example")
    declared = set(marker.args) if marker is not None else set()
    start = len(examplerun.ran)
    yield
    ran = set(examplerun.ran[start:])
    assert ran == declared, f"examples run {sorted(ran)}, declared with runs_example {sorted(declared)}"


@pytest.fixture(scope="session")
def couch_server() -> Iterator[couchserver.RunningServer]:
    """One CouchDB-compatible test server for the whole session (admin-only dbs)."""
    server = couchserver.start()
    try:
        yield server
    finally:
        server.stop()


_db_numbers = itertools.count(1)


@pytest.fixture
def db_name(couch_server: couchserver.RunningServer) -> Iterator[str]:
    """A fresh, valid, not yet created database name, deleted after the test."""
    name = f"test-{next(_db_numbers)}-{secrets.token_hex(4)}"
    yield name
    couch_server.delete_db(name)


@pytest.fixture
def db_url(couch_server: couchserver.RunningServer, db_name: str) -> str:
    """Admin URL (with credentials) of a freshly created, empty database."""
    couch_server.create_db(db_name)
    return couch_server.admin_url + db_name


_SUMMARY = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def report_summary(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Adds a line to the "txchanges" section printed at the end of the run."""
    return request.config.stash.setdefault(_SUMMARY, []).append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("txchanges")
        for line in lines:
            terminalreporter.write_line(line)


# Asynchronous fixtures shared by the tests that talk to the test server
# through txchanges itself (they run in the reactor, unlike those above).


@pytest_twisted.async_yield_fixture
async def server(couch_server: couchserver.RunningServer) -> AsyncIterator[Server]:
    """A Server on the test server with the admin's credentials, closed afterwards."""
    s = Server(couch_server.admin_url)
    yield s
    await s.close()


@pytest_twisted.async_yield_fixture
async def db(server: Server, db_name: str) -> AsyncIterator[Database]:
    """A new, empty database on the test server."""
    yield await server.create_db(db_name)


@pytest.fixture
def direct(db: Database) -> Database:
    """The test database reached without a proxy (the same as ``db``)."""
    return db


@pytest_twisted.async_yield_fixture
async def proxy(couch_server: couchserver.RunningServer) -> AsyncIterator[FaultProxy]:
    """A started fault-injecting proxy in front of the test server, stopped afterwards."""
    p = FaultProxy("127.0.0.1", couch_server.port)
    await p.start()
    yield p
    await p.stop()


@pytest_twisted.async_yield_fixture
async def proxied(
    couch_server: couchserver.RunningServer, proxy: FaultProxy, db: Database
) -> AsyncIterator[Database]:
    """The test database reached through the proxy."""
    s = Server(proxy.url_for(couch_server.admin_url))
    yield s[db.name]
    await s.close()
