"""
An in-memory network with exact flow control, for tests that count what a
server sent against what a client took.

Over real TCP, socket buffers of a few megabytes lie between a server and a
client that stopped reading, and how much they take varies. :class:`MemoryNet`
stands in for the reactor given to :class:`txchanges.Server` (``reactor=``):
every TCP connection it is asked for reaches a server protocol of the test,
in memory, and

- each ``write`` of the server reaches the client as one read, one per
  reactor turn, in order, for as long as the client reads;
- the client's ``transport.pauseProducing()`` stops that delivery and
  ``resumeProducing()`` restarts it, as a socket that is not read;
- a streaming producer the server registers on its transport is paused
  while more than *window* writes wait to be delivered, and resumed when
  they are.

So a server that writes only while it is not paused is at most *window*
writes ahead of what the client has been handed. Everything else (time,
``callLater``) is the wrapped reactor's.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConnector, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

__all__ = ["MemoryNet", "Pipe"]


class _End:
    """One side's transport of a :class:`Pipe`."""

    disconnecting = False

    def __init__(self, pipe: "Pipe", client: bool) -> None:
        self._pipe = pipe
        self._client = client
        self.producer: Any = None

    # ITransport
    def write(self, data: bytes) -> None:
        if data:
            self._pipe.send(self._client, data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._pipe.close(self._client, abort=False)

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._pipe.close(self._client, abort=True)

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 80 if self._client else 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000 if self._client else 80)

    # IPushProducer: whether this side reads
    def pauseProducing(self) -> None:
        self._pipe.set_reading(self._client, False)

    def resumeProducing(self) -> None:
        self._pipe.set_reading(self._client, True)

    def stopProducing(self) -> None:
        self.abortConnection()

    # IConsumer
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self._pipe.producer_changed(self._client)

    def unregisterProducer(self) -> None:
        self.producer = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass


class Pipe:
    """
    One connection between a client protocol and a server protocol.

    :ivar delivered: Server writes handed to the client, in all.
    :ivar client_pauses: How often the client paused its transport.
    :ivar client_reading: Whether the client reads (it has not paused its
        transport, or has resumed it).
    :ivar server_paused: Whether the server's producer is paused because
        writes wait that the client does not take.
    :ivar closed: Whether the connection has ended.
    """

    def __init__(
        self, reactor: Any, client: Protocol, server: Protocol, window: int,
        tap: Optional[Callable[[bytes], object]] = None,
    ) -> None:
        self._reactor = reactor
        self._window = window
        self._tap = tap
        self.client, self.server = client, server
        self._ends = {True: _End(self, True), False: _End(self, False)}
        # Bytes on their way to each side: True is towards the client.
        self._queues: dict[bool, deque[bytes]] = {True: deque(), False: deque()}
        self._reading = {True: True, False: True}
        self._scheduled = {True: False, False: False}
        self._closing: Optional[Failure] = None
        self.delivered = 0
        self.client_pauses = 0
        self.server_paused = False
        self.closed = False
        self._stuck: list[Deferred[None]] = []

    @property
    def client_reading(self) -> bool:
        return self._reading[True]

    @property
    def stuck(self) -> bool:
        """Whether the server is paused and the client does not read: nothing moves until the client reads again."""
        return self.server_paused and not self.client_reading

    def when_stuck(self) -> "Deferred[None]":
        """A Deferred that fires once :attr:`stuck` holds."""
        d: Deferred[None] = Deferred()
        if self.stuck:
            d.callback(None)
        else:
            self._stuck.append(d)
        return d

    @property
    def waiting(self) -> int:
        """Server writes not yet handed to the client."""
        return len(self._queues[True])

    def start(self) -> None:
        self.server.makeConnection(self._ends[False])  # type: ignore[arg-type]
        self.client.makeConnection(self._ends[True])  # type: ignore[arg-type]

    def send(self, from_client: bool, data: bytes) -> None:
        if self.closed or self._closing is not None:
            return
        to_client = not from_client
        self._queues[to_client].append(data)
        self._schedule(to_client)
        if to_client:
            self._check_server()

    def set_reading(self, client: bool, reading: bool) -> None:
        if client and self._reading[client] and not reading:
            self.client_pauses += 1
        self._reading[client] = reading
        if reading:
            self._schedule(client)
        if client:
            self._check_server()

    def producer_changed(self, client: bool) -> None:
        if not client:
            self._check_server()

    def _check_server(self) -> None:
        producer = self._ends[False].producer
        full = self.waiting > self._window
        if full and not self.server_paused:
            self.server_paused = True
            if producer is not None:
                producer.pauseProducing()
        elif not full and self.server_paused:
            self.server_paused = False
            if producer is not None:
                producer.resumeProducing()
        if self.stuck:
            stuck, self._stuck = self._stuck, []
            for d in stuck:
                d.callback(None)

    def _schedule(self, to_client: bool) -> None:
        if not self._scheduled[to_client] and self._queues[to_client] and self._reading[to_client]:
            self._scheduled[to_client] = True
            self._reactor.callLater(0, self._deliver, to_client)

    def _deliver(self, to_client: bool) -> None:
        self._scheduled[to_client] = False
        queue = self._queues[to_client]
        if self.closed or not queue or not self._reading[to_client]:
            return
        data = queue.popleft()
        if to_client:
            self.delivered += 1
            if self._tap is not None:
                self._tap(data)
            self.client.dataReceived(data)
            self._check_server()
        else:
            self.server.dataReceived(data)
        if self._closing is not None and not any(self._queues.values()):
            self._end(self._closing)
            return
        self._schedule(to_client)

    def close(self, by_client: bool, abort: bool) -> None:
        if self.closed:
            return
        reason = Failure(ConnectionLost() if abort else ConnectionDone())
        if abort or not any(self._queues.values()):
            self._end(reason)
        else:
            # What was written still goes, then the end.
            self._closing = reason

    def _end(self, reason: Failure) -> None:
        if self.closed:
            return
        self.closed = True
        for queue in self._queues.values():
            queue.clear()
        producer = self._ends[False].producer
        if producer is not None:
            producer.stopProducing()
        self.server.connectionLost(reason)
        self.client.connectionLost(reason)


