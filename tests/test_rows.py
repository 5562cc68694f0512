"""
Tests for the pure line parser, :mod:`txchanges.feed._rows`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from .fixtures_util import load
from txchanges.feed._rows import LastSeq, iter_rows, parse_line
from txchanges.errors import ErrorRow, MalformedRow, snippet


def fixture_line(name: str, match: Callable[[dict[str, object]], bool]) -> bytes:
    """
    The first non-empty body line of a recording whose JSON satisfies *match*.
    """
    for line in load(name).body.split(b"\n"):
        if line and match(json.loads(line)):
            return line
    raise LookupError(f"no such line in {name}")


NON_ASCII = fixture_line("continuous-since-0-timeout", lambda r: r.get("id") == "café-ümläut")
PLAIN = fixture_line("continuous-since-0-timeout", lambda r: r.get("id") == "banana")
DELETED = fixture_line("continuous-since-0-limit-2", lambda r: r.get("deleted") is True)
SEQ_NULL = fixture_line("continuous-seq-interval-live", lambda r: "id" in r and r["seq"] is None)
WITH_DOC = fixture_line("continuous-include-docs-filter-live", lambda r: "doc" in r)
DB_UPDATE = fixture_line("db-updates-continuous-live", lambda r: r.get("type") == "created")
LAST_SEQ = fixture_line("continuous-since-0-timeout", lambda r: "last_seq" in r)
LAST_SEQ_NO_PENDING = fixture_line("db-updates-continuous-timeout", lambda r: "last_seq" in r)

CHANGE_LINES = [
    pytest.param(PLAIN, id="plain"),
    pytest.param(NON_ASCII, id="non-ascii-id"),
    pytest.param(DELETED, id="deleted"),
    pytest.param(SEQ_NULL, id="seq-null"),
    pytest.param(WITH_DOC, id="include-docs"),
    pytest.param(b'{"seq":7,"id":"a","changes":[{"rev":"1-x"}]}', id="integer-seq-1.x"),
]


def both_types(line: bytes) -> list[str | bytes]:
    return [line, line.decode("utf-8")]


@pytest.mark.parametrize("line", CHANGE_LINES)
@pytest.mark.parametrize("as_text", [False, True])
def test_change_rows(line: bytes, as_text: bool) -> None:
    """A change line, as bytes or text, parses into the row exactly as sent, a dict."""
    change = parse_line(line.decode("utf-8") if as_text else line)
    assert type(change) is dict
    assert change == json.loads(line)


def test_non_ascii_id_is_decoded_as_utf8() -> None:
    """A raw UTF-8 document id comes out as the right Unicode text."""
    change = parse_line(NON_ASCII)
    assert isinstance(change, dict)
    assert change["id"] == "café-ümläut"


def test_seq_null_row_keeps_null_seq() -> None:
    """A seq_interval row with "seq": null is a change whose seq is None."""
    change = parse_line(SEQ_NULL)
    assert isinstance(change, dict)
    assert "seq" in change and change["seq"] is None


def test_deleted_and_doc() -> None:
    """A deleted row keeps "deleted": true and an include_docs row carries its doc."""
    deleted, with_doc = parse_line(DELETED), parse_line(WITH_DOC)
    assert isinstance(deleted, dict) and isinstance(with_doc, dict)
    assert deleted["deleted"] is True and deleted.get("doc") is None
    assert with_doc.get("deleted", False) is False
    assert with_doc["doc"]["name"] == "Kiwi"


@pytest.mark.parametrize("line", both_types(DB_UPDATE))
def test_db_updates_row(line: str | bytes) -> None:
    """A _db_updates row, which has no id, parses into the row as sent, with its name, type and seq."""
    update = parse_line(line)
    assert type(update) is dict
    assert (update["db_name"], update["type"]) == ("fixture-live-db", "created")
    assert update == json.loads(DB_UPDATE)


@pytest.mark.parametrize(
    "line, pending",
    [
        pytest.param(LAST_SEQ, 0, id="changes"),
        pytest.param(LAST_SEQ_NO_PENDING, None, id="db-updates-no-pending"),
        pytest.param(b'{"last_seq":4,"pending":14}', 14, id="integer"),
    ],
)
def test_last_seq_rows(line: bytes, pending: int | None) -> None:
    """The end row parses into LastSeq with its opaque last_seq and optional pending."""
    end = parse_line(line)
    assert end == LastSeq(json.loads(line)["last_seq"], pending, json.loads(line))


@pytest.mark.parametrize("line", [b"", "", b"\r", "\r", " ", b"\t \r"])
def test_heartbeats(line: str | bytes) -> None:
    """An empty (or whitespace-only) line, with or without CR, is a heartbeat, None."""
    assert parse_line(line) is None


@pytest.mark.parametrize("line", [PLAIN, NON_ASCII, DB_UPDATE, LAST_SEQ])
def test_trailing_cr_is_stripped(line: bytes) -> None:
    """A line ending in CRLF parses exactly like the same line ending in LF."""
    assert parse_line(line + b"\r") == parse_line(line)
    assert parse_line(line.decode() + "\r") == parse_line(line)


def test_surrounding_whitespace_is_allowed() -> None:
    """Whitespace around the JSON object does not make a line malformed."""
    assert parse_line(b"  " + PLAIN + b" \t") == parse_line(PLAIN)


@pytest.mark.parametrize(
    "line, error, reason",
    [
        (b'{"error":"case_clause","reason":"{bad_thing}"}', "case_clause", "{bad_thing}"),
        (b'{"error":"timeout"}', "timeout", ""),
        (b'{"error":{"nested":1},"reason":["a"]}', '{"nested": 1}', '["a"]'),
    ],
)
def test_error_rows(line: bytes, error: str, reason: str) -> None:
    """An {"error": ...} row raises ErrorRow carrying error, reason (as text) and the whole row."""
    with pytest.raises(ErrorRow) as caught:
        parse_line(line)
    assert (caught.value.error, caught.value.reason) == (error, reason)
    assert caught.value.row == json.loads(line)
    assert caught.value.last_seq is None


@pytest.mark.parametrize(
    "line, detail",
    [
        pytest.param(b"not json", "not JSON", id="not-json"),
        pytest.param(b"[1, 2]", "list", id="array"),
        pytest.param(b"42", "int", id="number"),
        pytest.param(b'"seq"', "str", id="string"),
        pytest.param(b"null", "NoneType", id="null"),
        pytest.param(PLAIN[:40], "not JSON", id="truncated"),
        pytest.param(PLAIN + b" trailing", "not JSON", id="trailing-garbage"),
        pytest.param(b"{}{}", "not JSON", id="two-objects"),
        pytest.param(b'{"foo":1}', "unknown row shape", id="unknown-shape"),
        pytest.param(b'{"id":"a","changes":[]}', "unknown row shape", id="change-without-seq"),
        pytest.param(b'{"seq":"1","id":"caf\xe9"}', "not UTF-8", id="latin-1"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="deep-nesting"),
    ],
)
def test_malformed_lines(line: bytes, detail: str) -> None:
    """A line that is not a JSON object of a known shape raises MalformedRow saying why."""
    with pytest.raises(MalformedRow) as caught:
        parse_line(line)
    assert detail in caught.value.detail
    assert caught.value.line == snippet(line)


def test_malformed_line_is_kept_as_a_snippet() -> None:
    """MalformedRow keeps a truncated copy of a long offending line, not all of it."""
    line = b"x" * 10_000
    with pytest.raises(MalformedRow) as caught:
        parse_line(line)
    assert caught.value.line == "x" * 200 + "..."


def test_iter_rows_parses_a_batch_in_order() -> None:
    """iter_rows turns a buffer of complete lines into rows in order, heartbeats as None."""
    batch = b"\n" + PLAIN + b"\n" + SEQ_NULL + b"\r\n\n" + DB_UPDATE + b"\n" + LAST_SEQ + b"\n"
    rows = list(iter_rows(batch))
    assert rows == [
        None,
        parse_line(PLAIN),
        parse_line(SEQ_NULL),
        None,
        parse_line(DB_UPDATE),
        parse_line(LAST_SEQ),
    ]


def test_iter_rows_raises_only_when_it_reaches_the_bad_line() -> None:
    """Rows before a bad line are produced before the error, and lines after it never are."""
    rows = iter_rows(PLAIN + b"\n" + b'{"error":"x","reason":"y"}\n' + NON_ASCII + b"\n")
    assert next(rows) == parse_line(PLAIN)
    with pytest.raises(ErrorRow):
        next(rows)
    assert list(rows) == []


def test_iter_rows_with_a_non_utf8_line() -> None:
    """One non-UTF-8 line in a batch still lets the rows before it through, then raises MalformedRow."""
    rows = iter_rows(NON_ASCII + b"\n" + b'{"seq":1,"id":"\xff","changes":[]}\n' + PLAIN + b"\n")
    assert next(rows) == parse_line(NON_ASCII)
    with pytest.raises(MalformedRow, match="not UTF-8"):
        next(rows)


def test_rows_compare_by_content() -> None:
    """Two parses of one line are equal, and rows of different kinds or content are not."""
    change, update = parse_line(PLAIN), parse_line(DB_UPDATE)
    assert change == parse_line(PLAIN)
    assert change != update
    assert change != parse_line(NON_ASCII)
