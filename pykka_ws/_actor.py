"""The owner actor: a thin shell around the outcome core.

It turns pykka messages, scheduler ticks and connection events into events of
the pure `Core` (which owns the queue, the pending table, the claims and every
outcome rule), runs the endpoint's hooks, tells the subscribers, and runs the
connection's life: connect, back off, reconnect, stop.

Threads and messages::

    caller --ask(WsDelegatedRequest)--> WebSocketActor (this; never blocks on I/O)
      owner --ask(Batch, block=False)--> WsWriter (send(); see _wire)
      WsWriter's reply future --callback--> owner.tell(WriteDone)
    websockets' receiving thread --tell(Inbound / Closed)--> owner
    connector thread --tell(Opened / OpenFailed)--> owner
    scheduler thread (one per process) --tell(_Expire / _Reconnect / CreditCheck)--> owner

The owner touches the socket in two places, both in `_wire` and neither
blocking: a small batch written with ``MSG_DONTWAIT`` when the writer is
idle, and ``stop()``, which shuts a stuck socket down and closes it.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import pykka

from pykka_ws._connection import Closed, Connection, Inbound, Opened, OpenFailed
from pykka_ws._connector import ConnectorSlot, run_connector
from pykka_ws._core import NOT_A_REPLY, Core
from pykka_ws._endpoint import WsEndpoint
from pykka_ws._futures import Deferred, ReplyFuture, mark_owner_thread
from pykka_ws._messages import (
    WsConnected,
    WsDelegatedRequest,
    WsDisconnected,
    WsGetStats,
    WsInbound,
    WsRequestMatch,
    WsSend,
    WsStats,
    check_frame,
)
from pykka_ws._scheduler import SCHEDULER
from pykka_ws._settings import check_settings
from pykka_ws._subscribers import CreditCheck, Subscribers
from pykka_ws._wire import WriteDone, hand_to_writer, try_write_now
from pykka_ws._writer import WsWriter

if TYPE_CHECKING:
    import ssl as ssl_module
    from collections.abc import Iterable, Mapping

    from pykka_ws._core import Batch
    from pykka_ws._messages import Frame, WsBackoff
    from pykka_ws._scheduler import TimerHandle

__all__ = ["WebSocketActor"]

logger = logging.getLogger("pykka_ws")

CONNECTING = "connecting"
OPEN = "open"
BACKOFF = "backoff"
CLOSED = "closed"
STOPPED = "stopped"

_TRY_NOW_MAX_FRAMES = 4
"""Batches this small are first written by the owner, without blocking."""

SLICE = 512
"""Most outcomes decided or told per message handled: bulk work (100,000
requests ending at a disconnect, a deadline or a stop) goes in slices with
the inbox let through between them."""


class _Expire:
    """Time to expire due requests (told by the scheduler)."""

    __slots__ = ()


class _Deliver:
    """Tell the next slice of bulk outcomes' waiters (told to itself)."""

    __slots__ = ()


class _Reconnect:
    """The backoff delay after ``generation`` ended is over."""

    __slots__ = ("generation",)

    def __init__(self, generation: int) -> None:
        self.generation = generation


