"""Awaiting outcomes from asyncio without blocking the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pykka
import pytest

from pykka_ws import (
    EndpointRejected,
    Unconfirmed,
    WebSocketActor,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsGetStats,
    WsStats,
    ask_async,
)
from pykka_ws.testing import WsTestServer

from .support import JsonEndpoint, req_frame, wait_until

pytestmark = pytest.mark.timeout(20)


def start(server: WsTestServer) -> pykka.ActorRef[Any]:
    return WebSocketActor.start(server.url, endpoint=JsonEndpoint())


def test_ask_async_returns_and_raises_outcomes_like_ask(server: WsTestServer) -> None:
    ref = start(server)

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
    ref = start(server)

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
    ref = start(server)

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
    ref = start(server)
    ref.stop()
    with pytest.raises(pykka.ActorDeadError):
        asyncio.run(ask_async(ref, WsGetStats()))
