"""
The chunked transfer coding, decoded a whole socket read at a time, for
:mod:`txchanges.http._http11` (see :mod:`txchanges.http._framing` for when
a body is chunked).

A CouchDB continuous feed sends every row as its own chunk, so one socket
read holds hundreds of chunks; :class:`ChunkedDecoder` takes a run of plain
chunks with a handful of calls that each go over the whole read in C, and
falls back to a chunk-by-chunk state machine for everything else (chunk
extensions, a CRLF inside chunk data, the last chunk and trailers, a chunk
cut by the end of a read).
"""

from __future__ import annotations

import operator
import re
from itertools import repeat
from typing import Union

from txchanges.http._wire import MAX_HEAD, BadResponse

__all__ = ["ChunkedDecoder", "MAX_LINE"]

#: The longest chunk-size line accepted (the trailer section may be as long
#: as a head, :data:`~txchanges.http._wire.MAX_HEAD`): more means a broken
#: or hostile server.
MAX_LINE = 4096

_HEXDIGITS = b"0123456789abcdefABCDEF"
# Size lines without extensions, each ending in CRLF.
_SIZE_LINES = re.compile(rb"(?:[0-9a-fA-F]{1,16}\r\n)*\Z")
_minus = operator.sub
# Chunks at least this long are taken one step per chunk rather than by one
# search for CRLF over the whole read: see _large_chunks.
_LARGE_CHUNK = 256


def _chunk_size(line: bytes) -> int:
    """
    The size in a chunk-size line, extensions (``;name=value``) ignored.

    :raises BadResponse: when it is not a hexadecimal number.
    """
    size = line.split(b";", 1)[0].rstrip(b" \t")
    if not size or len(size) > 16 or size.translate(None, _HEXDIGITS):
        raise BadResponse(f"bad chunk size line {line[:40]!r}")
    return int(size, 16)


_SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)


