"""Listing databases: ``_all_dbs`` paging and ``POST /_dbs_info`` through
``Server.all_dbs()`` / ``Server.dbs_info()``, on the in-memory fake and on the
test server alike; and the test server's peak of open ``_changes`` feeds."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from txchanges import BadRequest, Server, Unauthorized
from txchanges.testing import FakeCouchDB

from . import couchserver

ADMIN = ("admin", "secret")

#: Suffixes in CouchDB's raw (byte) order: "$" < "(" < "-" < "/" < digits < letters.
ORDERED = ["a", "a$", "a(b", "a-b", "a/c", "a1", "a10", "a2", "b", "c"]


class Place:
    """An admin Server and an anonymous one on a backend, and databases made there under one prefix."""

    def __init__(self, server: Server, anonymous: Server, prefix: str) -> None:
        self.server = server
        self.anonymous = anonymous
        self.prefix = prefix
        self.created: list[str] = []

    async def create(self, suffixes: list[str]) -> list[str]:
        """Create ``prefix + suffix`` for each suffix, in a shuffled order; return the names."""
        names = [self.prefix + s for s in suffixes]
        for name in sorted(names, key=lambda n: secrets.randbits(32)):
            await self.server.create_db(name)
            self.created.append(name)
        return names

    def raw(self, **query: str) -> Any:
        """GET /_all_dbs with these query parameters, as they are."""
        return self.server.request_json("GET", "_all_dbs", list(query.items()))


@pytest.fixture(params=["fake", "server"])
def place_spec(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """Which backend; the test server is only started for the server half."""
    return request.param, request.getfixturevalue("couch_server") if request.param == "server" else None


@pytest_twisted.async_yield_fixture
async def place(place_spec: tuple[str, Any]) -> AsyncIterator[Place]:
    kind, couch = place_spec
    if kind == "fake":
        fake = FakeCouchDB(clock=Clock(), admin=ADMIN)
        yield Place(fake.server(), Server(fake.url, http=fake.client()), "p-")
        return
    chosen = Place(Server(couch.admin_url), Server(couch.url), f"dbl-{secrets.token_hex(4)}-")
    try:
        yield chosen
    finally:
        for name in chosen.created:
            couch.delete_db(name)
        await chosen.server.close()
        await chosen.anonymous.close()


def last_key(prefix: str) -> str:
    """A key after every name that starts with *prefix*."""
    return prefix + "\ufff0"


@pytest_twisted.ensureDeferred
async def test_pages_list_every_name_once_in_raw_order(place: Place) -> None:
    """Pages of 3 from start_key, each next one starting just after the last name, list every name once, in byte order."""
    names = await place.create(ORDERED)
    seen: list[str] = []
    pages = 0
    start = place.prefix
    while True:
        page = await place.server.all_dbs(start_key=start, end_key=last_key(place.prefix), limit=3)
        assert len(page) <= 3
        if not page:
            break
        pages += 1
        seen += page
        start = page[-1] + "\x00"
    assert seen == names
    assert pages == 4


@pytest_twisted.ensureDeferred
async def test_start_and_end_keys_bound_the_list(place: Place) -> None:
    """start_key and end_key are both included when they name databases; inclusive_end=false leaves the end out."""
    await place.create(ORDERED)
    p = place.prefix
    assert await place.server.all_dbs(start_key=p + "a1", end_key=p + "a2") == [p + "a1", p + "a10", p + "a2"]
    assert await place.server.all_dbs(start_key=p + "a0", end_key=p + "a11") == [p + "a1", p + "a10"]
    assert await place.raw(startkey=f'"{p}a1"', endkey=f'"{p}a2"', inclusive_end="false") == [p + "a1", p + "a10"]
    assert await place.server.all_dbs(start_key=p + "b", end_key=last_key(p), limit=1) == [p + "b"]
    everything = await place.server.all_dbs()
    assert [n for n in everything if n.startswith(p)] == [p + s for s in ORDERED]
    assert everything == sorted(everything, key=lambda n: n.encode())


@pytest_twisted.ensureDeferred
async def test_descending_and_skip(place: Place) -> None:
    """descending=true lists from start_key down to end_key; skip drops the first names of the page."""
    await place.create(ORDERED)
    p = place.prefix
    down = await place.raw(descending="true", start_key=f'"{p}a2"', end_key=f'"{p}a("')
    assert down == [p + s for s in ["a2", "a10", "a1", "a/c", "a-b", "a(b"]]
    skipped = await place.raw(descending="true", start_key=f'"{last_key(p)}"', end_key=f'"{p}"', skip="2", limit="3")
    assert skipped == [p + s for s in ["a2", "a10", "a1"]]


@pytest_twisted.ensureDeferred
async def test_bad_key_is_a_bad_request(place: Place) -> None:
    """A start_key that is not JSON gets CouchDB's 400 bad_request."""
    with pytest.raises(BadRequest) as caught:
        await place.raw(start_key="not-json")
    assert caught.value.error == "bad_request"


