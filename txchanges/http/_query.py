"""
Query parameter values as CouchDB reads them. Pure functions, no Twisted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["encode_value", "encode_params"]


def encode_value(name: str, value: Any) -> str:
    """
    Encode one query parameter value as CouchDB reads it.

    Booleans become ``true``/``false``, numbers their decimal form, strings
    are sent unchanged (so opaque sequences are never touched), and lists or
    dicts are sent as JSON.

    :param name: The parameter's name, for the error message.
    :param value: The value to encode.
    :raises TypeError: for a value of any other type.
    :return: The text to percent-encode into the query string.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    raise TypeError(
        f"cannot send parameter {name}={value!r} ({type(value).__name__}) to CouchDB"
    )


def encode_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """
    Encode keyword arguments as query pairs, leaving out those that are
    ``None``.

    :param params: Parameter names and values.
    :return: ``(name, text)`` pairs in the given order.
    """
    return [(k, encode_value(k, v)) for k, v in params.items() if v is not None]