class ChunkedDecoder:
    """
    Decode a chunked body, a whole read at a time.

    :ivar done: Whether the last chunk and the trailers have arrived;
        whatever followed them is ignored.
    """

    def __init__(self) -> None:
        self.done = False
        self._state = _SIZE
        self._remaining = 0
        self._trailers = 0
        # An unfinished size line, CRLF or trailer field.
        self._buffer = b""

    def feed(self, data: bytes) -> list[Union[bytes, list[bytes]]]:
        """
        Take the next bytes of the body.

        :return: The body data they complete or continue, in order: bytes,
            or for a run of chunks that each held exactly one line, a list
            of those lines without their ``\\n`` (the body protocol then
            need not split them again).
        :raises BadResponse: for broken framing, with what came before it
            in the same read as its ``decoded``.
        """
        out: list[Union[bytes, list[bytes]]] = []
        try:
            return self._feed(data, out)
        except BadResponse as e:
            e.decoded = out
            raise

    def _feed(self, data: bytes, out: list[Union[bytes, list[bytes]]]) -> list[Union[bytes, list[bytes]]]:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        pos = 0
        end = len(data)
        tried = False
        while pos < end:
            state = self._state
            if state == _SIZE:
                if not tried:
                    # Once per read, so that a read the fast path cannot
                    # take costs linear time in the slow one.
                    tried = True
                    pos = self._fast(data, pos, out)
                    if pos == end:
                        break
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self._keep(data, pos, MAX_LINE, "chunk size line")
                    break
                size = _chunk_size(data[pos:eol])
                pos = eol + 2
                if size:
                    self._remaining = size
                    self._state = _DATA
                else:
                    self._state = _TRAILER
            elif state == _DATA:
                take = min(self._remaining, end - pos)
                out.append(data[pos:pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _CRLF
            elif state == _CRLF:
                if end - pos < 2:
                    if data[pos:] != b"\r":
                        raise BadResponse("chunk data not followed by CRLF")
                    self._buffer = b"\r"
                    break
                if data[pos:pos + 2] != b"\r\n":
                    raise BadResponse("chunk data not followed by CRLF")
                pos += 2
                self._state = _SIZE
            elif state == _TRAILER:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self._keep(data, pos, MAX_HEAD - self._trailers, "trailer section")
                    break
                if eol == pos:
                    self._state = _DONE
                    self.done = True
                    break
                # A trailer field: nothing a feed needs, but bounded.
                self._trailers += eol + 2 - pos
                if self._trailers > MAX_HEAD:
                    raise BadResponse(f"trailer section longer than {MAX_HEAD} bytes")
                pos = eol + 2
            else:
                break
        return out

    def _keep(self, data: bytes, pos: int, limit: int, what: str) -> None:
        rest = data[pos:]
        if len(rest) > limit:
            raise BadResponse(f"{what} longer than {limit} bytes")
        self._buffer = rest

    def _fast(self, data: bytes, pos: int, out: list[Union[bytes, list[bytes]]]) -> int:
        """
        Take the run of complete, plain chunks at *pos* with a few calls
        that each go over the whole run in C, instead of a loop per chunk.

        :return: Where the run ends; the slow path takes what follows.
        """
        # Look at the first chunk to choose: one line per chunk (a live
        # feed), or chunks cut anywhere (a backlog, or a normal feed).
        eol = data.find(b"\r\n", pos, pos + 18)
        if eol < 0:
            return pos
        try:
            size = int(data[pos:eol], 16)
        except ValueError:
            return pos
        if size and data.find(b"\n", eol + 2, eol + 2 + size) == eol + 1 + size:
            pos = _one_line_chunks(data, pos, out)
        elif size >= _LARGE_CHUNK or data.find(b"\r\n", eol + 2, eol + 2 + size) >= 0:
            # Large chunks, or CRLF inside chunk data as between the rows of
            # a normal feed (",\r\n"): splitting on CRLF cannot find those.
            return _large_chunks(data, pos, out)
        return _plain_chunks(data, pos, out)


def _one_line_chunks(data: bytes, pos: int, out: list[Union[bytes, list[bytes]]]) -> int:
    """
    Take a run of chunks that each hold exactly one line.

    Splitting on LF gives ``size CR, line, CR`` for each of them (the
    chunk ``b5 CR LF {...} LF CR LF``), so the lines come out of the split
    ready for the body protocol: no join and no second split. Each size line
    must be bare hex digits, each size must be the line's length plus one,
    and each chunk must end in CRLF.

    :return: Where the run ends.
    """
    view = data[pos:] if pos else data
    pieces = view.split(b"\n")
    count = (len(pieces) - 1) // 3
    if count < 2:
        return pos
    sizes = pieces[0:3 * count:3]
    lines = pieces[1:3 * count:3]
    ends = pieces[2:3 * count:3]
    lengths = list(map(len, lines))
    if (
        ends.count(b"\r") != count
        or not _SIZE_LINES.match(b"\n".join(sizes) + b"\n")
        or list(map(_minus, map(int, sizes, repeat(16)), lengths)).count(1) != count
    ):
        count = _one_line_prefix(sizes, lines, ends)
        if count < 2:
            return pos
        del sizes[count:], lines[count:], lengths[count:]
    out.append(lines)
    return pos + sum(map(len, sizes)) + sum(lengths) + 4 * count


def _one_line_prefix(sizes: list[bytes], lines: list[bytes], ends: list[bytes]) -> int:
    """
    How many leading chunks hold exactly one line; see
    :func:`_one_line_chunks`.
    """
    for i, (size, line, end) in enumerate(zip(sizes, lines, ends)):
        if end != b"\r" or not _SIZE_LINES.match(size + b"\n") or int(size, 16) != len(line) + 1:
            return i
    return len(sizes)


def _plain_chunks(data: bytes, pos: int, out: list[Union[bytes, list[bytes]]]) -> int:
    """
    Take a run of chunks whose data holds no CRLF.

    Splitting on CRLF gives ``size, data, size, data, ...`` for them; each
    size line must be bare hex digits and each size the length of the data
    that follows it.

    :return: Where the run ends.
    """
    view = data[pos:] if pos else data
    pieces = view.split(b"\r\n")
    pairs = (len(pieces) - 1) >> 1
    if pairs < 2:
        return pos
    sizes = pieces[0:2 * pairs:2]
    if not _SIZE_LINES.match(b"\r\n".join(sizes) + b"\r\n"):
        return pos
    numbers = list(map(int, sizes, repeat(16)))
    chunks = pieces[1:2 * pairs:2]
    lengths = list(map(len, chunks))
    if numbers != lengths or 0 in numbers:
        pairs = _agreeing(numbers, lengths)
        if not pairs:
            return pos
        del chunks[pairs:], sizes[pairs:], lengths[pairs:]
    out.extend(chunks)
    return pos + sum(map(len, sizes)) + sum(lengths) + 4 * pairs


def _large_chunks(data: bytes, pos: int, out: list[Union[bytes, list[bytes]]]) -> int:
    """
    Take a run of complete, plain chunks of any size by jumping from one
    size line to the next.

    :func:`_plain_chunks` looks for CRLF in every byte of the read, which
    for chunks of a kilobyte or more (a backlog, or a feed after a proxy or
    a TLS layer) costs more than a step of Python per chunk; here only the
    size lines are searched. Each size line must be bare hex digits (checked
    once for the whole run) and each chunk must end in CRLF.

    :return: Where the run ends.
    """
    find = data.find
    end = len(data)
    starts: list[int] = []
    sizes: list[bytes] = []
    chunks: list[bytes] = []
    while True:
        eol = find(b"\r\n", pos, pos + 18)
        if eol < 0:
            break
        line = data[pos:eol]
        try:
            size = int(line, 16)
        except ValueError:
            break
        start = eol + 2
        stop = start + size
        if not size or stop + 2 > end or not data.startswith(b"\r\n", stop):
            break
        starts.append(pos)
        sizes.append(line)
        chunks.append(data[start:stop])
        pos = stop + 2
    if not chunks:
        return pos
    # int() also takes signs, blanks, underscores and a 0x prefix; each size
    # line is not empty (int() refused that) and at most 16 long (the find).
    if b"".join(sizes).translate(None, _HEXDIGITS):
        bad = next(i for i, line in enumerate(sizes) if line.translate(None, _HEXDIGITS))
        del chunks[bad:]
        pos = starts[bad]
    out.extend(chunks)
    return pos


def _agreeing(numbers: list[int], lengths: list[int]) -> int:
    """
    How many leading chunks are plain: non-empty, with a size equal to the
    length of the data that follows it.
    """
    for i, (number, length) in enumerate(zip(numbers, lengths)):
        if number != length or not number:
            return i
    return len(numbers)
