"""
A follower's scheduling options checked, and their defaults filled in:
*concurrency*, *max_buffered*, *max_ahead* and *on_error*.
"""

from __future__ import annotations

from txchanges.service._onerror import ON_ERROR

__all__ = ["buffer_bounds", "check_options", "default_max_ahead"]


def default_max_ahead(max_buffered: int) -> int:
    """
    The default bound on rows past the resume point: generous enough that
    out-of-order completion never pauses a healthy feed.
    """
    return max(1000, 50 * max_buffered)


def buffer_bounds(
    concurrency: int, max_buffered: int | None, max_ahead: int | None, on_error: str
) -> tuple[int, int]:
    """
    Check a follower's scheduling options and fill in the defaults.

    :return: ``(max_buffered, max_ahead)``: ``2 * concurrency`` and
        :func:`default_max_ahead` where not given.
    :raises ValueError: for options a
        :class:`~txchanges.service._scheduler.Scheduler` cannot work with.
    """
    buffered = 2 * concurrency if max_buffered is None else max_buffered
    check_options(concurrency, buffered, on_error)
    ahead = default_max_ahead(buffered) if max_ahead is None else max_ahead
    if not isinstance(ahead, int):
        raise ValueError(f"max_ahead must be an int, not {ahead!r}")
    if ahead < buffered:
        raise ValueError(f"max_ahead ({ahead}) must be at least max_buffered ({buffered})")
    return buffered, ahead


def check_options(concurrency: int, max_buffered: int, on_error: str) -> None:
    """
    :raises ValueError: for options a
        :class:`~txchanges.service._scheduler.Scheduler` cannot work with.
    """
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int of at least 1, not {concurrency!r}")
    if not isinstance(max_buffered, int) or max_buffered < concurrency:
        raise ValueError(f"max_buffered ({max_buffered!r}) must be an int of at least concurrency ({concurrency})")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
