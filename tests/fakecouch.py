"""
An in-process stand-in for a CouchDB server, for unit tests through
:class:`treq.testing.StubTreq`: it records every request and answers each
with a scripted response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from treq.testing import StubTreq
from twisted.web.resource import Resource
from twisted.web.server import Request


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    uri: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    """One scripted response."""

    status: int = 200
    body: bytes | Any = b"{}"
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedCouch(Resource):
    """
    Answers requests from a queue of :class:`Answer` objects (the last one is
    repeated), recording each request in :attr:`seen`.
    """

    isLeaf = True

    def __init__(self, *answers: Answer) -> None:
        super().__init__()
        self.answers = list(answers) or [Answer()]
        self.seen: list[Seen] = []

    def render(self, request: Request) -> bytes:
        headers = {
            k.decode().lower(): v[0].decode()
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.seen.append(
            Seen(request.method.decode(), request.uri.decode(), headers, request.content.read())
        )
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        request.setResponseCode(answer.status)
        request.setHeader(b"content-type", answer.content_type.encode())
        for name, value in answer.headers.items():
            request.setHeader(name.encode(), value.encode())
        body = answer.body
        return body if isinstance(body, bytes) else json.dumps(body).encode()


def stub(*answers: Answer) -> tuple[StubTreq, ScriptedCouch]:
    """A StubTreq client talking to a fresh :class:`ScriptedCouch`."""
    resource = ScriptedCouch(*answers)
    return StubTreq(resource), resource


def result_of(d: Any, client: StubTreq) -> Any:
    """
    Run the stub client until *d* has a result and return it, or raise the
    failure's exception.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    client.flush()
    assert results, "the Deferred did not fire"
    outcome = results[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome
