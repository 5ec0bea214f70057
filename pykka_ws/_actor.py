"""The owner actor: a thin shell around the outcome core.

It turns pykka messages, scheduler ticks and connection events into events of
the pure `Core` (which owns the queue, the pending table, the claims and every
outcome rule), runs the endpoint's hooks, tells the subscribers, and runs the
connection's life: connect, back off, reconnect, stop.

Threads and messages::

    caller --ask(WsDelegatedRequest)--> WebSocketActor (this; never blocks on I/O)
      owner --ask(Batch, block=False)--> WsWriter (send(); see _wire)
      WsWriter's reply future --callback--> owner.tell(WriteDone)
    websockets' receiving thread --tell(InboundReady: Inbound / Pong / Closed, batched)--> owner
    connector thread --tell(Opened / OpenFailed)--> owner
    scheduler thread (one per process) --tell(_Expire / _Reconnect / CreditCheck /
                                              KeepaliveTick / PongCheck)--> owner
      owner --ask(Ping, block=False)--> WsWriter (a keepalive ping; PingSent back)

The owner touches the socket in two places, both in `_wire` and neither
blocking: a small batch written with ``MSG_DONTWAIT`` when the writer is
idle, and ``stop()``, which shuts a stuck socket down and closes it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pykka

from pykka_ws._connection import Closed, Inbound, InboundReady, Opened, OpenFailed, Pong
from pykka_ws._core import Core
from pykka_ws._endpoint import WsEndpoint
from pykka_ws._futures import (
    Deferred,
    DropCounts,
    ReplyFuture,
    ReplyTo,
    mark_owner_thread,
    unmark_owner_thread,
)
from pykka_ws._health import (
    Health,
    HeartbeatDone,
    HeartbeatTick,
    KeepaliveTick,
    PongCheck,
    StaleCheck,
)
from pykka_ws._inbound import InboundPath
from pykka_ws._inbox import light_inbox
from pykka_ws._lifecycle import OPEN, SLICE, ConnectionLife, GateDone, Reconnect
from pykka_ws._messages import (
    WsCancel,
    WsDelegatedRequest,
    WsGetStats,
    WsReconnect,
    WsRoute,
    WsSend,
    WsSubscribe,
    WsUnroute,
    WsUnsubscribe,
    check_timeout,
)
from pykka_ws._recovery import ProbeDone, ProbeDue, Recovery
from pykka_ws._routing import Routing
from pykka_ws._scheduler import SCHEDULER
from pykka_ws._settings import check_settings
from pykka_ws._stats import stats_of
from pykka_ws._subscribers import CreditCheck, Subscribers
from pykka_ws._wire import PingSent, WriteDone, hand_to_writer, try_write_now
from pykka_ws._writer import WsWriter

if TYPE_CHECKING:
    import ssl as ssl_module
    from collections.abc import Iterable, Mapping, Sequence

    from pykka_ws._core import Batch
    from pykka_ws._messages import WsBackoff, WsHeartbeat, WsStats
    from pykka_ws._scheduler import TimerHandle
    from pykka_ws._settings import Settings

__all__ = ["WebSocketActor"]

logger = logging.getLogger("pykka_ws")

_TRY_NOW_MAX_FRAMES = 4
"""Batches this small are first written by the owner, without blocking."""


class _Expire:
    """Time to expire due requests (told by the scheduler)."""

    __slots__ = ()


class _Deliver:
    """Tell the next slice of bulk outcomes' waiters (told to itself)."""

    __slots__ = ()


class WebSocketActor(InboundPath, Routing, Recovery, Health, ConnectionLife, pykka.ThreadingActor):
    """A WebSocket connection as a pykka actor, with honest request outcomes.

    Start it with ``WebSocketActor.start(url, ...)``; every argument below is
    checked in the calling thread, so bad values raise there.

    Messages it handles:

    - `WsDelegatedRequest`: ``ask`` returns `WsDelegatedOk` or raises a
      `WsDelegatedError` subclass; ``ask(block=False)`` gives a future that
      does the same; ``tell`` is allowed (nobody is told the outcome).
    - `WsSend`: a fire-and-forget frame, in one FIFO with requests.
    - `WsGetStats`: ``ask`` returns a `WsStats` snapshot.

    Args:
        url: ``ws://`` or ``wss://`` URL, or a sequence of them for
            failover: each new attempt after a failure takes the next
            (`WsConnected.url` says which one opened).
        endpoint: The `WsEndpoint` with the API's hooks; default: no
            matching, every frame passed on as is.
        inbound: An `ActorRef`, or several, told `WsInbound`, `WsConnected`,
            `WsDisconnected` and `WsLateResponse`. A dead one is dropped.
        max_pending_requests: Most distinct request ids in flight; beyond it
            requests fail with `TooManyPending`.
        default_timeout: Seconds to a request's deadline when it sets none.
        outbound_capacity: Most frames queued for writing; beyond it a
            `WsSend` is refused (`WsSendRefused`) and a request ends
            `NotDelivered`.
        max_batch: Most frames handed to the writer at once.
        backoff: Reconnect delays (`WsBackoff`).
        open_timeout: Seconds for the whole attempt: TCP connect, TLS and
            WebSocket handshakes share one deadline. (A DNS lookup cannot be
            interrupted: ``stop()`` still returns at once, and the connector
            thread ends by itself when the lookup returns.)
        write_timeout: Seconds one ``send()`` may block on a peer that does
            not read before the connection is failed and replaced; None for
            no limit (not advised). This bounds the whole write, so a frame
            too large to leave in that time on a slow link is cut too.
        close_timeout: Seconds to wait for the closing handshake.
        ping_interval: Seconds between keepalive pings; None disables them.
        ping_timeout: Seconds to wait for a pong before the connection is
            deemed dead; None waits forever.
        max_size: Largest inbound message in bytes; a larger one fails the
            connection (code 1009) and it is replaced. None for no limit.
        max_queue: Most inbound messages told to the actor and not yet
            handled; beyond it the connection stops reading from the socket
            (TCP backpressure) until the actor catches up, so a flooding
            peer cannot grow memory without bound.
        subscriber_queue: Most messages waiting in an inbound subscriber's
            inbox. While one is that full, frames are not credited back to
            the receiving thread, so after ``max_queue`` more it stops
            reading (a slow subscriber slows the socket; nothing is dropped,
            order is kept). Memory stays bounded end to end: at most
            ``max_queue`` frames in this actor's inbox and
            ``subscriber_queue + max_queue`` in a subscriber's.
        subscriber_overflow: ``"block"`` (default: as above) or ``"drop"``:
            a frame (`WsInbound`, `WsLateResponse`) for a subscriber whose
            inbox is full is not told to it and counted in
            `WsStats.inbound_dropped`; reading never pauses. Events
            (`WsConnected`, `WsDisconnected`) are always told.
        ssl: An `ssl.SSLContext` for ``wss://``; default: the system's
            trusted CAs, with certificate and host name checks on.
        server_hostname: Host name to check the certificate against, when it
            differs from the URL's.
        additional_headers: Extra HTTP headers for the handshake (e.g. an
            ``Authorization`` token): a mapping, or (name, value) pairs
            (a name may repeat), as websockets takes them. Their values are
            never logged, and a bad one is refused without being shown.
        user_agent_header: The ``User-Agent`` header; None to send none.
        compression: ``"deflate"`` or None (websockets' parameter).
        subprotocols: WebSocket subprotocols to offer.
        recent_ids: How many ended request ids are remembered to recognise
            late replies (`WsLateResponse`) for ``recent_ids_age`` seconds.
        recent_ids_age: See ``recent_ids``.
        heartbeat: An application-level heartbeat (`WsHeartbeat`): a
            confirmed request every ``interval`` seconds; one that does not
            end confirmed fails the connection. None (default): none.
        stale_after: Seconds without any inbound frame after which the
            connection is failed and replaced; None (default): never.
        probe_delay: Seconds after a request ends ``Unconfirmed(written=True)``
            before it is probed (`WsEndpoint.probe`, `WsResolved`): data
            buffered before a break can still be executed, so a probe sent at
            once may be told "not there" for an order that then fills.
    """

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return ReplyFuture()

    _create_actor_inbox = staticmethod(light_inbox)  # see _inbox

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        endpoint: WsEndpoint | None = None,
        inbound: pykka.ActorRef[Any] | Iterable[pykka.ActorRef[Any]] | None = None,
        max_pending_requests: int = 1024,
        default_timeout: float = 5.0,
        outbound_capacity: int = 4096,
        max_batch: int = 256,
        backoff: WsBackoff | None = None,
        open_timeout: float = 10.0,
        write_timeout: float | None = 10.0,
        close_timeout: float = 2.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_size: int | None = 2**20,
        max_queue: int = 1024,
        subscriber_queue: int = 1024,
        subscriber_overflow: str = "block",
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        additional_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        user_agent_header: str | None = "pykka-ws",
        compression: str | None = "deflate",
        subprotocols: Iterable[str] | None = None,
        recent_ids: int = 4096,
        recent_ids_age: float = 60.0,
        heartbeat: WsHeartbeat | None = None,
        stale_after: float | None = None,
        probe_delay: float = 1.0,
    ) -> None:
        # Every argument, by name, checked in the caller's thread (first
        # statement: no other local exists yet).
        arguments = {
            k: v for k, v in locals().items() if k not in {"self", "__class__", "probe_delay"}
        }
        super().__init__()
        self._init_shell(check_settings(**arguments), check_timeout(probe_delay, "probe_delay"))

    def _init_shell(self, settings: Settings, probe_delay: float) -> None:
        self._settings = settings
        self._url = settings.url
        self._endpoint = settings.endpoint
        self._core = Core(
            max_pending=settings.max_pending,
            capacity=settings.capacity,
            max_batch=settings.max_batch,
            default_timeout=settings.default_timeout,
            recent_ids=settings.recent_ids,
            recent_ids_age=settings.recent_ids_age,
        )
        self._subscribers = Subscribers(
            settings.inbound,
            self.actor_ref,
            settings.subscriber_queue,
            settings.subscriber_overflow,
        )
        self._writer: pykka.ActorRef[WsWriter] | None = None

        self._init_lifecycle()
        self._init_health()
        self._init_inbound(self._endpoint)
        self._init_recovery(probe_delay, settings.max_pending)
        self._expiry_timer: TimerHandle | None = None
        self._credit_timer: TimerHandle | None = None
        self._delivering = False
        self._frames_in = 0
        self._subscriptions = {}
        self._drops = DropCounts()
        self._bytes_in = 0
        self._hook_errors = 0
        self._internal_errors = 0

        self._handlers: dict[type, Any] = {
            WsDelegatedRequest: self._on_request,
            InboundReady: self._on_inbound_ready,
            Inbound: self._on_inbound,
            WriteDone: self._on_write_done,
            _Expire: self._on_expire,
            WsSend: self._on_send,
            WsGetStats: self._on_get_stats,
            Opened: self._on_opened,
            OpenFailed: self._on_open_failed,
            Closed: self._on_closed,
            Reconnect: self._on_reconnect,
            CreditCheck: self._on_credit_check,
            _Deliver: self._on_deliver,
            WsCancel: self._on_cancel,
            GateDone: self._on_gate_done,
            HeartbeatTick: self._on_heartbeat_tick,
            HeartbeatDone: self._on_heartbeat_done,
            StaleCheck: self._on_stale_check,
            Pong: self._on_pong,
            KeepaliveTick: self._on_keepalive_tick,
            PingSent: self._on_ping_sent,
            PongCheck: self._on_pong_check,
            ProbeDue: self._on_probe_due,
            ProbeDone: self._on_probe_done,
            WsRoute: self._on_route,
            WsUnroute: self._on_unroute,
            WsSubscribe: self._on_subscribe,
            WsUnsubscribe: self._on_unsubscribe,
            WsReconnect: self._on_reconnect_asked,
        }

    # -- lifecycle ----------------------------------------------------------

    def on_start(self) -> None:
        """Start the writer and the first connection attempt."""
        mark_owner_thread()
        acquired = False
        try:
            SCHEDULER.acquire()
            acquired = True
            self._writer = WsWriter.start(self._core.claims)
            # The writer is internal: pykka's stop_all() must not stop it
            # before its owner. The owner stops it.
            pykka.ActorRegistry.unregister(self._writer)
            self._connect()
        except BaseException:
            # pykka stops the actor without calling on_stop (it logs the
            # error): undo what started, and answer what was told meanwhile.
            try:
                if acquired:
                    self._shutdown()  # releases the scheduler
            finally:
                unmark_owner_thread()
                self._close_inbox()
            raise

    def on_stop(self) -> None:
        """End every request, close the connection, join every thread."""
        try:
            self._shutdown()
        finally:
            # Dead now: blocking is safe again (pykka may call stop_all() on
            # this thread after a BaseException).
            unmark_owner_thread()
            self._close_inbox()

    def on_failure(self, *_exc_info: object) -> None:
        """Clean up as on stop, should a handler ever fail."""
        try:
            self._shutdown()
        finally:
            unmark_owner_thread()
            self._close_inbox()

    def on_receive(self, message: Any) -> Any:
        """Dispatch a message to its handler."""
        handler = self._handlers.get(type(message))
        if handler is None:
            for cls, candidate in self._handlers.items():
                if isinstance(message, cls):
                    handler = candidate
                    break
            else:
                return super().on_receive(message)
        try:
            return handler(message)
        except Exception as exc:
            # A bug here must not kill the connection for every other caller
            # (pykka stops an actor whose handler raises on a tell): an asking
            # caller gets the exception through a failed deferred.
            self._internal_errors += 1
            logger.exception("pykka-ws: internal error handling %r", message)
            deferred = Deferred()
            deferred.fail(exc)
            return deferred

    # -- requests -----------------------------------------------------------

    def _on_request(self, request: WsDelegatedRequest) -> Deferred:
        """A caller's request (a user's: probed if it ends Unconfirmed)."""
        fresh = self._probing and request.request_id not in self._core.table
        deferred = self._submit(request)
        if fresh and self._core.table.get(request.request_id) is deferred:
            self._watch_for_probe(request, deferred)  # once per inserted request
        return deferred

    def _submit(self, request: WsDelegatedRequest) -> Deferred:
        """Hand a request to the core (the actor's own requests come in here too)."""
        try:
            deferred = self._core.request(request)
        except Exception as exc:  # a bug: still, every waiter is told
            self._internal_errors += 1
            logger.exception("pykka-ws: internal error handling %r", request)
            deferred = Deferred()
            deferred.fail(exc)
        self._tell_reply_to(request, deferred)
        try:
            self._schedule_expiry()
            if self._core.inflight is None:
                self._flush()
        except Exception:  # a bug after the request was queued: it goes on
            self._internal_errors += 1
            logger.exception("pykka-ws: internal error after queueing %r", request)
        return deferred

    def _tell_reply_to(self, request: WsDelegatedRequest, deferred: Deferred) -> None:
        if request.reply_to is not None:
            deferred.add_waiter(
                ReplyTo(request.reply_to, request.request_id, request.context, self._drops)
            )

    def _on_cancel(self, message: WsCancel) -> bool:
        return self._core.cancel(message.request_id)

    def _on_send(self, message: WsSend) -> Deferred | None:
        refused = self._core.send(message.frame)
        if refused is None and self._core.inflight is None:
            self._flush()
        return refused

    def _on_get_stats(self, _message: WsGetStats) -> WsStats:
        return stats_of(self)

    # -- deadlines and bulk outcomes ------------------------------------------

    def _on_expire(self, _message: _Expire) -> None:
        self._expiry_timer = None
        if self._core.expire(limit=SLICE):
            # More are due: let the inbox through, then go on.
            self._expiry_timer = SCHEDULER.call_at(0.0, self.actor_ref, _Expire())
            return
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        """Make sure a timer fires by the earliest pending deadline."""
        deadline = self._core.next_deadline()
        if deadline is None:
            return
        timer = self._expiry_timer
        if timer is not None:
            if timer.when <= deadline:
                return
            timer.cancel()
        self._expiry_timer = SCHEDULER.call_at(deadline, self.actor_ref, _Expire())

    def _start_delivering(self) -> None:
        """Bulk outcomes were decided: tell their waiters in slices."""
        if self._core.pending_deliveries and not self._delivering:
            self._delivering = True
            self.actor_ref.tell(_Deliver())

    def _on_deliver(self, _message: _Deliver) -> None:
        if self._core.deliver(SLICE):
            self.actor_ref.tell(_Deliver())
        else:
            self._delivering = False

    def _call_hook(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._endpoint, name)(*args)
        except Exception:
            self._hook_errors += 1
            logger.exception("pykka-ws: endpoint hook %s() raised", name)
            return getattr(WsEndpoint, name)(self._endpoint, *args)

    def _hook_garbage(self, name: str, value: object) -> None:
        self._hook_errors += 1
        logger.error("pykka-ws: endpoint hook %s() returned %r; ignored", name, value)

    # -- outbound -----------------------------------------------------------

    def _flush(self) -> None:
        """Hand the next batch to the writer, if it is idle and we are open.

        Batches the owner writes itself (small ones, when idle) complete at
        once, so this loops to the next batch; it never recurses.
        """
        core = self._core
        while (batch := core.next_batch()) is not None:
            connection = self._connection
            assert connection is not None  # noqa: S101 - the core is open only with one
            batch.connection = connection
            if (
                len(batch.claims) <= _TRY_NOW_MAX_FRAMES
                and self.actor_inbox.empty()
                and not self._pinging
            ):
                # A few frames, an idle writer and nothing else to do: try a
                # non-blocking write here, saving two thread hops. Under load
                # (more messages waiting) the writer batches instead; while a
                # keepalive ping is with the writer, so does this (see _wire).
                # Whatever would block goes on to the writer (which then
                # owns websockets' lock until it is done).
                result = try_write_now(connection, batch, core.claims)
                if result is not None:
                    self._batch_written(batch, result.frames_out, result.bytes_out, result.error)
                    continue
            assert self._writer is not None  # noqa: S101
            hand_to_writer(self._writer, batch, self.actor_ref)
            return

    def _on_write_done(self, message: WriteDone) -> None:
        result = message.result
        self._batch_written(message.batch, result.frames_out, result.bytes_out, result.error)
        self._flush()

    def _batch_written(
        self, batch: Batch, frames_out: int, bytes_out: int, error: BaseException | None
    ) -> None:
        if self._core.batch_written(batch, frames_out, bytes_out, error) and self._state == OPEN:
            assert error is not None  # noqa: S101
            self._connection_lost(error)
