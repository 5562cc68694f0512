"""
Importing what a command line names as ``MODULE:NAME``: the plugin's
handlers, with an error that says what to do when twistd cannot find them.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from twisted.python import usage
from twisted.python.reflect import namedAny

__all__ = ["load_object"]


def load_object(spec: str, option: str) -> Any:
    """
    Import ``package.module:name`` (or the dotted ``package.module.name``).

    :raises usage.UsageError: naming *option*, *spec* and the reason when it
        cannot be imported, whatever the module raised.
    """
    module_name, sep, attribute = spec.partition(":")
    try:
        if not sep:
            return namedAny(spec)
        if not module_name or not attribute:
            raise ValueError("expected MODULE:NAME")
        obj: Any = __import__(module_name, fromlist=["_"])
        for part in attribute.split("."):
            obj = getattr(obj, part)
        return obj
    except Exception as e:  # importing runs the user's code: anything can fail
        message = f"{option} {spec!r} cannot be imported: {type(e).__name__}: {e}"
        raise usage.UsageError(message + _not_on_path_hint(module_name or spec)) from None


def _not_on_path_hint(dotted: str) -> str:
    # The commonest cause: twistd, unlike "python -m", does not put the
    # current directory on sys.path, so a handler in the project folder is
    # not found.
    top = dotted.split(".")[0]
    try:
        missing = importlib.util.find_spec(top) is None
    except (ImportError, ValueError):
        missing = True
    if not top.isidentifier() or not missing:
        return ""
    return (
        f" (twistd does not look in the current directory: run it as PYTHONPATH=. twistd ... from the"
        f" folder holding {top}, or install {top} as a package)"
    )
