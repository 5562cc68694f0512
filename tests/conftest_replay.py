"""
A pytest fixture for the replay server of recorded CouchDB responses.

``replay`` is a factory: ``running = yield replay("continuous-since-0-timeout")``
(or ``await``) starts a server on a free port with the given route and
options (see :meth:`tests.replay.ReplayServer.serve`); every server it
started is stopped after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from .replay import ReplayServer, Route, RunningReplay

__all__ = ["replay"]


@pytest_twisted.async_yield_fixture
async def replay() -> AsyncIterator[Callable[..., Deferred[RunningReplay]]]:
    server = ReplayServer()
    started: list[RunningReplay] = []

    def serve(route: Route, **options: Any) -> Deferred[RunningReplay]:
        def keep(running: RunningReplay) -> RunningReplay:
            started.append(running)
            return running

        return server.serve(route, **options).addCallback(keep)

    yield serve
    for running in started:
        await running.stop()
