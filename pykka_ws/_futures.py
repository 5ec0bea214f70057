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
- The writer actor's futures are `CallbackFuture`: the owner adds a callback
  that turns the writer's reply into a message to itself, so no thread waits
  on a write.

No other private name of pykka is relied on.
"""

from __future__ import annotations

import copy
import logging
import queue
import sys
import threading
from typing import TYPE_CHECKING, Any, Protocol

import pykka

if TYPE_CHECKING:
    from collections.abc import Callable

    from pykka._types import OptExcInfo

__all__ = ["CallbackFuture", "Deferred", "LightFuture", "ReplyFuture", "Waiter"]

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
    """

    def __init__(self) -> None:
        super().__init__()
        self._ready = threading.Lock()
        self._ready.acquire()
        self._value: Any = _UNSET
        self._exc_info: OptExcInfo | None = None
        self._released = False

    def get(self, *, timeout: float | None = None) -> Any:
        """Wait for the value and return it, or raise the exception set."""
        try:
            return super().get(timeout=timeout)  # a get hook, if one is set
        except NotImplementedError:
            pass
        if not self._released:
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

    def _settle(self, value: Any, exc_info: OptExcInfo | None) -> None:
        if self._released:
            raise queue.Full
        self._value = value
        self._exc_info = exc_info
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._ready.release()


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
    """The writer actor's future: runs a callback when set.

    The callback runs on the thread that sets the future (the writer's) or,
    if the future was already set, on the thread adding it. It must not
    raise: pykka would otherwise crash the writer's loop; exceptions are
    logged and swallowed here as a safety net.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._callback: Callable[[Any, BaseException | None], None] | None = None
        self._outcome: tuple[Any, BaseException | None] | None = None

    def add_done_callback(self, callback: Callable[[Any, BaseException | None], None]) -> None:
        """Call ``callback(value, error)`` once the future is set."""
        with self._lock:
            outcome = self._outcome
            if outcome is None:
                self._callback = callback
                return
        _run_callback(callback, outcome)

    def _settle(self, value: Any, exc_info: OptExcInfo | None) -> None:
        super()._settle(value, exc_info)
        error = None
        if exc_info is not None:
            error = exc_info[1] or RuntimeError("the writer failed without an exception")
        with self._lock:
            self._outcome = outcome = (value, error)
            callback, self._callback = self._callback, None
        if callback is not None:
            _run_callback(callback, outcome)


def _run_callback(
    callback: Callable[[Any, BaseException | None], None],
    outcome: tuple[Any, BaseException | None],
) -> None:
    try:
        callback(*outcome)
    except Exception:
        logger.exception("pykka-ws write completion callback failed")
