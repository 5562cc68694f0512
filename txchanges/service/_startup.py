"""
A follower's start-up: steps run one after the other, each retried on its
own when it fails; and the service's steps (check and load the checkpoint,
resolve ``since="now"`` and save it).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txchanges.http.client import Database
from txchanges.service._lifecycle_types import Cancellable, Inputs
from txchanges.service._retry import Backoff, next_try
from txchanges.service._saver import prepare_store
from txchanges.service.checkpoint import CheckpointStore

__all__ = ["Step", "Steps", "StartUp", "start_up", "resume_steps"]


@dataclass(frozen=True)
class Step:
    """One start-up step."""

    #: What it does, for the log: ``"loading the checkpoint from ..."``.
    what: str
    #: Does it: returns a Deferred that fires with the step's result.
    run: Callable[[], "Deferred[Any]"]


#: The steps: a generator that yields each :class:`Step` and is sent its
#: result; it returns when the follower can begin.
Steps = Generator[Step, Any, None]


class StartUp:
    """
    Runs a follower's start-up steps and tells the lifecycle how they end:
    ``started()``; ``start_failed(self, delay)`` when a step failed and may
    be retried, which :meth:`run` does after the delay; ``crash(failure)``
    when it may not. A step is retried alone: those before it are done.

    :param steps: The steps.
    :param backoff: Times the retries; reset after each step that succeeds.
    :param log: Where failed steps are logged.
    """

    def __init__(self, steps: Steps, backoff: Backoff, log: Logger) -> None:
        self._steps = steps
        self._backoff = backoff
        self._log = log
        self._step: Optional[Step] = None
        self._pending: Optional[Deferred[Any]] = None
        self._cancelled = False
        backoff.reset()

    def run(self, machine: Inputs) -> StartUp:
        """
        Run the step that failed last (the first one the first time), and
        the steps after it.

        :return: This start-up, the lifecycle's data while it runs.
        """
        self._machine = machine
        if self._step is None:
            self._advance(None)
        else:
            self._attempt(self._step)
        return self

    def cancel(self) -> None:
        """
        Stop: cancel the step in flight and run no other; the lifecycle is
        told nothing more.
        """
        self._cancelled = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def _advance(self, result: Any) -> None:
        try:
            self._step = next(self._steps) if self._step is None else self._steps.send(result)
        except StopIteration:
            self._machine.started()
            return
        except Exception:
            # What a step's result led to failed (not a request): no retry.
            self._machine.crash(Failure())
            return
        self._attempt(self._step)

    def _attempt(self, step: Step) -> None:
        pending = self._pending = maybeDeferred(step.run)
        pending.addCallbacks(self._succeeded, self._failed, errbackArgs=(step,))

    def _succeeded(self, result: Any) -> None:
        self._pending = None
        if self._cancelled:
            return
        self._backoff.reset()
        self._advance(result)

    def _failed(self, failure: Failure, step: Step) -> None:
        self._pending = None
        if self._cancelled:
            return
        error = failure.value
        assert error is not None
        delay = next_try(self._backoff, error, step.what, self._log)
        if delay is None:
            self._machine.crash(failure)
        else:
            self._machine.start_failed(self, delay)


def start_up(
    machine: Inputs, startup: Optional[Cancellable], steps: Callable[[], Steps], backoff: Backoff, log: Logger
) -> Cancellable:
    """
    The lifecycle's ``start_up`` hook: go on with *startup* or, when it is
    ``None``, run new *steps*.
    """
    if startup is None:
        startup = StartUp(steps(), backoff, log)
    assert isinstance(startup, StartUp)
    return startup.run(machine)


def resume_steps(
    db: Database, store: CheckpointStore, identity: str, since: Any, log: Logger
) -> Generator[Step, Any, tuple[Any, Any]]:
    """
    A :class:`~txchanges.ChangesService`'s steps: check that *store* is the
    one of the feed *identity* names, load its checkpoint (it wins over
    *since*), and turn ``since="now"`` into the database's current seq,
    saved at once.

    Its requests are retried like feed requests: a passing 503 or a refused
    connection must not end the service.

    :return: ``(saved, since)``: what the store holds, and where to start.
    """
    where = store.describe()
    yield Step(f"checking {where}", lambda: prepare_store(store, identity))
    saved = yield Step(f"loading the checkpoint from {where}", store.load)
    if saved is not None:
        log.info("resuming from checkpoint {seq} in {where}", seq=saved, where=where)
        since = saved
    elif since in (None, 0, "0"):
        log.info("no checkpoint in {where}; starting from the beginning", where=where)
    else:
        log.info("no checkpoint in {where}; starting from {seq}", where=where, seq=since)
    if since == "now":
        # A concrete position, so that every checkpoint is a real seq.
        body = yield Step(
            "asking for the current seq",
            lambda: db.server.request_json("GET", db.path("_changes"), [("since", "now"), ("limit", "0")]),
        )
        now = body["last_seq"]
        # Saved at once: after a crash before the first checkpoint, a
        # restart must not take a later "now" and skip what came between.
        yield Step("saving the first checkpoint", lambda: store.save(now))
        return now, now
    return saved, since
