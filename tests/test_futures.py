"""The library's futures: done callbacks, and the owner-thread deadlock guard."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import pykka
import pytest

from pykka_ws import WebSocketActor, WsGetStats, WsStats
from pykka_ws._futures import (
    CallbackFuture,
    Deferred,
    LightFuture,
    ReplyFuture,
    mark_owner_thread,
    unmark_owner_thread,
)
from pykka_ws.testing import WsTestServer

from .support import JsonEndpoint, wait_until

pytestmark = pytest.mark.timeout(30)

Outcome = tuple[Any, BaseException | None]


def recorder() -> tuple[list[tuple[str, Outcome]], Callable[[str], Any]]:
    """Callbacks that append (name, (value, error)) to one list."""
    calls: list[tuple[str, Outcome]] = []

    def make(name: str) -> Callable[[Any, BaseException | None], None]:
        def callback(value: Any, error: BaseException | None) -> None:
            calls.append((name, (value, error)))

        return callback

    return calls, make


def on_thread(function: Callable[[], Any], *, owner: bool = True) -> Any:
    """Run ``function`` on a new thread (marked as an owner's), return or raise what it did."""
    outcome: list[Any] = []

    def run() -> None:
        if owner:
            mark_owner_thread()
        try:
            outcome.append((True, function()))
        except BaseException as exc:  # handed back to the test
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the thread blocked"
    ok, result = outcome[0]
    if not ok:
        raise result
    return result


# -- add_done_callback ---------------------------------------------------------


@pytest.mark.parametrize("future_class", [LightFuture, ReplyFuture, CallbackFuture])
def test_callbacks_run_once_in_order_on_the_setting_thread(future_class: type[LightFuture]) -> None:
    future = future_class()
    calls, make = recorder()
    threads: list[str] = []
    future.add_done_callback(make("first"))
    future.add_done_callback(lambda _v, _e: threads.append(threading.current_thread().name))
    future.add_done_callback(make("second"))
    assert calls == []

    setter = threading.Thread(target=future.set, args=(42,), name="setter")
    setter.start()
    setter.join(10)

    assert calls == [("first", (42, None)), ("second", (42, None))]
    assert threads == ["setter"]
    future.add_done_callback(make("late"))  # already set: runs at once, here
    assert calls[-1] == ("late", (42, None))
    with pytest.raises(queue.Full):
        future.set(43)
    assert [name for name, _ in calls] == ["first", "second", "late"]  # none ran twice
    assert future.get(timeout=0) == 42


def test_callbacks_get_the_exception_set() -> None:
    calls, make = recorder()
    error = ValueError("boom")
    future = ReplyFuture()
    future.add_done_callback(make("a"))
    future.set_exception((ValueError, error, None))
    assert calls == [("a", (None, error))]
    with pytest.raises(ValueError, match="boom"):
        future.get(timeout=0)


def test_set_exception_with_no_argument_calls_back_with_the_handled_exception() -> None:
    # pykka's ask() on a dead actor does this.
    calls, make = recorder()
    future = ReplyFuture()
    future.add_done_callback(make("a"))
    try:
        raise pykka.ActorDeadError("gone")  # noqa: TRY301
    except pykka.ActorDeadError:
        future.set_exception()
    [(_, (value, error))] = calls
    assert value is None
    assert isinstance(error, pykka.ActorDeadError)


def test_exception_type_without_value_is_instantiated_for_callbacks() -> None:
    calls, make = recorder()
    future = LightFuture()
    future.add_done_callback(make("a"))
    future.set_exception((KeyError, None, None))
    [(_, (_, error))] = calls
    assert isinstance(error, KeyError)


def test_a_raising_callback_is_logged_and_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="pykka_ws")
    calls, make = recorder()

    def bad(_value: Any, _error: BaseException | None) -> None:
        raise RuntimeError("callback bug")

    future = CallbackFuture()
    future.add_done_callback(bad)
    future.add_done_callback(make("after"))
    future.set("v")  # does not raise into the setter (pykka's actor loop)
    assert calls == [("after", ("v", None))]
    assert future.get(timeout=0) == "v"
    future.add_done_callback(bad)  # already set: still swallowed, on the adding thread
    failures = [r for r in caplog.records if "callback failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)


def test_reply_future_following_a_deferred_calls_back_on_resolve() -> None:
    calls, make = recorder()
    deferred = Deferred()
    future = ReplyFuture()
    future.add_done_callback(make("a"))
    future.set(deferred)  # what pykka's loop does with a handler's Deferred
    assert calls == []
    deferred.resolve("later")
    assert calls == [("a", ("later", None))]
    assert future.get(timeout=0) == "later"


def test_a_callback_may_add_a_callback() -> None:
    calls, make = recorder()
    future = LightFuture()
    future.add_done_callback(lambda _v, _e: future.add_done_callback(make("inner")))
    future.set(1)
    assert calls == [("inner", (1, None))]


def test_futures_with_a_get_hook_refuse_callbacks() -> None:
    future = ReplyFuture()
    mapped = future.map(lambda value: value)
    assert isinstance(mapped, ReplyFuture)  # pykka builds it with future.__class__()
    with pytest.raises(TypeError, match="get hook"):
        mapped.add_done_callback(lambda _v, _e: None)


def test_callbacks_racing_set_run_exactly_once() -> None:
    rounds = 2000
    futures = [ReplyFuture() for _ in range(rounds)]
    counts = [0] * rounds
    start = threading.Barrier(2)

    def add() -> None:
        start.wait(10)
        for index, future in enumerate(futures):

            def callback(_value: Any, _error: BaseException | None, index: int = index) -> None:
                counts[index] += 1

            future.add_done_callback(callback)

    def settle() -> None:
        start.wait(10)
        for index, future in enumerate(futures):
            future.set(index)

    threads = [threading.Thread(target=add), threading.Thread(target=settle)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert counts == [1] * rounds


def test_no_per_future_state_until_a_callback_is_added() -> None:
    future = ReplyFuture()
    assert "_callbacks" not in vars(future)
    future.set(1)
    assert "_callbacks" not in vars(future)


# -- the owner-thread guard ------------------------------------------------------


@pytest.mark.parametrize("future_class", [LightFuture, ReplyFuture])
def test_blocking_get_on_an_owner_thread_raises(future_class: type[LightFuture]) -> None:
    future = future_class()
    with pytest.raises(RuntimeError, match=r"would deadlock.*block=False"):
        on_thread(future.get)
    with pytest.raises(RuntimeError, match="would deadlock"):
        on_thread(lambda: future.get(timeout=5))


def test_a_set_future_still_returns_its_value_on_an_owner_thread() -> None:
    future = ReplyFuture()
    future.set("value")
    assert on_thread(future.get) == "value"
    failed = ReplyFuture()
    failed.set_exception((ValueError, ValueError("outcome"), None))
    with pytest.raises(ValueError, match="outcome"):
        on_thread(failed.get)


def test_a_non_blocking_poll_on_an_owner_thread_times_out_as_usual() -> None:
    with pytest.raises(pykka.Timeout):
        on_thread(lambda: ReplyFuture().get(timeout=0))


def test_other_threads_block_as_usual() -> None:
    future = ReplyFuture()
    threading.Thread(target=future.set, args=("v",)).start()
    assert on_thread(future.get, owner=False) == "v"
    with pytest.raises(pykka.Timeout):
        on_thread(lambda: ReplyFuture().get(timeout=0.01), owner=False)


def test_the_writer_future_is_not_guarded() -> None:
    # The owner blocks on it once: stopping its writer, another thread.
    future = CallbackFuture()
    threading.Thread(target=future.set, args=("written",)).start()
    assert on_thread(future.get) == "written"
    stop_future = CallbackFuture()
    hooked = stop_future.map(lambda value: value)
    threading.Thread(target=stop_future.set, args=(True,)).start()
    assert on_thread(hooked.get) is True


def test_unmarking_allows_blocking_again() -> None:
    future = ReplyFuture()
    threading.Thread(target=future.set, args=("v",)).start()

    def unmarked_get() -> Any:
        unmark_owner_thread()
        return future.get(timeout=10)

    assert on_thread(unmarked_get) == "v"


def test_the_guard_fires_through_get_hooks() -> None:
    future = ReplyFuture()
    with pytest.raises(RuntimeError, match="would deadlock"):
        on_thread(future.map(str).get)
    with pytest.raises(RuntimeError, match="would deadlock"):
        on_thread(future.join(ReplyFuture()).get)


class SelfAsker(pykka.ThreadingActor):
    """A pykka actor with the owner's futures, asking or stopping itself."""

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return ReplyFuture()

    def on_start(self) -> None:
        mark_owner_thread()

    def on_receive(self, message: Any) -> Any:
        try:
            if message == "stop":
                return self.actor_ref.stop()  # pykka's stop(block=True): a get hook
            if message == "ask":
                return self.actor_ref.ask("answer", timeout=5)
        except RuntimeError as exc:
            return exc
        return "answered"


def test_blocking_stop_or_ask_on_the_own_actor_raises_instead_of_deadlocking() -> None:
    ref = SelfAsker.start()
    error = ref.ask("ask", timeout=10)
    assert isinstance(error, RuntimeError)
    assert "would deadlock" in str(error)
    assert ref.ask("answer", timeout=10) == "answered"  # the actor goes on
    error = ref.ask("stop", timeout=10)
    assert isinstance(error, RuntimeError)
    assert "would deadlock" in str(error)
    wait_until(lambda: not ref.is_alive(), 10, "the stop it queued to take effect")


class BlockingHookActor(WebSocketActor):
    """A WebSocketActor whose handler blocks on its own reply, as issue item 10 reports."""

    def on_start(self) -> None:
        super().on_start()
        mark_owner_thread()  # the library's on_start does this too

    def on_receive(self, message: Any) -> Any:
        if message == "ask itself":
            try:
                return self.actor_ref.ask(WsGetStats(), timeout=5)
            except RuntimeError as exc:
                return exc
        return super().on_receive(message)


def test_a_websocket_actor_blocking_on_itself_raises(server: WsTestServer) -> None:
    ref = BlockingHookActor.start(server.url, endpoint=JsonEndpoint())
    error = ref.ask("ask itself", timeout=10)
    assert isinstance(error, RuntimeError)
    assert "would deadlock" in str(error)
    assert isinstance(ref.ask(WsGetStats(), timeout=10), WsStats)
    assert ref.stop(timeout=10) is True  # its on_stop still stops its writer


def test_guard_is_per_thread() -> None:
    on_thread(lambda: None)  # marks another thread only
    future = ReplyFuture()
    threading.Thread(target=future.set, args=(1,)).start()
    assert future.get(timeout=10) == 1
