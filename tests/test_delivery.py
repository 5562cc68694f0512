"""ChangesProtocol's loop over a read's changes: what ends it and what goes on after."""

from __future__ import annotations

from typing import Any

from txchanges.feed._protocol import Stopped
from txchanges.feed._rows import ChangeRow

from .test_protocol import END, row, start


def test_a_pause_and_resume_in_one_call_go_on_with_the_read():
    """A callback that pauses and resumes at once gets the rest of the read in order, no row lost or repeated."""
    seen: list[str] = []

    def on_change(change: ChangeRow) -> None:
        seen.append(change["id"])
        run.protocol.pauseProducing()
        run.protocol.resumeProducing()

    run = start(on_change)
    run.protocol.dataReceived(row("1-a", "a") + row("2-b", "b") + row("3-c", "c") + END)
    assert seen == ["a", "b", "c"] and run.result.last_seq == "9-end"


def test_lines_only_the_standard_library_reads_keep_their_place():
    """A row orjson refuses (NaN in a document) is delivered in its place among the others, and the loop goes on."""
    odd = b'{"seq":"2-b","id":"b","changes":[],"doc":{"v":NaN}}\n'
    run = start()
    run.protocol.dataReceived(row("1-a", "a") + odd + b"\n" + row("3-c", "c") + row("4-d", "d"))
    assert [c["id"] for c in run.changes] == ["a", "b", "c", "d"]
    assert run.protocol.heartbeats == 1 and run.protocol.last_seq == "4-d"


def test_a_stop_at_a_row_without_seq_resumes_from_the_newest_known():
    """With seq_interval, a stop at a row whose seq is null leaves the place to resume at the last real seq."""

    def on_change(change: ChangeRow) -> None:
        if change["id"] == "c":
            run.protocol.stop()

    run = start(on_change)
    run.protocol.dataReceived(row("1-a", "a") + row(None, "b") + row(None, "c") + row("4-d", "d"))
    assert run.result == Stopped("1-a")


def test_a_raise_after_rows_without_seq_keeps_the_newest_known():
    """A callback that raises after rows with a null seq leaves last_seq at the last real seq before it."""

    def on_change(change: ChangeRow) -> Any:
        if change["id"] == "c":
            raise KeyError("boom")

    run = start(on_change)
    run.protocol.dataReceived(row("1-a", "a") + row("2-b", "b") + row(None, "x") + row(None, "c"))
    assert isinstance(run.result, KeyError) and run.protocol.last_seq == "2-b"
