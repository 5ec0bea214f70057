"""Awaiting outcomes from asyncio without blocking the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pykka
import pytest

from pykka_ws import (
    EndpointRejected,
    Unconfirmed,
    WebSocketActor,
    WsDelegatedError,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsGetStats,
    WsStats,
    ask_async,
)
from pykka_ws.testing import WsTestServer

from .support import DEADLINE_SLACK, JsonEndpoint, req_frame, start, wait_until

pytestmark = pytest.mark.timeout(20)


def test_ask_async_returns_and_raises_outcomes_like_ask(server: WsTestServer) -> None:
    ref = start(server.url, wait_open=False)

    async def main() -> tuple[Any, ...]:
        return await asyncio.gather(
            ask_async(ref, WsDelegatedRequest(1, req_frame(1))),
            ask_async(ref, WsDelegatedRequest(2, req_frame(2, "reject"))),
            ask_async(ref, WsGetStats()),
            return_exceptions=True,
        )

    ok, rejected, stats = asyncio.run(main())
    assert ok == WsDelegatedOk(1, confirmed=True, response='{"id": 1, "result": "ok"}')
    assert isinstance(rejected, EndpointRejected)
    assert isinstance(stats, WsStats)


def test_awaiting_an_outcome_does_not_block_the_event_loop(server: WsTestServer) -> None:
    ref = start(server.url, wait_open=False)

    async def main() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        with pytest.raises(Unconfirmed):
            await ask_async(ref, WsDelegatedRequest(9, req_frame(9, "silent"), timeout=0.5))
        stop.set()
        await task
        return ticks

    # A blocked loop would tick once or twice; a free one ~50 times in 0.5 s.
    assert asyncio.run(main()) >= 10


def test_cancelled_await_leaves_the_request_to_its_deadline(server: WsTestServer) -> None:
    ref = start(server.url, wait_open=False)

    async def main() -> None:
        task = asyncio.create_task(
            ask_async(ref, WsDelegatedRequest(3, req_frame(3, "silent"), timeout=0.2))
        )
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())  # the loop is closed before the outcome arrives
    wait_until(lambda: ref.ask(WsGetStats()).outcomes["unconfirmed"] == 1, 5.0, "the deadline")
    assert ref.ask(WsGetStats()).pending == 0


def test_ask_async_on_a_stopped_actor_raises_actor_dead_error(server: WsTestServer) -> None:
    ref = start(server.url, wait_open=False)
    ref.stop()
    with pytest.raises(pykka.ActorDeadError):
        asyncio.run(ask_async(ref, WsGetStats()))


def test_ask_async_refuses_another_actors_ref_before_asking() -> None:
    received: list[object] = []

    class Other(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> None:
            received.append(message)

    ref = Other.start()
    with pytest.raises(TypeError, match="needs a WebSocketActor's ref"):
        asyncio.run(ask_async(ref, "hello"))
    assert ref.ask("ping", timeout=10) is None
    assert received == ["ping"]  # "hello" was never sent


RACE_ROUNDS = 6  # alternately held (deterministic) and free (a real race)
RACE_CALLS = 400  # at least this many ask_async calls per round, racing one stop()
RACE_MAX_CALLS = 20 * RACE_CALLS  # bounds a round whose stop() is slow to return
RACE_TIMEOUT = 1.0  # each request's own deadline
HUNG = "hung"


class Hold:
    """A message that keeps the actor's thread busy until released."""

    def __init__(self) -> None:
        self.release = threading.Event()


class HoldingActor(WebSocketActor):
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Hold):
            message.release.wait(10)
            return None
        return super().on_receive(message)


def race_message(i: int) -> object:
    if i % 2:
        return WsGetStats()  # answered at once
    return WsDelegatedRequest(i, req_frame(i), timeout=RACE_TIMEOUT)  # answered later


async def bounded_ask(ref: pykka.ActorRef[Any], message: object) -> object:
    try:
        return await asyncio.wait_for(ask_async(ref, message), RACE_TIMEOUT + DEADLINE_SLACK)
    except TimeoutError:
        return HUNG
    except (pykka.ActorDeadError, WsDelegatedError) as exc:
        return exc


async def held_race(ref: pykka.ActorRef[Any]) -> list[object]:
    """Half the calls land before the stop message, half behind it, for sure."""
    hold = Hold()
    before = [
        asyncio.create_task(bounded_ask(ref, race_message(i))) for i in range(RACE_CALLS // 2)
    ]
    await asyncio.sleep(0)  # each task sends its ask
    ref.tell(hold)
    stop_queued = threading.Event()

    def stop() -> None:
        stopping = ref.stop(block=False)
        stop_queued.set()
        stopping.get(timeout=10)

    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    assert stop_queued.wait(10)
    behind = [
        asyncio.create_task(bounded_ask(ref, race_message(i)))
        for i in range(RACE_CALLS // 2, RACE_CALLS)
    ]
    await asyncio.sleep(0)  # each task sends its ask, behind the stop message
    hold.release.set()
    results = await asyncio.gather(*before, *behind)
    stopper.join(10)
    assert not stopper.is_alive()
    assert all(
        result is HUNG or isinstance(result, pykka.ActorDeadError)
        for result in results[len(before) :]
    )
    return results


async def free_race(ref: pykka.ActorRef[Any]) -> list[object]:
    """Calls before, while and after a blocking stop() on another thread."""
    go = threading.Event()
    stopped = threading.Event()

    def stop() -> None:
        go.wait(10)
        ref.stop()
        stopped.set()

    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    tasks: list[asyncio.Task[object]] = []
    while len(tasks) < RACE_CALLS or not stopped.is_set():
        i = len(tasks)
        tasks.append(asyncio.create_task(bounded_ask(ref, race_message(i))))
        if i == RACE_CALLS // 4:
            go.set()
        if i % 8 == 0:
            await asyncio.sleep(0)  # let the tasks made so far send their asks
        if len(tasks) >= RACE_MAX_CALLS:
            break
    results = await asyncio.gather(*tasks)
    stopper.join(10)
    assert not stopper.is_alive()
    return results


@pytest.mark.timeout(RACE_ROUNDS * (RACE_TIMEOUT + DEADLINE_SLACK) + 30)
def test_ask_async_racing_stop_always_ends(server: WsTestServer) -> None:
    """Every awaited call ends, whether its message lands before, behind or after stop()."""
    calls = hung = dead = 0
    outcomes = (WsStats, WsDelegatedOk, WsDelegatedError, pykka.ActorDeadError)
    for round_ in range(RACE_ROUNDS):
        ref = HoldingActor.start(server.url, endpoint=JsonEndpoint())
        results = asyncio.run(held_race(ref) if round_ % 2 == 0 else free_race(ref))
        calls += len(results)
        hung += sum(1 for result in results if result is HUNG)
        dead += sum(1 for result in results if isinstance(result, pykka.ActorDeadError))
        assert all(result is HUNG or isinstance(result, outcomes) for result in results)
    assert dead > 0
    assert hung == 0, f"{hung} of {calls} ask_async calls never ended"
