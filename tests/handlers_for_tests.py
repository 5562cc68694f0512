"""
Handlers that the twistd plugin's tests name on its command line.

Each change is appended as a JSON line to the file named by the
``TXCHANGES_TEST_OUTPUT`` environment variable, so that the test can read
what a twistd subprocess handled.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

OUTPUT_VARIABLE = "TXCHANGES_TEST_OUTPUT"

#: Not callable: --handler must refuse it.
not_callable = 42


def _append(line: dict[str, Any]) -> None:
    with open(os.environ[OUTPUT_VARIABLE], "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def record(change: dict[str, Any]) -> None:
    """Appends the change's id and seq."""
    _append({"id": change["id"], "seq": change["seq"]})


def make_recorder(db: Any, tag: str = "") -> Callable[[dict[str, Any]], None]:
    """A factory: the handler it returns also records the database's URL and *tag*."""

    def handle(change: dict[str, Any]) -> None:
        _append({"id": change["id"], "seq": change["seq"], "db": db.url, "tag": tag})

    return handle


def make_nothing(db: Any) -> None:
    """A broken factory: it returns no handler."""


class RecorderClass:
    """A class: --handler refuses it, --handler-factory accepts it."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def __call__(self, change: dict[str, Any]) -> None:
        record(change)


def fail(change: dict[str, Any]) -> None:
    """Fails on every change."""
    raise RuntimeError(f"cannot handle {change['id']}")


def record_db(db_name: str, change: dict[str, Any]) -> None:
    """A handler of many databases: appends the database's name, the change's id and seq."""
    _append({"db": db_name, "id": change["id"], "seq": change["seq"]})


def record_deleted(db_name: str) -> None:
    """Told of a deleted database (--on-deleted): appends its name."""
    _append({"db": db_name, "deleted": True})


def make_db_recorder(server: Any, tag: str = "") -> Callable[[str, dict[str, Any]], None]:
    """A factory for many databases: the handler it returns also records the server's URL and *tag*."""

    def handle(db_name: str, change: dict[str, Any]) -> None:
        _append({"db": db_name, "id": change["id"], "server": server.url, "tag": tag})

    return handle
