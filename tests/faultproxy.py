"""
A TCP proxy for fault tests: it relays bytes between clients and one server
and, on command, cuts, stalls, refuses or drops connections. Faults act on
the response direction; request bytes are forwarded untouched. Backpressure
holds both ways (a side whose peer cannot keep up is not read), so memory
stays bounded whatever the traffic.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredLock
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["FaultProxy", "FAULT_KINDS"]

#: The fault kinds :meth:`FaultProxy.chaos` picks from.
FAULT_KINDS = ("cut", "stall", "refuse", "drop")


class _Valve:
    """
    A streaming producer (``IPushProducer``) that keeps one transport from
    being read while anything holds it: the peer's full write buffer, a
    stall, or the server connection still being made.
    """

    def __init__(self, source: Any) -> None:
        self._source = source
        self._holds: set[str] = set()

    def hold(self, why: str) -> None:
        if not self._holds:
            self._source.pauseProducing()
        self._holds.add(why)

    def release(self, why: str) -> None:
        if why in self._holds:
            self._holds.discard(why)
            if not self._holds:
                self._source.resumeProducing()

    def pauseProducing(self) -> None:
        self.hold("backed up")

    def resumeProducing(self) -> None:
        self.release("backed up")

    def stopProducing(self) -> None:
        # A transport calls this when it closes; the relay alone decides how
        # the other side ends (a stall holds back the close too).
        pass


class _End(Protocol):
    """One side of a relayed connection; it hands everything to its relay."""

    def __init__(self, relay: "_Relay", upstream: bool) -> None:
        self._relay, self._upstream = relay, upstream

    def connectionMade(self) -> None:
        made = self._relay.server_made if self._upstream else self._relay.client_made
        made(self.transport)

    def dataReceived(self, data: bytes) -> None:
        received = self._relay.from_server if self._upstream else self._relay.from_client
        received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._relay.lost(self._upstream)


class _Relay:
    """
    One client connection and the server connection made for it.

    :ivar budget: Response bytes left before the connection is cut, or
        ``None`` for no limit.
    :ivar closed: Fires once both sides are closed.
    """

    def __init__(self, proxy: "FaultProxy", budget: Optional[int], drop: bool) -> None:
        self._proxy = proxy
        self.budget = budget
        self._drop = drop
        self.client: Any = None
        self.server: Any = None
        self._request_valve: Optional[_Valve] = None
        self._response_valve: Optional[_Valve] = None
        self._to_server: list[bytes] = []
        self._held: list[bytes] = []
        self._server_ended = False
        self._finished = False  # no more response bytes go to the client
        self._connecting: Optional[Deferred[Any]] = None
        self._sides_open = 1
        self.closed: Deferred[None] = Deferred()

    def client_made(self, transport: Any) -> None:
        self.client = transport
        if self._drop:
            self._finished = True
            transport.loseConnection()
            return
        self._request_valve = _Valve(transport)
        self._request_valve.hold("connecting")
        proxy = self._proxy
        endpoint = TCP4ClientEndpoint(proxy.reactor, proxy.target_host, proxy.target_port)
        self._sides_open += 1
        self._connecting = connectProtocol(endpoint, _End(self, True))  # type: ignore[no-untyped-call]
        self._connecting.addErrback(self._connect_failed)

    def from_client(self, data: bytes) -> None:
        if self.server is None:
            self._to_server.append(data)
        elif not self._finished:
            self.server.write(data)

    def server_made(self, transport: Any) -> None:
        self._connecting = None
        self.server = transport
        if self._finished:
            transport.abortConnection()
            return
        assert self._request_valve is not None
        self._response_valve = _Valve(transport)
        if self._proxy.stalled:
            self._response_valve.hold("stall")
        self.client.registerProducer(self._response_valve, True)
        transport.registerProducer(self._request_valve, True)
        transport.writeSequence(self._to_server)
        self._to_server = []
        self._request_valve.release("connecting")

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if not failure.check(CancelledError):  # type: ignore[no-untyped-call]
            self._proxy.log.info("cannot reach the target: {why}", why=failure.value)
        self.lost(upstream=True)
        self.abort()

    def from_server(self, data: bytes) -> None:
        if self._finished:
            return
        if self._proxy.stalled or self._held:
            self._held.append(data)
        else:
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        if self.budget is not None and len(data) >= self.budget:
            data, self._finished = data[: self.budget], True
        self.client.write(data)
        self._proxy.bytes_forwarded += len(data)
        if self.budget is not None:
            self.budget -= len(data)
        if self._finished:
            self._proxy.faults["cuts"] += 1
            self.server.abortConnection()
            self._close_client()

    def _close_client(self) -> None:
        # After what was written: the client gets those bytes, then a FIN.
        self._finished = True
        self._held = []
        # A registered producer would be resumed instead of the close.
        self.client.unregisterProducer()
        self.client.loseConnection()

    def stall(self) -> None:
        if self._response_valve is not None:
            self._response_valve.hold("stall")

    def unstall(self) -> None:
        held, self._held = self._held, []
        for data in held:
            if self._finished:
                break
            self._deliver(data)
        if self._server_ended and not self._finished:
            self._close_client()
        if self._response_valve is not None:
            self._response_valve.release("stall")

    def abort(self) -> None:
        """Abort both sides now, dropping whatever was not yet sent."""
        self._finished = True
        self._held = []
        if self._connecting is not None:
            self._connecting.cancel()
        for transport in (self.server, self.client):
            if transport is not None:
                transport.abortConnection()

    def lost(self, upstream: bool) -> None:
        if upstream:
            if self._proxy.stalled and not self._finished:
                self._server_ended = True  # a stalled network delivers no FIN either
            elif not self._finished:
                self._close_client()
        elif self.server is not None:
            self._finished = True
            self.server.abortConnection()
        elif self._connecting is not None:
            self._finished = True
            self._connecting.cancel()
        self._sides_open -= 1
        if self._sides_open == 0:
            self._proxy._relays.discard(self)
            self.closed.callback(None)


class FaultProxy(Factory):
    """
    A TCP proxy on ``127.0.0.1`` in front of one server (it is the factory
    of its own listening port), with faults to inject at any time.

    :param target_host: The server's host.
    :param target_port: The server's port.
    :param reactor: The reactor (and clock); the global reactor when omitted.

    :ivar port: The port listened on, the same across :meth:`refuse`.
    :ivar connections: Client connections accepted, in all.
    :ivar faults: Faults by kind: ``cuts`` and ``drops`` count connections,
        ``stalls`` and ``refusals`` count periods.
    :ivar bytes_forwarded: Response bytes handed to clients.
    :ivar history: What :meth:`chaos` did: ``(start, kind, seconds)``.
    :ivar stalled: Whether response bytes are held back.
    :ivar refusing: Whether the proxy has stopped listening.
    :ivar dropping: Whether new connections are closed as soon as accepted.
    """

    log = Logger()
    noisy = False

    def __init__(self, target_host: str, target_port: int, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self.faults = {"cuts": 0, "stalls": 0, "refusals": 0, "drops": 0}
        self.bytes_forwarded = 0
        self.history: list[tuple[float, str, float]] = []
        self.stalled = self.refusing = self.dropping = False
        self._budget: Callable[[], Optional[int]] = lambda: None
        self._listener: Any = None  # an IListeningPort
        self._listener_lock = DeferredLock()
        self._relays: set[_Relay] = set()
        self._timers: dict[str, Any] = {}  # IDelayedCall by name
        self._chaos: Optional[Deferred[None]] = None
        self._stopped = False

    async def start(self) -> None:
        """Listen on ``127.0.0.1``, on a free port (then in :attr:`port`)."""
        await self._listener_lock.run(self._listen)

    async def stop(self) -> None:
        """End :meth:`chaos` and every timer, stop listening, abort every connection."""
        self._stopped = True
        if self._chaos is not None:
            self._chaos.cancel()
        for name in list(self._timers):
            self._cancel(name)
        self.stalled = self.dropping = False
        self._budget = lambda: None
        await self._listener_lock.run(self._unlisten)
        relays = list(self._relays)
        for relay in relays:
            relay.abort()
        await DeferredList([relay.closed for relay in relays])

    @property
    def open_connections(self) -> int:
        """Client connections not yet closed on both sides."""
        return len(self._relays)

    @property
    def pending_timers(self) -> list[str]:
        """The names of the proxy's scheduled calls (``accept``, ``unstall``, ``chaos``)."""
        return sorted(name for name, call in self._timers.items() if call.active())

    def url_for(self, url: str) -> str:
        """*url* with the proxy's host and port, keeping credentials, path and query."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # -- faults ---------------------------------------------------------------

    def cut_all(self) -> int:
        """
        Abort every open connection now, both sides, dropping bytes not yet
        sent (the client sees a reset or an end of stream); return how many.
        """
        relays = list(self._relays)
        for relay in relays:
            relay.abort()
        self.faults["cuts"] += len(relays)
        return len(relays)

    def cut_after(
        self, nbytes: Optional[int], high: Optional[int] = None, rng: Optional[random.Random] = None
    ) -> None:
        """
        Cut each connection accepted from now on after exactly *nbytes*
        response bytes, counted over its life (a kept-alive connection is cut
        in whichever response reaches the count): the client gets those
        bytes, then an end of stream. With *high* and *rng*, each count is
        ``rng.randint(nbytes, high)``, so cuts land mid-headers, mid-chunk
        header and mid-line alike. ``None`` ends the mode.
        """
        if nbytes is None:
            self._budget = lambda: None
        elif not 0 <= nbytes <= (nbytes if high is None else high):
            raise ValueError(f"need 0 <= nbytes <= high, not {nbytes!r}, {high!r}")
        elif high is None:
            self._budget = lambda: nbytes
        elif rng is None:
            raise TypeError("a range of counts needs a seeded random.Random as rng")
        else:
            draw = rng.randint
            self._budget = lambda: draw(nbytes, high)

    def stall(self, seconds: Optional[float] = None) -> None:
        """
        Deliver no response byte to any connection, open or new, and say
        nothing: connections stay open, the server is not read (TCP flow
        control holds it back) and a close by the server is held back too.
        *seconds* ends the stall by itself.
        """
        if not self.stalled:
            self.stalled = True
            self.faults["stalls"] += 1
            for relay in self._relays:
                relay.stall()
        self._after("unstall", seconds, self.unstall)

    def unstall(self) -> None:
        """Deliver what was held, in order, and forward again."""
        self._cancel("unstall")
        if self.stalled:
            self.stalled = False
            for relay in list(self._relays):
                relay.unstall()

    def refuse(self, seconds: Optional[float] = None) -> "Deferred[None]":
        """
        Stop listening, so that new connections are refused (``ECONNREFUSED``)
        while open ones go on; *seconds* ends it (:meth:`accept`). The
        Deferred fires once the port is closed.
        """
        if not self.refusing:
            self.refusing = True
            self.faults["refusals"] += 1
        self._after("accept", seconds, self.accept)
        return self._listener_lock.run(self._unlisten)

    def drop_new(self, seconds: Optional[float] = None) -> None:
        """
        Close each new connection as soon as it is accepted, without reaching
        the server: the client's request meets an end of stream. *seconds*
        ends it by itself (:meth:`accept`).
        """
        self.dropping = True
        self._after("accept", seconds, self.accept)

    def accept(self) -> "Deferred[None]":
        """
        End :meth:`refuse` and :meth:`drop_new`: listen again on the same
        port; the Deferred fires once it does.
        """
        self._cancel("accept")
        self.refusing = self.dropping = False
        return self._listener_lock.run(self._listen)

    def chaos(
        self,
        rng: random.Random,
        duration: float,
        gap: tuple[float, float] = (0.05, 0.3),
        length: tuple[float, float] = (0.1, 0.5),
        kinds: Sequence[str] = FAULT_KINDS,
    ) -> "Deferred[None]":
        """
        Inject faults one at a time for *duration* seconds (plus the last
        one's length): wait ``rng.uniform(*gap)``, then apply the next kind
        from a shuffled bag of *kinds* (each comes once a round). ``cut`` is
        :meth:`cut_all`; ``stall`` lasts ``rng.uniform(*length)`` seconds;
        ``refuse`` and ``drop`` last as long and first cut the open
        connections, as a server restart would. Choices and times come from
        *rng* alone, so a seed replays the schedule; see :attr:`history`.
        The Deferred fires when the time is up or :meth:`stop` is called,
        the proxy unstalled and accepting.
        """
        if not kinds or set(kinds) - set(FAULT_KINDS):
            raise ValueError(f"kinds must be some of {FAULT_KINDS}, not {kinds!r}")
        if self._chaos is not None:
            raise RuntimeError("chaos is already running")

        async def run() -> None:
            start, bag = self.reactor.seconds(), list[str]()
            try:
                while True:
                    await self._sleep(rng.uniform(*gap))
                    now = self.reactor.seconds() - start
                    if now >= duration:
                        return
                    if not bag:
                        bag = list(kinds)
                        rng.shuffle(bag)
                    kind, seconds = bag.pop(), rng.uniform(*length)
                    self.history.append((round(now, 3), kind, 0.0 if kind == "cut" else seconds))
                    self.log.info("chaos: {kind} for {seconds:.3f}s", kind=kind, seconds=seconds)
                    if kind != "stall":
                        self.cut_all()
                    if kind == "cut":
                        continue
                    if kind == "stall":
                        self.stall()
                    elif kind == "refuse":
                        await self.refuse()
                    else:
                        self.drop_new()
                    await self._sleep(seconds)
                    self.unstall()
                    await self.accept()
            except CancelledError:
                pass
            finally:
                self._chaos = None
                if not self._stopped:
                    self.unstall()
                    await self.accept()

        self._chaos = Deferred.fromCoroutine(run())
        return self._chaos

    # -- internals ------------------------------------------------------------

    def _sleep(self, seconds: float) -> "Deferred[None]":
        d: Deferred[None] = Deferred(lambda _: self._cancel("chaos"))
        self._after("chaos", seconds, lambda: d.callback(None))
        return d

    def _after(self, name: str, seconds: Optional[float], f: Callable[[], object]) -> None:
        # Replaces the call of the same name; None only cancels it.
        self._cancel(name)
        if seconds is not None:
            def fire() -> None:
                del self._timers[name]
                f()

            self._timers[name] = self.reactor.callLater(seconds, fire)

    def _cancel(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _listen(self) -> None:
        if self._listener is None and not self.refusing and not self._stopped:
            # Twisted sets SO_REUSEADDR, so the same port binds again at once.
            self._listener = self.reactor.listenTCP(self.port, self, interface="127.0.0.1")
            self.port = self._listener.getHost().port

    async def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stopListening()

    def buildProtocol(self, addr: Any) -> Protocol:
        self.connections += 1
        drop = self.dropping or self._stopped
        self.faults["drops"] += drop
        relay = _Relay(self, self._budget(), drop)
        self._relays.add(relay)
        return _End(relay, upstream=False)


