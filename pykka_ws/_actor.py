"""The owner actor: state machine, pending requests, outcomes. No socket I/O.

Threads and messages::

    caller --ask(WsDelegatedRequest)--> WebSocketActor (this; never blocks on I/O)
      owner --ask(WriteBatch, block=False)--> WsWriter (send())
      WsWriter's reply future --callback--> owner.tell(_WriteDone)
    websockets' receiving thread --tell(Inbound / Closed)--> owner
    connector thread --tell(Opened / OpenFailed)--> owner
    scheduler thread (one per process) --tell(_Expire / _Reconnect)--> owner

``stop()`` is the one place the owner touches the socket: it shuts a stuck
socket down and closes the connection.
"""

from __future__ import annotations

import logging
import random
import ssl as ssl_module
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import pykka
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from pykka_ws._connection import (
    Closed,
    Connection,
    ConnectorSlot,
    Inbound,
    Opened,
    OpenFailed,
    RedactingLogger,
    run_connector,
)
from pykka_ws._endpoint import WsEndpoint
from pykka_ws._errors import (
    EndpointRejected,
    NotDelivered,
    PayloadMismatch,
    TooManyPending,
    Unconfirmed,
    WsSendRefused,
)
from pykka_ws._futures import (
    CallbackFuture,
    Deferred,
    ReplyFuture,
    mark_owner_thread,
    unmark_owner_thread,
)
from pykka_ws._messages import (
    WsBackoff,
    WsConfirmMode,
    WsConnected,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsDisconnected,
    WsGetStats,
    WsInbound,
    WsLateResponse,
    WsRequestMatch,
    WsSend,
    WsStats,
    check_frame,
    check_timeout,
)
from pykka_ws._pending import Entry, Insert, PendingTable, RecentIds
from pykka_ws._scheduler import SCHEDULER
from pykka_ws._writer import (
    CANCELLED,
    DONE,
    PENDING,
    STARTED,
    Claim,
    WriteBatch,
    WriteResult,
    WsWriter,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from pykka_ws._connection import Sink
    from pykka_ws._messages import Frame
    from pykka_ws._scheduler import TimerHandle

__all__ = ["WebSocketActor"]

logger = logging.getLogger("pykka_ws")

CONNECTING = "connecting"
OPEN = "open"
BACKOFF = "backoff"
CLOSED = "closed"
STOPPED = "stopped"

_OUTCOMES = (
    "confirmed",
    "sent",
    "rejected",
    "not_delivered",
    "unconfirmed",
    "payload_mismatch",
    "too_many_pending",
)


_TRY_NOW_MAX_FRAMES = 4
"""Batches this small are first written by the owner, without blocking."""


class _SendItem:
    """A `WsSend` frame (or an ``on_open`` frame) in the outbound queue."""

    __slots__ = ("claim", "frame", "preamble")

    def __init__(self, frame: Frame, *, preamble: bool = False) -> None:
        self.frame = frame
        self.claim: Claim | None = None
        self.preamble = preamble


_Item = Entry | _SendItem


class _WriteDone:
    """The writer finished a batch (told by the writer's reply future)."""

    __slots__ = ("batch", "result")

    def __init__(self, batch: WriteBatch, result: WriteResult) -> None:
        self.batch = batch
        self.result = result


class _Deliver:
    """Tell the next slice of waiters their outcome (told to itself)."""

    __slots__ = ()


_SLICE = 512
"""Most outcomes decided or told per message handled: bulk work (100,000
requests ending at a disconnect, a deadline or a stop) goes in slices with
the inbox let through between them."""


class _Expire:
    """Time to expire due requests (told by the scheduler)."""

    __slots__ = ()


class _CreditCheck:
    """Look again whether the subscribers have room (told by the scheduler)."""

    __slots__ = ()


_CREDIT_POLL = 0.002
"""Seconds between looks at a full subscriber's inbox while reading is paused."""


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

    def __init__(  # noqa: PLR0915 - one check per documented argument
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
        if not isinstance(url, str):
            msg = f"url must be a str, not {type(url).__name__}"
            raise TypeError(msg)
        try:
            self._uri = parse_uri(url)
        except InvalidURI as exc:
            msg = f"url is not a valid ws:// or wss:// URL: {url!r}"
            raise ValueError(msg) from exc
        self._url = url
        if endpoint is None:
            endpoint = WsEndpoint()
        elif not isinstance(endpoint, WsEndpoint):
            msg = f"endpoint must be a WsEndpoint, not {type(endpoint).__name__}"
            raise TypeError(msg)
        self._endpoint = endpoint
        self._inbound = _check_inbound(inbound)
        self._max_pending = _check_count(max_pending_requests, "max_pending_requests")
        self._default_timeout = check_timeout(default_timeout, "default_timeout")
        self._capacity = _check_count(outbound_capacity, "outbound_capacity")
        self._max_batch = _check_count(max_batch, "max_batch")
        if backoff is None:
            backoff = WsBackoff()
        elif not isinstance(backoff, WsBackoff):
            msg = f"backoff must be a WsBackoff, not {type(backoff).__name__}"
            raise TypeError(msg)
        self._backoff = backoff
        self._open_timeout = _check_wait(open_timeout, "open_timeout")
        self._write_timeout = _check_optional_timeout(write_timeout, "write_timeout")
        close_timeout = _check_wait(close_timeout, "close_timeout")
        if self._write_timeout is not None:
            # send() on a closing connection waits up to close_timeout.
            close_timeout = min(close_timeout, self._write_timeout)
        if max_size is not None:
            max_size = _check_count(max_size, "max_size")
        self._max_queue = _check_count(max_queue, "max_queue")
        self._subscriber_queue = _check_count(subscriber_queue, "subscriber_queue")
        if subscriber_overflow not in {"block", "drop"}:
            msg = f'subscriber_overflow must be "block" or "drop", not {subscriber_overflow!r}'
            raise ValueError(msg)
        self._subscriber_overflow = subscriber_overflow
        # Pause reading for a full subscriber (the default), or drop for it.
        self._throttle = subscriber_overflow == "block"
        self._owed = 0  # frames handled but not credited to the receiving thread
        self._owed_sink: Sink | None = None
        self._credit_timer: TimerHandle | None = None
        self._inbound_dropped = 0
        # Outcomes decided in bulk, their waiters not yet told: (entries,
        # outcome, why), told in slices by _on_deliver.
        self._deliveries: deque[tuple[list[Entry], str, str]] = deque()
        self._delivering = False
        if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
            msg = f"ssl must be an ssl.SSLContext, not {type(ssl).__name__}"
            raise TypeError(msg)
        if ssl is not None and not self._uri.secure:
            msg = "ssl is only valid with a wss:// URL"
            raise ValueError(msg)
        if compression not in {None, "deflate"}:
            msg = f'compression must be "deflate" or None, not {compression!r}'
            raise ValueError(msg)
        self._connect_kwargs: dict[str, Any] = {
            "ping_interval": _check_optional_timeout(ping_interval, "ping_interval"),
            "ping_timeout": _check_optional_timeout(ping_timeout, "ping_timeout"),
            "close_timeout": close_timeout,
            "max_size": max_size,
            "compression": compression,
            "additional_headers": dict(additional_headers) if additional_headers else None,
            "user_agent_header": user_agent_header,
            "subprotocols": list(subprotocols) if subprotocols is not None else None,
            "proxy": None,
            "logger": RedactingLogger(
                logging.getLogger("websockets.client"), additional_headers or ()
            ),
        }
        if self._uri.secure:
            self._connect_kwargs["ssl"] = ssl
            if server_hostname is not None:
                self._connect_kwargs["server_hostname"] = server_hostname

        self._table = PendingTable(self._max_pending)
        self._recent = RecentIds(
            _check_count(recent_ids, "recent_ids"), check_timeout(recent_ids_age, "recent_ids_age")
        )
        self._queue: deque[_Item] = deque()
        self._queued = 0  # live items in self._queue
        self._inflight: tuple[WriteBatch, list[_Item]] | None = None
        self._claim_lock = threading.Lock()
        self._writer: pykka.ActorRef[WsWriter] | None = None
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography

        self._state = CONNECTING
        self._generation = 0
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

        self._reconnects = 0
        self._opened = 0  # connections that opened; self._generation counts attempts
        self._frames_in = 0
        self._frames_out = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._outcomes = dict.fromkeys(_OUTCOMES, 0)
        self._sends_refused = 0
        self._stray_replies = 0
        self._refusing = False
        self._hook_errors = 0
        self._internal_errors = 0
        self._last_error: str | None = None

        self._handlers: dict[type, Any] = {
            WsDelegatedRequest: self._on_request,
            Inbound: self._on_inbound,
            _WriteDone: self._on_write_done,
            _Expire: self._on_expire,
            WsSend: self._on_send,
            WsGetStats: self._on_get_stats,
            Opened: self._on_opened,
            OpenFailed: self._on_open_failed,
            Closed: self._on_closed,
            _Reconnect: self._on_reconnect,
            _CreditCheck: self._on_credit_check,
            _Deliver: self._on_deliver,
        }

    # -- lifecycle ----------------------------------------------------------

    def on_start(self) -> None:
        """Start the writer and the first connection attempt."""
        mark_owner_thread()
        SCHEDULER.acquire()
        self._writer = WsWriter.start(self._claim_lock)
        # The writer is internal: pykka's stop_all() must not stop it before
        # its owner. The owner stops it.
        pykka.ActorRegistry.unregister(self._writer)
        self._connect()

    def on_stop(self) -> None:
        """End every request, close the connection, join every thread."""
        try:
            self._shutdown()
        finally:
            unmark_owner_thread()

    def on_failure(self, *_exc_info: object) -> None:
        """Clean up as on stop, should a handler ever fail."""
        try:
            self._shutdown()
        finally:
            unmark_owner_thread()

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
            return self._failed(exc)

    # -- requests -----------------------------------------------------------

    def _on_request(self, request: WsDelegatedRequest) -> Deferred:
        timeout = request.timeout if request.timeout is not None else self._default_timeout
        deadline = request.created_at + timeout
        request_id = request.request_id
        if self._state == CLOSED:
            self._outcomes["not_delivered"] += 1
            return self._failed(
                NotDelivered(
                    f"request {request_id!r}: the actor is disconnected and will not "
                    f"reconnect ({self._last_error})",
                    request_id=request_id,
                )
            )
        if deadline <= time.monotonic():
            entry = self._table.get(request_id)
            if entry is None:
                self._outcomes["not_delivered"] += 1
                return self._failed(
                    NotDelivered(
                        f"request {request_id!r}: its deadline passed before the actor saw it",
                        request_id=request_id,
                    )
                )
            if entry.fingerprint == request.join_key and entry.confirm_mode is request.confirm_mode:
                # A joiner already out of time: what the shared entry would
                # get at a deadline now, so the outcome describes the id's
                # frame (never "not delivered" while that frame is on the wire).
                return self._joiner_expired(entry)
        result, entry = self._table.insert_or_join(
            request_id, request.join_key, request.confirm_mode, deadline, request.frame
        )
        if result is Insert.INSERTED:
            assert entry is not None  # noqa: S101 - for the type checker
            if self._queued >= self._capacity:
                self._table.remove(entry)
                self._outcomes["not_delivered"] += 1
                entry.fail(
                    NotDelivered(
                        f"request {request_id!r}: the outbound queue is full "
                        f"(outbound_capacity={self._capacity})",
                        request_id=request_id,
                    )
                )
                return entry
            self._recent.discard(request_id)
            self._queue.append(entry)
            self._queued += 1
            self._schedule_expiry(deadline)
            if self._inflight is None:
                self._flush()
            return entry
        if result is Insert.JOINED:
            assert entry is not None  # noqa: S101
            self._schedule_expiry(entry.deadline)
            return entry
        if result is Insert.MISMATCH:
            self._outcomes["payload_mismatch"] += 1
            return self._failed(
                PayloadMismatch(
                    f"request {request_id!r} is in flight with another payload "
                    "(fingerprint or confirm_mode differs)",
                    request_id=request_id,
                )
            )
        self._outcomes["too_many_pending"] += 1
        return self._failed(
            TooManyPending(
                f"{self._max_pending} requests are in flight (max_pending_requests)",
                limit=self._max_pending,
            )
        )

    def _joiner_expired(self, entry: Entry) -> Deferred:
        """Resolve a late joiner as ``entry`` would end at a deadline now; keep the entry."""
        request_id = entry.request_id
        why = f"request {request_id!r}: its deadline passed before the actor saw it"
        claim = entry.claim
        state = claim.state if claim is not None else PENDING
        deferred = Deferred()
        if entry.written or state == DONE:
            if entry.confirm_mode is WsConfirmMode.SENT:
                self._outcomes["sent"] += 1
                deferred.resolve(WsDelegatedOk(request_id, confirmed=False))
                return deferred
            error: BaseException = Unconfirmed(
                f"{why}; the frame of that id was written, with no reply yet",
                request_id=request_id,
                written=True,
            )
            outcome = "unconfirmed"
        elif state == STARTED:
            error = Unconfirmed(
                f"{why}; the frame of that id is being written",
                request_id=request_id,
                written=False,
            )
            outcome = "unconfirmed"
        else:
            error = NotDelivered(
                f"{why}; the frame of that id has not been written", request_id=request_id
            )
            outcome = "not_delivered"
        self._outcomes[outcome] += 1
        deferred.fail(error)
        return deferred

    def _on_send(self, message: WsSend) -> Deferred | None:
        if self._state == CLOSED:
            self._sends_refused += 1
            return self._failed(
                WsSendRefused(
                    f"the actor is disconnected and will not reconnect ({self._last_error})",
                    capacity=self._capacity,
                )
            )
        if self._queued >= self._capacity:
            self._sends_refused += 1
            if not self._refusing:  # a tell's refusal is silent otherwise: say it once
                self._refusing = True
                logger.warning(
                    "pykka-ws: outbound queue full (outbound_capacity=%d): refusing WsSend "
                    "frames until it drains; see WsStats.sends_refused",
                    self._capacity,
                )
            return self._failed(
                WsSendRefused(
                    f"the outbound queue is full (outbound_capacity={self._capacity})",
                    capacity=self._capacity,
                )
            )
        self._refusing = False
        self._queue.append(_SendItem(message.frame))
        self._queued += 1
        if self._inflight is None:
            self._flush()
        return None

    def _on_get_stats(self, _message: WsGetStats) -> WsStats:
        return WsStats(
            state=self._state,
            connected_since=self._connected_since,
            reconnects=self._reconnects,
            attempts=self._generation,
            internal_errors=self._internal_errors,
            pending=len(self._table),
            queued=self._queued,
            frames_in=self._frames_in,
            frames_out=self._frames_out,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            outcomes=dict(self._outcomes),
            sends_refused=self._sends_refused,
            stray_replies=self._stray_replies,
            inbound_dropped=self._inbound_dropped,
            hook_errors=self._hook_errors,
            last_error=self._last_error,
        )

    @staticmethod
    def _failed(error: BaseException) -> Deferred:
        deferred = Deferred()
        deferred.fail(error)
        return deferred

    # -- outcomes -----------------------------------------------------------

    def _end(self, entry: Entry, outcome: str, result: Any) -> None:
        """Record an entry's outcome; it is already out of the table."""
        if entry.claim is None and not entry.written:
            self._queued -= 1  # it was still in the queue; skipped when popped
            if len(self._queue) > 2 * self._queued + 64:
                # Many ended while queued (a long disconnect): drop them now
                # so the queue stays within a constant factor of the live.
                table_get = self._table.get
                self._queue = deque(
                    item
                    for item in self._queue
                    if not isinstance(item, Entry) or table_get(item.request_id) is item
                )
        self._recent.add(entry.request_id)
        self._outcomes[outcome] += 1
        if isinstance(result, BaseException):
            entry.fail(result)
        else:
            entry.resolve(result)

    def _end_sent(self, entry: Entry) -> None:
        self._end(entry, "sent", WsDelegatedOk(entry.request_id, confirmed=False))

    def _end_not_delivered(
        self, entry: Entry, why: str, cause: BaseException | None = None
    ) -> None:
        error = NotDelivered(f"request {entry.request_id!r}: {why}", request_id=entry.request_id)
        error.__cause__ = cause
        self._end(entry, "not_delivered", error)

    def _end_unconfirmed(self, entry: Entry, why: str, *, written: bool) -> None:
        error = Unconfirmed(
            f"request {entry.request_id!r}: {why}", request_id=entry.request_id, written=written
        )
        self._end(entry, "unconfirmed", error)

    def _classify_unfinished(self, entry: Entry, why: str) -> None:
        """End an entry that ran out of time (deadline, disconnect or stop).

        Its claim decides: never started means `NotDelivered`, started but
        not finished means `Unconfirmed(written=False)`, written means sent
        (`SENT` mode) or `Unconfirmed(written=True)`.
        """
        written = entry.written
        claim = entry.claim
        if not written and claim is not None:
            with self._claim_lock:
                state = claim.state
                if state == PENDING:
                    claim.state = state = CANCELLED
            if state == STARTED:
                self._end_unconfirmed(entry, f"{why} while its write was under way", written=False)
                return
            written = state == DONE
        if not written:
            self._end_not_delivered(entry, f"{why} before it was written")
        elif entry.confirm_mode is WsConfirmMode.SENT:
            self._end_sent(entry)
        else:
            self._end_unconfirmed(entry, f"{why} with no reply", written=True)

    def _on_expire(self, _message: _Expire) -> None:
        self._expiry_timer = None
        due = self._table.expire_due(limit=_SLICE)
        for entry in due:
            self._classify_unfinished(entry, "deadline passed")
        if len(due) == _SLICE:
            # Maybe more are due: let the inbox through, then go on.
            self._expiry_timer = SCHEDULER.call_at(0.0, self.actor_ref, _Expire())
            return
        self._schedule_expiry(None)

    # -- outcomes in bulk ---------------------------------------------------

    def _end_many(self, entries: list[Entry], outcome: str, why: str) -> None:
        """End many entries at once (out of the table, not queued).

        The bookkeeping is done now (table, recent ids, counters), so the
        actor's state is exactly as if each had ended; their waiters are told
        in slices of `_SLICE`, with the inbox let through between slices
        (``WsGetStats`` and new requests are not held up by 100,000 wake-ups).
        """
        self._table.remove_many(entries)
        self._recent.add_many([entry.request_id for entry in entries])
        self._outcomes[outcome] += len(entries)
        self._deliveries.append((entries, outcome, why))
        if not self._delivering:
            self._delivering = True
            self.actor_ref.tell(_Deliver())

    def _on_deliver(self, _message: _Deliver) -> None:
        self._deliver(_SLICE)
        if self._deliveries:
            self.actor_ref.tell(_Deliver())
        else:
            self._delivering = False

    def _deliver(self, budget: int) -> None:
        """Tell up to ``budget`` waiters of bulk outcomes theirs."""
        deliveries = self._deliveries
        while deliveries and budget:
            entries, outcome, why = deliveries[0]
            while entries and budget:
                entry = entries.pop()  # the order waiters are told in is no promise
                budget -= 1
                request_id = entry.request_id
                message = f"request {request_id!r}: {why}"
                if outcome == "unconfirmed":
                    entry.fail(Unconfirmed(message, request_id=request_id, written=True))
                else:
                    entry.fail(NotDelivered(message, request_id=request_id))
            if not entries:
                deliveries.popleft()

    def _schedule_expiry(self, deadline: float | None) -> None:
        """Make sure a timer fires by the earliest pending deadline."""
        if deadline is None:
            deadline = self._table.next_deadline()
            if deadline is None:
                return
        timer = self._expiry_timer
        if timer is not None:
            if timer.when <= deadline:
                return
            timer.cancel()
        self._expiry_timer = SCHEDULER.call_at(deadline, self.actor_ref, _Expire())

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
                self._credit(message.sink)
                return
        parsed = self._call_hook("parse", frame)
        if parsed is not None:
            self._publish(WsInbound(frame, parsed), frame=True)
        self._credit(message.sink)

    # -- subscriber flow control ---------------------------------------------

    def _credit(self, sink: Sink) -> None:
        """Give the receiving thread back room for one frame, unless a subscriber is full.

        The bound holds end to end: the receiving thread stops reading once
        ``max_queue`` frames are told and not credited, and a frame is only
        credited once every subscriber's inbox is below ``subscriber_queue``.
        So a slow subscriber slows the socket (TCP backpressure, nothing
        dropped, order kept) instead of growing its inbox without bound.
        """
        if self._owed:
            if sink is self._owed_sink:
                self._owed += 1
                return
            self._release_owed()  # an older connection's: let its thread end
        if self._throttle and self._subscriber_full():
            self._owed_sink = sink
            self._owed = 1
            if self._credit_timer is None:
                self._credit_timer = SCHEDULER.call_later(
                    _CREDIT_POLL, self.actor_ref, _CreditCheck()
                )
            return
        sink.handled()

    def _subscriber_full(self) -> bool:
        limit = self._subscriber_queue
        return any(_inbox_size(ref) >= limit for ref in self._inbound)

    def _on_credit_check(self, _message: _CreditCheck) -> None:
        self._credit_timer = None
        sink = self._owed_sink
        if not self._owed or sink is None:
            return
        if self._subscriber_full():
            self._credit_timer = SCHEDULER.call_later(_CREDIT_POLL, self.actor_ref, _CreditCheck())
            return
        self._release_owed()

    def _release_owed(self) -> None:
        sink, owed = self._owed_sink, self._owed
        self._owed, self._owed_sink = 0, None
        if sink is not None:
            for _ in range(owed):
                sink.handled()

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
        entry = self._table.get(request_id)
        if entry is None:
            if request_id in self._recent:
                self._publish(WsLateResponse(request_id, frame), frame=True)
                return True
            return False
        if not entry.written and not self._write_started(entry):
            # Its frame has not reached the socket (still queued, or its
            # claim is PENDING): this cannot be its reply (a stale reply to
            # an earlier use of the id, a spoof, a server bug). It confirms
            # nothing; the request stays queued and is written as usual.
            self._stray_replies += 1
            self._publish(WsLateResponse(entry.request_id, frame), frame=True)
            return True
        self._table.remove(entry)
        request_id = entry.request_id  # the request's own, not an equal one
        if entry.confirm_mode is WsConfirmMode.SENT:
            # The reply proves the write; it is never "re-confirmed".
            self._end_sent(entry)
            self._publish(WsLateResponse(request_id, frame), frame=True)
        elif match.ok:
            ok = WsDelegatedOk(request_id, True, frame, match.rate_limit_feedback)  # noqa: FBT003
            self._end(entry, "confirmed", ok)
        else:
            reason = match.message if isinstance(match.message, str) else repr(match.message)
            error = EndpointRejected(
                f"request {request_id!r} rejected by the endpoint: {reason}",
                request_id=request_id,
                response=frame,
                reason=reason,
                rate_limit_feedback=match.rate_limit_feedback,
            )
            self._end(entry, "rejected", error)
        return True

    def _write_started(self, entry: Entry) -> bool:
        """Whether the entry's frame has started writing (claim STARTED or DONE)."""
        claim = entry.claim
        # No lock: if the writer starts it just after this read, it still
        # had not started when the reply (received before) was read.
        return claim is not None and claim.state in {STARTED, DONE}

    def _publish(self, message: object, *, frame: bool = False) -> None:
        drop = frame and self._subscriber_overflow == "drop"
        for ref in list(self._inbound):
            if drop and _inbox_size(ref) >= self._subscriber_queue:
                self._inbound_dropped += 1
                continue
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                logger.warning("pykka-ws: inbound subscriber %s is dead; dropping it", ref)
                self._inbound.remove(ref)
                self._hook_errors += 1

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
        while self._inflight is None and self._state == OPEN and self._queue:
            batch, items = self._next_batch()
            if batch is None:
                return
            self._inflight = (batch, items)
            if len(items) <= _TRY_NOW_MAX_FRAMES and self.actor_inbox.empty():
                # A few frames, an idle writer and nothing else to do: try a
                # non-blocking write here, saving two thread hops. Under load
                # (more messages waiting) the writer batches instead.
                # Whatever would block goes on to the writer (which then
                # owns websockets' lock until it is done).
                result = batch.connection.try_write_now(batch, self._claim_lock)
                if result is not None:
                    self._complete_batch(batch, result)
                    continue
            self._hand_to_writer(batch)
            return

    def _next_batch(self) -> tuple[WriteBatch | None, list[_Item]]:
        connection = self._connection
        assert connection is not None  # noqa: S101
        queue = self._queue
        table_get = self._table.get
        items: list[_Item] = []
        claims: list[Claim] = []
        generation = self._generation
        while queue and len(items) < self._max_batch:
            item = queue.popleft()
            if isinstance(item, Entry):
                if table_get(item.request_id) is not item:
                    continue  # ended while queued; already uncounted
                item.generation = generation
            self._queued -= 1
            item.claim = claim = Claim(item.frame)
            items.append(item)
            claims.append(claim)
        if not items:
            return None, items
        return WriteBatch(connection, generation, claims), items

    def _hand_to_writer(self, batch: WriteBatch) -> None:
        assert self._writer is not None  # noqa: S101
        future = cast("CallbackFuture", self._writer.ask(batch, block=False))
        owner = self.actor_ref

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                result = WriteResult(0, 0, error)
            try:
                owner.tell(_WriteDone(batch, result))
            except pykka.ActorDeadError:
                pass

        future.add_done_callback(done)

    def _on_write_done(self, message: _WriteDone) -> None:
        self._complete_batch(message.batch, message.result)
        self._flush()

    def _complete_batch(self, batch: WriteBatch, result: WriteResult) -> None:
        """Account for a written batch: outcomes, requeues, a failed connection."""
        inflight = self._inflight
        if inflight is None or inflight[0] is not batch:  # pragma: no cover
            return
        self._inflight = None
        items = inflight[1]
        self._frames_out += result.frames_out
        self._bytes_out += result.bytes_out
        error = result.error
        requeue: list[_Item] = []
        table_get = self._table.get
        for item, claim in zip(items, batch.claims, strict=True):
            if item.claim is not claim:
                continue  # requeued at a disconnect
            state = claim.state
            if isinstance(item, _SendItem):
                if state == PENDING:
                    self._cancel(claim)
                    if not item.preamble:
                        item.claim = None
                        requeue.append(item)
                elif state == STARTED:
                    logger.warning("pykka-ws: a WsSend frame was lost with its connection")
                continue
            if table_get(item.request_id) is not item:
                continue  # ended already (a reply, a deadline)
            if state == DONE:
                self._on_written(item)
            elif state == STARTED:
                self._table.remove(item)
                self._end_not_delivered(item, "the write failed", error)
            elif state == PENDING:
                self._cancel(claim)
                item.claim = None
                requeue.append(item)
        if requeue:
            self._queue.extendleft(reversed(requeue))
            self._queued += len(requeue)
        if error is not None and batch.generation == self._generation and self._state == OPEN:
            self._connection_lost(error)

    def _on_written(self, entry: Entry) -> None:
        entry.written = True
        if entry.confirm_mode is WsConfirmMode.SENT:
            self._table.remove(entry)
            self._end_sent(entry)
        elif entry.generation != self._generation or self._state != OPEN:
            self._table.remove(entry)
            self._end_unconfirmed(
                entry, "its connection was lost before a reply could come", written=True
            )

    def _cancel(self, claim: Claim) -> int:
        with self._claim_lock:
            if claim.state == PENDING:
                claim.state = CANCELLED
            return claim.state

    # -- connection ---------------------------------------------------------

    def _connect(self) -> None:
        self._generation += 1
        self._state = CONNECTING
        self._reap_threads()
        self._slot = slot = ConnectorSlot()
        self._connector = threading.Thread(
            target=run_connector,
            args=(self.actor_ref, self._generation, self._url, self._uri, slot),
            kwargs={
                "open_timeout": self._open_timeout,
                "write_timeout": self._write_timeout,
                "max_queue": self._max_queue,
                "connect_kwargs": self._connect_kwargs,
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
        self._publish(WsConnected(self._url, self._opened))
        if preamble:
            self._queue.extendleft(reversed(preamble))
            self._queued += len(preamble)
        if early_close is not None and early_close.generation == message.generation:
            self._connection_lost(early_close.cause)  # it closed before we knew it opened
            return
        self._flush()

    def _on_open_frames(self) -> list[_Item]:
        frames = self._call_hook("on_open")
        try:
            return [_SendItem(check_frame(f, "on_open() frame"), preamble=True) for f in frames]
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
        if self._owed:
            self._release_owed()  # a receiving thread paused on them must see the end
        generation = self._generation
        # Handed to the writer but not started: back to the front, in order.
        inflight = self._inflight
        if inflight is not None:
            requeue: list[_Item] = []
            for item in inflight[1]:
                claim = item.claim
                if claim is None or self._cancel(claim) != CANCELLED:
                    continue
                item.claim = None
                if isinstance(item, _SendItem):
                    if not item.preamble:
                        requeue.append(item)
                elif self._table.get(item.request_id) is item:
                    requeue.append(item)
            self._queue.extendleft(reversed(requeue))
            self._queued += len(requeue)
        # The dead connection's on_open frames: the next one sends its own.
        if any(isinstance(item, _SendItem) and item.preamble for item in self._queue):
            kept = [i for i in self._queue if not (isinstance(i, _SendItem) and i.preamble)]
            self._queued -= len(self._queue) - len(kept)
            self._queue = deque(kept)
        # Written and waiting for a reply on this connection: none can come.
        lost = [e for e in self._table if e.written and e.generation == generation]
        if lost:
            self._end_many(lost, "unconfirmed", "its connection was lost with no reply")
        self._after_disconnect(cause)

    def _after_disconnect(self, cause: BaseException | None, *, was_open: bool = True) -> None:
        generation = self._generation
        lived = time.monotonic() - self._opened_at if self._opened_at is not None else 0.0
        self._opened_at = None
        self._connected_since = None
        self._last_error = _describe(cause)
        reconnect = self._call_hook("on_disconnect", cause)
        if not isinstance(reconnect, bool):
            self._hook_garbage("on_disconnect", reconnect)
            reconnect = WsEndpoint.on_disconnect(self._endpoint, cause)
        number = self._opened if was_open else self._opened + 1
        self._publish(WsDisconnected(cause, number, reconnecting=reconnect, was_open=was_open))
        if not reconnect:
            self._state = CLOSED
            logger.warning("pykka-ws: not reconnecting to %s: %s", self._url, self._last_error)
            table_get = self._table.get
            queued = [
                item
                for item in self._queue
                if isinstance(item, Entry) and table_get(item.request_id) is item
            ]
            self._queue.clear()
            self._queued = 0
            self._end_many(queued, "not_delivered", "the actor will not reconnect")
            return
        self._state = BACKOFF
        if lived >= self._backoff.reset_after:
            self._attempt = 0
        delay = self._backoff.delay(self._attempt, self._rng)
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
        self._deliver(len(self._table) + sum(len(d[0]) for d in self._deliveries))
        for timer in (self._expiry_timer, self._reconnect_timer):
            if timer is not None:
                timer.cancel()
        unadopted = self._slot.cancel() if self._slot is not None else None
        if unadopted is not None and unadopted is not self._connection:
            # Opened while we were stopping: its Opened message is lost.
            unadopted.abort()
            self._old_connections.append(unadopted)
        # Nothing more may start: cancel every claim not yet started.
        stuck = False
        inflight = self._inflight
        if inflight is not None:
            for claim in inflight[0].claims:
                if self._cancel(claim) == STARTED:
                    stuck = True
        for entry in self._table.drain():
            self._classify_unfinished(entry, "the actor stopped")
        self._queue.clear()
        self._queued = 0
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
            connector.join(self._connect_kwargs["close_timeout"])
        for old in self._old_connections:
            old.abort()
            old.join_threads()
        self._old_connections.clear()
        SCHEDULER.release()


def _inbox_size(ref: pykka.ActorRef[Any]) -> int:
    """Messages waiting in an actor's inbox (0 if its inbox cannot say)."""
    qsize = getattr(ref.actor_inbox, "qsize", None)  # queue.Queue for ThreadingActor
    return qsize() if qsize is not None else 0


def _describe(cause: BaseException | None) -> str | None:
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


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{name} must be an int, not {type(value).__name__}"
        raise TypeError(msg)
    if value < 1:
        msg = f"{name} must be >= 1, not {value}"
        raise ValueError(msg)
    return value


def _check_wait(value: object, name: str) -> float:
    """A number of seconds that sockets and locks will wait on: <= TIMEOUT_MAX."""
    seconds = check_timeout(value, name)
    if seconds > threading.TIMEOUT_MAX:
        msg = f"{name} must be <= {threading.TIMEOUT_MAX:.0f} s (threading.TIMEOUT_MAX)"
        raise ValueError(msg)
    return seconds


def _check_optional_timeout(value: object, name: str) -> float | None:
    return None if value is None else _check_wait(value, name)


def _check_inbound(inbound: object) -> list[pykka.ActorRef[Any]]:
    if inbound is None:
        return []
    if isinstance(inbound, pykka.ActorRef):
        return [inbound]
    try:
        refs: list[object] = list(inbound)  # type: ignore[call-overload]
    except TypeError:
        refs = [inbound]
    for ref in refs:
        if not isinstance(ref, pykka.ActorRef):
            msg = f"inbound must be an ActorRef or an iterable of them, not {type(ref).__name__}"
            raise TypeError(msg)
    return cast("list[pykka.ActorRef[Any]]", refs)
