"""The twistd plugin's --batch N: the handler takes lists of changes."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.python import usage

from txchanges import ChangesService
from txchanges.cli import _options
from txchanges.cli._tap import makeService

from . import handlers_for_tests
from .test_tap import BASE, HANDLERS, parse


class Made(ChangesService):
    """The real service, remembering the keyword arguments it was made with."""

    made: list[dict[str, Any]] = []

    def __init__(self, db: Any, **kwargs: Any) -> None:
        Made.made.append(kwargs)
        super().__init__(db, **kwargs)


def test_batch_makes_the_handler_a_batch_handler(monkeypatch):
    """With --batch N the handler is the service's batch_handler, with max_batch N and no per-change options."""
    monkeypatch.setattr(_options, "ChangesService", Made)
    Made.made.clear()
    makeService(parse(*BASE, "--handler", f"{HANDLERS}:record", "--batch", "50", "--on-error", "retry"))
    [made] = Made.made
    assert made["batch_handler"] is handlers_for_tests.record and made["max_batch"] == 50
    assert made["on_error"] == "retry"
    assert not {"handler", "concurrency", "max_buffered", "max_ahead"} & set(made)


def test_without_batch_the_handler_takes_each_change(monkeypatch):
    """Without --batch the handler is the per-change handler, with the scheduling options."""
    monkeypatch.setattr(_options, "ChangesService", Made)
    Made.made.clear()
    makeService(parse(*BASE, "--handler", f"{HANDLERS}:record", "--concurrency", "2"))
    [made] = Made.made
    assert made["handler"] is handlers_for_tests.record and made["concurrency"] == 2
    assert "batch_handler" not in made


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch", "0"], "--batch expects a whole number of at least 1"),
        (["--batch", "10", "--concurrency", "2"], "--batch takes one batch at a time"),
        (["--batch", "10", "--max-buffered", "4"], "--batch takes one batch at a time"),
    ],
)
def test_batch_with_per_change_options_is_a_usage_error(extra, message):
    """--batch refuses a bad size, and the options that schedule changes one by one."""
    with pytest.raises(usage.UsageError) as caught:
        parse(*BASE, "--handler", f"{HANDLERS}:record", *extra)
    assert message in str(caught.value)
