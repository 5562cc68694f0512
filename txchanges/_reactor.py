"""
Time and the reactor: :class:`Clock`, what txchanges needs of a clock, and
the global reactor for callers that did not inject one.

Importing :mod:`twisted.internet.reactor` installs the default reactor as a
side effect, so txchanges never does it at import time: an application may
import txchanges first and install another reactor (asyncio's, a GUI loop's)
afterwards. Every class that takes a ``reactor`` or ``clock`` argument falls
back on these functions, which import the global reactor only when called.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, cast

__all__ = ["Clock", "default_reactor", "default_clock"]


class Clock(Protocol):
    """
    What txchanges needs of a clock: the ``callLater`` of
    :class:`~twisted.internet.interfaces.IReactorTime` (any reactor, or
    :class:`twisted.internet.task.Clock` in tests).
    """

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> Any: ...

    def seconds(self) -> float: ...


def default_reactor(reactor: Any = None) -> Any:
    """
    :param reactor: The reactor a caller injected, or ``None``.
    :return: *reactor*, or the global reactor (installing the default one
        if none is installed yet) when it is ``None``.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return reactor


def default_clock(clock: Optional[Clock] = None) -> Clock:
    """
    :param clock: The clock a caller injected, or ``None``.
    :return: *clock*, or the global reactor when it is ``None``.
    """
    return cast(Clock, default_reactor(clock))
