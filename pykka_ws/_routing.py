"""Routes and runtime subscriptions, for the owner actor.

`Routing` is a part of `WebSocketActor` (a mixin, on the owner's thread
only). It keeps the current subscription set (`WsSubscribe`,
`WsUnsubscribe`): what is replayed after `WsEndpoint.on_open`'s frames on
every reconnect, with no state shared across threads by hand. And it keeps
the routes (`WsRoute`, `WsUnroute`) by which a parsed inbound message goes to
the actors of its `WsEndpoint.route` key instead of to every subscriber.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pykka_ws._errors import EndpointRejected

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from pykka._types import OptExcInfo

    from pykka_ws._core import Core
    from pykka_ws._futures import Deferred
    from pykka_ws._messages import (
        Frame,
        WsDelegatedRequest,
        WsRoute,
        WsSubscribe,
        WsUnroute,
        WsUnsubscribe,
    )
    from pykka_ws._subscribers import Subscribers

__all__ = ["Routing"]


class Routing:
    """The routing half of `WebSocketActor` (see the module docstring)."""

    # Set by WebSocketActor, used here.
    _core: Core
    _subscribers: Subscribers
    _subscriptions: dict[Hashable, WsDelegatedRequest]

    _submit: Callable[[WsDelegatedRequest], Deferred]  # WebSocketActor's
    _last_seq: dict[Hashable, int]  # Recovery's

    def _on_route(self, message: WsRoute) -> None:
        self._subscribers.add_route(message.key, message.ref)

    def _on_unroute(self, message: WsUnroute) -> None:
        self._subscribers.remove_route(message.key, message.ref)

    def _on_subscribe(self, message: WsSubscribe) -> Deferred:
        key, request = message.key, message.request
        self._subscriptions[key] = request
        if message.route is not None:
            self._subscribers.add_route(key, message.route)
        deferred = self._submit(request)
        deferred.add_waiter(_ForgetIfRejected(self._subscriptions, key, request))
        return deferred

    def _on_unsubscribe(self, message: WsUnsubscribe) -> Deferred | None:
        self._subscriptions.pop(message.key, None)
        self._last_seq.pop(message.key, None)
        self._subscribers.remove_route(message.key, None)
        if message.request is None:
            return None
        return self._submit(message.request)

    def _replayed_frames(self) -> list[Frame]:
        """The current subscriptions' frames, to send after ``on_open``'s.

        One whose own subscribe request is still pending is skipped: that
        request is queued and sent on this connection anyway.
        """
        table = self._core.table
        return [r.frame for r in self._subscriptions.values() if r.request_id not in table]


class _ForgetIfRejected:
    """A subscribe request's waiter: a refusal takes it out of the set."""

    __slots__ = ("key", "request", "subscriptions")

    def __init__(
        self,
        subscriptions: dict[Hashable, WsDelegatedRequest],
        key: Hashable,
        request: WsDelegatedRequest,
    ) -> None:
        self.subscriptions = subscriptions
        self.key = key
        self.request = request

    def set_now(self, value: Any) -> None:
        """Confirmed: it stays."""

    def set_exception_now(self, exc_info: OptExcInfo) -> None:
        """Rejected: forget it (other failures keep it, to be replayed)."""
        if isinstance(exc_info[1], EndpointRejected) and (
            self.subscriptions.get(self.key) is self.request
        ):
            del self.subscriptions[self.key]
