"""
``_changes`` filters for :class:`txchanges.testing.FakeCouchDB`: the built-in
``_doc_ids``, ``_selector``, ``_design`` and ``_view``, and Python stand-ins
for design-document filters and views.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from txchanges.testing._store import ErrorResponse, FakeDatabase

__all__ = ["ChangeFilter", "FilterFunction", "ViewFunction", "Functions", "build_filter", "selector_matches"]

#: A stand-in for a design-document filter: ``(doc, req) -> bool``, where
#: ``req`` holds ``query`` (the query parameters, as strings), ``method``,
#: ``body`` and ``info`` (``{"db_name": ...}``), as CouchDB's ``req`` does.
FilterFunction = Callable[[dict[str, Any], dict[str, Any]], Any]

#: A stand-in for a view's map function: ``doc -> bool``, whether the map
#: function would emit anything for the document.
ViewFunction = Callable[[dict[str, Any]], Any]

_MISSING = object()


@dataclass
class ChangeFilter:
    """
    A filter applied to each change's winning document.

    :ivar test: Whether a document passes.
    :ivar fast_path: ``True`` for the filters CouchDB serves without
        visiting every change (``_doc_ids``, ``_design``): their ``pending``
        counts the changes they skipped.
    :ivar project: Applied to ``doc`` with ``include_docs`` (``fields``).
    """

    test: Callable[[dict[str, Any]], bool]
    fast_path: bool = False
    project: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None


class Functions:
    """
    Python stand-ins for design-document filters and views, per database or
    for every database (``db=None``).
    """

    def __init__(self) -> None:
        self.filters: dict[tuple[Optional[str], str], FilterFunction] = {}
        self.views: dict[tuple[Optional[str], str], ViewFunction] = {}

    @staticmethod
    def find(table: Mapping[tuple[Optional[str], str], Any], db: str, name: str) -> Any:
        return table.get((db, name), table.get((None, name)))


def _bad(reason: str) -> ErrorResponse:
    return ErrorResponse(400, "bad_request", reason)


def _split(value: str, message: str) -> tuple[str, str]:
    ddoc, slash, name = value.partition("/")
    if not (slash and ddoc and name):
        raise _bad(message)
    return ddoc, name


def _stand_in(db: FakeDatabase, table: Mapping[Any, Any], kind: str, key: str, full: str) -> Any:
    ddoc, name = full.split("/", 1)
    found = Functions.find(table, db.name, full)
    if found is not None:
        return found
    record = db.docs.get("_design/" + ddoc)
    if record is None or record.winner().deleted:
        raise ErrorResponse(404, "not_found", "missing")
    source = record.winner().body.get(key, {}).get(name)
    if source is None:
        raise ErrorResponse(404, "not_found", f"missing json key: {name}")
    # The design document has the function, but the fake cannot run
    # JavaScript: say so rather than pretend it matched nothing.
    raise ErrorResponse(
        500,
        "fake_couchdb",
        f"_design/{ddoc} has {kind} {name!r} but no Python stand-in is registered: "
        f"call FakeCouchDB.register_{kind}({full!r}, function)",
    )


def build_filter(
    db: FakeDatabase,
    query: Mapping[str, str],
    body: Optional[dict[str, Any]],
    method: str,
    functions: Functions,
) -> Optional[ChangeFilter]:
    """
    The filter a ``_changes`` request asks for, or ``None``.

    :raises ErrorResponse: with CouchDB's status and reason for a malformed
        or missing filter.
    """
    name = query.get("filter")
    if not name:
        return None
    body = body or {}
    if name == "_doc_ids":
        ids: Any = body.get("doc_ids", _MISSING) if method == "POST" else _MISSING
        if ids is _MISSING and "doc_ids" in query:
            try:
                ids = json.loads(query["doc_ids"])
            except ValueError:
                ids = None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _bad("`doc_ids` filter parameter is not a list of doc ids.")
        wanted = set(ids)
        return ChangeFilter(lambda doc: doc["_id"] in wanted, fast_path=True)
    if name == "_design":
        return ChangeFilter(lambda doc: doc["_id"].startswith("_design/"), fast_path=True)
    if name == "_selector":
        selector = body.get("selector")
        if not isinstance(selector, dict):
            raise _bad("Selector error: expected a JSON object")
        _check_selector(selector)
        fields = body.get("fields")
        project = None
        if isinstance(fields, list):
            project = lambda doc: {f: doc[f] for f in fields if f in doc}  # noqa: E731
        return ChangeFilter(lambda doc: selector_matches(doc, selector), project=project)
    if name == "_view":
        view = query.get("view")
        if view is None:
            raise _bad("`view` filter parameter is not provided.")
        _split(view, "`view` must be of the form `designname/viewname`")
        emits = _stand_in(db, functions.views, "view", "views", view)
        return ChangeFilter(lambda doc: bool(emits(dict(doc))))
    _split(name, "`filter` must be of the form `designname/filtername`")
    function = _stand_in(db, functions.filters, "filter", "filters", name)
    req = {
        "query": dict(query),
        "method": method,
        "body": json.dumps(body) if body else "undefined",
        "info": {"db_name": db.name},
    }
    return ChangeFilter(lambda doc: bool(function(dict(doc), req)))


# -- Mango selectors (a subset) ---------------------------------------------------

_COMBINATORS = {"$and", "$or", "$nor"}


def _compare(op: str, value: Any, arg: Any) -> bool:
    if op == "$eq":
        return bool(value == arg)
    if op == "$ne":
        return bool(value != arg)
    if op == "$in":
        return value in arg
    if op == "$nin":
        return value not in arg
    numbers = (int, float)
    comparable = (isinstance(value, numbers) and isinstance(arg, numbers)) or (
        isinstance(value, str) and isinstance(arg, str)
    )
    if not comparable or isinstance(value, bool) or isinstance(arg, bool):
        return False
    return bool({"$gt": value > arg, "$gte": value >= arg, "$lt": value < arg, "$lte": value <= arg}[op])


_OPERATORS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$not"}


def _field(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return _MISSING
        doc = doc[part]
    return doc


def _matches_condition(value: Any, condition: Any) -> bool:
    if not (isinstance(condition, dict) and condition and all(k.startswith("$") for k in condition)):
        return value is not _MISSING and bool(value == condition)
    for op, arg in condition.items():
        if op == "$exists":
            ok = (value is not _MISSING) == bool(arg)
        elif op == "$not":
            ok = not _matches_condition(value, arg)
        elif value is _MISSING:
            ok = False
        else:
            ok = _compare(op, value, arg)
        if not ok:
            return False
    return True


def selector_matches(doc: dict[str, Any], selector: dict[str, Any]) -> bool:
    """
    Whether *doc* matches a Mango selector. Supported: equality (``{"type":
    "fruit"}``, dotted field names for nested fields), ``$eq``, ``$ne``,
    ``$gt``, ``$gte``, ``$lt``, ``$lte`` (numbers with numbers, strings with
    strings), ``$in``, ``$nin``, ``$exists``, ``$not``, and ``$and``, ``$or``,
    ``$nor`` over lists of selectors.
    """
    for key, condition in selector.items():
        if key == "$and":
            ok = all(selector_matches(doc, s) for s in condition)
        elif key == "$or":
            ok = any(selector_matches(doc, s) for s in condition)
        elif key == "$nor":
            ok = not any(selector_matches(doc, s) for s in condition)
        else:
            ok = _matches_condition(_field(doc, key), condition)
        if not ok:
            return False
    return True


def _check_selector(selector: Any) -> None:
    if isinstance(selector, list):
        for item in selector:
            _check_selector(item)
        return
    if not isinstance(selector, dict):
        return
    for key, value in selector.items():
        if key.startswith("$") and key not in _OPERATORS | _COMBINATORS:
            raise _bad(f"Selector error: unknown operator {key} (the fake supports "
                       + ", ".join(sorted(_OPERATORS | _COMBINATORS)) + ")")
        if key in _COMBINATORS and not isinstance(value, list):
            raise _bad(f"Selector error: {key} needs a list of selectors")
        if key in ("$in", "$nin") and not isinstance(value, list):
            raise _bad(f"Selector error: {key} needs a list")
        _check_selector(value)
