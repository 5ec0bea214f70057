"""The process-wide scheduler: timed tells, watchdog calls, its thread's life."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pykka_ws._scheduler import Scheduler

pytestmark = pytest.mark.timeout(30)


def test_run_later_calls_on_the_scheduler_thread_and_cancel_drops_it() -> None:
    scheduler = Scheduler()
    scheduler.acquire()
    try:
        ran = threading.Event()
        where: list[str] = []
        dropped: list[int] = []

        def fn() -> None:
            where.append(threading.current_thread().name)
            ran.set()

        cancelled = scheduler.run_later(0.0, lambda: dropped.append(1))
        cancelled.cancel()
        scheduler.run_later(0.01, fn)
        assert ran.wait(5)
        assert where == ["pykka-ws-scheduler"]
        assert dropped == []  # due before fn, and cancelled
    finally:
        scheduler.release()


def test_a_failing_call_is_logged_and_the_scheduler_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scheduler = Scheduler()
    scheduler.acquire()
    try:
        ran = threading.Event()

        def boom() -> None:
            raise RuntimeError("watchdog failed")

        scheduler.run_later(0.0, boom)
        scheduler.run_later(0.01, ran.set)
        assert ran.wait(5)
        assert "watchdog failed" in caplog.text
    finally:
        scheduler.release()


def test_a_scheduler_whose_thread_cannot_start_is_left_unused(mocker: Any) -> None:
    scheduler = Scheduler()
    mocker.patch("threading.Thread.start", side_effect=RuntimeError("can't start new thread"))
    with pytest.raises(RuntimeError):
        scheduler.acquire()
    mocker.stopall()
    # Not registered: the next user starts the thread, and its release stops it.
    assert scheduler._users == 0
    assert scheduler._thread is None
    scheduler.acquire()
    thread = scheduler._thread
    assert thread is not None
    assert thread.is_alive()
    scheduler.release()
    assert not thread.is_alive()
