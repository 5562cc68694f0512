"""
A body protocol that collects a whole (small) body: a normal or longpoll
feed's JSON document, or an error response's body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from txchanges.feed._body import BodyReader
from txchanges.http._httperrors import describe
from txchanges.errors import UncleanEnd

__all__ = ["BodyCollector"]


class BodyCollector(BodyReader):
    """
    Collect a whole (small) body, reporting every piece as activity: a
    normal or longpoll feed is one JSON document, and so is an error
    response.

    :ivar finished: Fires with the body's bytes when the response completes,
        with :class:`Stopped` after :meth:`stop`, and fails with
        :class:`~txchanges.errors.UncleanEnd` when the body is cut short.
    """

    def __init__(self, on_activity: Optional[Callable[[], object]] = None, *, until_close: bool = False) -> None:
        """
        :param on_activity: Called for every piece of body data received.
        :param until_close: Whether a body without framing, ended by the
            server closing the connection, is whole (``PotentialDataLoss``).
        """
        super().__init__(_no_row, on_activity)
        self._until_close = until_close
        self._parts: list[bytes] = []

    def _read(self, data: bytes) -> None:
        self._parts.append(data)

    def _body_ended(self, reason: Failure) -> None:
        if reason.check(ResponseDone) or (self._until_close and reason.check(PotentialDataLoss)):
            self._finish(b"".join(self._parts))
            return
        received = sum(map(len, self._parts))
        why = describe(reason.value) if reason.value is not None else "connection lost"
        self._fail(UncleanEnd(f"the response body was cut short after {received} bytes ({why})"))

    def _discard(self) -> None:
        self._parts = []


def _no_row(row: dict[str, Any]) -> None:
    """
    The callable of a body that has no rows (:meth:`BodyCollector._read`
    delivers none).
    """
