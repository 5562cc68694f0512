"""Turns a recorded or a replayed exchange into comparable facts.

Both sides go through the same parser. What is compared: status, framing,
the JSON error, the rows in order (ids, `changes`, `deleted`, `doc`;
revision hashes are each server's own, so a revision counts by its
generation), each row's seq number (the opaque rest is the server's own) and
whether it is null, how the feed ended (the last_seq object's keys and
`pending`, and the last_seq's number), the body skeleton and the chunk
pattern. Each difference is reported under an aspect; a case can relax an
aspect only by naming it, with a reason, in test_conformance.RELAXED.
Against the replay's own writes, the test server's seqs and revisions are
compared exactly (own_write_differences).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

SEQ = re.compile(r"^\d+-[A-Za-z0-9_-]+$")
# The one revision id the data set sets explicitly (a _bulk_docs new_edits:false
# conflict); every other revision hash is server-generated.
FIXED_REV = "1-0123456789abcdef0123456789abcdef"
OPEN = b'{"results":[\n'
HEADERS_DELAYED_MS = 500.0


@dataclass
class Parsed:
    kind: str
    status: int
    framing: str
    headers: dict[str, str]
    complete: bool
    tokens: list[str]
    headers_delayed: bool
    error: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    heartbeats: int = 0
    problems: list[str] = field(default_factory=list)


def feed_kind(path: str, status: int) -> str:
    if status != 200:
        return "error"
    m = re.search(r"[?&]feed=([^&]*)", path)
    feed = m.group(1) if m else "normal"
    return {"continuous": "lines", "live": "lines", "eventsource": "events"}.get(feed, "results")


def chunk_tokens(chunks: list[bytes], complete: bool) -> list[str]:
    """One token per chunk: OPEN, NL (a lone newline), HB (an event-stream
    heartbeat) or DATA; consecutive DATA chunks count as one, because where
    CouchDB cuts a batch of rows depends on its buffer, not on the rows."""
    tokens: list[str] = []
    for data in chunks:
        if data == b"":
            continue
        token = ("OPEN" if data == OPEN else "NL" if data == b"\n"
                 else "HB" if data.startswith(b"event: heartbeat") else "DATA")
        if token == "DATA" and tokens and tokens[-1] == "DATA":
            continue
        tokens.append(token)
    tokens.append("END" if complete else "STILL-OPEN")
    return tokens


def parse(path: str, status: int, headers: list[tuple[str, str]], chunks: list[bytes],
          complete: bool, header_ms: float, delay_threshold_ms: float) -> Parsed:
    kind = feed_kind(path, status)
    hdrs = {k.lower(): v for k, v in headers}
    framing = "chunked" if hdrs.get("transfer-encoding", "").lower() == "chunked" else "content-length"
    body = b"".join(chunks).decode("utf-8")
    parsed = Parsed(kind, status, framing, hdrs, complete, chunk_tokens(chunks, complete),
                    header_ms > delay_threshold_ms)
    try:
        if kind == "error":
            parsed.error = json.loads(body)
        elif kind == "results":
            _parse_results(body, parsed)
        elif kind == "lines":
            _parse_lines(body, parsed)
        else:
            _parse_events(body, parsed)
    except ValueError as err:
        parsed.problems.append(f"unparsable body: {err}")
    return parsed


def _parse_results(body: str, parsed: Parsed) -> None:
    m = re.fullmatch(r'\{"results":\[\n(\n*)(.*?)\n\],\n"last_seq":.*\}\n\n', body, re.S)
    if not m:
        parsed.problems.append("body skeleton is not "
                               r'{"results":[\n ... \n],\n"last_seq":...}\n\n')
        return
    parsed.heartbeats = len(m.group(1))
    whole = json.loads(body)
    if m.group(2):
        pieces = [json.loads(piece) for piece in m.group(2).split(",\r\n")]
        if pieces != whole["results"]:
            parsed.problems.append("rows are not joined by ,\\r\\n")
    parsed.rows = whole["results"]
    parsed.end = {k: v for k, v in whole.items() if k != "results"}


def _parse_lines(body: str, parsed: Parsed) -> None:
    lines = body.split("\n")
    if lines[-1] != "":
        parsed.problems.append("last line is not newline-terminated")
    for line in lines[:-1]:
        if line == "":
            parsed.heartbeats += 1
            continue
        obj = json.loads(line)
        if parsed.end is not None:
            parsed.problems.append("a line follows the last_seq line")
        if "last_seq" in obj:
            parsed.end = obj
        else:
            parsed.rows.append(obj)
    # The trailing "\n" chunk after the last_seq line is framing, not a heartbeat.
    if parsed.end is not None and body.endswith("\n\n"):
        parsed.heartbeats -= 1


def _parse_events(body: str, parsed: Parsed) -> None:
    for block in body.split("\n\n"):
        if block.strip() == "":
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            fields[name.rstrip(":")] = value
        if fields.get("event") == "heartbeat":
            parsed.heartbeats += 1
            continue
        row = json.loads(fields["data"])
        if json.loads(fields.get("id", "null")) != row.get("seq"):
            parsed.problems.append("event id is not the JSON of the row's seq")
        parsed.rows.append(row)


#: The aspects a comparison reports its differences under; a case may relax
#: some of them (see test_conformance.RELAXED), each for a stated reason.
ROW_ORDER = "row order"  # relaxed: the same rows, in any order
ROWS = "rows"  # relaxed: as many rows, with the same members
SEQ_NUMBERS = "seq numbers"  # relaxed: row seqs compared by shape (string or null) only
LAST_SEQ_NUMBER = "last_seq number"  # relaxed: last_seq compared by shape only
DBS_ROWS = "_dbs rows"  # relaxed: `_db_updates` rows compared without the `_dbs` ones
HEARTBEAT_TIMING = "heartbeat timing"  # relaxed: chunks compared on what a client relies on
ASPECTS = (ROW_ORDER, ROWS, SEQ_NUMBERS, LAST_SEQ_NUMBER, DBS_ROWS, HEARTBEAT_TIMING)

Difference = tuple[str, str]


def seq_number(value: Any) -> str:
    """A seq's position, the number before its opaque part ("null" for none)."""
    if value is None:
        return "null"
    if isinstance(value, str) and SEQ.match(value):
        return value.split("-", 1)[0]
    return f"unexpected {value!r}"


