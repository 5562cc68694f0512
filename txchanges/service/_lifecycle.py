"""
A follower's lifecycle as a state machine, written with automat as Twisted's
own ``ClientService`` is.

The machine decides what comes next; its owner does the work through the
hooks of a :class:`~txchanges.service._lifecycle_types.Core` (that module
also holds the states and the inputs): run the start-up steps, send the next
feed request, halt and drain the handler calls. What is in flight - the start-up
steps, the feed request, the retry waiting on the clock - is the data of the
state it belongs to, so a stop in any state cancels exactly that.

Every input returns ``None``: one that arrives while another is being
handled (a request that fails at once, a handler that stops the follower)
is handled right after it, in order.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from automat import TypeMachineBuilder
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txchanges.service._lifecycle_types import Cancellable, Core, Inputs, Request, State

__all__ = ["Lifecycle"]


# -- what the machine does: outputs (machine, core, the state's data, the input's arguments) --


def _nothing(c: Inputs, s: Core, data: object, *args: object) -> None:
    pass


def _start_up(c: Inputs, s: Core, startup: Optional[Cancellable] = None) -> Cancellable:
    return s.start_up(c, startup)


def _connect(c: Inputs, s: Core) -> Request:
    return s.connect(c)


def _reading(c: Inputs, s: Core, request: Request) -> Request:
    return request


def _retry_start_later(c: Inputs, s: Core, startup: Cancellable, delay: float) -> Cancellable:
    call: Cancellable = s.clock.callLater(delay, c.retry_start, startup)
    return call


def _reconnect_later(c: Inputs, s: Core, delay: float) -> Cancellable:
    call: Cancellable = s.clock.callLater(delay, c.reconnect)
    return call


def _drain(c: Inputs, s: Core, *args: object) -> "Deferred[None]":
    return s.finish().addCallbacks(lambda _: c.drained(None), c.unsaved)


def _drain_failing(c: Inputs, s: Core, failure: Failure) -> Failure:
    # The error it stops with wins over a checkpoint that could not be saved.
    s.finish().addBoth(lambda _: c.drained(failure))
    return failure


def _failure(c: Inputs, s: Core, failure: Failure) -> Failure:
    return failure


def _fire(c: Inputs, s: Core, data: object, done: "Deferred[None]") -> None:
    done.callback(None)


def _fire_failure(c: Inputs, s: Core, failure: Failure, done: "Deferred[None]") -> None:
    done.errback(failure)


def _wait_for_stop(c: Inputs, s: Core, data: object, done: "Deferred[None]") -> None:
    s.stop_waiters.append(done)


def _wait_for_end(c: Inputs, s: Core, data: object, done: "Deferred[None]") -> None:
    s.end_waiters.append(done)


def _cancel_start_up(c: Inputs, s: Core, startup: Cancellable, done: "Deferred[None]") -> None:
    startup.cancel()
    s.stop_waiters.append(done)


def _cancel_retry(c: Inputs, s: Core, call: Cancellable, done: "Deferred[None]") -> None:
    call.cancel()
    s.stop_waiters.append(done)


def _drop_retry(c: Inputs, s: Core, call: Cancellable, failure: Failure) -> None:
    call.cancel()


def _disconnect(c: Inputs, s: Core, request: Request, done: "Deferred[None]") -> None:
    s.halt()
    s.stop_waiters.append(done)
    request.stop()
    # Drained only once the request is over: a handler that stopped the
    # follower from inside its call is done only when that call returns.
    request.done.addBoth(lambda _: c.disconnected())


def _abort(c: Inputs, s: Core, request: Request, failure: Failure) -> None:
    request.stop()


def _count_retry(c: Inputs, s: Core, data: object) -> None:
    s.retrying()


def _announce(c: Inputs, s: Core, data: object, failure: Optional[Failure]) -> None:
    s.ended(failure)
    stopping, s.stop_waiters = s.stop_waiters, []
    ending, s.end_waiters = s.end_waiters, []
    for d in stopping:
        d.callback(None)
    for d in ending:
        if failure is None:
            d.callback(None)
        else:
            d.errback(failure)


# -- the machine ---------------------------------------------------------------------------

_builder = TypeMachineBuilder(Inputs, Core)
_STATES: dict[object, State] = {}
_WITH_DATA: set[object] = set()


def _state(name: str, public: State, factory: Optional[Callable[..., Any]] = None) -> Any:
    if factory is None:
        state: Any = _builder.state(name)
    else:
        entered = factory

        def enter(c: Inputs, s: Core, *args: object) -> Any:
            s.state = public
            return entered(c, s, *args)

        enter.__name__ = factory.__name__
        state = _builder.state(name, enter)
        _WITH_DATA.add(state)
    _STATES[state] = public
    return state


# The states: the name logs and metrics show, and the data made on entering
# one (from the input's arguments) that its transitions then act on.
idle = _state("idle", State.STOPPED)
starting = _state("starting", State.STARTING, _start_up)  # the StartUp in flight
start_wait = _state("start_wait", State.WAITING, _retry_start_later)  # the delayed call
connecting = _state("connecting", State.CONNECTING, _connect)  # the Request in flight
streaming = _state("streaming", State.STREAMING, _reading)  # the same Request
waiting = _state("waiting", State.WAITING, _reconnect_later)  # the delayed call
disconnecting = _state("disconnecting", State.STOPPING)
stopping = _state("stopping", State.STOPPING, _drain)  # the drain
failing = _state("failing", State.STOPPING, _drain_failing)  # the error it ends with
stopped = _state("stopped", State.STOPPED)
failed = _state("failed", State.FAILED, _failure)  # the error it ended with

On = Inputs

#: Every transition: in this state, upon this input, go to that state doing this.
TRANSITIONS: list[tuple[Any, Callable[..., None], Any, Callable[..., None]]] = [
    # in state      upon              go to          doing
    (idle,          On.start,         starting,      _nothing),
    (idle,          On.stop,          idle,          _fire),
    (idle,          On.when_stopped,  idle,          _wait_for_end),

    (starting,      On.started,       connecting,    _nothing),
    (starting,      On.start_failed,  start_wait,    _nothing),
    (starting,      On.crash,         failing,       _nothing),
    (starting,      On.stop,          stopping,      _cancel_start_up),
    (starting,      On.when_stopped,  starting,      _wait_for_end),

    (start_wait,    On.retry_start,   starting,      _nothing),
    (start_wait,    On.stop,          stopping,      _cancel_retry),
    (start_wait,    On.when_stopped,  start_wait,    _wait_for_end),

    (connecting,    On.opened,        streaming,     _nothing),
    (connecting,    On.lost,          waiting,       _nothing),
    (connecting,    On.crash,         failing,       _abort),
    (connecting,    On.stop,          disconnecting, _disconnect),
    (connecting,    On.when_stopped,  connecting,    _wait_for_end),

    (streaming,     On.ended,         connecting,    _nothing),
    (streaming,     On.lost,          waiting,       _nothing),
    (streaming,     On.crash,         failing,       _abort),
    (streaming,     On.stop,          disconnecting, _disconnect),
    (streaming,     On.when_stopped,  streaming,     _wait_for_end),

    (waiting,       On.reconnect,     connecting,    _count_retry),
    (waiting,       On.crash,         failing,       _drop_retry),
    (waiting,       On.stop,          stopping,      _cancel_retry),
    (waiting,       On.when_stopped,  waiting,       _wait_for_end),

    (disconnecting, On.disconnected,  stopping,      _nothing),
    (disconnecting, On.crash,         disconnecting, _nothing),
    (disconnecting, On.stop,          disconnecting, _wait_for_stop),
    (disconnecting, On.when_stopped,  disconnecting, _wait_for_end),

    (stopping,      On.drained,       stopped,       _announce),
    (stopping,      On.unsaved,       failed,        _announce),
    (stopping,      On.crash,         stopping,      _nothing),
    (stopping,      On.stop,          stopping,      _wait_for_stop),
    (stopping,      On.when_stopped,  stopping,      _wait_for_end),

    (failing,       On.drained,       failed,        _announce),
    (failing,       On.crash,         failing,       _nothing),
    # How a request ended (cleanly, or with an error), told in the same
    # call as the failure before it (a page that ends in the read whose
    # change the handler failed on): the machine takes it after the
    # failure, when the request is over anyway.
    (failing,       On.ended,         failing,       _nothing),
    (failing,       On.lost,          failing,       _nothing),
    (failing,       On.stop,          failing,       _wait_for_stop),
    (failing,       On.when_stopped,  failing,       _wait_for_end),

    (stopped,       On.start,         starting,      _nothing),
    (stopped,       On.stop,          stopped,       _fire),
    (stopped,       On.when_stopped,  stopped,       _fire),

    (failed,        On.start,         starting,      _nothing),
    (failed,        On.ended,         failed,        _nothing),
    (failed,        On.lost,          failed,        _nothing),
    (failed,        On.stop,          failed,        _fire),
    (failed,        On.when_stopped,  failed,        _fire_failure),
]


def _register(old: Any, upon: Callable[..., None], new: Any, output: Callable[..., None]) -> None:
    public = _STATES[new]
    # automat hands an output the state's data only in a state that has some.
    def with_data(c: Inputs, s: Core, data: object, *args: object) -> None:
        s.state = public
        output(c, s, data, *args)

    def without_data(c: Inputs, s: Core, *args: object) -> None:
        s.state = public
        output(c, s, None, *args)

    step = with_data if old in _WITH_DATA else without_data
    step.__name__ = output.__name__
    old.upon(upon).to(new)(step)


for _transition in TRANSITIONS:
    _register(*_transition)
_Machine = _builder.build()


class Lifecycle:
    """
    A follower's lifecycle.

    :param core: The follower's hooks.
    :ivar machine: The inputs, for the follower to report what happened.
    """

    def __init__(self, core: Core) -> None:
        self._core = core
        self.machine: Inputs = _Machine(core)

    @property
    def state(self) -> State:
        """What the follower is doing."""
        return self._core.state

    def start(self) -> None:
        self.machine.start()

    def stop(self) -> "Deferred[None]":
        """
        :return: A Deferred that fires once stopped; it never fails.
        """
        done: Deferred[None] = Deferred()
        self.machine.stop(done)
        return done

    def when_stopped(self) -> "Deferred[None]":
        """
        :return: A new Deferred that fires once stopped, and fails with the
            error that stopped the follower, if one did.
        """
        done: Deferred[None] = Deferred()
        self.machine.when_stopped(done)
        return done
