"""Awaiting an outcome from an asyncio event loop without blocking it.

pykka's own ``await future`` calls the blocking ``get()`` and stalls the
loop. `ask_async` instead hands the actor a waiter that settles an asyncio
future with ``loop.call_soon_threadsafe``: no thread blocks, no executor.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pykka import ActorRef
    from pykka._types import OptExcInfo

__all__ = ["AsyncAsk", "ask_async"]


class _AsyncWaiter:
    """Settles an asyncio future from the owner actor's thread."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self.loop = loop
        self.future = future

    def set_now(self, value: Any) -> None:
        self._call(value, None)

    def set_exception_now(self, exc_info: OptExcInfo) -> None:
        self._call(None, exc_info[1])

    def _call(self, value: Any, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, self.future, value, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by the awaiting task
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class AsyncAsk:
    """Internal message: handle ``message`` and reply to an asyncio waiter."""

    __slots__ = ("message", "waiter")

    def __init__(self, message: object, waiter: _AsyncWaiter) -> None:
        self.message = message
        self.waiter = waiter


async def ask_async(ref: ActorRef[Any], message: object) -> Any:
    """Ask a `WebSocketActor` from a coroutine, without blocking the event loop.

    Works for every message the actor answers (`WsDelegatedRequest`,
    `WsSend`, `WsGetStats`); the outcome is returned or raised exactly as
    ``ref.ask(message)`` would.

    Cancelling the awaiting task does not withdraw the request: it keeps its
    deadline and outcome (counted in `WsStats`), nobody is told.

    Raises:
        pykka.ActorDeadError: If the actor is not running.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    ref.tell(AsyncAsk(message, _AsyncWaiter(loop, future)))
    return await future