@pytest_twisted.ensureDeferred
async def test_dbs_info_rows_in_key_order(place: Place) -> None:
    """dbs_info answers one row per name in the order asked: GET /db's body for a database, not_found for a missing one."""
    a, b = await place.create(["x", "y"])
    await place.server[b].save_doc({"_id": "d"})
    missing = place.prefix + "missing"
    rows = await place.server.dbs_info([b, missing, a])
    assert rows == [
        {"key": b, "info": await place.server[b].info()},
        {"key": missing, "error": "not_found"},
        {"key": a, "info": await place.server[a].info()},
    ]
    assert rows[0]["info"]["doc_count"] == 1
    assert await place.server.dbs_info([]) == []


@pytest_twisted.ensureDeferred
async def test_dbs_info_refuses_more_than_100_keys(place: Place) -> None:
    """100 names are answered; 101 are refused by the client before any request, and by the server with CouchDB's 400."""
    names = [f"{place.prefix}n{i}" for i in range(101)]
    assert len(await place.server.dbs_info(names[:100])) == 100
    with pytest.raises(ValueError):
        place.server.dbs_info(names)
    with pytest.raises(BadRequest) as caught:
        await place.server.request_json("POST", "_dbs_info", json_body={"keys": names})
    assert caught.value.reason == "`keys` member must be less than or equal to 100"
    with pytest.raises(BadRequest):
        await place.server.request_json("POST", "_dbs_info", json_body={"names": names[:1]})
    with pytest.raises(BadRequest):
        await place.server.request_json("POST", "_dbs_info", json_body={"keys": names[0]})


@pytest_twisted.ensureDeferred
async def test_listing_is_for_the_admin(place: Place) -> None:
    """Without credentials, _all_dbs and _dbs_info are refused alike (CouchDB 3's admin-only listing)."""
    with pytest.raises(Unauthorized):
        await place.anonymous.all_dbs(limit=1)
    with pytest.raises(Unauthorized):
        await place.anonymous.dbs_info(["x"])


def test_dbs_info_takes_only_names() -> None:
    """A name that is not a str, or one str given for the list, is refused before any request."""
    fake = FakeCouchDB(clock=Clock())
    server = fake.server()
    for bad in (["a", 1], "abc"):
        before = len(fake.requests)
        with pytest.raises(ValueError):
            server.dbs_info(bad)  # type: ignore[arg-type]
        assert len(fake.requests) == before


# -- the test server's peak of open _changes feeds ------------------------------------------


def _counts(server: couchserver.RunningServer) -> dict[str, Any]:
    status, body = server.request("GET", "_testserver")
    assert status == 200, body
    return dict(body)


def _until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def own_server() -> Iterator[couchserver.RunningServer]:
    """A server of its own: no other test's feeds in its counts."""
    with couchserver.start() as server:
        server.create_db("peak")
        yield server


def test_peak_of_open_changes_feeds(own_server: couchserver.RunningServer) -> None:
    """peak_open_feeds.changes keeps the most feeds (of any type) open at once; reset_peak sets it to those open now."""
    auth = own_server.auth_header()["Authorization"]

    def open_feed(kind: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", own_server.port), timeout=5)
        sock.sendall((f"GET /peak/_changes?feed={kind}&since=now&heartbeat=60000 HTTP/1.1\r\n"
                      f"Host: x\r\nAuthorization: {auth}\r\n\r\n").encode())
        return sock

    def open_now() -> int:
        return int(_counts(own_server)["open_feeds"]["changes"])

    def peak() -> int:
        return int(_counts(own_server)["peak_open_feeds"]["changes"])

    assert peak() == 0
    socks = [open_feed(kind) for kind in ("continuous", "longpoll", "eventsource")]
    _until(lambda: open_now() == 3, "three feeds open")
    assert peak() == 3
    socks.pop().close()
    _until(lambda: open_now() == 2, "one feed closed")
    assert peak() == 3
    assert own_server.request("POST", "_testserver/reset_peak") == (200, {"ok": True})
    assert peak() == 2
    socks.append(open_feed("continuous"))
    socks.append(open_feed("longpoll"))
    _until(lambda: open_now() == 4, "four feeds open")
    for sock in socks:
        sock.close()
    _until(lambda: open_now() == 0, "every feed closed")
    assert peak() == 4
    own_server.request("POST", "_testserver/reset_peak")
    assert peak() == 0
