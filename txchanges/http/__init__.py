"""
The HTTP layer: URLs, requests, error mapping, and the bulk reader for long
feed responses. :class:`Server` and :class:`Database` are its public face.
"""
