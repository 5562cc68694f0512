"""What the service logs, read from the captured log events: said once, and plainly."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from txchanges import ChangesService, MemoryCheckpoint, Server
from txchanges.testing import FakeCouchDB

from ._service_helpers import wait_for
from .test_http11 import HEAD, LINES, ScriptedServer, chunked, listen


class EndsTwice(ScriptedServer):
    """Ends its first two feeds at last_seq, and keeps the third open."""

    def __init__(self) -> None:
        super().__init__(HEAD + chunked(*LINES, b'{"last_seq":"5-g1AAAA","pending":0}\n'))

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.connections) == 2:
            self.pieces, self.close = (HEAD + chunked(*LINES),), False
        return super().buildProtocol(addr)


def said(events: list[dict[str, Any]], start: str) -> list[str]:
    return [formatEvent(e) for e in events if formatEvent(e).startswith(start)]


@pytest.mark.parametrize("since", [None, 0, "0"])
def test_no_checkpoint_starts_from_the_beginning(since: Any) -> None:
    """Without a checkpoint and with since None or 0, the log says the service starts from the beginning."""
    clock = Clock()
    fake = FakeCouchDB(clock=clock)
    fake.create_db("db")
    assert start_and_stop(fake, clock, since) == [f"no checkpoint in {MEMORY}; starting from the beginning"]


def test_no_checkpoint_starts_from_since() -> None:
    """Without a checkpoint and with since a sequence, the log names that sequence."""
    clock = Clock()
    fake = FakeCouchDB(clock=clock)
    fake.create_db("db")
    fake.save("db", {"_id": "a"})
    since = fake.update_seq("db")
    assert start_and_stop(fake, clock, since) == [f"no checkpoint in {MEMORY}; starting from {since}"]


#: How a MemoryCheckpoint describes itself.
MEMORY = MemoryCheckpoint().describe()


def start_and_stop(fake: FakeCouchDB, clock: Clock, since: Any) -> list[str]:
    """What a service on *fake*'s "db" from *since*, with an empty checkpoint, says of where it starts."""
    service = ChangesService(fake.server()["db"], lambda row: None, since=since, checkpoint=MemoryCheckpoint(),
                             clock=clock)
    with capturedLogs() as events:
        service.startService()
        service.stopService()
    return said(events, "no checkpoint")


@pytest_twisted.ensureDeferred
async def test_a_reconnect_says_what_it_does_once_and_no_factory_noise() -> None:
    """Each request of a feed that ends and reconnects logs one 'requesting changes' line and no 'Starting factory' or 'Stopping factory' line."""
    server = EndsTwice()
    port, listening = listen(server)
    couch = Server(f"http://127.0.0.1:{port}/")
    handled: list[str] = []
    service = ChangesService(couch["db"], lambda row: handled.append(row["id"]), since=0, heartbeat=10000)
    try:
        with capturedLogs() as events:
            service.startService()
            await wait_for(lambda: len(handled) == 3 * len(LINES), 10, "three feeds read")
            await service.stopService()
    finally:
        await couch.close()
        await listening.stopListening()
    assert len(server.requests) == 3
    assert said(events, "requesting changes of") == [
        f"requesting changes of {couch['db'].url} since {since}" for since in (0, "5-g1AAAA", "5-g1AAAA")
    ]
    assert said(events, "feed ended at") == ["feed ended at 5-g1AAAA; reconnecting"] * 2
    noise = [formatEvent(e) for e in events if "factory" in str(e.get("log_format", "")).lower()]
    assert noise == []


@pytest_twisted.ensureDeferred
async def test_requests_through_the_connection_pool_log_no_factory_noise(couch_server: Any, db_name: str) -> None:
    """Plain requests (not feeds) on new pooled connections log no 'Starting factory' or 'Stopping factory' line."""
    couch = Server(couch_server.admin_url)
    try:
        with capturedLogs() as events:
            db = await couch.create_db(db_name)
            await db.save_doc({"_id": "a"})
            await couch.close()  # closes the pooled connections: a new one next
            await db.info()
    finally:
        await couch.close()
    assert said(events, "Starting factory") == [] and said(events, "Stopping factory") == []
