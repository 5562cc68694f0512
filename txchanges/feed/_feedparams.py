"""
The keyword arguments of the feed methods: :class:`FeedParams` names and
types the CouchDB ``_changes`` parameters in one place, for mypy (as
``**feed_params: Unpack[FeedParams]``) and for :func:`check_feed_params`,
which checks a call once, before any request, so that a misspelled keyword
is an error rather than a parameter the server silently ignores. Anything
else (a filter function's own parameters) goes in an explicit
``params={...}`` mapping.
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any, Literal, Optional, get_args, get_origin

from typing_extensions import TypedDict, get_type_hints

from txchanges.feed._params import FeedRequest, feed_request
from txchanges.http._query import encode_value

__all__ = [
    "FeedParams",
    "KNOWN",
    "SET_BY_METHOD",
    "check_feed_params",
    "check_interval",
    "feed_param_from_text",
    "live_request",
    "normal_request",
]


class FeedParams(TypedDict, total=False):
    """
    The CouchDB ``_changes`` parameters that the
    :class:`~txchanges.Consumer` methods and
    :class:`~txchanges.ChangesService` take as keyword arguments; their
    names and types live here only. Any other parameter (a filter
    function's own, which it reads in ``req.query``) goes in the explicit
    ``params={...}`` mapping, so that a misspelled keyword is an error, never
    a parameter the server silently ignores.
    """

    #: A filter, ``"designname/filtername"`` or a built-in (``_doc_ids``,
    #: ``_selector``, ``_view``, ``_design``); ``filter_name`` is its alias.
    filter: str
    #: Only these documents' changes (sent in a POST body; implies ``_doc_ids``).
    doc_ids: list[str]
    #: A Mango selector (sent in a POST body; implies ``_selector``).
    selector: dict[str, Any]
    #: With *selector*: the fields of each ``doc`` to return.
    fields: list[str]
    #: ``"designname/viewname"``: the documents its map emits (implies ``_view``).
    view: str
    include_docs: bool
    conflicts: bool
    attachments: bool
    att_encoding_info: bool
    style: Literal["main_only", "all_docs"]
    #: At most this many rows.
    limit: int
    descending: bool
    #: CouchDB computes a ``seq`` only every this many rows.
    seq_interval: int


#: The keyword names :class:`FeedParams` declares.
KNOWN = frozenset(FeedParams.__optional_keys__)

#: Names on the wire that the methods set themselves or take as a named
#: argument, with the reason: never a key of ``params``, nor a keyword
#: where no argument names them.
SET_BY_METHOD: Mapping[str, str] = {
    "feed": "the feed type is chosen by the method called",
    "since": "since is an argument of its own",
    "heartbeat": "heartbeat is an argument of its own",
    "timeout": "timeout is an argument of its own",
    "filter_name": "filter_name is an argument of its own",
}

_MINIMUM = {"limit": 0, "seq_interval": 1}

#: What a value should be, and the error when it is not: a TypeError for the
#: wrong type, a ValueError for the right type with a wrong value.
_Wanted = Optional[tuple[type[Exception], str]]


def _value_check(name: str, hint: Any) -> Callable[[Any], _Wanted]:
    """
    A check of one :class:`FeedParams` value, made from its declared type.
    """
    if hint is bool:
        return lambda v: None if isinstance(v, bool) else (TypeError, "True or False")
    if hint is int:
        low = _MINIMUM.get(name)
        at_least = "a whole number" if low is None else f"a whole number, at least {low}"

        def whole(v: Any) -> _Wanted:
            if not isinstance(v, int) or isinstance(v, bool):
                return TypeError, at_least
            return None if low is None or v >= low else (ValueError, at_least)

        return whole
    if hint is str:
        return lambda v: None if isinstance(v, str) else (TypeError, "a str")
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        wanted = "one of " + ", ".join(map(repr, choices))
        return lambda v: (
            None if isinstance(v, str) and v in choices else (ValueError if isinstance(v, str) else TypeError, wanted)
        )
    if get_origin(hint) is list:
        return lambda v: (
            None
            if isinstance(v, (list, tuple)) and all(isinstance(i, str) for i in v)
            else (TypeError, "a list of str")
        )
    if get_origin(hint) is not dict:
        raise TypeError(f"FeedParams.{name}: no check for {hint!r}")
    return lambda v: None if isinstance(v, dict) else (TypeError, "a dict")


_HINTS: dict[str, Any] = get_type_hints(FeedParams)
_CHECKS = {name: _value_check(name, hint) for name, hint in _HINTS.items()}


def _where(owner: Callable[..., Any]) -> str:
    return owner.__qualname__ + "()"


def _unknown(owner: Callable[..., Any], name: str) -> TypeError:
    # The error path only: the suggestions include the method's own
    # arguments, so that ChangesService(concurency=8) points at concurrency.
    own = [
        p.name
        for p in inspect.signature(owner).parameters.values()
        if p.kind is not p.VAR_KEYWORD and p.name != "self"
    ]
    close = difflib.get_close_matches(name, sorted(KNOWN) + own, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return TypeError(
        f"{_where(owner)}: unknown feed parameter {name!r}{hint}; pass others in params={{...}}"
    )


def check_feed_params(
    owner: Callable[..., Any],
    given: Mapping[str, Any],
    params: Optional[Mapping[str, Any]] = None,
    refused: Mapping[str, str] = SET_BY_METHOD,
) -> dict[str, Any]:
    """
    Check a call's feed parameters, once, before any request.

    :param owner: The method (or class) called, for the messages and the
        suggestions.
    :param given: Its keyword arguments beyond the named ones: each must be
        a :class:`FeedParams` name with a value of its type (``None`` leaves
        it out).
    :param params: The explicit ``params={...}`` mapping: any other query
        parameter, a filter's own above all; its keys must not be a feed
        parameter's name or one the method sets itself.
    :param refused: Names the method sets itself, or does not take, with the
        reason (:data:`SET_BY_METHOD` by default).
    :raises TypeError: for an unknown keyword (naming the closest known
        one), a value of the wrong type, or *params* that is not a mapping
        of str keys to values CouchDB can read.
    :raises ValueError: for a keyword in *refused*, a value out of range,
        or a key of *params* that collides with a named parameter.
    :return: *given* and *params* in one dict, as :func:`feed_request`
        takes them.
    """
    for name, value in given.items():
        if name not in KNOWN:
            if name in refused:
                raise ValueError(f"{_where(owner)}: {name}= is not allowed: {refused[name]}")
            raise _unknown(owner, name)
        if value is not None:
            wrong = _CHECKS[name](value)
            if wrong is not None:
                raise wrong[0](f"{_where(owner)}: {name} must be {wrong[1]}, not {value!r}")
    merged = dict(given)
    if params is None:
        return merged
    if not isinstance(params, Mapping):
        raise TypeError(f"{_where(owner)}: params must be a mapping, not {type(params).__name__}")
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{_where(owner)}: a key of params must be a non-empty str, not {key!r}")
        if key in KNOWN or key in SET_BY_METHOD or key in refused:
            reason = refused.get(key) or SET_BY_METHOD.get(key) or f"pass it as {key}=..."
            raise ValueError(f"{_where(owner)}: {key!r} in params is not allowed: {reason}")
        if value is not None:
            encode_value(key, value)
        merged[key] = value
    return merged


def check_interval(name: str, value: Any, *, allow_true: bool = False) -> None:
    """
    Check a ``heartbeat`` or ``timeout`` argument: ``None``, milliseconds
    (a whole number, 0 or more), and for *allow_true* ``True`` or ``False``.

    :raises TypeError: for another type.
    :raises ValueError: for a negative number.
    """
    if value is None or (allow_true and isinstance(value, bool)):
        return
    if not isinstance(value, int) or isinstance(value, bool):
        allowed = "True, False, " if allow_true else ""
        raise TypeError(f"{name} must be {allowed}milliseconds (an int) or None, not {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be 0 or more milliseconds, not {value!r}")


def feed_param_from_text(name: str, text: str) -> Any:
    """
    Read a :class:`FeedParams` value from text, as a command line gives it
    (``true``/``false``, a number, JSON for a list or a dict).

    :raises KeyError: when *name* is not a :class:`FeedParams` name.
    :raises ValueError: when *text* is not a value of its type.
    :return: The value, checked.
    """
    hint = _HINTS[name]
    value: Any = text
    if hint is bool:
        if text not in ("true", "false"):
            raise ValueError(f"{name} must be true or false, not {text!r}")
        value = text == "true"
    elif hint is int:
        try:
            value = int(text)
        except ValueError:
            value = text
    elif get_origin(hint) in (list, dict):
        try:
            value = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{name} must be JSON ({e}): {text[:80]!r}") from None
    wrong = _CHECKS[name](value)
    if wrong is not None:
        raise ValueError(f"{name} must be {wrong[1]}, not {text!r}")
    return value


#: The normal feed's refusals: it has no heartbeat and no timeout.
_NORMAL_REFUSED = dict(
    SET_BY_METHOD,
    heartbeat="the normal feed has no heartbeat (wait_once and wait have)",
    timeout="the normal feed has no timeout (wait_once and wait have)",
)


def normal_request(
    owner: Callable[..., Any],
    since: Any,
    filter_name: Optional[str],
    params: Optional[Mapping[str, Any]],
    feed_params: Mapping[str, Any],
) -> FeedRequest:
    """
    Check a call of a normal-feed method (:meth:`~txchanges.Consumer.fetch`,
    :meth:`~txchanges.Consumer.fetch_rows`) and make its request.

    :raises TypeError: see :func:`check_feed_params`.
    :raises ValueError: see :func:`check_feed_params` and :func:`feed_request`.
    """
    merged = check_feed_params(owner, feed_params, params, _NORMAL_REFUSED)
    merged["filter_name"] = filter_name
    return feed_request("normal", since, merged)


def live_request(
    owner: Callable[..., Any],
    feed: str,
    since: Any,
    heartbeat: Any,
    timeout: Any,
    filter_name: Optional[str],
    params: Optional[Mapping[str, Any]],
    feed_params: Mapping[str, Any],
) -> FeedRequest:
    """
    Check a call of a longpoll or continuous method (its named *heartbeat*,
    *timeout* and *filter_name* too) and make its request.

    :raises TypeError: see :func:`check_feed_params` and :func:`check_interval`.
    :raises ValueError: see :func:`check_feed_params` and :func:`feed_request`.
    """
    check_interval("heartbeat", heartbeat, allow_true=True)
    check_interval("timeout", timeout)
    merged = check_feed_params(owner, feed_params, params)
    merged.update(heartbeat=heartbeat, timeout=timeout, filter_name=filter_name)
    return feed_request(feed, since, merged)
