"""
The fake's list of databases as CouchDB 3 pages it (``GET /_all_dbs`` with
``start_key``, ``end_key``, ``inclusive_end``, ``limit``, ``skip``,
``descending``) and ``POST /_dbs_info``. Pure Python, no Twisted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from txchanges.testing._store import ErrorResponse, FakeDatabase

__all__ = ["MAX_DBS_INFO_KEYS", "all_dbs_page", "database_info", "dbs_info"]

#: CouchDB's ``[chttpd] max_db_number_for_dbs_info_req`` default.
MAX_DBS_INFO_KEYS = 100

_COUNT = re.compile("[0-9]+")


def database_info(db: FakeDatabase) -> dict[str, Any]:
    """
    :return: The body of ``GET /{db}`` for *db*.
    """
    return {"db_name": db.name, "update_seq": db.seq(db.update_seq), "purge_seq": db.seq(0),
            "doc_count": db.doc_count, "doc_del_count": db.doc_del_count,
            "sizes": {"file": 0, "external": 0, "active": 0}, "props": {},
            "instance_start_time": "0", "compact_running": False,
            "cluster": {"q": 1, "n": 1, "w": 1, "r": 1}}


def all_dbs_page(names: Iterable[str], query: Mapping[str, str]) -> list[str]:
    """
    The names ``GET /_all_dbs`` answers with for *query*: sorted as CouchDB
    sorts them (by their UTF-8 bytes), from ``start_key`` to ``end_key``
    (included unless ``inclusive_end=false``) in the order asked, then
    ``skip`` and ``limit``.

    :raises ErrorResponse: CouchDB's 400 for a key that is not JSON, or a bad
        count or boolean.
    """
    start, end = _key(query, "start_key", "startkey"), _key(query, "end_key", "endkey")
    inclusive_end = _boolean(query, "inclusive_end", True)
    descending = _boolean(query, "descending", False)
    skip = _count(query, "skip") or 0
    limit = _count(query, "limit")
    sign = -1 if descending else 1
    page = []
    for name in sorted(names, key=lambda n: n.encode("utf-8"), reverse=descending):
        if start is not _NONE and sign * _compare(name, start) < 0:
            continue
        if end is not _NONE:
            past = sign * _compare(name, end)
            if past > 0 or (past == 0 and not inclusive_end):
                break
        page.append(name)
    page = page[skip:]
    return page if limit is None else page[:limit]


def dbs_info(dbs: Mapping[str, FakeDatabase], body: Any) -> list[dict[str, Any]]:
    """
    The answer to ``POST /_dbs_info`` with *body*: one row per key, in order.

    :raises ErrorResponse: CouchDB's 400 for a body without a ``keys``
        array, or with more than :data:`MAX_DBS_INFO_KEYS` keys.
    """
    if not isinstance(body, dict):
        raise ErrorResponse(400, "bad_request", "Request body must be a JSON object")
    if "keys" not in body:
        raise ErrorResponse(400, "bad_request", "`keys` member must exist.")
    keys = body["keys"]
    if not isinstance(keys, list):
        raise ErrorResponse(400, "bad_request", "`keys` member must be an array.")
    if len(keys) > MAX_DBS_INFO_KEYS:
        raise ErrorResponse(400, "bad_request",
                            f"`keys` member must be less than or equal to {MAX_DBS_INFO_KEYS}")
    rows: list[dict[str, Any]] = []
    for key in keys:
        db = dbs.get(key) if isinstance(key, str) else None
        rows.append({"key": key, "error": "not_found"} if db is None
                    else {"key": key, "info": database_info(db)})
    return rows


_NONE = object()


def _key(query: Mapping[str, str], name: str, alias: str) -> Any:
    text = query.get(name, query.get(alias))
    if text is None:
        return _NONE
    try:
        return json.loads(text)
    except ValueError:
        raise ErrorResponse(400, "bad_request", "invalid UTF-8 JSON") from None


def _compare(name: str, key: Any) -> int:
    """CouchDB's collation of a name against a key: null, booleans and
    numbers sort before every string, arrays and objects after."""
    if isinstance(key, str):
        a, b = name.encode("utf-8"), key.encode("utf-8")
        return (a > b) - (a < b)
    return 1 if key is None or isinstance(key, (bool, int, float)) else -1


def _boolean(query: Mapping[str, str], name: str, default: bool) -> bool:
    text = query.get(name)
    if text is None:
        return default
    if text not in ("true", "false"):
        raise ErrorResponse(400, "query_parse_error", f"Invalid boolean parameter: {json.dumps(text)}")
    return text == "true"


def _count(query: Mapping[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    if not _COUNT.fullmatch(text):
        raise ErrorResponse(400, "query_parse_error",
                            f"Invalid value for positive integer: {json.dumps(text)}")
    return int(text)
