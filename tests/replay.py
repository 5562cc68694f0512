"""
A tiny in-process HTTP server that answers with recorded CouchDB responses.

It writes a recording's bytes exactly as they were read from CouchDB (status
line, headers, chunked framing), so a client under test meets CouchDB's real
framing, chunking and opaque sequences. It is not an HTTP server in general:
it parses requests just well enough to record them and pick a recording.

Usage (``tests/conftest_replay.py`` wraps this in a pytest fixture)::

    running = yield ReplayServer().serve(
        {"/db/_changes": "continuous-since-0-timeout"},
        pacing=AtRecordedTimes(speed=10),
    )
    try:
        response = yield treq.get(running.url + "/db/_changes", unbuffered=True)
        ...
        assert running.requests[0].query == ""
    finally:
        yield running.stop()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from .fixtures_util import FIXTURES, Recording, load

__all__ = [
    "ReplayServer",
    "RunningReplay",
    "RecordedRequest",
    "AllAtOnce",
    "AtRecordedTimes",
    "InSplits",
    "Pacing",
    "Route",
]


@dataclass(frozen=True)
class AllAtOnce:
    """
    Write the whole recorded response in one write.
    """

    def schedule(self, recording: Recording) -> list[tuple[float, bytes]]:
        return [(0.0, recording.raw)]


@dataclass(frozen=True)
class AtRecordedTimes:
    """
    Write the head, then each HTTP chunk, at the time it arrived when it was
    recorded (measured from the request), divided by ``speed``.

    :ivar speed: How many times faster than recorded; ``10`` plays a 5 s
        recording in 0.5 s.
    """

    speed: float = 1.0

    def schedule(self, recording: Recording) -> list[tuple[float, bytes]]:
        times = [recording.head_time_ms] + recording.frame_times_ms
        pieces = [recording.head] + recording.frames
        return [(t / 1000.0 / self.speed, p) for t, p in zip(times, pieces)]


@dataclass(frozen=True)
class InSplits:
    """
    Write the recorded response in pieces cut at the given byte offsets (of
    the whole response, head included), one piece every ``interval``
    seconds, and never two in one reactor iteration. TCP keeps no write
    boundaries, so the client may still read two pieces at once; a non-zero
    interval makes that unlikely on loopback.

    :ivar offsets: Where to cut, in any order; out-of-range ones are ignored.
    :ivar interval: The pause between two pieces, in seconds.
    """

    offsets: Sequence[int]
    interval: float = 0.0

    def schedule(self, recording: Recording) -> list[tuple[float, bytes]]:
        raw = recording.raw
        cuts = sorted({o for o in self.offsets if 0 < o < len(raw)})
        bounds = [0] + cuts + [len(raw)]
        return [
            (i * self.interval, raw[start:end])
            for i, (start, end) in enumerate(zip(bounds, bounds[1:]))
        ]


Pacing = Union[AllAtOnce, AtRecordedTimes, InSplits]

#: A recording name for every request, or a mapping from a request target
#: (``"/db/_changes?feed=continuous"``), a path without query
#: (``"/db/_changes"``), or a ``(method, target or path)`` pair to a recording
#: name or a list of names served in turn (the last one repeats).
Route = Union[str, Mapping[Union[str, tuple[str, str]], Union[str, Sequence[str]]]]


@dataclass(frozen=True)
class RecordedRequest:
    """
    A request the replay server received.

    :ivar method: E.g. ``"GET"``.
    :ivar target: The request target, path and query: ``"/db/_changes?since=0"``.
    :ivar headers: The headers in order, as ``(name, value)`` pairs.
    :ivar body: The request body, de-chunked.
    :ivar recording: The name of the recording answered, or ``None`` if no
        route matched (the answer was then a 500).
    """

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    recording: str | None

    @property
    def path(self) -> str:
        """
        The target without its query.
        """
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        """
        The target's query string, without ``?``.
        """
        return urlsplit(self.target).query

    def header(self, name: str) -> str | None:
        """
        The first value of a header, by case-insensitive name, or ``None``.
        """
        lowered = name.lower()
        for n, v in self.headers:
            if n.lower() == lowered:
                return v
        return None


def _no_route(method: str, target: str) -> bytes:
    body = (
        '{"error":"replay_no_route","reason":"no recording is routed for %s %s"}\n'
        % (method, target.replace('"', "'"))
    ).encode("utf-8")
    return (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class _ReplayProtocol(Protocol):
    """
    One connection: read requests, answer each with a scheduled recording.
    """

    factory: _ReplayFactory

    def __init__(self) -> None:
        self._buffer = b""
        self._responding = False
        self._held = False
        self._ending = (True, False)
        self._schedule: list[tuple[float, bytes]] = []
        self._started = 0.0
        self._call: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._next_request()

    def _next_request(self) -> None:
        if self._responding or self._held:
            return
        parsed = _parse_request(self._buffer)
        if parsed is None:
            return
        method, target, headers, body, self._buffer = parsed
        running = self.factory.running
        recording = running._choose(method, target)
        running.requests.append(
            RecordedRequest(method, target, headers, body, recording.name if recording else None)
        )
        close = any(n.lower() == "connection" and v.lower() == "close" for n, v in headers)
        if recording is None:
            self.transport.write(_no_route(method, target))
            self._after_response(True, close)
            return
        self._responding = True
        self._ending = (recording.complete, close)
        self._schedule = running.pacing.schedule(recording)
        self._started = running.reactor.seconds()
        self._write_later(0)

    def _write_later(self, index: int) -> None:
        # Each piece is scheduled only once the one before it is written, so
        # that two pieces never share a reactor iteration (and a write),
        # while the times stay measured from the request.
        reactor = self.factory.running.reactor
        delay = self._started + self._schedule[index][0] - reactor.seconds()
        self._call = reactor.callLater(max(delay, 0.0), self._write, index)

    def _write(self, index: int) -> None:
        self._call = None
        self.transport.write(self._schedule[index][1])
        if index + 1 < len(self._schedule):
            self._write_later(index + 1)
        else:
            self._responding = False
            self._after_response(*self._ending)

    def _after_response(self, complete: bool, close: bool) -> None:
        if self.factory.running.close_when_done or (complete and close):
            self.transport.loseConnection()
        elif complete:
            self._next_request()
        else:
            # A never-ending feed: stay open, as CouchDB would, until the
            # client goes away.
            self._held = True

    def connectionMade(self) -> None:
        self.factory.running._opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.factory.running._closed(self)


def _parse_request(
    buffer: bytes,
) -> tuple[str, str, list[tuple[str, str]], bytes, bytes] | None:
    """
    Take one whole request off the front of a buffer.

    :return: ``(method, target, headers, body, rest)``, or ``None`` when the
        request is not complete yet.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buffer[:end].decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
    lowered = {n.lower(): v for n, v in headers}
    rest = buffer[end + 4 :]
    if lowered.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        at = 0
        while True:
            line_end = rest.find(b"\r\n", at)
            if line_end < 0:
                return None
            size = int(rest[at:line_end].split(b";")[0], 16)
            if size == 0:
                trailer_end = rest.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None
                return method, target, headers, body, rest[trailer_end + 4 :]
            if len(rest) < line_end + 2 + size + 2:
                return None
            body += rest[line_end + 2 : line_end + 2 + size]
            at = line_end + 2 + size + 2
    length = int(lowered.get("content-length", "0"))
    if len(rest) < length:
        return None
    return method, target, headers, rest[:length], rest[length:]


