"""
Load the recorded CouchDB exchanges in ``fixtures/couchdb-3``.

Each recording is a ``NAME.http`` file (the response bytes exactly as read
from the socket, chunked framing included) and a ``NAME.json`` file (the
request, chunk arrival times, how the capture ended). :func:`load` parses
both into a :class:`Recording`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["FIXTURES", "Recording", "load", "names", "parse_http", "CONTINUOUS"]

#: The directory of the recordings.
FIXTURES = Path(__file__).parent / "fixtures" / "couchdb-3"


@dataclass(frozen=True)
class Recording:
    """
    One recorded response, parsed.

    :ivar name: The recording's name, e.g. ``"continuous-heartbeat-live"``.
    :ivar raw: The whole ``.http`` file.
    :ivar head: The status line and headers, up to and including the blank
        line.
    :ivar status: The status code.
    :ivar headers: The headers in order, as ``(name, value)`` pairs.
    :ivar frames: The body as it was framed on the wire: for a chunked body
        one item per HTTP chunk (size line, data and CRLF; the terminating
        ``0`` chunk is its own item), otherwise the whole body as one item.
        ``head + b"".join(frames) == raw``.
    :ivar chunks: The payload of each data chunk (the terminator excluded).
    :ivar body: The de-chunked body.
    :ivar complete: Whether the framing ends the response; ``False`` for a
        never-ending feed that the capture stopped reading.
    :ivar meta: The ``.json`` metadata.
    """

    name: str
    raw: bytes
    head: bytes
    status: int
    headers: list[tuple[str, str]]
    frames: list[bytes]
    chunks: list[bytes]
    body: bytes
    complete: bool
    meta: dict[str, Any] = field(repr=False)

    @property
    def method(self) -> str:
        """
        The recorded request's method.
        """
        return str(self.meta["request"]["method"])

    @property
    def path(self) -> str:
        """
        The recorded request's target (path and query).
        """
        return str(self.meta["request"]["path"])

    @property
    def head_time_ms(self) -> float:
        """
        When the first response byte (the head) arrived, in ms after the
        request was sent.
        """
        return float(self.meta["recv_timeline"][0]["t_ms"])

    @property
    def frame_times_ms(self) -> list[float]:
        """
        When each item of :attr:`frames` had arrived, in ms after the request
        was sent; a body that was not chunked arrived with the head.
        """
        chunks = self.meta["response"]["chunks"]
        if not chunks:
            return [self.head_time_ms] * len(self.frames)
        return [float(c["t_ms"]) for c in chunks]


def parse_http(raw: bytes) -> tuple[bytes, int, list[tuple[str, str]], list[bytes], list[bytes], bool]:
    """
    Take a recorded HTTP/1.1 response apart.

    :param raw: The response bytes.
    :return: ``(head, status, headers, frames, chunks, complete)`` as
        described on :class:`Recording`.
    :raises ValueError: If the bytes are not a response, or a chunk is cut
        in the middle.
    """
    end = raw.index(b"\r\n\r\n") + 4
    head = raw[:end]
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
    lowered = {n.lower(): v for n, v in headers}
    rest = raw[end:]
    if lowered.get("transfer-encoding", "").lower() != "chunked":
        length = int(lowered.get("content-length", len(rest)))
        return head, status, headers, [rest], [rest], len(rest) == length
    frames: list[bytes] = []
    chunks: list[bytes] = []
    at = 0
    while at < len(rest):
        line_end = rest.index(b"\r\n", at)
        size = int(rest[at:line_end].split(b";")[0], 16)
        data_end = line_end + 2 + size
        if rest[data_end : data_end + 2] != b"\r\n":
            raise ValueError(f"chunk at byte {end + at} is cut short")
        frames.append(rest[at : data_end + 2])
        if size == 0:
            # The terminator has no data; its CRLF ends the (empty) trailer.
            return head, status, headers, frames, chunks, True
        chunks.append(rest[line_end + 2 : data_end])
        at = data_end + 2
    return head, status, headers, frames, chunks, False


@lru_cache(maxsize=None)
def load(name: str, directory: Path = FIXTURES) -> Recording:
    """
    Load one recording.

    :param name: The recording's name, without extension.
    :param directory: Where the recordings are.
    """
    raw = (directory / f"{name}.http").read_bytes()
    meta = json.loads((directory / f"{name}.json").read_text("utf-8"))
    head, status, headers, frames, chunks, complete = parse_http(raw)
    return Recording(
        name=name,
        raw=raw,
        head=head,
        status=status,
        headers=headers,
        frames=frames,
        chunks=chunks,
        body=b"".join(chunks),
        complete=complete,
        meta=meta,
    )


def names(pattern: str = "*", directory: Path = FIXTURES) -> list[str]:
    """
    The names of the recordings matching a glob pattern, sorted.

    :param pattern: A glob such as ``"continuous-*"``.
    :param directory: Where the recordings are.
    """
    return sorted(p.stem for p in directory.glob(f"{pattern}.http"))


#: Every recording of a continuous feed (``_changes`` and ``_db_updates``).
CONTINUOUS = names("continuous-*") + names("db-updates-continuous-*")
