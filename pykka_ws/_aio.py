"""Awaiting an outcome from an asyncio event loop without blocking it.

pykka's own ``await future`` calls the blocking ``get()`` and stalls the
loop. `ask_async` instead asks with ``block=False`` and adds a done callback
to the reply future (a `ReplyFuture`, made by `WebSocketActor`'s
``_create_future``) that settles an asyncio future with
``loop.call_soon_threadsafe``: no thread blocks, no executor.

Being pykka's own reply future, it is settled whatever happens: with the
handler's outcome (at once, or when its `Deferred` resolves), or with
`pykka.ActorDeadError` if the actor is dead when asked or stops with the
message still in its inbox.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pykka import ActorRef


__all__ = ["ask_async"]


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by the awaiting task
        return
    if error is None:
        future.set_result(value)
        return
    try:
        future.set_exception(error)
    except TypeError:  # StopIteration, which asyncio refuses
        wrapped = RuntimeError(f"the actor raised {error!r}")
        wrapped.__cause__ = error
        future.set_exception(wrapped)


async def ask_async(ref: ActorRef[Any], message: object) -> Any:
    """Ask a `WebSocketActor` from a coroutine, without blocking the event loop.

    Works for every message the actor answers (`WsDelegatedRequest`,
    `WsSend`, `WsGetStats`); the outcome is returned or raised exactly as
    ``ref.ask(message)`` would. It never hangs: a message still in the
    inbox when the actor stops raises `pykka.ActorDeadError`.

    Cancelling the awaiting task does not withdraw the request: it keeps its
    deadline and outcome (counted in `WsStats`), nobody is told.

    Raises:
        pykka.ActorDeadError: If the actor is not running, or stops before
            handling the message.
        TypeError: If ``ref`` is not a `WebSocketActor`'s (before asking).
    """
    from pykka_ws._actor import WebSocketActor  # noqa: PLC0415 - _actor imports this module

    if not issubclass(ref.actor_class, WebSocketActor):
        raise TypeError(
            f"ask_async() needs a WebSocketActor's ref, not {ref.actor_class.__name__}'s: "
            "its reply futures cannot be awaited without blocking a thread"
        )
    loop = asyncio.get_running_loop()
    reply = ref.ask(message, block=False)
    add_done_callback = getattr(reply, "add_done_callback", None)
    if add_done_callback is None:  # a subclass overrode _create_future
        raise TypeError(
            f"{ref.actor_class.__name__}._create_future() makes {type(reply).__name__}, "
            "which has no add_done_callback: ask_async() cannot await it "
            "(the message was sent)"
        )
    future: asyncio.Future[Any] = loop.create_future()

    def done(value: Any, error: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(_settle, future, value, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    add_done_callback(done)
    return await future
