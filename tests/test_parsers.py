"""
The two line parsers behind iter_lines: the standard library's C scanner and,
when it is installed, orjson. Both give the same rows, errors and heartbeats.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from txchanges.feed import _rows
from txchanges.feed._rows import LastSeq, iter_lines, iter_rows, parse_line
from txchanges.errors import ErrorRow, MalformedRow

from .fixtures_util import load, names

PARSERS: list[Any] = [pytest.param(_rows._rows_json, id="json")]
if _rows._orjson_loads is not None:
    PARSERS.append(pytest.param(_rows._rows_orjson, id="orjson"))
else:  # pragma: no cover - the test extra installs orjson in CI
    PARSERS.append(pytest.param(None, id="orjson", marks=pytest.mark.skip("orjson is not installed")))


def recorded_lines() -> list[bytes]:
    """Every line of every recorded continuous and _db_updates feed."""
    lines: list[bytes] = []
    for name in names("continuous-*") + names("db-updates-continuous-*"):
        lines += load(name).body.split(b"\n")[:-1]
    return lines


def parse_all(parser: Callable[..., Iterator[Any]], lines: list[bytes]) -> list[Any]:
    """Every row, with an error in the place of the row that raised it."""
    out: list[Any] = []
    rows = parser(lines)
    while True:
        try:
            out.append(next(rows))
        except StopIteration:
            return out
        except (ErrorRow, MalformedRow) as e:
            out.append((type(e), str(e)))
            rows = parser(lines[len(out):])


@pytest.mark.parametrize("parser", PARSERS)
def test_recorded_lines_parse_as_parse_line_does(parser: Any) -> None:
    """Each recorded line gives exactly the row parse_line gives it."""
    lines = recorded_lines()
    assert parse_all(parser, lines) == [parse_line(line) for line in lines]


EDGES = [
    b"",
    b"   ",
    b"\r",
    b'{"seq":"1-a","id":"x","changes":[{"rev":"1-a"}]}\r',
    b'  {"seq":"1-a","id":"x","changes":[{"rev":"1-a"}]}  ',
    b'{"seq":2,"id":"caf\xc3\xa9","changes":[],"deleted":true,"doc":{"n":1.5,"l":[null,true]}}',
    b'{"seq":null,"id":"x","changes":[]}',
    b'{"db_name":"db","type":"created","seq":"3-x"}',
    b'{"last_seq":"9-x","pending":3}',
    b'{"last_seq":9}',
    b'{"seq":1,"id":"x","changes":[],"doc":{"v":NaN}}',  # only the standard library takes NaN
    b'{"seq":1,"id":"\\ud800","changes":[]}',  # a lone surrogate
    b"[" * 5000 + b"]" * 5000,
    b'{"error":"unknown_error","reason":"function_clause"}',
    b'{"seq":1}',
    b"[1,2]",
    b"not json",
    b'{"seq":1,"id":"\xff","changes":[]}',
    b'{"seq":1,"id":"x","changes":[]} trailing',
]


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("line", EDGES)
def test_edge_lines(parser: Any, line: bytes) -> None:
    """Heartbeats, blanks, CR endings, odd values and bad lines give what parse_line gives (or raises)."""
    try:
        expected: Any = parse_line(line)
    except (ErrorRow, MalformedRow) as e:
        expected = (type(e), str(e))
    assert parse_all(parser, [line]) == [expected]


@pytest.mark.parametrize("parser", PARSERS)
def test_rows_are_dicts(parser: Any) -> None:
    """Change and _db_updates rows come as their dicts, exactly as parsed; heartbeats as None, end rows as LastSeq."""
    lines = [EDGES[3][:-1], b"", EDGES[7], EDGES[8]]
    out = parse_all(parser, lines)
    assert out[0] == json.loads(EDGES[3]) and type(out[0]) is dict
    assert out[1] is None
    assert out[2] == json.loads(EDGES[7])
    assert isinstance(out[3], LastSeq)


@pytest.mark.parametrize("parser", PARSERS)
def test_errors_come_when_reached(parser: Any) -> None:
    """A bad line raises only when the iteration reaches it; the rows before it come first."""
    rows = parser([EDGES[3], b'{"error":"x","reason":"y"}', EDGES[3]])
    assert next(rows) == json.loads(EDGES[3])
    with pytest.raises(ErrorRow):
        next(rows)


def test_iter_rows_uses_the_installed_parser() -> None:
    """iter_rows and iter_lines use orjson when it is installed, and PARSER says so."""
    assert _rows.PARSER == ("json" if _rows._orjson_loads is None else "orjson")
    rows = list(iter_rows(EDGES[3].rstrip(b"\r") + b"\n\n" + EDGES[7] + b"\n"))
    assert rows == [parse_line(EDGES[3]), None, json.loads(EDGES[7])]
    assert list(iter_lines([EDGES[8]])) == [parse_line(EDGES[8])]


@pytest.mark.skipif(_rows._orjson_loads is None, reason="orjson is not installed")
def test_big_integers_are_the_one_difference() -> None:
    """orjson reads an integer beyond 64 bits as a float; the standard library keeps it exact."""
    line = b'{"seq":1,"id":"x","changes":[],"doc":{"n":123456789012345678901234567890}}'
    by_json: Any = next(_rows._rows_json([line]))
    by_orjson: Any = next(_rows._rows_orjson([line]))
    assert by_json["doc"]["n"] == 123456789012345678901234567890
    assert by_orjson["doc"]["n"] == pytest.approx(1.2345678901234568e29)


def test_without_orjson_the_standard_library_parses() -> None:
    """In a process where orjson cannot be imported, PARSER is json and a feed still parses."""
    code = (
        "import sys; sys.modules['orjson'] = None\n"
        "from txchanges.feed import _rows\n"
        "rows = list(_rows.iter_rows(b'{\"seq\":\"1-a\",\"id\":\"x\",\"changes\":[]}\\n\\n'))\n"
        "print(_rows.PARSER, rows[0]['id'], rows[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["json", "x", "None"]