class WebSocketActor(pykka.ThreadingActor):
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
        url: ``ws://`` or ``wss://`` URL.
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
        open_timeout: Seconds for TCP, TLS and WebSocket handshakes.
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
            ``Authorization`` token). Their values are never logged.
        user_agent_header: The ``User-Agent`` header; None to send none.
        compression: ``"deflate"`` or None (websockets' parameter).
        subprotocols: WebSocket subprotocols to offer.
        recent_ids: How many ended request ids are remembered to recognise
            late replies (`WsLateResponse`) for ``recent_ids_age`` seconds.
        recent_ids_age: See ``recent_ids``.
    """

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return ReplyFuture()

    def __init__(
        self,
        url: str,
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
        additional_headers: Mapping[str, str] | None = None,
        user_agent_header: str | None = "pykka-ws",
        compression: str | None = "deflate",
        subprotocols: Iterable[str] | None = None,
        recent_ids: int = 4096,
        recent_ids_age: float = 60.0,
    ) -> None:
        super().__init__()
        self._settings = settings = check_settings(
            url,
            endpoint=endpoint,
            inbound=inbound,
            max_pending_requests=max_pending_requests,
            default_timeout=default_timeout,
            outbound_capacity=outbound_capacity,
            max_batch=max_batch,
            backoff=backoff,
            open_timeout=open_timeout,
            write_timeout=write_timeout,
            close_timeout=close_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_size=max_size,
            max_queue=max_queue,
            subscriber_queue=subscriber_queue,
            subscriber_overflow=subscriber_overflow,
            ssl=ssl,
            server_hostname=server_hostname,
            additional_headers=additional_headers,
            user_agent_header=user_agent_header,
            compression=compression,
            subprotocols=subprotocols,
            recent_ids=recent_ids,
            recent_ids_age=recent_ids_age,
        )
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
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography

        self._state = CONNECTING
        self._generation = 0  # counts attempts; every event carries one
        self._opened = 0  # connections that opened
        self._connection: Connection | None = None
        self._old_connections: list[Connection] = []
        self._connector: threading.Thread | None = None
        self._slot: ConnectorSlot | None = None
        self._early_close: Closed | None = None
        self._attempt = 0
        self._opened_at: float | None = None
        self._connected_since: float | None = None
        self._expiry_timer: TimerHandle | None = None
        self._reconnect_timer: TimerHandle | None = None
        self._credit_timer: TimerHandle | None = None
        self._delivering = False

        self._reconnects = 0
        self._frames_in = 0
        self._bytes_in = 0
        self._hook_errors = 0
        self._internal_errors = 0
        self._last_error: str | None = None

        self._handlers: dict[type, Any] = {
            WsDelegatedRequest: self._on_request,
            Inbound: self._on_inbound,
            WriteDone: self._on_write_done,
            _Expire: self._on_expire,
            WsSend: self._on_send,
            WsGetStats: self._on_get_stats,
            Opened: self._on_opened,
            OpenFailed: self._on_open_failed,
            Closed: self._on_closed,
            _Reconnect: self._on_reconnect,
            CreditCheck: self._on_credit_check,
            _Deliver: self._on_deliver,
        }

    # -- lifecycle ----------------------------------------------------------

    def on_start(self) -> None:
        """Start the writer and the first connection attempt."""
        mark_owner_thread()
        SCHEDULER.acquire()
        self._writer = WsWriter.start(self._core.claims)
        # The writer is internal: pykka's stop_all() must not stop it before
        # its owner. The owner stops it.
        pykka.ActorRegistry.unregister(self._writer)
        self._connect()

    def on_stop(self) -> None:
        """End every request, close the connection, join every thread."""
        self._shutdown()

    def on_failure(self, *_exc_info: object) -> None:
        """Clean up as on stop, should a handler ever fail."""
        self._shutdown()

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
        deferred = self._core.request(request)
        self._schedule_expiry()
        if self._core.inflight is None:
            self._flush()
        return deferred

    def _on_send(self, message: WsSend) -> Deferred | None:
        refused = self._core.send(message.frame)
        if refused is None and self._core.inflight is None:
            self._flush()
        return refused

    def _on_get_stats(self, _message: WsGetStats) -> WsStats:
        core = self._core
        return WsStats(
            state=self._state,
            connected_since=self._connected_since,
            reconnects=self._reconnects,
            pending=len(core.table),
            queued=core.queued,
            frames_in=self._frames_in,
            frames_out=core.frames_out,
            bytes_in=self._bytes_in,
            bytes_out=core.bytes_out,
            outcomes=dict(core.outcomes),
            sends_refused=core.sends_refused,
            stray_replies=core.stray_replies,
            inbound_dropped=self._subscribers.dropped,
            hook_errors=self._hook_errors + self._subscribers.dead,
            last_error=self._last_error,
            attempts=self._generation,
            internal_errors=self._internal_errors,
        )

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

    # -- inbound ------------------------------------------------------------

    def _on_inbound(self, message: Inbound) -> None:
        frame = message.frame
        self._frames_in += 1
        self._bytes_in += message.size
        match = self._call_hook("match_response", frame)
        if match is not None:
            if not isinstance(match, WsRequestMatch):
                self._hook_garbage("match_response", match)
            elif self._on_match(match, frame):
                self._credit(message)
                return
        parsed = self._call_hook("parse", frame)
        if parsed is not None:
            self._subscribers.publish(WsInbound(frame, parsed), frame=True)
        self._credit(message)

    def _credit(self, message: Inbound) -> None:
        timer = self._subscribers.credit(message.sink)
        if timer is not None:
            self._credit_timer = timer

    def _on_credit_check(self, _message: CreditCheck) -> None:
        self._credit_timer = self._subscribers.check()

    def _on_match(self, match: WsRequestMatch, frame: Frame) -> bool:
        """Complete the request a reply matches; return whether it was one."""
        request_id = match.request_id
        if (
            isinstance(request_id, bool)
            or not isinstance(request_id, int | str)
            or not isinstance(match.ok, bool)
        ):
            # No request can have that id (a bool, a float, an object whose
            # hash raises...), or ok is not a bool: the matcher is wrong and
            # the frame passes on as an ordinary inbound frame.
            self._hook_garbage("match_response", match)
            return False
        reason = match.message if isinstance(match.message, str) else repr(match.message)
        late = self._core.reply(
            request_id,
            frame,
            ok=match.ok,
            message=reason,
            rate_limit_feedback=match.rate_limit_feedback,
        )
        if late is NOT_A_REPLY:
            return False
        if late is not None:
            self._subscribers.publish(late, frame=True)
        return True

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
            if len(batch.claims) <= _TRY_NOW_MAX_FRAMES and self.actor_inbox.empty():
                # A few frames, an idle writer and nothing else to do: try a
                # non-blocking write here, saving two thread hops. Under load
                # (more messages waiting) the writer batches instead.
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

    # -- connection ---------------------------------------------------------

    def _connect(self) -> None:
        self._generation += 1
        self._state = CONNECTING
        self._reap_threads()
        settings = self._settings
        self._slot = slot = ConnectorSlot()
        self._connector = threading.Thread(
            target=run_connector,
            args=(self.actor_ref, self._generation, settings.url, settings.uri, slot),
            kwargs={
                "open_timeout": settings.open_timeout,
                "write_timeout": settings.write_timeout,
                "max_queue": settings.max_queue,
                "connect_kwargs": settings.connect_kwargs,
            },
            name=f"pykka-ws-connect-{self._generation}",
            daemon=True,
        )
        self._connector.start()

    def _on_opened(self, message: Opened) -> None:
        if message.generation != self._generation or self._state != CONNECTING:
            message.connection.abort()  # pragma: no cover - cannot happen
            return
        early_close, self._early_close = self._early_close, None
        self._state = OPEN
        self._connection = message.connection
        self._opened_at = time.monotonic()
        self._connected_since = time.time()
        self._opened += 1
        if self._opened > 1:
            self._reconnects += 1
        # on_open() runs first: a subscriber reacting to WsConnected by
        # changing the endpoint's state cannot race this connection's frames.
        preamble = self._on_open_frames()
        self._subscribers.publish(WsConnected(self._url, self._opened))
        self._core.opened(message.generation, preamble)
        if early_close is not None and early_close.generation == message.generation:
            self._connection_lost(early_close.cause)  # it closed before we knew it opened
            return
        self._flush()

    def _on_open_frames(self) -> list[Frame]:
        frames = self._call_hook("on_open")
        try:
            return [check_frame(f, "on_open() frame") for f in frames]
        except TypeError:
            self._hook_garbage("on_open", frames)
        except Exception:
            self._hook_errors += 1
            logger.exception("pykka-ws: endpoint hook on_open() raised")
        return []

    def _on_open_failed(self, message: OpenFailed) -> None:
        if message.generation != self._generation or self._state != CONNECTING:
            return  # pragma: no cover
        self._early_close = None
        self._after_disconnect(message.error, was_open=False)

    def _on_closed(self, message: Closed) -> None:
        if message.generation != self._generation:
            return
        if self._state == CONNECTING:
            self._early_close = message  # Opened or OpenFailed is on its way
            return
        if self._state != OPEN:
            return
        self._connection_lost(message.cause)

    def _connection_lost(self, cause: BaseException | None) -> None:
        """The open connection is gone: requeue, end what cannot be answered."""
        connection = self._connection
        self._connection = None
        if connection is not None:
            self._old_connections.append(connection)
        self._subscribers.release()  # a receiving thread paused on them must see the end
        self._core.connection_lost()
        self._start_delivering()
        self._after_disconnect(cause)

    def _after_disconnect(self, cause: BaseException | None, *, was_open: bool = True) -> None:
        generation = self._generation
        lived = time.monotonic() - self._opened_at if self._opened_at is not None else 0.0
        self._opened_at = None
        self._connected_since = None
        self._last_error = describe(cause)
        reconnect = self._call_hook("on_disconnect", cause)
        if not isinstance(reconnect, bool):
            self._hook_garbage("on_disconnect", reconnect)
            reconnect = WsEndpoint.on_disconnect(self._endpoint, cause)
        number = self._opened if was_open else self._opened + 1
        self._subscribers.publish(
            WsDisconnected(cause, number, reconnecting=reconnect, was_open=was_open)
        )
        if not reconnect:
            self._state = CLOSED
            logger.warning("pykka-ws: not reconnecting to %s: %s", self._url, self._last_error)
            self._core.give_up(self._last_error or "the endpoint decided not to reconnect")
            self._start_delivering()
            return
        self._state = BACKOFF
        backoff = self._settings.backoff
        if lived >= backoff.reset_after:
            self._attempt = 0
        delay = backoff.delay(self._attempt, self._rng)
        self._attempt += 1
        logger.info(
            "pykka-ws: connection %d to %s lost (%s); reconnecting in %.3f s",
            generation,
            self._url,
            self._last_error,
            delay,
        )
        self._reconnect_timer = SCHEDULER.call_later(delay, self.actor_ref, _Reconnect(generation))

    def _on_reconnect(self, message: _Reconnect) -> None:
        self._reconnect_timer = None
        if message.generation == self._generation and self._state == BACKOFF:
            self._connect()

    def _reap_threads(self) -> None:
        """Forget finished threads of earlier connections."""
        self._old_connections = [
            c for c in self._old_connections if c.recv_events_thread.is_alive()
        ]
        if self._connector is not None and not self._connector.is_alive():
            self._connector = None

    # -- stop ---------------------------------------------------------------

    def _shutdown(self) -> None:
        if self._state == STOPPED:
            return
        self._state = STOPPED
        for timer in (self._expiry_timer, self._reconnect_timer, self._credit_timer):
            if timer is not None:
                timer.cancel()
        unadopted = self._slot.cancel() if self._slot is not None else None
        if unadopted is not None and unadopted is not self._connection:
            # Opened while we were stopping: its Opened message is lost.
            unadopted.abort()
            self._old_connections.append(unadopted)
        # Nothing more may start: every claim not yet started is cancelled.
        stuck = self._core.stop()
        self._tell_everyone_while_stopping()
        connection = self._connection
        self._connection = None
        if connection is not None:
            connection.drop()
            if stuck:
                connection.abort()  # close() would wait on the stuck write's lock
            else:
                try:
                    connection.close()
                except Exception:  # noqa: BLE001
                    connection.abort()
            self._old_connections.append(connection)
        for old in self._old_connections:
            if old is not connection:
                old.abort()  # dead already: free a writer still stuck on one
        if self._writer is not None:
            try:
                self._writer.stop()
            except pykka.ActorDeadError:  # pragma: no cover
                pass
        connector, self._connector = self._connector, None
        if connector is not None and not (self._slot is not None and self._slot.resolving):
            # Cancelled above, it ends at once (its connect, TLS or WebSocket
            # handshake aborted); close_timeout only bounds the wait. The one
            # exception is a DNS lookup, which cannot be interrupted: the
            # connector is not waited for then, and exits by itself (a daemon
            # thread, connecting nothing) as soon as the lookup returns.
            connector.join(self._settings.connect_kwargs["close_timeout"])
        for old in self._old_connections:
            old.abort()
            old.join_threads()
        self._old_connections.clear()
        SCHEDULER.release()

    def _tell_everyone_while_stopping(self) -> None:
        """Tell every waiter its outcome, in slices, answering the inbox between them.

        pykka answers what is left in the inbox (``ActorDeadError``) only
        after ``on_stop`` returns; with 100,000 waiters to tell, an ask
        behind the stop would wait for all of them. Between slices, this
        answers the inbox's asks the same way pykka will, right away. Only
        this actor's own messages are answered; anything else (pykka's own
        stop messages) is put back for pykka, in order.
        """
        core = self._core
        while core.deliver(SLICE):
            refuse_inbox(self.actor_inbox, self._handlers)


def describe(cause: BaseException | None) -> str | None:
    """A readable description of an exception and its causes, or None."""
    if cause is None:
        return None
    parts = []
    seen: set[int] = set()
    exc: BaseException | None = cause
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        parts.append(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def refuse_inbox(inbox: Any, own: Mapping[type, object]) -> None:
    """Answer the asks waiting in a stopping actor's inbox as pykka's teardown would.

    Relies on pykka's envelopes having ``message`` and ``reply_to`` (pykka 4).
    Messages of types not in ``own`` are put back, in order, for pykka.
    """
    kept = []
    while True:
        try:
            envelope = inbox.get_nowait()
        except queue.Empty:
            break
        if type(envelope.message) not in own:
            kept.append(envelope)
            continue
        reply_to = envelope.reply_to
        if reply_to is not None:
            error = pykka.ActorDeadError("the actor stopped before handling the message")
            reply_to.set_exception((pykka.ActorDeadError, error, None))
    for envelope in kept:
        inbox.put(envelope)
