"""
How many changes lie ahead of a follower: asked of the server now and then,
since a continuous feed says so only in the row that ends it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.task import LoopingCall

from txchanges.feed._params import encode_since
from txchanges._reactor import Clock
from txchanges.http.client import Database

__all__ = ["PendingProbe"]


class PendingProbe:
    """
    Asks ``GET /db/_changes?since=<resume point>&limit=0``, one request at a
    time, and reports the answer's ``pending``, less the changes handled
    while the answer was on its way.

    CouchDB 3 answers ``limit=0`` with no rows, ``last_seq`` where it
    started, and the whole count in ``pending`` (as reported against 3.5.1
    in apache/couchdb issue 6088). The probe never carries the follower's
    filter: ``pending`` is the number
    of the database's changes after the resume point, matching or not, so
    with a filter it bounds the work left from above. A probe that fails is
    skipped: the follower's own requests report connection trouble.

    :param db: The followed database.
    :param resume: Returns the resume point (``None``: the beginning).
    :param handled: Returns how many changes the follower has handled.
    :param report: Called with each answer's count.
    :param clock: Time, for :meth:`start`.
    """

    def __init__(
        self,
        db: Database,
        resume: Callable[[], Any],
        handled: Callable[[], int],
        report: Callable[[int], object],
        clock: Clock,
    ) -> None:
        self._db = db
        self._resume = resume
        self._handled = handled
        self._report = report
        self._asking = False
        self._loop = LoopingCall(self.ask)
        self._loop.clock = clock  # type: ignore[assignment]

    def start(self, interval: float) -> None:
        """
        Ask every *interval* seconds, the first time at once.
        """
        self._loop.start(interval, now=True)

    def stop(self) -> None:
        """
        Ask no more; an answer on its way is dropped.
        """
        if self._loop.running:
            self._loop.stop()
        self._report = lambda pending: None

    def ask(self) -> None:
        """
        Ask now, unless a question is on its way already.
        """
        if self._asking:
            return
        seq = self._resume()
        query = [("since", "0" if seq is None else encode_since(seq)), ("limit", "0")]
        asked = self._handled()
        self._asking = True

        def got(body: Any) -> None:
            pending: Optional[Any] = body.get("pending") if isinstance(body, dict) else None
            if isinstance(pending, int) and not isinstance(pending, bool):
                self._report(max(0, pending - (self._handled() - asked)))

        def done(_: object) -> None:
            self._asking = False

        d = self._db.server.request_json("GET", self._db.path("_changes"), query)
        d.addCallbacks(got, lambda failure: None)
        d.addBoth(done)
