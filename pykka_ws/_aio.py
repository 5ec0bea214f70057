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
from typing import TYPE_CHECKING, Any, overload

from pykka_ws._settings import check_optional_wait

if TYPE_CHECKING:
    from pykka import ActorRef

    from pykka_ws._messages import (
        WsCancel,
        WsDelegatedOk,
        WsDelegatedRequest,
        WsGetStats,
        WsReconnect,
        WsRoute,
        WsSend,
        WsStats,
        WsSubscribe,
        WsUnroute,
        WsUnsubscribe,
    )


__all__ = ["ask", "ask_async", "request"]


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


@overload
def ask(
    ref: ActorRef[Any], message: WsDelegatedRequest | WsSubscribe, *, timeout: float | None = ...
) -> WsDelegatedOk: ...
@overload
def ask(ref: ActorRef[Any], message: WsGetStats, *, timeout: float | None = ...) -> WsStats: ...
@overload
def ask(
    ref: ActorRef[Any], message: WsCancel | WsReconnect, *, timeout: float | None = ...
) -> bool: ...
@overload
def ask(
    ref: ActorRef[Any], message: WsUnsubscribe, *, timeout: float | None = ...
) -> WsDelegatedOk | None: ...
@overload
def ask(
    ref: ActorRef[Any], message: WsSend | WsRoute | WsUnroute, *, timeout: float | None = ...
) -> None: ...


def ask(ref: ActorRef[Any], message: object, *, timeout: float | None = None) -> Any:
    """Ask a `WebSocketActor` and wait: pykka's ``ask``, typed by message.

    `WsDelegatedRequest` and `WsSubscribe` return a `WsDelegatedOk` (or
    raise the outcome), `WsGetStats` a `WsStats`, `WsCancel` and
    `WsReconnect` a bool, the rest None.

    Raises:
        pykka.Timeout: If ``timeout`` passed first.
        pykka.ActorDeadError: If the actor is not running.
        TypeError: If ``timeout`` is not a number (before asking).
        ValueError: If ``timeout`` is not finite and > 0 (before asking).
    """
    return ref.ask(message, block=True, timeout=check_optional_wait(timeout, "timeout"))


@overload
async def ask_async(
    ref: ActorRef[Any], message: WsDelegatedRequest | WsSubscribe
) -> WsDelegatedOk: ...
@overload
async def ask_async(ref: ActorRef[Any], message: WsGetStats) -> WsStats: ...
@overload
async def ask_async(ref: ActorRef[Any], message: WsCancel | WsReconnect) -> bool: ...
@overload
async def ask_async(ref: ActorRef[Any], message: WsUnsubscribe) -> WsDelegatedOk | None: ...
@overload
async def ask_async(ref: ActorRef[Any], message: WsSend | WsRoute | WsUnroute) -> None: ...
@overload
async def ask_async(ref: ActorRef[Any], message: object) -> Any: ...


async def ask_async(ref: ActorRef[Any], message: object) -> Any:
    """Ask a `WebSocketActor` from a coroutine, without blocking the event loop.

    Works for every message the actor answers (`WsDelegatedRequest`,
    `WsSend`, `WsGetStats`, `WsCancel`, `WsReconnect`), typed by message;
    the outcome is returned or raised exactly as
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


def request(
    ref: ActorRef[Any], request: WsDelegatedRequest, *, timeout: float | None = None
) -> WsDelegatedOk:
    """Ask a `WebSocketActor` for a request's outcome and wait for it: the typed ``ask``.

    Returns the `WsDelegatedOk`, or raises the outcome's `WsDelegatedError`
    (`NotDelivered`, `Unconfirmed`, `EndpointRejected`, `PayloadMismatch`,
    `TooManyPending`). pykka's ``ask`` is typed ``Any``; this is not.

    Args:
        ref: The actor.
        request: The request; its own deadline bounds the wait.
        timeout: Seconds to wait at most (pykka's ``ask`` timeout); None
            waits for the outcome, which comes by the request's deadline.

    Raises:
        pykka.Timeout: If ``timeout`` passed first (the request goes on).
        pykka.ActorDeadError: If the actor is not running.
        TypeError: If ``timeout`` is not a number (before asking).
        ValueError: If ``timeout`` is not finite and > 0 (before asking).
    """
    # Checked before asking: pykka puts the message in the inbox first, and a
    # bad timeout raising after that would look refused, with the request sent.
    wait = check_optional_wait(timeout, "timeout")
    ok: WsDelegatedOk = ref.ask(request, block=True, timeout=wait)
    return ok
