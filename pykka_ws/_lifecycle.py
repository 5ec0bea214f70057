"""The connection's life, for the owner actor: connect, open, lose, back off, stop.

`ConnectionLife` is a part of `WebSocketActor` (a mixin; it runs on the
owner's thread only), kept apart so each file has one job: this one owns the
states CONNECTING -> OPEN -> BACKOFF -> CONNECTING ... and CLOSED, STOPPED,
the connector thread, the connection's threads and their joining, the
reconnect backoff, and ``stop()``. Outcomes are the core's (`_core`): this
only tells it that a connection opened, was lost, or will not come back.
"""

from __future__ import annotations

import email.utils
import logging
import queue
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import pykka
from websockets.exceptions import InvalidStatus

from pykka_ws._connector import ConnectorSlot, run_connector
from pykka_ws._endpoint import WsEndpoint
from pykka_ws._errors import NotDelivered, WsOpenFailed
from pykka_ws._futures import ReplyTo, TellOwner
from pykka_ws._inbox import Inbox, answer_stopped
from pykka_ws._messages import WsConnected, WsDelegatedRequest, WsDisconnected, check_frame
from pykka_ws._scheduler import SCHEDULER

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pykka_ws._connection import Closed, Connection, Opened, OpenFailed
    from pykka_ws._core import Core
    from pykka_ws._futures import Deferred, DropCounts
    from pykka_ws._messages import Frame, WsReconnect
    from pykka_ws._scheduler import TimerHandle
    from pykka_ws._settings import Settings
    from pykka_ws._subscribers import Subscribers
    from pykka_ws._writer import WsWriter

__all__ = [
    "BACKOFF",
    "CLOSED",
    "CONNECTING",
    "OPEN",
    "SLICE",
    "STOPPED",
    "ConnectionLife",
    "GateDone",
    "Reconnect",
    "retry_after",
]

logger = logging.getLogger("pykka_ws")

CONNECTING = "connecting"
OPEN = "open"
BACKOFF = "backoff"
CLOSED = "closed"
STOPPED = "stopped"

SLICE = 512
"""Most outcomes decided or told per message handled: bulk work (100,000
requests ending at a disconnect, a deadline or a stop) goes in slices with
the inbox let through between them."""


class Reconnect:
    """The backoff delay after ``generation`` ended is over."""

    __slots__ = ("generation",)

    def __init__(self, generation: int) -> None:
        self.generation = generation


