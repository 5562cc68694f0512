"""
The benchmark of txchanges against the simplest clients of a CouchDB feed.

Run it with ``python benchmarks/run.py`` (``--quick`` for a short run); see
``BENCHMARKS.md`` for the latest figures.
"""
