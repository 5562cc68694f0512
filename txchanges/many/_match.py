"""
Which databases a follower of many follows: a name pattern, a predicate,
or every database but the system ones.
"""

from __future__ import annotations

import re
from typing import Callable, Union

__all__ = ["Match", "predicate"]

#: What ``match=`` accepts.
Match = Union[str, "re.Pattern[str]", Callable[[str], bool], None]


def _not_system(name: str) -> bool:
    # CouchDB's own databases (_users, _replicator, _global_changes) and
    # the shard map _dbs that _db_updates reports start with "_".
    return not name.startswith("_")


def predicate(match: Match) -> Callable[[str], bool]:
    """
    :param match: A regular expression that must match the whole name (a
        string or a compiled pattern), a predicate, or ``None`` for every
        database whose name does not start with ``_``.
    :raises ValueError: for a string that is no regular expression.
    :raises TypeError: for anything else.
    """
    if match is None:
        return _not_system
    if isinstance(match, str):
        try:
            match = re.compile(match)
        except re.error as e:
            raise ValueError(f"match is not a regular expression: {e}") from None
    if isinstance(match, re.Pattern):
        pattern = match
        return lambda name: pattern.fullmatch(name) is not None
    if callable(match):
        return match
    raise TypeError(f"match must be a regular expression, a predicate or None, not {match!r}")