class ConnectionLife:
    """The connection half of `WebSocketActor` (see the module docstring)."""

    # Set by WebSocketActor, used here.
    actor_ref: pykka.ActorRef[Any]
    actor_inbox: Any
    _settings: Settings
    _core: Core
    _subscribers: Subscribers
    _writer: pykka.ActorRef[WsWriter] | None
    _endpoint: WsEndpoint
    _url: str
    _handlers: dict[type, Any]
    _expiry_timer: TimerHandle | None
    _credit_timer: TimerHandle | None
    _hook_errors: int
    _drops: DropCounts

    def _init_lifecycle(self) -> None:
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._state = CONNECTING
        self._generation = 0  # counts attempts; every event carries one
        self._opened = 0  # connections that opened
        self._reconnects = 0
        self._connection: Connection | None = None
        self._old_connections: list[Connection] = []
        self._connector: threading.Thread | None = None
        self._slot: ConnectorSlot | None = None
        self._early_close: Closed | None = None
        self._attempt = 0
        self._opened_at: float | None = None
        self._connected_since: float | None = None
        self._reconnect_timer: TimerHandle | None = None
        self._last_error: str | None = None
        self._url_index = 0

    # Provided by WebSocketActor, Routing and Health (declared, not defined:
    # a stub here could come first in WebSocketActor's method order).
    _call_hook: Callable[..., Any]
    _hook_garbage: Callable[[str, object], None]
    _flush: Callable[[], None]
    _schedule_expiry: Callable[[], None]
    _tell_reply_to: Callable[[WsDelegatedRequest, Deferred], None]
    _last_seq: dict[Any, int]  # Recovery's
    _pinging: bool  # Health's: a keepalive ping is with the writer
    _start_delivering: Callable[[], None]
    _replayed_frames: Callable[[], list[Frame]]
    _start_watching: Callable[[int], None]

    # -- connection ---------------------------------------------------------

    def _connect(self) -> None:
        self._generation += 1
        self._state = CONNECTING
        self._reap_threads()
        settings = self._settings
        url, uri = settings.urls[self._url_index]
        self._url = url
        connect_kwargs = settings.connect_kwargs
        if uri.secure:
            connect_kwargs = {**connect_kwargs, **settings.tls_kwargs}
        self._slot = slot = ConnectorSlot()
        self._connector = threading.Thread(
            target=run_connector,
            args=(self.actor_ref, self._generation, url, uri, slot),
            kwargs={
                "open_timeout": settings.open_timeout,
                "write_timeout": settings.write_timeout,
                "max_queue": settings.max_queue,
                "connect_kwargs": connect_kwargs,
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
        self._settings.connect_kwargs["logger"].hide(
            part if isinstance(part, str | bytes) else part.frame for part in preamble
        )
        subprotocol = message.connection.subprotocol
        self._subscribers.publish(WsConnected(self._url, self._opened, subprotocol))
        generation = message.generation
        self._last_seq.clear()  # streams are numbered afresh after a replay
        opened = self._core.opened(generation, preamble, self._replayed_frames())
        for request, deferred in opened:
            done = _gate_done(generation, request.request_id)
            deferred.add_waiter(TellOwner(self.actor_ref, done))
            self._tell_reply_to(request, deferred)
        self._schedule_expiry()  # the on_open requests' deadlines
        self._start_watching(generation)
        if early_close is not None and early_close.generation == message.generation:
            self._connection_lost(early_close.cause)  # it closed before we knew it opened
            return
        self._flush()

    def _on_open_frames(self) -> list[Frame | WsDelegatedRequest]:
        parts = self._call_hook("on_open")
        try:
            return [
                p if isinstance(p, WsDelegatedRequest) else check_frame(p, "on_open() frame")
                for p in parts
            ]
        except TypeError:
            # Not the value itself: on_open frames (auth) are never logged.
            self._hook_garbage("on_open", f"<{type(parts).__name__}: not frames or requests>")
        except Exception:
            self._hook_errors += 1
            logger.exception("pykka-ws: endpoint hook on_open() raised")
        return []

    def _on_gate_done(self, message: GateDone) -> None:
        """An ``on_open`` request ended: open the gate, or fail the connection."""
        if message.generation != self._generation or self._state != OPEN:
            return
        if message.error is None:
            if self._core.ungate(message.request_id):
                self._flush()
            return
        self._drop_connection(WsOpenFailed(message.request_id, message.error))

    def _drop_connection(self, cause: BaseException) -> None:
        """Fail the open connection now (a health decision); it is replaced as usual."""
        connection = self._connection
        if connection is not None:
            connection.drop()  # its events are stale from now on
            connection.abort()
        self._connection_lost(cause)

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
        self._last_error = redact(describe(cause), self._settings.connect_kwargs)
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
        self._url_index = (self._url_index + 1) % len(self._settings.urls)  # failover
        backoff = self._settings.backoff
        if lived >= backoff.reset_after:
            self._attempt = 0
        delay = max(backoff.delay(self._attempt, self._rng), retry_after(cause))
        self._attempt += 1
        logger.info(
            "pykka-ws: connection %d to %s lost (%s); reconnecting in %.3f s",
            generation,
            self._url,
            self._last_error,
            delay,
        )
        self._reconnect_timer = SCHEDULER.call_later(delay, self.actor_ref, Reconnect(generation))

    def _on_reconnect(self, message: Reconnect) -> None:
        self._reconnect_timer = None
        if message.generation == self._generation and self._state == BACKOFF:
            self._connect()

    def _on_reconnect_asked(self, message: WsReconnect) -> bool:
        """`WsReconnect`: drop the open connection now, or end the backoff wait."""
        if self._state == OPEN:
            reason = f": {message.reason}" if message.reason else ""
            self._drop_connection(ConnectionAbortedError(f"reconnect asked (WsReconnect){reason}"))
            return True
        if self._state == BACKOFF:
            if self._reconnect_timer is not None:
                self._reconnect_timer.cancel()
                self._reconnect_timer = None
            self._connect()
            return True
        return False

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
            if stuck or self._pinging:
                # close() would wait on the lock of the stuck write (or of a
                # keepalive ping with the writer, which may be stuck too).
                connection.abort()
            else:
                # websockets' close() takes the connection's lock with no
                # timeout, then writes the close frame: a peer that does not
                # read, with websockets' receiving thread stuck writing a pong
                # under that lock (a ping flood), would hold stop() for ever.
                # The watchdog aborts the socket from the scheduler's thread,
                # which ends both waits. It fires just after close_timeout, so
                # that websockets' own close timeout (it closes the socket
                # itself once the peer's close frame is late) goes first.
                watchdog = SCHEDULER.run_later(
                    self._settings.close_timeout + _WATCHDOG_MARGIN, connection.abort_if_open
                )
                try:
                    connection.close()
                except Exception:  # noqa: BLE001
                    connection.abort()
                finally:
                    watchdog.cancel()
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

        A request left in the inbox never reached the actor: its
        ``reply_to`` is told `NotDelivered` (pykka would drop it silently,
        and the actor waiting for its outcome would wait for ever).
        """
        core = self._core
        while core.deliver(SLICE):
            refuse_inbox(self.actor_inbox, self._handlers, self._drops)
        refuse_inbox(self.actor_inbox, self._handlers, self._drops)

    def _close_inbox(self) -> None:
        """Have whoever tells this stopped actor from now on be answered (see `_inbox`)."""
        inbox = self.actor_inbox
        if isinstance(inbox, Inbox) and not inbox.closed:
            own, drops = self._handlers, self._drops
            inbox.close(lambda box: refuse_inbox(box, own, drops, closed=True))


class GateDone:
    """An ``on_open`` request of ``generation`` ended (``error`` None: confirmed)."""

    __slots__ = ("error", "generation", "request_id")

    def __init__(self, generation: int, request_id: Any, error: BaseException | None) -> None:
        self.generation = generation
        self.request_id = request_id
        self.error = error


def _gate_done(generation: int, request_id: Any) -> Callable[[Any, BaseException | None], GateDone]:
    """What an ``on_open`` request's end tells the owner."""

    def build(_value: Any, error: BaseException | None) -> GateDone:
        return GateDone(generation, request_id, error)

    return build


_WATCHDOG_MARGIN = 0.1
"""Seconds after ``close_timeout`` at which stop() aborts a close that is stuck.

websockets starts its own close timer only once it holds the lock and has
sent the close frame: a polite close still writing then is cut short."""

_RETRY_AFTER_MAX = 3600.0
"""A ``Retry-After`` longer than this (seconds) is taken as this."""


def retry_after(cause: BaseException | None) -> float:
    """Seconds a 429 or 503 handshake refusal asked to wait (``Retry-After``), else 0."""
    seen: set[int] = set()
    exc = cause
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        if isinstance(exc, InvalidStatus) and response is not None:
            if response.status_code not in {429, 503}:
                return 0.0
            return _seconds(response.headers.get("Retry-After"))
        exc = exc.__cause__ or exc.__context__
    return 0.0


def _seconds(value: str | None) -> float:
    """A ``Retry-After`` value: delta-seconds or an HTTP date."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return min(float(value), _RETRY_AFTER_MAX)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:
        return 0.0
    return min(max(0.0, when.timestamp() - time.time()), _RETRY_AFTER_MAX)


_SHORTEST_SECRET = 4
"""Header values shorter than this are not redacted from error texts (too many false hits)."""


def redact(text: str | None, connect_kwargs: Mapping[str, Any]) -> str | None:
    """``text`` with every value of ``additional_headers`` (secrets) replaced."""
    headers: list[tuple[str, str]] = connect_kwargs.get("additional_headers") or []
    if text is None or not headers:
        return text
    for value in sorted((value for _, value in headers), key=len, reverse=True):
        if len(value.strip()) >= _SHORTEST_SECRET:
            text = text.replace(value.strip(), "<redacted>")
    return text


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


def refuse_inbox(
    inbox: Any, own: Mapping[type, object], drops: DropCounts, *, closed: bool = False
) -> None:
    """Answer the asks waiting in a stopping actor's inbox as pykka's teardown would.

    Relies on pykka's envelopes having ``message`` and ``reply_to`` (pykka 4).
    Messages of types not in ``own`` are put back, in order, for pykka, unless
    the inbox is ``closed`` (see `_inbox.Inbox`): pykka has drained it for the
    last time, or may have, so they are answered here as pykka would answer
    them: its stop request as done, any other ask with `pykka.ActorDeadError`.
    A `WsDelegatedRequest` with a ``reply_to`` has it told `NotDelivered`.
    """
    kept = []
    while True:
        try:
            envelope = inbox.get_nowait()
        except queue.Empty:
            break
        if type(envelope.message) not in own and not closed:
            kept.append(envelope)
            continue
        try:
            _refuse(envelope, own, drops)
        except Exception:  # a reply_to's tell that raised; it may run in some sender's tell
            logger.exception("pykka-ws: answering %r after the stop failed", envelope)
    for envelope in kept:
        inbox.put(envelope)


def _refuse(envelope: Any, own: Mapping[type, object], drops: DropCounts) -> None:
    message = envelope.message
    if (
        type(message) in own
        and isinstance(message, WsDelegatedRequest)
        and message.reply_to is not None
    ):
        request_id = message.request_id
        never = NotDelivered(
            f"request {request_id!r}: the actor stopped before handling it",
            request_id=request_id,
        )
        exc_info = (NotDelivered, never, None)
        try:
            ReplyTo(message.reply_to, request_id, message.context, drops).set_exception_now(
                exc_info
            )
        finally:
            answer_stopped(envelope)  # an ask is answered whatever the tell did
        return
    answer_stopped(envelope)
