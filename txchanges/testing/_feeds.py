"""
``_changes`` responses of :class:`txchanges.testing.FakeCouchDB`, written the
way CouchDB 3 writes them: the normal and longpoll JSON bodies, the
continuous and eventsource streams, heartbeats, timeouts, ``last_seq`` ends,
and the fault controls that break them on purpose.

A feed runs "rounds": each reads every change after its position, filters
it and writes rows. A live feed then waits; every database write, even one
its filter rejects, first writes ``\\n`` and then runs another round, and a
heartbeat tick writes ``\\n``. Without heartbeat the wait is an idle timeout
that ends the feed with its ``last_seq`` row.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from txchanges.testing._filters import ChangeFilter
from txchanges.testing._store import DocRecord, ErrorResponse, FakeDatabase, dumps
from txchanges._reactor import Clock

__all__ = ["ChangesParams", "Feed", "ResponseWriter", "parse_params"]

_FEEDS = {"normal": "normal", "longpoll": "longpoll", "continuous": "continuous",
          "live": "continuous", "eventsource": "eventsource"}
# CouchDB's default limit; seq_interval counts down from it.
_DEFAULT_LIMIT = 10**15
DEFAULT_TIMEOUT = 60000


@dataclass
class ChangesParams:
    """
    The ``_changes`` query parameters that shape the response.
    """

    feed: str = "normal"
    since: str = "0"
    limit: Optional[int] = None
    descending: bool = False
    include_docs: bool = False
    conflicts: bool = False
    style: str = "main_only"
    heartbeat: Optional[int] = None
    timeout: int = DEFAULT_TIMEOUT
    seq_interval: Optional[int] = None


def _badarg() -> ErrorResponse:
    # CouchDB's Erlang parser answers an unparsable integer with a 500 that
    # carries a stack-hash reference.
    ref = secrets.randbits(32)
    return ErrorResponse(500, "unknown_error", "badarg", {"X-Couch-Stack-Hash": str(ref)}, {"ref": ref})


def _integer(value: str) -> int:
    if not re.fullmatch(r"-?\d+", value):
        raise _badarg()
    return max(0, int(value))


def parse_params(query: Mapping[str, str]) -> ChangesParams:
    """
    Read the parameters as CouchDB 3 does, with its error statuses.

    :raises ErrorResponse: 400 for a bad ``feed``, ``heartbeat`` or
        ``seq_interval``; 500 ``badarg`` for a non-integer ``limit`` or
        ``timeout``.
    """
    p = ChangesParams()
    feed = query.get("feed", "normal")
    if feed not in _FEEDS:
        raise ErrorResponse(400, "bad_request",
                            "Supported `feed` types: normal, continuous, live, longpoll, eventsource")
    p.feed = _FEEDS[feed]
    p.since = query.get("since", "0")
    if "limit" in query:
        p.limit = _integer(query["limit"])
    if "timeout" in query:
        p.timeout = _integer(query["timeout"])
    p.descending = query.get("descending") == "true"
    p.include_docs = query.get("include_docs") == "true"
    p.conflicts = query.get("conflicts") == "true"
    style = query.get("style", "main_only")
    if style not in ("main_only", "all_docs"):
        raise _badarg()
    p.style = style
    heartbeat = query.get("heartbeat")
    if heartbeat == "true":
        p.heartbeat = DEFAULT_TIMEOUT
    elif heartbeat is not None:
        if not heartbeat.isdigit():
            raise ErrorResponse(400, "bad_request",
                                "The heartbeat value should be a positive integer (in milliseconds).")
        p.heartbeat = max(10, int(heartbeat))
    interval = query.get("seq_interval")
    if interval is not None:
        if not interval.isdigit() or int(interval) <= 0:
            raise ErrorResponse(400, "bad_request", "invalid_seq_interval")
        p.seq_interval = int(interval)
    return p


class ResponseWriter(Protocol):
    """
    Where a feed writes: one HTTP response.
    """

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class Feed:
    """
    One ``_changes`` response, from its first byte to its end.

    :param db: The database.
    :param params: The parsed parameters.
    :param change_filter: The filter, or ``None``.
    :param start: The position to start after.
    :param writer: The response.
    :param clock: Time for heartbeats and timeouts.
    :param on_done: Called once when the feed ends, however it ends.
    """

    def __init__(
        self,
        db: FakeDatabase,
        params: ChangesParams,
        change_filter: Optional[ChangeFilter],
        start: int,
        writer: ResponseWriter,
        clock: Clock,
        on_done: Callable[["Feed"], None],
    ) -> None:
        self.db = db
        self.params = params
        self._filter = change_filter
        self.position = start
        self._writer = writer
        self._clock = clock
        self._on_done = on_done
        self._end: Optional[int] = None
        self._limit_left = params.limit if params.limit is not None else _DEFAULT_LIMIT
        self.rows_sent = 0
        self._pending = 0
        self._waited = False
        self._timer: Any = None
        self.done = False
        self.stalled = False

    def start(self) -> None:
        """Write what is there; end the response or wait for more."""
        self.db.listen(self._on_update)
        if self.params.feed in ("normal", "longpoll"):
            self._write('{"results":[\n')
        self._write(self._round(first=True))
        if self.params.feed == "normal" or self._should_end():
            self.finish()
            return
        if not self._waited and self.rows_sent == 0:
            self._write("\n")
        self._waited = True
        self._arm()

    def _should_end(self) -> bool:
        return self._limit_left <= 0 or (self.params.feed == "longpoll" and self.rows_sent > 0)

    def _write(self, text: str) -> None:
        if text and not self.done:
            self._writer.write(text.encode("utf-8"))

    def _arm(self) -> None:
        self._disarm()
        if self.done or self.stalled:
            return
        interval = self.params.heartbeat if self.params.heartbeat is not None else self.params.timeout
        self._timer = self._clock.callLater(interval / 1000, self._tick)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if self.params.heartbeat is None:
            self.finish()
            return
        self.send_heartbeat()
        self._arm()

    def _on_update(self) -> None:
        if self.done or self.stalled:
            return
        if self.db.deleted:
            # A database deleted under a feed ends it like a timeout.
            self._pending = 0
            self.finish()
            return
        self.send_heartbeat()
        self._write(self._round(first=False))
        if self._should_end():
            self.finish()
        else:
            self._arm()

    # -- rows -------------------------------------------------------------------

    def _round(self, first: bool) -> str:
        p = self.params
        changes = self.db.changes_after(self.position)
        descending = first and p.descending
        if descending:
            changes.reverse()
        out: list[str] = []
        visited = 0
        stopped = False
        last_row: Optional[int] = None
        for record in changes:
            if self._limit_left <= 0:
                stopped = True
                break
            doc = record.as_doc()
            passed = self._filter is None or self._filter.test(doc)
            if passed or not (self._filter and self._filter.fast_path):
                visited += 1
            if passed:
                out.append(self._row(record, doc))
                last_row = record.seq
            if not descending:
                self.position = record.seq
        self._pending = len(changes) - visited
        if descending:
            self.position = max(self.position, self.db.update_seq)
            self._end = last_row if last_row is not None else self.position
        else:
            if not stopped:
                self.position = max(self.position, self.db.update_seq)
            self._end = self.position
        return "".join(out)

    def _row(self, record: DocRecord, doc: dict[str, Any]) -> str:
        p = self.params
        seq: Optional[str] = self.db.seq(record.seq)
        if p.seq_interval is not None:
            # A real seq only where the remaining limit is a multiple of the
            # interval, as fabric_view_changes does.
            limit = p.limit if p.limit is not None else _DEFAULT_LIMIT
            if (limit - self.rows_sent) % p.seq_interval:
                seq = None
        winner = record.winner()
        changes = [{"rev": winner.rev}]
        if p.style == "all_docs":
            changes += [{"rev": leaf.rev} for leaf in record.others()]
        row: dict[str, Any] = {"seq": seq, "id": record.id, "changes": changes}
        if winner.deleted:
            row["deleted"] = True
        if p.include_docs:
            full = record.as_doc(conflicts=p.conflicts)
            if winner.deleted:
                full = {"_id": record.id, "_rev": winner.rev, "_deleted": True}
            project = self._filter.project if self._filter is not None else None
            row["doc"] = project(full) if project is not None else full
        text = dumps(row)
        self.rows_sent += 1
        self._limit_left -= 1
        if p.feed == "continuous":
            return text + "\n"
        if p.feed == "eventsource":
            return f"data: {text}\nid: {dumps(seq)}\n\n"
        return (",\r\n" if self.rows_sent > 1 else "") + text

    # -- ends and faults ---------------------------------------------------------

    def finish(self) -> None:
        """End the response cleanly with its ``last_seq``."""
        if self.done:
            return
        last_seq = dumps(self.db.seq(self._end if self._end is not None else self.position))
        feed = self.params.feed
        if feed == "continuous":
            self._write(f'{{"last_seq":{last_seq},"pending":{self._pending}}}\n')
        elif feed != "eventsource":
            self._write(f'\n],\n"last_seq":{last_seq},"pending":{self._pending}}}\n')
        self._write("\n")
        self._close()
        self._writer.finish()

    def send_heartbeat(self) -> None:
        """Write a keep-alive newline now (unless stalled)."""
        if self.stalled:
            return
        self._write("event: heartbeat\ndata: \n\n" if self.params.feed == "eventsource" else "\n")

    def cut(self, partial: bytes = b"") -> None:
        """Drop the connection without an end, after *partial* bytes."""
        if self.done:
            return
        if partial:
            self._writer.write(partial)
        self._close()
        self._writer.abort()

    def error_row(self, error: str, reason: str, end: bool) -> bool:
        """
        Write an ``{"error", "reason"}`` row into a continuous feed and,
        with *end*, end the response after it as CouchDB does.

        :return: Whether this feed is continuous and took the row.
        """
        if self.done or self.params.feed != "continuous":
            return False
        self._write(dumps({"error": error, "reason": reason}) + "\n")
        if end:
            self._close()
            self._writer.finish()
        return True

    def stall(self) -> None:
        """Stop writing anything, heartbeats included, for good."""
        self.stalled = True
        self._disarm()

    def cancel(self) -> None:
        """The client went away: forget the feed."""
        if not self.done:
            self._close()

    def _close(self) -> None:
        self.done = True
        self._disarm()
        self.db.unlisten(self._on_update)
        self._on_done(self)
