"""
An in-memory HTTP client for :class:`txchanges.testing.FakeCouchDB` that
moves bytes by itself: :class:`treq.testing.StubTreq` needs ``flush()``
after every asynchronous write of the server, this client pumps whenever a
request is sent or the fake writes to an open response.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, cast

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, succeed
from twisted.web.iweb import IAgent, IBodyProducer
from twisted.web.resource import IResource
from zope.interface import implementer  # type: ignore[import-untyped]

__all__ = ["Pump", "make_client"]


class Pump:
    """
    Moves bytes between the in-memory clients and the fake until nothing
    moves. Re-entrant calls (a callback that writes while bytes are being
    delivered, a write inside a request's rendering) only ask the running
    pass for another round, so no connection is pumped inside itself.

    :ivar busy: Above 0 while a pass, a request or a rendering is running.
    """

    def __init__(self) -> None:
        self.busy = 0
        self._again = False
        self._agents: list[Any] = []

    def add(self, agent: Any) -> None:
        self._agents.append(agent)

    def kick(self) -> None:
        """Pump now, or in the pass already running."""
        if self.busy:
            self._again = True
            return
        self.busy += 1
        try:
            while True:
                self._again = False
                for agent in list(self._agents):
                    agent.flush()
                if not self._again:
                    break
        finally:
            self.busy -= 1

    def leave(self) -> None:
        """A rendering or request ended: pump if it left work behind."""
        self.busy -= 1
        if not self.busy and self._again:
            self.kick()


class _PumpingAgent(RequestTraversalAgent):
    def __init__(self, resource: IResource, pump: Pump) -> None:
        super().__init__(resource)
        self._pump = pump

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Optional[IBodyProducer] = None
    ) -> "Deferred[Any]":
        # RequestTraversalAgent delivers the request and any response written
        # while rendering it; what the rendering wrote to other connections
        # (a save waking a feed) is pumped right after.
        self._pump.busy += 1
        try:
            d: Deferred[Any] = super().request(method, uri, headers, bodyProducer)
        finally:
            self._pump.busy -= 1
        self._pump.kick()
        return d


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body written at once (no cooperator, no reactor)."""

    def __init__(self, body: bytes | str) -> None:
        self._body = body.encode("utf-8") if isinstance(body, str) else body
        self.length = len(self._body)

    def startProducing(self, consumer: Any) -> "Deferred[None]":
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def make_client(resource: IResource, pump: Pump) -> HTTPClient:
    """
    A treq client whose requests reach *resource* in memory.
    """
    agent = _PumpingAgent(resource, pump)
    pump.add(agent)
    producer = cast(Callable[[Any], IBodyProducer], _BytesProducer)
    return HTTPClient(cast(IAgent, agent), data_to_body_producer=producer)
