"""Backpressure in ChangesProtocol: a pause holds back every row, even ones already received."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from txchanges.feed._protocol import Stopped
from txchanges.feed._rows import ChangeRow, LastSeq

from .fixtures_util import CONTINUOUS, load
from .test_protocol import END, check_replay, row, split_at, start


def test_pause_in_callback_holds_the_rest_of_the_chunk() -> None:
    """Rows after the one whose callback paused are delivered only after resumeProducing, in order."""
    seen: list[str] = []

    def on_change(change: ChangeRow) -> None:
        seen.append(change["id"])
        if change["id"] == "a":
            run.protocol.pauseProducing()

    run = start(on_change)
    run.protocol.dataReceived(row("1-a", "a") + row("2-b", "b") + row("3-c", "c"))
    assert seen == ["a"]
    assert run.transport.producerState == "paused"
    assert run.protocol.last_seq == "1-a"
    run.protocol.resumeProducing()
    assert seen == ["a", "b", "c"]
    assert run.transport.producerState == "producing"


def test_data_arriving_while_paused_waits_behind_the_backlog() -> None:
    """Reads that arrive during a pause, a split line included, come after the held rows."""
    seen: list[str] = []
    run = start(lambda c: seen.append(c["id"]))
    run.protocol.pauseProducing()
    run.protocol.dataReceived(row("1-a", "a") + row("2-b", "b")[:10])
    run.protocol.dataReceived(row("2-b", "b")[10:] + b"\n" + row("3-c", "c"))
    assert seen == []
    assert run.activity == 2, "held reads still count as activity"
    run.protocol.resumeProducing()
    assert seen == ["a", "b", "c"]
    assert run.protocol.heartbeats == 1


def test_clean_end_during_a_pause_is_reported_after_the_rows() -> None:
    """A response that completes while rows are held ends cleanly once they are delivered."""
    seen: list[str] = []

    def on_change(change: ChangeRow) -> None:
        seen.append(change["id"])
        run.protocol.pauseProducing()

    run = start(on_change)
    run.protocol.dataReceived(row("1-a", "a") + row("2-b", "b") + END)
    run.protocol.connectionLost(Failure(ResponseDone()))
    assert seen == ["a"] and run.outcome == []
    run.protocol.resumeProducing()
    assert seen == ["a", "b"] and run.outcome == []
    run.protocol.resumeProducing()
    assert isinstance(run.result, LastSeq) and run.result.last_seq == "9-end"


def test_unclean_end_during_a_pause_is_reported_after_the_rows() -> None:
    """A connection lost while rows are held fails only after they are delivered, with their seq."""
    run = start()
    run.protocol.pauseProducing()
    run.protocol.dataReceived(row("1-a", "a"))
    run.protocol.connectionLost(Failure(ResponseDone()))
    assert run.outcome == []
    run.protocol.resumeProducing()
    assert [c["id"] for c in run.changes] == ["a"]
    assert run.result.last_seq == "1-a"


def test_stop_while_paused_drops_the_held_rows() -> None:
    """stop() during a pause fires Stopped with the last delivered seq and delivers nothing more."""
    run = start()
    run.protocol.dataReceived(row("1-a", "a"))
    run.protocol.pauseProducing()
    run.protocol.dataReceived(row("2-b", "b"))
    run.protocol.stop()
    run.protocol.resumeProducing()
    assert [c["id"] for c in run.changes] == ["a"]
    assert run.result == Stopped("1-a")


@pytest.mark.parametrize("name", CONTINUOUS)
def test_recordings_with_pauses_everywhere(name: str) -> None:
    """Pausing after every k-th row and resuming later, in random splits, changes nothing delivered."""
    recording = load(name)

    @settings(max_examples=25, deadline=None)
    @given(
        every=st.integers(min_value=1, max_value=4),
        points=st.lists(st.integers(min_value=0, max_value=max(len(recording.body) - 1, 0)), max_size=12),
    )
    def check(every: int, points: list[int]) -> None:
        delivered: list[ChangeRow] = []

        def on_change(change: ChangeRow) -> None:
            delivered.append(change)
            if len(delivered) % every == 0:
                run.protocol.pauseProducing()

        run = start(on_change)
        for piece in split_at(recording.body, points):
            run.protocol.dataReceived(piece)
            while run.protocol._paused and not run.protocol.done:
                run.protocol.resumeProducing()
        run.protocol.connectionLost(Failure(ResponseDone()))
        while run.protocol._paused and not run.protocol.done:
            run.protocol.resumeProducing()
        run.changes[:] = delivered
        check_replay(run, recording)

    check()


