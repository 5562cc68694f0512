"""
A scan of a server's databases: every name, page by page from
``_all_dbs``, and each matching database's ``update_seq`` from
``_dbs_info`` in batches, so that no response grows with the number of
databases.
"""

from __future__ import annotations

from typing import Any, Callable

from txchanges.http.client import Server

__all__ = ["scan", "PAGE", "BATCH"]

#: Names asked of ``_all_dbs`` at once.
PAGE = 1000
#: Names asked of ``_dbs_info`` at once: CouchDB refuses more than
#: ``max_db_number_for_dbs_info_req`` (100 by default).
BATCH = 100


async def scan(
    server: Server,
    match: Callable[[str], bool],
    found: Callable[[str, dict[str, Any]], None],
    *,
    page: int = PAGE,
    batch: int = BATCH,
) -> set[str]:
    """
    Walk every database of *server* once.

    :param match: Which names to look at.
    :param found: Called with each matching database's name and its
        information (``update_seq``, ``doc_count``, ...); a database deleted
        while the scan runs is left out.
    :return: The names of the matching databases seen.
    """
    seen: set[str] = set()
    start: str | None = None
    waiting: list[str] = []
    while True:
        names = await server.all_dbs(start_key=start, limit=page)
        for name in names:
            if match(name):
                waiting.append(name)
        while len(waiting) >= batch or (waiting and len(names) < page):
            chunk, waiting = waiting[:batch], waiting[batch:]
            for row in await server.dbs_info(chunk):
                info = row.get("info")
                if isinstance(info, dict):
                    seen.add(row["key"])
                    found(row["key"], info)
        if len(names) < page:
            return seen
        # The next page starts just after the last name: "\0" sorts right
        # after a name and before anything longer.
        start = names[-1] + "\0"
