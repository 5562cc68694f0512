"""
The twistd plugin of txchanges: ``twistd -n txchanges --help``.

This directory must have no ``__init__.py``: Twisted extends the path of
its own ``twisted.plugins`` package with every ``twisted/plugins`` directory
on ``sys.path`` that has none.
"""

from twisted.application.service import ServiceMaker

txchanges = ServiceMaker(
    "txchanges",
    "txchanges.cli._tap",
    "Follow a CouchDB database's _changes feed and hand each change to a Python handler.",
    "txchanges",
)
