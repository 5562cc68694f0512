"""Shared pytest fixtures.

Setup and teardown here are synchronous (subprocess and urllib): under
pytest-twisted the reactor runs in a greenlet, and fixtures must not need it.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator

import pytest

from . import couchserver


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
