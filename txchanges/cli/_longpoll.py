"""
The command's ``--feed longpoll`` follower: one longpoll request per batch,
on the service's lifecycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.errors import TxChangesError
from txchanges._reactor import Clock
from txchanges.feed.consumer import Consumer
from txchanges.http.client import Database
from txchanges.service._lifecycle import Lifecycle
from txchanges.service._lifecycle_types import Core, Inputs, State
from txchanges.service._retry import Backoff, next_try
from txchanges.service._saver import prepare_store
from txchanges.service._startup import Step, Steps, start_up
from txchanges.service._stats import ServiceStats
from txchanges.service.checkpoint import CheckpointStore
from txchanges.service.shard import Shard

__all__ = ["LongpollFollower"]


class LongpollFollower:
    """
    Follows a feed with one longpoll request per batch: each batch's
    changes go to *handler*, then its ``last_seq`` is checkpointed. It runs
    the service's lifecycle: the same states, the same retries (with
    backoff, honouring ``Retry-After``), the same terminal errors; a handler
    that fails stops it. It has the service's ``db``, ``state``, ``stats``
    (where ``reconnects`` counts requests retried after a failure) and
    ``resume_seq``.

    :param heartbeat: The longest each request waits for a change, in
        milliseconds: it is sent as ``timeout``, not ``heartbeat``, so that
        every response ends by itself, and a proxy that buffers responses
        passes each one on whole.
    :param limit: Stop after this many changes; requests ask for no more.
    :param shard: Hand over only the changes of this shard's documents.
    :param params: The filter's own parameters, and *feed_params* the feed
        parameters, as :meth:`~txchanges.Consumer.wait_once` takes and checks them.
    """

    log = Logger()

    def __init__(
        self,
        db: Database,
        handler: Callable[[dict[str, Any]], Any],
        *,
        since: Any,
        checkpoint: CheckpointStore,
        heartbeat: int,
        give_up_after: Optional[float],
        limit: Optional[int],
        clock: Clock,
        shard: Optional[Shard] = None,
        params: Optional[Mapping[str, Any]] = None,
        **feed_params: Any,
    ) -> None:
        self.db = db
        self.stats = ServiceStats()
        self.resume_seq: Any = None
        self._handler = handler
        self._since = since
        self._store = checkpoint
        self._heartbeat = heartbeat
        self._limit = limit
        self._shard = shard
        self._clock = clock
        self._feed_params = feed_params
        self._params = params
        self._consumer = Consumer(db, clock=clock)
        self._backoff = Backoff(backoffPolicy(), give_up_after, clock)
        self._lifecycle = Lifecycle(
            Core(
                start_up=lambda machine, startup: start_up(machine, startup, self._start_steps, self._backoff, self.log),
                connect=self._connect, halt=lambda: None, finish=lambda: succeed(None), ended=lambda failure: None,
                retrying=self._retrying, clock=clock,
            )
        )

    @property
    def state(self) -> State:
        """What the follower is doing."""
        return self._lifecycle.state

    def start(self) -> None:
        self._lifecycle.start()

    def when_stopped(self) -> "Deferred[None]":
        """
        :return: A new Deferred that fires once stopped, and fails with the
            error that stopped it.
        """
        return self._lifecycle.when_stopped()

    def stop(self) -> "Deferred[None]":
        """:return: A Deferred that fires once stopped, a batch being saved saved."""
        return self._lifecycle.stop()

    def _start_steps(self) -> Steps:
        where = self._store.describe()
        # The command made the store with the feed's identity already.
        yield Step(f"checking {where}", lambda: prepare_store(self._store, None))
        saved = yield Step(f"loading the checkpoint from {where}", self._store.load)
        self.resume_seq = saved if saved is not None else self._since

    def _connect(self, machine: Inputs) -> _Batch:
        feed_params = dict(self._feed_params)
        if self._limit is not None:
            feed_params["limit"] = self._limit - self.stats.handled
        batch = _Batch(self._consumer)
        # A longpoll response says nothing until it is whole: reading it
        # begins with the request.
        machine.opened(batch)
        batch.done = Deferred.fromCoroutine(self._read(self.resume_seq, feed_params))
        batch.done.addBoth(self._batch_over, machine, batch)
        return batch

    async def _read(self, since: Any, feed_params: dict[str, Any]) -> None:
        body = await self._consumer.wait_once(
            since, timeout=self._heartbeat, heartbeat=False, cb=self._handle, params=self._params, **feed_params)
        self.stats.last_activity = self._clock.seconds()
        self.stats.pending = body.get("pending")
        since = body["last_seq"]
        await self._store.save(since)
        self.resume_seq = since
        self.stats.checkpoints += 1

    def _handle(self, change: dict[str, Any]) -> Any:
        if self._shard is not None and not self._shard.owns(change["id"]):
            self.stats.other_shards += 1
            return None
        result = self._handler(change)
        self.stats.handled += 1
        return result

    def _batch_over(self, result: Any, machine: Inputs, batch: _Batch) -> None:
        if batch.stopped:
            return
        if isinstance(result, Failure):
            error = result.value
            # Only the feed's own errors are retried: a handler that raised
            # stops the follower.
            delay = next_try(self._backoff, error, "longpoll", self.log) if isinstance(error, TxChangesError) else None
            if delay is None:
                machine.crash(result)
            else:
                machine.lost(delay)
            return
        self._backoff.reset()
        if self._limit is not None and self.stats.handled >= self._limit:
            machine.stop(Deferred())
        else:
            machine.ended()

    def _retrying(self) -> None:
        self.stats.reconnects += 1


class _Batch:
    """One longpoll request and the checkpoint after it: the lifecycle's data while it runs."""

    done: "Deferred[None]"

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        self._consumer.stop()
