"""
A group's settings document: what its units are (how many, of which
database or server), written by the first worker and checked by every
other, so that two workers never split the work two ways.
"""

from __future__ import annotations

from typing import Any

from txchanges.errors import Conflict, TxChangesError
from txchanges.group._lease import config_id

__all__ = ["GroupError", "check_config"]


class GroupError(TxChangesError):
    """A worker cannot join: the group was set up otherwise."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(where, reason)

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


async def check_config(store: Any, settings: dict[str, Any]) -> None:
    """
    Write *settings* as the group's settings when it has none; otherwise
    check they are the same.

    :raises GroupError: when the group was set up with other settings.
    """
    doc = config_id(store.group)
    for _ in range(2):
        docs = await store.read()
        found = docs.get(doc)
        if found is not None:
            stored = {k: found.body.get(k) for k in settings}
            if stored != settings:
                differ = ", ".join(f"{k} {stored[k]!r} (not {settings[k]!r})" for k in settings if stored[k] != settings[k])
                raise GroupError(
                    store.describe(),
                    f"the group was set up with {differ}; use another group name, or delete its documents to start over",
                )
            return
        try:
            await store.write(doc, dict(settings, type="config"), None)
            return
        except Conflict:
            continue  # another worker wrote it first: read it