class _ReplayFactory(Factory):
    protocol = _ReplayProtocol

    def __init__(self, running: RunningReplay) -> None:
        self.running = running


class RunningReplay:
    """
    A replay server that is listening.

    :ivar url: Its base URL, ``"http://127.0.0.1:PORT"`` (no trailing slash).
    :ivar port: The TCP port it got.
    :ivar requests: Every request received so far, in order.
    :ivar pacing: How responses are written.
    :ivar close_when_done: Whether each connection is closed after its last
        response byte, even for a feed recorded as never-ending.
    """

    def __init__(
        self,
        reactor: Any,
        recordings: dict[str, Recording],
        route: Route,
        pacing: Pacing,
        close_when_done: bool,
    ) -> None:
        self.reactor = reactor
        self.pacing = pacing
        self.close_when_done = close_when_done
        self.requests: list[RecordedRequest] = []
        self._recordings = recordings
        self._route = route
        self._served: dict[object, int] = {}
        self._connections: list[_ReplayProtocol] = []
        self._idle_waiters: list[Deferred[None]] = []
        self._listening = reactor.listenTCP(0, _ReplayFactory(self), interface="127.0.0.1")
        self.port: int = self._listening.getHost().port
        self.url = f"http://127.0.0.1:{self.port}"

    def _choose(self, method: str, target: str) -> Recording | None:
        route = self._route
        if isinstance(route, str):
            return self._recordings[route]
        path = urlsplit(target).path
        for key in ((method, target), target, (method, path), path):
            if key in route:
                names = route[key]
                if isinstance(names, str):
                    return self._recordings[names]
                turn = self._served.get(key, 0)
                self._served[key] = turn + 1
                return self._recordings[names[min(turn, len(names) - 1)]]
        return None

    @property
    def open_connections(self) -> int:
        """
        How many client connections are open now.
        """
        return len(self._connections)

    def when_idle(self) -> Deferred[None]:
        """
        Wait until no client connection is open.

        :return: A Deferred that fires with ``None`` once every connection
            accepted so far has closed (at once if none is open).
        """
        if not self._connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _opened(self, connection: _ReplayProtocol) -> None:
        self._connections.append(connection)

    def _closed(self, connection: _ReplayProtocol) -> None:
        self._connections.remove(connection)
        if not self._connections:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def stop(self) -> Deferred[None]:
        """
        Stop listening and cut every open connection.

        :return: A Deferred that fires with ``None`` once the port is closed
            and every connection is gone.
        """
        idle = self.when_idle()
        for connection in list(self._connections):
            connection.transport.abortConnection()
        listening = maybeDeferred(self._listening.stopListening)
        return gatherResults([idle, listening]).addCallback(lambda _: None)


