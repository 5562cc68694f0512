"""
How a body ended, for whoever waits on a body protocol's ``finished``:
:class:`Stopped` when we left it, :func:`describe_end` in words when it ended
before its ``last_seq`` row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

__all__ = ["Stopped", "describe_end"]


@dataclass(frozen=True, slots=True)
class Stopped:
    """
    What a body protocol's ``finished`` fires with after its ``stop()``:
    the body did not end, we left it.

    :ivar last_seq: The protocol's ``last_seq`` when it stopped: the seq of
        the newest row whose callable had returned (the place to resume
        from), or ``None`` if there was none.
    """

    last_seq: Any


def describe_end(reason: Failure) -> str:
    """
    Say in words why a body ended before its end row.
    """
    value = reason.value
    if isinstance(value, ResponseDone):
        return "the response ended without a last_seq row"
    if isinstance(value, PotentialDataLoss):
        return (
            "the connection closed before a last_seq row, and the response "
            "had no framing to tell whether it was complete"
        )
    if isinstance(value, ResponseFailed):
        causes = "; ".join(
            f"{type(f.value).__name__}: {f.value}" for f in value.reasons
        )
        return f"the response failed before a last_seq row ({causes})"
    return f"the connection was lost before a last_seq row ({type(value).__name__}: {value})"
