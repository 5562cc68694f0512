"""
The command line: the ``txchanges`` command (``follow``, ``fetch``), its
options shared with the twistd plugin, and the plugin's service maker.
"""

from txchanges.cli._main import main

__all__ = ["main"]
