"""A tiny raw-socket HTTP/1.1 exchange that keeps what a normal client hides.

The conformance test compares framing with the recordings, so every HTTP
chunk is kept with its arrival time, and the time the header block arrived is
kept too (CouchDB holds _db_updates headers back until the first body byte).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


@dataclass
class Exchange:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    framing: str = ""  # "chunked" or "content-length"
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # (ms, data)
    body: bytes = b""
    complete: bool = False
    header_ms: float = 0.0
    error: str = ""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class _Reader:
    def __init__(self, sock: socket.socket, t0: float, deadline: float) -> None:
        self.sock = sock
        self.t0 = t0
        self.deadline = deadline
        self.buf = b""

    def now_ms(self) -> float:
        return (time.monotonic() - self.t0) * 1000.0

    def fill(self) -> bool:
        left = self.deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        if not data:
            return False
        self.buf += data
        return True

    def until(self, marker: bytes) -> bytes | None:
        while marker not in self.buf:
            if not self.fill():
                return None
        head, self.buf = self.buf.split(marker, 1)
        return head

    def exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self.fill():
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def exchange(host: str, port: int, raw_request: bytes, *, read_for: float | None = None,
             limit: float = 20.0) -> Exchange:
    """Send ``raw_request`` and read the response.

    ``read_for`` (seconds) stops reading an endless feed after that long, as
    the recordings' client did; otherwise reading stops at the end of the
    response or after ``limit`` seconds.
    """
    result = Exchange()
    sock = socket.create_connection((host, port), timeout=limit)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = time.monotonic()
    deadline = t0 + (read_for if read_for is not None else limit)
    reader = _Reader(sock, t0, deadline)
    try:
        sock.sendall(raw_request)
        _read_response(reader, result)
    finally:
        sock.close()
    return result


def _read_response(reader: _Reader, result: Exchange) -> None:
    head = reader.until(b"\r\n\r\n")
    if head is None:
        result.error = "no complete header block"
        return
    result.header_ms = reader.now_ms()
    lines = head.decode("latin-1").split("\r\n")
    result.status = int(lines[0].split(" ", 2)[1])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        result.headers.append((name.strip(), value.strip()))
    if (result.header("Transfer-Encoding") or "").lower() == "chunked":
        result.framing = "chunked"
        _read_chunks(reader, result)
    else:
        result.framing = "content-length"
        length = int(result.header("Content-Length") or 0)
        body = reader.exactly(length)
        if body is not None:
            result.body = body
            result.chunks.append((reader.now_ms(), body))
            result.complete = True


def _read_chunks(reader: _Reader, result: Exchange) -> None:
    parts = []
    while True:
        size_line = reader.until(b"\r\n")
        if size_line is None:
            break
        size = int(size_line.split(b";")[0], 16)
        data = reader.exactly(size + 2)
        if data is None:
            break
        result.chunks.append((reader.now_ms(), data[:-2]))
        if size == 0:
            result.complete = True
            break
        parts.append(data[:-2])
    result.body = b"".join(parts)
