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
import sys
import threading
from typing import TYPE_CHECKING, Any, Protocol

from pykka import ThreadingFuture

if TYPE_CHECKING:
    from collections.abc import Callable

    from pykka._types import OptExcInfo

__all__ = ["CallbackFuture", "Deferred", "ReplyFuture", "Waiter"]

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


class ReplyFuture(ThreadingFuture[Any]):
    """The owner actor's future: follows a `Deferred` set on it.

    pykka builds futures of this class with no arguments (``stop()``,
    ``map()``, ``join()``) and may call ``set_exception()`` with no argument;
    both work as for `pykka.ThreadingFuture`.
    """

    def set(self, value: Any | None = None) -> None:
        """Follow ``value`` if it is a `Deferred`, else set it."""
        if isinstance(value, Deferred):
            value.add_waiter(self)
        else:
            super().set(value)

    def set_now(self, value: Any) -> None:
        """Set the value, bypassing the deferred check."""
        super().set(value)

    def set_exception_now(self, exc_info: OptExcInfo) -> None:
        """Set an exception (for symmetry with `set_now`)."""
        super().set_exception(exc_info)


class CallbackFuture(ThreadingFuture[Any]):
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

    def set(self, value: Any | None = None) -> None:
        """Set the value and run the callback."""
        super().set(value)
        self._done((value, None))

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        """Set the exception and run the callback."""
        if exc_info is None:
            exc_info = sys.exc_info()
        super().set_exception(exc_info)
        error = exc_info[1]
        if error is None:
            error = RuntimeError("the writer failed without an exception")
        self._done((None, error))

    def _done(self, outcome: tuple[Any, BaseException | None]) -> None:
        with self._lock:
            self._outcome = outcome
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
