"""One process-wide timer thread that tells actors a message at a given time.

It replaces a `threading.Timer` (one thread each) per deadline: a heap under
a condition variable, served by a single thread named
``pykka-ws-scheduler``. The thread starts when the first actor acquires the
scheduler and exits, joined, when the last one releases it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from pykka import ActorDeadError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pykka import ActorRef

__all__ = ["SCHEDULER", "Scheduler", "TimerHandle"]

logger = logging.getLogger("pykka_ws")

_THREAD_NAME = "pykka-ws-scheduler"
_MAX_WAIT = 3600.0


class TimerHandle:
    """A scheduled tell (or, with no ``ref``, a call of ``message``); `cancel` it to drop it."""

    __slots__ = ("cancelled", "message", "ref", "when")

    def __init__(self, when: float, ref: ActorRef[Any] | None, message: object) -> None:
        self.when = when
        self.ref = ref
        self.message = message
        self.cancelled = False

    def cancel(self) -> None:
        """Drop the tell if it has not happened yet (thread-safe, idempotent)."""
        self.cancelled = True


class Scheduler:
    """A heap of timed tells served by one thread.

    Cancelled handles stay in the heap until they are due (lazy deletion);
    users keep at most a few timers each, so the heap stays small.
    """

    def __init__(self, *, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._users = 0
        self._epoch = 0
        self._thread: threading.Thread | None = None

    @property
    def thread(self) -> threading.Thread | None:
        """The running thread, or None when no actor uses the scheduler."""
        return self._thread

    def acquire(self) -> None:
        """Register a user; start the thread if it is not running."""
        with self._cond:
            self._users += 1
            if self._thread is None:
                self._epoch += 1
                thread = threading.Thread(
                    target=self._run, args=(self._epoch,), name=_THREAD_NAME, daemon=True
                )
                try:
                    thread.start()
                except BaseException:
                    self._users -= 1  # not registered: the caller's release() is not due
                    raise
                self._thread = thread

    def release(self) -> None:
        """Unregister a user; the last one stops and joins the thread."""
        thread = None
        with self._cond:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                self._epoch += 1
                self._heap.clear()
                thread, self._thread = self._thread, None
                self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def call_at(self, when: float, ref: ActorRef[Any], message: object) -> TimerHandle:
        """Tell ``message`` to ``ref`` at monotonic time ``when``."""
        return self._push(TimerHandle(when, ref, message))

    def call_later(self, delay: float, ref: ActorRef[Any], message: object) -> TimerHandle:
        """Tell ``message`` to ``ref`` after ``delay`` seconds."""
        return self.call_at(self._clock() + delay, ref, message)

    def run_later(self, delay: float, fn: Callable[[], object]) -> TimerHandle:
        """Call ``fn()`` on the scheduler's thread after ``delay`` seconds.

        Only for a short call that must not wait on the actor it is for: a
        watchdog that aborts a socket while its owner is blocked on it. It
        runs on the one thread every actor's timers share.
        """
        return self._push(TimerHandle(self._clock() + delay, None, fn))

    def _push(self, handle: TimerHandle) -> TimerHandle:
        with self._cond:
            heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
            if self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def _run(self, epoch: int) -> None:
        cond = self._cond
        heap = self._heap
        while True:
            due: list[TimerHandle] = []
            with cond:
                while self._epoch == epoch:
                    if not heap:
                        cond.wait()
                        continue
                    delay = heap[0][0] - self._clock()
                    if delay > 0:
                        # A far deadline (a huge timeout) must not overflow
                        # the wait: wake up now and then and look again.
                        cond.wait(min(delay, _MAX_WAIT))
                        continue
                    now = self._clock()
                    while heap and heap[0][0] <= now:
                        handle = heapq.heappop(heap)[2]
                        if not handle.cancelled:
                            due.append(handle)
                    if due:
                        break
                else:
                    return
            for handle in due:
                try:
                    if handle.ref is None:
                        handle.message()  # type: ignore[operator]  # run_later's fn
                    else:
                        handle.ref.tell(handle.message)
                except ActorDeadError:
                    pass
                except Exception:
                    logger.exception("pykka-ws scheduler failed to run %r", handle.message)


SCHEDULER = Scheduler()
"""The process-wide scheduler used by every `WebSocketActor`."""