class ReplayServer:
    """
    Serve recorded responses from a directory of recordings.

    :param directory: The recordings' directory; the project's CouchDB 3
        recordings by default.
    :param reactor: The reactor to listen on and schedule writes with; the
        global one by default.
    """

    def __init__(self, directory: Path = FIXTURES, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._directory = directory
        self._reactor = reactor

    def serve(
        self,
        route: Route,
        pacing: Pacing = AllAtOnce(),
        close_when_done: bool = False,
    ) -> Deferred[RunningReplay]:
        """
        Start listening on ``127.0.0.1`` on a free port.

        :param route: Which recording answers which request (see
            :data:`Route`).
        :param pacing: How to write each response: :class:`AllAtOnce`,
            :class:`AtRecordedTimes` or :class:`InSplits`.
        :param close_when_done: Close the connection after the last byte of
            every response, even a feed recorded as never-ending (whose
            connection otherwise stays open until the client closes it).
        :return: A Deferred that fires with the :class:`RunningReplay`.
        :raises FileNotFoundError: At once, if the route names a recording
            that does not exist.
        """
        recordings = {name: load(name, self._directory) for name in _route_names(route)}
        return succeed(
            RunningReplay(self._reactor, recordings, route, pacing, close_when_done)
        )


def _route_names(route: Route) -> set[str]:
    if isinstance(route, str):
        return {route}
    names: set[str] = set()
    for value in route.values():
        names.update([value] if isinstance(value, str) else value)
    return names
