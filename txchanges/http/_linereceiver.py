"""
:class:`ILineReceiver`: how a body protocol tells the HTTP layer that it
takes lines. The HTTP layer hands every body protocol bytes with
``dataReceived``; one that provides this interface is handed the lines of
one-line chunks already split, with ``lines_received``.
"""

from __future__ import annotations

from zope.interface import Interface  # type: ignore[import-untyped]

__all__ = ["ILineReceiver"]


class ILineReceiver(Interface):  # type: ignore[misc]
    """
    A body protocol that takes body data already split into lines, as well
    as bytes through ``dataReceived``.
    """

    def lines_received(lines: list[bytes]) -> None:
        """
        Take complete lines of the body, without their ``\\n``; the first
        one continues a line that earlier bytes left unfinished, if any.
        The protocol may keep *lines*.
        """