@implementer(IConnector)
class _Connector:
    def __init__(self, net: "MemoryNet", factory: Any) -> None:
        self._net = net
        self._factory = factory
        self._cancelled = False

    def stopConnecting(self) -> None:
        self._cancelled = True

    def disconnect(self) -> None:
        self._cancelled = True

    def connect(self) -> None:
        self._cancelled = False
        self._net._reactor.callLater(0, self._made)

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 80)

    def _made(self) -> None:
        if self._cancelled:
            return
        client = self._factory.buildProtocol(self.getDestination())
        server = self._net.server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        pipe = Pipe(self._net._reactor, client, server, self._net.window, self._net.tap)
        self._net.pipes.append(pipe)
        pipe.start()


@implementer(IReactorTCP, IReactorTime)
class MemoryNet:
    """
    A stand-in reactor whose TCP connections reach *server_factory* in memory
    (see the module's docstring).

    :param server_factory: Builds the server protocol of each connection.
    :param reactor: The reactor that runs everything else.
    :param window: How many undelivered server writes make the server's
        producer pause.
    :param tap: Called with each server write just before the client gets it.
    :ivar pipes: Every connection made, in order.
    """

    def __init__(
        self, server_factory: Factory, reactor: Any, window: int = 1, tap: Optional[Callable[[bytes], object]] = None
    ) -> None:
        self.server_factory = server_factory
        self._reactor = reactor
        self.window = window
        self.tap = tap
        self.pipes: list[Pipe] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self._reactor.callLater(delay, f, *args, **kw)

    def seconds(self) -> float:
        return float(self._reactor.seconds())

    def getDelayedCalls(self) -> Any:
        return self._reactor.getDelayedCalls()

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None) -> _Connector:
        connector = _Connector(self, factory)
        factory.doStart()
        factory.startedConnecting(connector)
        connector.connect()
        return connector

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise NotImplementedError("a MemoryNet only connects")
