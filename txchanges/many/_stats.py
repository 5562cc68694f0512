"""
:class:`DatabasesStats`: what a :class:`~txchanges.DatabasesService` has
done and is doing, for monitoring.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatabasesStats"]


@dataclass
class DatabasesStats:
    """
    What a :class:`~txchanges.DatabasesService` has done and is doing.

    :ivar databases: Databases followed: every matching database the
        service knows of.
    :ivar open_feeds: Catch-up feeds open now (at most *max_connections*;
        the ``_db_updates`` feed is not counted).
    :ivar waiting: Databases with changes to read, waiting for a feed.
    :ivar oldest_wait: Seconds the database waiting longest has waited
        (``0.0`` when none waits).
    :ivar handled: Changes the handler finished, over every database.
    :ivar handler_failures: Handler calls that failed.
    :ivar catch_ups: Catch-up requests made.
    :ivar catch_up_failures: Catch-up requests that failed (each is retried
        with backoff, that database alone).
    :ivar scans: Scans of every database finished (at start-up, and after
        the ``_db_updates`` feed was lost).
    :ivar deleted: Databases seen deleted.
    :ivar reconnects: Requests of the ``_db_updates`` feed after the first.
    :ivar checkpoints: Batches of checkpoints saved.
    """

    databases: int = 0
    open_feeds: int = 0
    waiting: int = 0
    oldest_wait: float = 0.0
    handled: int = 0
    handler_failures: int = 0
    catch_ups: int = 0
    catch_up_failures: int = 0
    scans: int = 0
    deleted: int = 0
    reconnects: int = 0
    checkpoints: int = 0
