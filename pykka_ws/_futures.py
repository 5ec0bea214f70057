"""Replies that come later, the pykka way.

pykka has no reply-later: its actor loop sets the ``ask`` caller's future
with whatever the handler returned. `ActorRef.ask` builds that future with
the *receiving* actor class's ``_create_future()``, a hook pykka documents
for implementors. So:

- The owner actor's futures are `ReplyFuture`: when the loop sets one with a
  `Deferred`, it follows the deferred instead of storing it.
- A handler that cannot answer yet returns a `Deferred`, keeps it, and
  resolves it later from its own thread. One deferred serves every waiter of
  a request (joiners), and costs nothing when nobody waits (``tell``).
- Every future here takes done callbacks (`LightFuture.add_done_callback`):
  the writer actor's futures are `CallbackFuture`, to which the owner adds a
  callback that turns the writer's reply into a message to itself, so no
  thread waits on a write; `ask_async` adds one to a `ReplyFuture` to settle
  an asyncio future.
- An owner's thread must never wait for an owner's reply (it may be the one
  to produce it): after `mark_owner_thread`, such a wait raises instead of
  deadlocking.

No other private name of pykka is relied on.
"""

from __future__ import annotations

import copy
import logging
import queue
import sys
import threading
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeAlias

import pykka

from pykka_ws._errors import Unconfirmed, WsDelegatedError
from pykka_ws._messages import WsOutcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from pykka._types import OptExcInfo

    DoneCallback: TypeAlias = Callable[[Any, BaseException | None], None]

__all__ = [
    "CallbackFuture",
    "Deferred",
    "DropCounts",
    "LightFuture",
    "ReplyFuture",
    "ReplyTo",
    "TellOwner",
    "Waiter",
    "mark_owner_thread",
    "unmark_owner_thread",
]

logger = logging.getLogger("pykka_ws")

_UNSET: Any = object()


class Waiter(Protocol):
    """What a `Deferred` delivers to: a `ReplyFuture`, or an asyncio bridge."""

    def set_now(self, value: Any) -> None:
        """Deliver a value."""

    def set_exception_now(self, exc_info: OptExcInfo) -> None:
        """Deliver an exception."""


class Deferred:
    """A reply to be given later, by the thread that owns it.

    Not thread-safe on purpose: it is created, followed and resolved on the
    owner actor's thread only (pykka sets reply futures on the actor's
    thread, right after the handler returns).
    """

    # One per request; slots keep it small and quick to make.
    __slots__ = ("_error", "_value", "_waiters")

    def __init__(self) -> None:
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        # None, one future, or a list of them: zero or one waiter costs no list.
        self._waiters: Waiter | list[Waiter] | None = None

    @property
    def done(self) -> bool:
        """Whether the deferred has been resolved or failed."""
        return self._value is not _UNSET or self._error is not None

    def resolve(self, value: Any) -> None:
        """Give every waiter, present and future, ``value``."""
        if self.done:
            return
        self._value = value
        self._notify()

    def fail(self, error: BaseException) -> None:
        """Raise ``error`` to every waiter, present and future."""
        if self.done:
            return
        self._error = error
        self._notify()

    def add_waiter(self, future: Waiter) -> None:
        """Set ``future`` now if resolved, else when resolved."""
        if self.done:
            self._deliver(future, first=True)
            return
        waiters = self._waiters
        if waiters is None:
            self._waiters = future
        elif isinstance(waiters, list):
            waiters.append(future)
        else:
            self._waiters = [waiters, future]

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, None
        if waiters is None:
            return
        if isinstance(waiters, list):
            for index, future in enumerate(waiters):
                self._deliver(future, first=index == 0)
        else:
            self._deliver(waiters, first=True)

    def _deliver(self, future: Waiter, *, first: bool) -> None:
        error = self._error
        try:
            if error is None:
                future.set_now(self._value)
            else:
                # Each waiter raises its own copy so tracebacks do not mix
                # across threads.
                exc = error if first else copy.copy(error)
                future.set_exception_now((type(exc), exc, None))
        except Exception:
            logger.exception("pykka-ws could not deliver a reply")


class _OwnerThread(threading.local):
    marked = False


_OWNER_THREAD = _OwnerThread()

# Taken only to hand callbacks over between the registering and the setting
# thread; a future nobody adds a callback to never takes it.
_CALLBACKS_LOCK = threading.Lock()

_DEADLOCK_MESSAGE = (
    "waiting for this reply would deadlock: a WebSocketActor's hooks and handlers run on "
    "its own thread and must not block on a WebSocketActor's reply (ask, stop, get); "
    "use block=False / tell (with reply_to) instead"
)


def mark_owner_thread() -> None:
    """Mark the calling thread as a `WebSocketActor`'s own thread.

    Called by the owner actor in ``on_start``. On a marked thread, waiting for
    an owner's reply that has not arrived (``ref.ask(...)``, ``ref.stop()``,
    ``future.get()``) raises `RuntimeError` instead of blocking: the thread
    that would produce the reply is the one blocked.
    """
    _OWNER_THREAD.marked = True