def seq_shape(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str) and SEQ.match(value):
        return "N-opaque"
    return f"unexpected {value!r}"


def rev_shape(rev: str) -> str:
    return rev if rev == FIXED_REV else rev.split("-", 1)[0] + "-*"


def doc_shape(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    out = []
    for key, value in doc.items():
        if key == "_rev":
            value = rev_shape(value)
        elif key == "_conflicts":
            value = [rev_shape(r) for r in value]
        out.append((key, value))
    return out


def row_shape(row: dict[str, Any]) -> tuple[Any, ...]:
    """Everything about a row except its seq, in a comparable form: revision
    hashes are each server's own, so a revision counts by its generation
    (the one fixed revision of the data set exactly)."""
    if "db_name" in row:
        return (tuple(row), row["db_name"], row["type"])
    return (
        tuple(row),
        row.get("id"),
        tuple(rev_shape(c["rev"]) for c in row.get("changes", [])),
        row.get("deleted", False),
        doc_shape(row["doc"]) if "doc" in row else None,
    )


def _row_differences(rec: Parsed, ours: Parsed, relaxed: frozenset[str]) -> list[Difference]:
    rec_rows = [row_shape(r) for r in rec.rows]
    our_rows = [row_shape(r) for r in ours.rows]
    if rec.rows and "db_name" in rec.rows[0] and DBS_ROWS in relaxed:
        def users(rows: list[Any]) -> list[Any]:
            return [r for r in rows if r[1] != "_dbs"]
        diffs = []
        if users(rec_rows) != users(our_rows):
            diffs.append((DBS_ROWS, f"rows but `_dbs`: recorded {users(rec_rows)}, got {users(our_rows)}"))
        if len(rec_rows) != len(our_rows):
            diffs.append((DBS_ROWS, f"`_dbs` rows: recorded {len(rec_rows) - len(users(rec_rows))}, "
                                    f"got {len(our_rows) - len(users(our_rows))}"))
        return diffs
    if rec_rows == our_rows:
        return []
    if ROWS in relaxed:
        def members(rows: list[Any]) -> list[Any]:
            return [tuple(k for k in r[0] if k != "deleted") for r in rows]
        if len(rec_rows) != len(our_rows) or members(rec_rows) != members(our_rows):
            return [(ROWS, f"row count and members: recorded {members(rec_rows)}, got {members(our_rows)}")]
        return []
    if sorted(rec_rows, key=repr) != sorted(our_rows, key=repr):
        aspect = ROWS if rec.rows and "db_name" not in rec.rows[0] else DBS_ROWS
        return [(aspect, f"rows: recorded {rec_rows}, got {our_rows}")]
    if ROW_ORDER in relaxed:
        return []
    return [(ROW_ORDER, f"row order: recorded {[r[1] for r in rec_rows]}, got {[r[1] for r in our_rows]}")]


def _seq_differences(rec: Parsed, ours: Parsed, relaxed: frozenset[str]) -> list[Difference]:
    # By position: with seq_interval, which rows carry a seq depends on the
    # count of rows, not on which rows they are.
    diffs = []
    rec_shapes = [seq_shape(r.get("seq")) for r in rec.rows]
    our_shapes = [seq_shape(r.get("seq")) for r in ours.rows]
    if rec_shapes != our_shapes:
        diffs.append(("seqs", f"row seqs (string or null, by position): recorded {rec_shapes}, got {our_shapes}"))
    if SEQ_NUMBERS not in relaxed:
        rec_numbers = [seq_number(r.get("seq")) for r in rec.rows]
        our_numbers = [seq_number(r.get("seq")) for r in ours.rows]
        if rec_numbers != our_numbers:
            diffs.append((SEQ_NUMBERS, f"row seq numbers: recorded {rec_numbers}, got {our_numbers}"))
    if LAST_SEQ_NUMBER not in relaxed and rec.end is not None and ours.end is not None:
        rec_last = seq_number(rec.end.get("last_seq"))
        our_last = seq_number(ours.end.get("last_seq"))
        if rec_last != our_last:
            diffs.append((LAST_SEQ_NUMBER, f"last_seq number: recorded {rec_last}, got {our_last}"))
    return diffs


def end_shape(end: dict[str, Any] | None) -> Any:
    if end is None:
        return None
    return [(k, seq_shape(v) if k == "last_seq" else v) for k, v in end.items()]


def _token_differences(path: str, rec: Parsed, ours: Parsed, relaxed: frozenset[str]) -> list[Difference]:
    if rec.tokens == ours.tokens:
        return []
    if HEARTBEAT_TIMING not in relaxed:
        return [(HEARTBEAT_TIMING if rec.heartbeats or ours.heartbeats else "chunks",
                 f"chunk pattern: recorded {rec.tokens}, got {ours.tokens}")]
    # The exact interleaving of heartbeats with the rest depends on the
    # timers' phase; compare what a client relies on.
    diffs = []
    if (rec.tokens[0], rec.tokens[-1]) != (ours.tokens[0], ours.tokens[-1]):
        diffs.append(("chunks", f"first/last chunk: recorded {rec.tokens}, got {ours.tokens}"))
    if abs(rec.heartbeats - ours.heartbeats) > 1:
        diffs.append(("chunks", f"heartbeats: recorded {rec.heartbeats}, got {ours.heartbeats}"))

    def nl_before_data(tokens: list[str]) -> bool:
        return all(tokens[i - 1] == "NL" for i, t in enumerate(tokens) if t == "DATA" and i > 0)
    if "_changes" in path and nl_before_data(rec.tokens) != nl_before_data(ours.tokens):
        diffs.append(("chunks", f"a \\n chunk before each live row: recorded {rec.tokens}, got {ours.tokens}"))
    if rec.tokens[-1] == "END" and rec.tokens[-3:] != ours.tokens[-3:]:
        diffs.append(("chunks", f"end of body: recorded {rec.tokens[-3:]}, got {ours.tokens[-3:]}"))
    return diffs


def differences(path: str, rec: Parsed, ours: Parsed, relaxed: frozenset[str] = frozenset()) -> list[Difference]:
    """What differs between a recorded and a replayed exchange, each with
    the aspect it belongs to ([] if nothing). An aspect in *relaxed* is
    compared in its relaxed way (see the constants above)."""
    diffs: list[Difference] = [("recording", f"recording itself: {p}") for p in rec.problems]
    diffs += [("body", f"body: {p}") for p in ours.problems]
    for what, a, b in [
        ("status", rec.status, ours.status),
        ("framing", rec.framing, ours.framing),
        ("Content-Type", rec.headers.get("content-type"), ours.headers.get("content-type")),
        ("Cache-Control", rec.headers.get("cache-control"), ours.headers.get("cache-control")),
        ("ETag present", "etag" in rec.headers, "etag" in ours.headers),
        ("X-Couch-Stack-Hash present", "x-couch-stack-hash" in rec.headers,
         "x-couch-stack-hash" in ours.headers),
        ("WWW-Authenticate present", "www-authenticate" in rec.headers,
         "www-authenticate" in ours.headers),
        ("headers held back until the first body byte", rec.headers_delayed,
         ours.headers_delayed),
    ]:
        if a != b:
            diffs.append(("head", f"{what}: recorded {a!r}, got {b!r}"))
    if rec.kind == "error" or ours.kind == "error":
        rec_err = {k: v for k, v in (rec.error or {}).items() if k != "ref"}
        our_err = {k: v for k, v in (ours.error or {}).items() if k != "ref"}
        if rec_err != our_err:
            diffs.append(("error", f"error body: recorded {rec_err}, got {our_err}"))
        if ("ref" in (rec.error or {})) != ("ref" in (ours.error or {})):
            diffs.append(("error", "error `ref` member presence differs"))
        return diffs
    diffs += _row_differences(rec, ours, relaxed)
    diffs += _seq_differences(rec, ours, relaxed)
    if end_shape(rec.end) != end_shape(ours.end):
        diffs.append(("end", f"end of feed: recorded {end_shape(rec.end)}, got {end_shape(ours.end)}"))
    diffs += _token_differences(path, rec, ours, relaxed)
    return diffs


def own_write_differences(path: str, ours: Parsed, writes: list[tuple[str, str]],
                          leaves: dict[str, set[str]]) -> list[str]:
    """
    What a replayed `_changes` response says that the replay's own writes
    contradict: the test server is deterministic, so each row's seq number
    must be the position of a write of that very document in the
    database's write log (*writes*, ``(id, rev)`` in order), and its
    revisions must be the document's leaf revisions as those writes left
    them (*leaves*): all of them with ``style=all_docs``, the first one
    being the one ``doc`` carries.
    """
    diffs = []
    all_docs = "style=all_docs" in path
    for row in ours.rows:
        docid, seq = row.get("id"), row.get("seq")
        if seq is not None:
            n = int(seq_number(seq))
            written = writes[n - 1][0] if 0 < n <= len(writes) else None
            if written != docid:
                diffs.append(f"row {docid!r} has seq number {n}, the write of {written!r}")
        revs = [c["rev"] for c in row.get("changes", [])]
        expected = leaves.get(docid, set())
        if not set(revs) <= expected or (all_docs and set(revs) != expected):
            diffs.append(f"row {docid!r} has revisions {revs}, the writes left {sorted(expected)}")
        doc = row.get("doc")
        if isinstance(doc, dict) and "_rev" in doc and revs and doc["_rev"] != revs[0]:
            diffs.append(f"row {docid!r} carries revision {doc['_rev']} in its doc, {revs[0]} in changes")
    return diffs
