"""
The feed layer: the ``_changes`` request parameters, the parsers of feed
bodies (pure), the protocols that read them, and :class:`Consumer`, the
couchdbkit-shaped API on top.
"""