def unmark_owner_thread() -> None:
    """Undo `mark_owner_thread`, once the owner has stopped.

    After its ``on_stop`` an actor can no longer be asked (pykka answers with
    `pykka.ActorDeadError` at once), so blocking is safe again, and pykka
    itself blocks there: on a `BaseException` in a handler it calls
    ``ActorRegistry.stop_all()`` on the actor's thread.
    """
    _OWNER_THREAD.marked = False


class LightFuture(pykka.Future[Any]):
    """A `pykka.Future` for threads, built on one lock instead of a Condition.

    pykka's `ThreadingFuture` makes a `threading.Condition` per future (a
    lock, a deque and bound methods: about 1.4 KB and a few microseconds).
    One future is made per ``ask``, so this one holds a single lock, taken
    at creation and released when the value is set: waiters block on it.
    It behaves as `ThreadingFuture`: built with no arguments, ``get`` with
    a timeout raises `pykka.Timeout`, ``set_exception()`` with no argument
    takes `sys.exc_info`, setting twice raises `queue.Full`, get hooks work
    (``map``, ``join``, ``filter``, ``reduce``).

    `add_done_callback` adds what `ThreadingFuture` lacks, at no cost to a
    future nobody adds a callback to: the callback slot is a class attribute
    until one is added, and the setting thread only reads it.

    On a thread marked with `mark_owner_thread`, a ``get`` that would wait
    raises `RuntimeError` (see `owner_guard`).
    """

    #: Whether ``get`` refuses to wait on an owner actor's thread.
    owner_guard: ClassVar[bool] = True

    # None, one callback, or a list of them in the order added. A class
    # attribute until a callback is added: nothing per future otherwise.
    _callbacks: DoneCallback | list[DoneCallback] | None = None

    def __init__(self) -> None:
        super().__init__()
        self._ready = threading.Lock()
        self._ready.acquire()
        self._value: Any = _UNSET
        self._exc_info: OptExcInfo | None = None
        self._released = False

    def get(self, *, timeout: float | None = None) -> Any:
        """Wait for the value and return it, or raise the exception set.

        Raises:
            RuntimeError: If no value is set yet and waiting would block an
                owner actor's thread (`mark_owner_thread`).
        """
        try:
            return super().get(timeout=timeout)  # a get hook, if one is set
        except NotImplementedError:
            pass
        if not self._released:
            if self.owner_guard and _OWNER_THREAD.marked and (timeout is None or timeout > 0):
                raise RuntimeError(_DEADLOCK_MESSAGE)
            wait = -1.0 if timeout is None else min(max(timeout, 0.0), threading.TIMEOUT_MAX)
            if not self._ready.acquire(timeout=wait):
                msg = f"{timeout} seconds"
                raise pykka.Timeout(msg)
            self._ready.release()
            try:
                return super().get(timeout=timeout)  # a hook set meanwhile
            except NotImplementedError:
                pass
        exc_info = self._exc_info
        if exc_info is not None:
            exc_type, exc_value, traceback = exc_info
            if exc_value is None:
                assert exc_type is not None  # noqa: S101 - as in pykka
                exc_value = exc_type()
            if exc_value.__traceback__ is not traceback:
                raise exc_value.with_traceback(traceback)
            raise exc_value
        return self._value

    def set(self, value: Any | None = None) -> None:
        """Set the value and wake every waiter."""
        self._settle(value, None)

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        """Set an exception (default: the one being handled) and wake waiters."""
        if exc_info is None:
            exc_info = sys.exc_info()
        self._settle(None, exc_info)

    def set_get_hook(self, func: Any) -> None:
        """Make ``get`` return ``func(timeout)``; wakes any waiter."""
        if self._value is not _UNSET or self._exc_info is not None:
            raise queue.Full
        super().set_get_hook(func)
        self._release()

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Call ``callback(value, error)`` once, when the future is set.

        ``error`` is the exception set (``value`` is then None), else None.
        Callbacks added before the future is set run on the setting thread,
        in the order added; one added after runs at once, on the adding
        thread. A callback must not raise (pykka's actor loop would break on
        it); one that does is logged and swallowed.

        Raises:
            TypeError: On a future with a get hook (``map``, ``join``,
                ``stop()``...): it is never set, so there is nothing to
                call back with.
        """
        if self._get_hook is not None:
            raise TypeError("a future with a get hook is never set: it has no done callbacks")
        with _CALLBACKS_LOCK:
            existing = self._callbacks
            if existing is None:
                self._callbacks = callback
            elif isinstance(existing, list):
                existing.append(callback)
            else:
                self._callbacks = [existing, callback]
        # Set meanwhile, or before: the setter may not have seen this callback.
        # Whichever of the two takes it first runs it (see _settle).
        if self._released:
            self._run_callbacks()

    def _settle(self, value: Any, exc_info: OptExcInfo | None) -> None:
        if self._released:
            raise queue.Full
        self._value = value
        self._exc_info = exc_info
        self._release()
        # Read after _released is written (and the lock released), as
        # add_done_callback reads _released after writing the slot (and
        # releasing _CALLBACKS_LOCK): at least one of the two sees the
        # other's write, and _run_callbacks hands each callback out once.
        if self._callbacks is not None:
            self._run_callbacks()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._ready.release()

    def _run_callbacks(self) -> None:
        with _CALLBACKS_LOCK:
            callbacks = self._callbacks
            if callbacks is None:
                return
            self._callbacks = None
        value = self._value
        exc_info = self._exc_info
        error = None if exc_info is None else _error_of(exc_info)
        if isinstance(callbacks, list):
            for callback in callbacks:
                _run_callback(callback, value, error)
        else:
            _run_callback(callbacks, value, error)


class ReplyFuture(LightFuture):
    """The owner actor's future: follows a `Deferred` set on it."""

    def set(self, value: Any | None = None) -> None:
        """Follow ``value`` if it is a `Deferred`, else set it."""
        if isinstance(value, Deferred):
            value.add_waiter(self)
        else:
            self._settle(value, None)

    def set_now(self, value: Any) -> None:
        """Set the value, bypassing the deferred check."""
        self._settle(value, None)

    def set_exception_now(self, exc_info: OptExcInfo) -> None:
        """Set an exception (for symmetry with `set_now`)."""
        self._settle(None, exc_info)


