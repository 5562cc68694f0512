"""The chunked decoder's way for chunks of 256 bytes or more (a backlog, a proxy, TLS records): one step per chunk."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txchanges.http._chunked import ChunkedDecoder
from txchanges.http._wire import BadResponse

from .test_http11 import chunked, decode, line, split_at

BODY = b"".join(line(n, "x" * (n % 7)) for n in range(1, 80))


def in_chunks(body: bytes, size: int) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize(
    "size_line",
    [b"0x5d0", b"+5d0", b" 5d0", b"5_d0", b"-5d0"],
)
def test_a_bad_size_line_after_good_large_chunks_is_an_error(size_line: bytes) -> None:
    """Among chunks of 1,488 bytes, a size line int() would read but HTTP does not allow fails the body."""
    good = chunked(*in_chunks(BODY, 1488))[: -len(b"0\r\n\r\n")]
    bad = size_line + b"\r\n" + b"y" * 0x5D0 + b"\r\n"
    with pytest.raises(BadResponse):
        decode([good + bad + chunked(b"z" * 300)])


def test_large_chunks_before_a_bad_one_are_handed_over() -> None:
    """The good chunks before a bad size line are decoded, and given with the error."""
    good = chunked(*in_chunks(BODY, 1000))[: -len(b"0\r\n\r\n")]
    with pytest.raises(BadResponse) as caught:
        ChunkedDecoder().feed(good + b"0x3e8\r\n" + b"y" * 1000 + b"\r\n")
    assert b"".join(caught.value.decoded) == BODY  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(size=st.integers(256, 3000), data=st.data())
def test_large_chunks_in_any_reads(size: int, data: Any) -> None:
    """Whatever the chunk size from 256 bytes and however the reads cut the wire, the body is the same."""
    wire = chunked(*in_chunks(BODY, size))
    reads = split_at(wire, data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=8)))
    got, decoder = decode(reads)
    assert got == BODY and decoder.done
