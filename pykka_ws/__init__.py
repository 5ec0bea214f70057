"""pykka-ws: a pykka WebSocket actor whose requests come back with an honest outcome.

Every `WsDelegatedRequest` asked of a `WebSocketActor` ends in exactly one of:
`WsDelegatedOk` (sent, or confirmed by the endpoint's reply), `EndpointRejected`,
`NotDelivered` (provably never written: safe to retry), `Unconfirmed` (may have
been sent, no reply by the deadline), `PayloadMismatch` or `TooManyPending`.
"""

from __future__ import annotations

import logging

from pykka_ws._actor import WebSocketActor
from pykka_ws._aio import ask, ask_async, request
from pykka_ws._endpoint import WsEndpoint
from pykka_ws._errors import (
    EndpointRejected,
    NotDelivered,
    PayloadMismatch,
    TooManyPending,
    Unconfirmed,
    WsDelegatedError,
    WsOpenFailed,
    WsSendRefused,
)
from pykka_ws._inbox import SubscriberActor
from pykka_ws._messages import (
    Frame,
    RequestId,
    WsBackoff,
    WsCancel,
    WsConfirmMode,
    WsConnected,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsDisconnected,
    WsGap,
    WsGetStats,
    WsHeartbeat,
    WsInbound,
    WsLateResponse,
    WsOutcome,
    WsReconnect,
    WsRequestMatch,
    WsResolved,
    WsRoute,
    WsSend,
    WsStats,
    WsSubscribe,
    WsUnroute,
    WsUnsubscribe,
)

__all__ = [
    "EndpointRejected",
    "Frame",
    "NotDelivered",
    "PayloadMismatch",
    "RequestId",
    "SubscriberActor",
    "TooManyPending",
    "Unconfirmed",
    "WebSocketActor",
    "WsBackoff",
    "WsCancel",
    "WsConfirmMode",
    "WsConnected",
    "WsDelegatedError",
    "WsDelegatedOk",
    "WsDelegatedRequest",
    "WsDisconnected",
    "WsEndpoint",
    "WsGap",
    "WsGetStats",
    "WsHeartbeat",
    "WsInbound",
    "WsLateResponse",
    "WsOpenFailed",
    "WsOutcome",
    "WsReconnect",
    "WsRequestMatch",
    "WsResolved",
    "WsRoute",
    "WsSend",
    "WsSendRefused",
    "WsStats",
    "WsSubscribe",
    "WsUnroute",
    "WsUnsubscribe",
    "ask",
    "ask_async",
    "request",
]

__version__ = "0.1.0"

logging.getLogger("pykka_ws").addHandler(logging.NullHandler())