class CallbackFuture(LightFuture):
    """The writer actor's future: the owner adds a callback instead of waiting.

    The owner waits on one only to stop the writer, from its own thread,
    which is safe (the writer is another thread): no owner-thread guard.
    """

    owner_guard = False


def _run_callback(
    callback: DoneCallback,
    value: Any,
    error: BaseException | None,
) -> None:
    try:
        callback(value, error)
    except Exception:
        logger.exception("pykka-ws: a future's done callback failed")


def _error_of(exc_info: OptExcInfo) -> BaseException:
    exc_type, error, _traceback = exc_info
    if error is not None:
        return error
    try:
        if exc_type is not None:
            return exc_type()
    except Exception as exc:  # noqa: BLE001 - a type that needs arguments
        return exc
    return RuntimeError("the future was failed without an exception")


class ReplyTo:
    """Tells a request's outcome to an actor as a `WsOutcome` (a `Deferred` waiter).

    Runs on the owner's thread, when the request's `Deferred` resolves. A
    dead actor is counted in ``counts.reply_to_dropped``, never an error.
    """

    # One per request with a reply_to: slots keep it small.
    __slots__ = ("context", "counts", "ref", "request_id")

    def __init__(
        self, ref: pykka.ActorRef[Any], request_id: Any, context: Any, counts: DropCounts
    ) -> None:
        self.ref = ref
        self.request_id = request_id
        self.context = context
        self.counts = counts

    def set_now(self, value: Any) -> None:
        """Tell the success."""
        self._tell(WsOutcome(self.request_id, value, None, self.context))

    def set_exception_now(self, exc_info: OptExcInfo) -> None:
        """Tell the failure (always a `WsDelegatedError`)."""
        error = exc_info[1]
        if not isinstance(error, WsDelegatedError):
            # Only a bug of pykka-ws gets here; the outcome is then unknown.
            ambiguous = Unconfirmed(
                f"request {self.request_id!r}: internal error ({error!r}); it may have been sent",
                request_id=self.request_id,
                written=False,
            )
            ambiguous.__cause__ = error
            error = ambiguous
        self._tell(WsOutcome(self.request_id, None, error, self.context))

    def _tell(self, outcome: WsOutcome) -> None:
        try:
            self.ref.tell(outcome)
        except pykka.ActorDeadError:
            self.counts.reply_to_dropped += 1


class DropCounts:
    """What `ReplyTo` could not tell."""

    __slots__ = ("reply_to_dropped",)

    def __init__(self) -> None:
        self.reply_to_dropped = 0


class TellOwner:
    """A `Deferred` waiter that tells an actor ``build(value, error)`` when it resolves.

    How the owner hears, as a message to itself, that one of its own
    requests (an ``on_open`` request, a heartbeat, a probe) ended: the
    waiter runs inside the core, and a message keeps the core's work from
    being re-entered. A dead owner is ignored (it has stopped).
    """

    __slots__ = ("build", "owner")

    def __init__(
        self, owner: pykka.ActorRef[Any], build: Callable[[Any, BaseException | None], object]
    ) -> None:
        self.owner = owner
        self.build = build

    def set_now(self, value: Any) -> None:
        """Tell the success."""
        self._tell(self.build(value, None))

    def set_exception_now(self, exc_info: OptExcInfo) -> None:
        """Tell the failure."""
        self._tell(self.build(None, exc_info[1]))

    def _tell(self, message: object) -> None:
        try:
            self.owner.tell(message)
        except pykka.ActorDeadError:
            pass
