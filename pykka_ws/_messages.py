"""Messages told or asked of a `WebSocketActor`, and what it replies or tells back."""

from __future__ import annotations

import enum
import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Mapping
    from random import Random

    from pykka import ActorRef

    from pykka_ws._errors import WsDelegatedError

__all__ = [
    "Frame",
    "RequestId",
    "WsBackoff",
    "WsCancel",
    "WsConfirmMode",
    "WsConnected",
    "WsDelegatedOk",
    "WsDelegatedRequest",
    "WsDisconnected",
    "WsGap",
    "WsGetStats",
    "WsHeartbeat",
    "WsInbound",
    "WsLateResponse",
    "WsOutcome",
    "WsReconnect",
    "WsRequestMatch",
    "WsResolved",
    "WsRoute",
    "WsSend",
    "WsStats",
    "WsSubscribe",
    "WsUnroute",
    "WsUnsubscribe",
]

Frame = str | bytes
"""A text frame (`str`) or a binary frame (`bytes`)."""

RequestId = int | str
"""A request id: an `int` or a non-empty `str`."""


def check_frame(frame: object, name: str = "frame") -> Frame:
    """Return ``frame`` if it is `bytes` or a `str` that UTF-8 can encode, else raise."""
    if isinstance(frame, bytes):
        return frame
    if isinstance(frame, str):
        if not frame.isascii():
            try:
                frame.encode()
            except UnicodeEncodeError as exc:
                msg = f"{name} is not valid Unicode (a text frame is sent as UTF-8): {exc}"
                raise ValueError(msg) from None
        return frame
    msg = f"{name} must be str (text frame) or bytes (binary frame), not {type(frame).__name__}"
    raise TypeError(msg)


def check_request_id(request_id: object) -> RequestId:
    """Return ``request_id`` if it is a valid request id, else raise."""
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        msg = f"request_id must be int or str, not {type(request_id).__name__}"
        raise TypeError(msg)
    if isinstance(request_id, str) and not request_id:
        msg = "request_id must not be an empty string"
        raise ValueError(msg)
    return request_id


def check_timeout(timeout: object, name: str = "timeout") -> float:
    """Return ``timeout`` as a float if it is a finite number of seconds > 0."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        msg = f"{name} must be a number of seconds, not {type(timeout).__name__}"
        raise TypeError(msg)
    try:
        value = float(timeout)
    except OverflowError:  # an int too large for a float
        value = math.inf
    if not math.isfinite(value) or value <= 0:
        msg = f"{name} must be finite and > 0, not {timeout!r}"
        raise ValueError(msg)
    return value


def frame_digest(frame: Frame) -> str:
    """Return the default fingerprint of a frame: a digest of its type and bytes."""
    data = b"t" + frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else b"b" + frame
    return hashlib.blake2b(data, digest_size=16).hexdigest()


_EXPLICIT = object()


class WsConfirmMode(enum.Enum):
    """What a `WsDelegatedRequest` waits for before it succeeds."""

    SENT = "sent"
    """Succeed once the frame was written to the socket."""

    CONFIRMED = "confirmed"
    """Succeed once the endpoint's reply to the request is seen."""


class WsDelegatedRequest:
    """A request whose outcome the caller of ``ask`` gets back.

    The deadline is counted from construction (monotonic clock), so time spent
    queued behind other messages counts against it.

    Args:
        request_id: The id the endpoint's reply will carry (see
            `WsEndpoint.match_response`). Requests with the same id in flight
            at once join (one frame on the wire) if fingerprint and mode agree.
        frame: The frame to send: `str` for a text frame, `bytes` for binary.
        fingerprint: What identifies the payload for joining; defaults to a
            digest of ``frame``. Give one when the frame carries volatile data
            (timestamps, nonces) that does not change what is asked.
        confirm_mode: `WsConfirmMode.CONFIRMED` (default) waits for the reply;
            `WsConfirmMode.SENT` succeeds once the frame is written.
        timeout: Seconds from construction to the deadline, finite and > 0;
            None takes the actor's ``default_timeout``.
        reply_to: An actor told the outcome as a `WsOutcome`, besides (or
            instead of) the ``ask`` caller: how an actor places requests
            without blocking its own thread. Works with ``tell`` and
            ``ask``; every joined request with a ``reply_to`` is told once.
            A dead ``reply_to`` is dropped and counted
            (`WsStats.reply_to_dropped`), never an error.
        context: Anything, handed back untouched in `WsOutcome.context`.
        retry: Outcome-driven retry: a frame that provably never left (its
            write failed before the frame was complete, or its connection
            died before its write started) is written again on the next
            connection, with the same id, until the deadline; only then
            does it end `NotDelivered`. Every re-send is counted
            (`WsStats.resends`); a reply to any attempt completes it; no
            attempt is made after it ended.
        idempotent: With ``retry``: the endpoint deduplicates by this id,
            so a request *written* on a connection that died is sent again
            too, instead of ending `Unconfirmed`. Without it, an ambiguous
            request is never re-sent automatically.

    Raises:
        TypeError: If a value has the wrong type.
        ValueError: If a value is out of range.
    """

    # Requests are created at request rate; slots make that cheaper.
    __slots__ = (
        "_fingerprint",
        "confirm_mode",
        "context",
        "created_at",
        "frame",
        "idempotent",
        "reply_to",
        "request_id",
        "retry",
        "timeout",
    )

    def __init__(
        self,
        request_id: RequestId,
        frame: Frame,
        *,
        fingerprint: str | bytes | int | None = None,
        confirm_mode: WsConfirmMode = WsConfirmMode.CONFIRMED,
        timeout: float | None = None,
        reply_to: ActorRef[Any] | None = None,
        context: Any = None,
        retry: bool = False,
        idempotent: bool = False,
    ) -> None:
        self.created_at: float = time.monotonic()
        self.request_id: RequestId = check_request_id(request_id)
        self.frame: Frame = check_frame(frame)
        if fingerprint is not None and (
            isinstance(fingerprint, bool) or not isinstance(fingerprint, str | bytes | int)
        ):
            msg = f"fingerprint must be str, bytes or int, not {type(fingerprint).__name__}"
            raise TypeError(msg)
        self._fingerprint = fingerprint
        if not isinstance(confirm_mode, WsConfirmMode):
            msg = f"confirm_mode must be a WsConfirmMode, not {type(confirm_mode).__name__}"
            raise TypeError(msg)
        self.confirm_mode: WsConfirmMode = confirm_mode
        self.timeout: float | None = None if timeout is None else check_timeout(timeout)
        if reply_to is not None and not callable(getattr(reply_to, "tell", None)):
            msg = f"reply_to must be a pykka ActorRef, not {type(reply_to).__name__}"
            raise TypeError(msg)
        self.reply_to = reply_to
        self.context = context
        if not isinstance(retry, bool) or not isinstance(idempotent, bool):
            msg = "retry and idempotent must be bool"
            raise TypeError(msg)
        self.retry = retry
        self.idempotent = idempotent

    @property
    def fingerprint(self) -> str | bytes | int:
        """The given fingerprint, or a digest of the frame if none was given."""
        if self._fingerprint is None:
            return frame_digest(self.frame)
        return self._fingerprint

    @property
    def join_key(self) -> Hashable:
        """What requests with the same id must share to join.

        The frame itself when no fingerprint was given (equal frames, equal
        digests: comparing them is exact and saves hashing every request),
        else the fingerprint, tagged so it never equals a frame.
        """
        if self._fingerprint is None:
            return self.frame
        return (_EXPLICIT, self._fingerprint)

    def __repr__(self) -> str:
        return (
            f"WsDelegatedRequest(request_id={self.request_id!r}, "
            f"frame={_short(self.frame)}, confirm_mode={self.confirm_mode.name}, "
            f"timeout={self.timeout!r})"
        )


class WsOutcome:
    """The outcome of a `WsDelegatedRequest`, told to its ``reply_to`` actor.

    Exactly one of ``ok`` and ``error`` is set.

    Attributes:
        request_id: The request's id.
        ok: The `WsDelegatedOk`, or None.
        error: The `WsDelegatedError` (`NotDelivered`, `Unconfirmed`, ...),
            or None.
        context: The request's ``context``, untouched.
    """

    __slots__ = ("context", "error", "ok", "request_id")

    def __init__(
        self,
        request_id: RequestId,
        ok: WsDelegatedOk | None,
        error: WsDelegatedError | None,
        context: Any = None,
    ) -> None:
        if (ok is None) == (error is None):
            msg = "exactly one of ok and error must be set"
            raise ValueError(msg)
        self.request_id = request_id
        self.ok = ok
        self.error = error
        self.context = context

    def result(self) -> WsDelegatedOk:
        """Return ``ok``, or raise ``error``."""
        if self.error is not None:
            raise self.error
        assert self.ok is not None  # noqa: S101 - exactly one is set
        return self.ok

    def __repr__(self) -> str:
        what = f"ok={self.ok!r}" if self.error is None else f"error={self.error!r}"
        return f"WsOutcome(request_id={self.request_id!r}, {what}, context={self.context!r})"


class WsCancel:
    """Withdraw a request whose frame has not started writing.

    ``ask`` returns True if it had not started: it ends `NotDelivered` for
    every waiter and its frame is never sent. False otherwise (its write
    has started, it was written, it ended, or the id is unknown).

    Raises:
        TypeError: If ``request_id`` is not an int or str.
        ValueError: If it is an empty str.
    """

    __slots__ = ("request_id",)

    def __init__(self, request_id: RequestId) -> None:
        self.request_id: RequestId = check_request_id(request_id)

    def __repr__(self) -> str:
        return f"WsCancel({self.request_id!r})"


class WsReconnect:
    """Drop the current connection now and reconnect.

    For application-level health decisions (a server that answers pings but
    stopped answering requests). As after a lost connection: written
    `WsConfirmMode.CONFIRMED` requests end `Unconfirmed`, unwritten ones
    wait for the next connection; the reconnect follows the backoff.
    ``ask`` returns True if a connection was dropped or a reconnect was
    brought forward, False if the actor is already connecting or will not
    reconnect. ``reason`` appears in `WsStats.last_error`.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str = "") -> None:
        if not isinstance(reason, str):
            msg = f"reason must be a str, not {type(reason).__name__}"
            raise TypeError(msg)
        self.reason = reason

    def __repr__(self) -> str:
        return f"WsReconnect({self.reason!r})"


class WsRoute:
    """Send inbound messages routed to ``key`` to ``ref`` (besides any others).

    `WsEndpoint.route` gives a parsed message's key (a channel, a symbol).
    A message whose key has routes goes to those actors only, with no router
    actor in between; a message with no key, or a key without routes, goes
    to every ``inbound`` subscriber. Events (`WsConnected`, ...) always go
    to the ``inbound`` subscribers. ``ask`` returns None.
    """

    __slots__ = ("key", "ref")

    def __init__(self, key: Hashable, ref: ActorRef[Any]) -> None:
        hash(key)  # raises TypeError for an unhashable key, here
        if not callable(getattr(ref, "tell", None)):
            msg = f"ref must be a pykka ActorRef, not {type(ref).__name__}"
            raise TypeError(msg)
        self.key = key
        self.ref = ref

    def __repr__(self) -> str:
        return f"WsRoute({self.key!r}, {self.ref!r})"


class WsUnroute:
    """Stop routing ``key`` to ``ref`` (None: to every actor). ``ask`` returns None."""

    __slots__ = ("key", "ref")

    def __init__(self, key: Hashable, ref: ActorRef[Any] | None = None) -> None:
        hash(key)
        self.key = key
        self.ref = ref

    def __repr__(self) -> str:
        return f"WsUnroute({self.key!r}, {self.ref!r})"


class WsSubscribe:
    """Add a runtime subscription: sent as a request now, replayed on every reconnect.

    The subscription joins the actor's current set at once; its frame is
    sent as a `WsConfirmMode.CONFIRMED` request (``ask`` returns or raises
    its outcome, like a `WsDelegatedRequest`), and after every reconnect
    it is sent again, right after `WsEndpoint.on_open`'s frames. A
    subscription the endpoint rejects (`EndpointRejected`) leaves the set.
    With ``route``, inbound messages whose `WsEndpoint.route` key is
    ``key`` go to that actor (`WsRoute`).

    Args:
        key: What names the subscription (and its route), hashable.
        frame: The subscribe frame.
        request_id: The id the endpoint's reply will carry.
        route: An actor to route the key's messages to, or None.
        timeout: Seconds for the confirmation, None for the default.
    """

    __slots__ = ("key", "request", "route")

    def __init__(
        self,
        key: Hashable,
        frame: Frame,
        *,
        request_id: RequestId,
        route: ActorRef[Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        hash(key)
        if route is not None and not callable(getattr(route, "tell", None)):
            msg = f"route must be a pykka ActorRef, not {type(route).__name__}"
            raise TypeError(msg)
        self.key = key
        self.route = route
        self.request = WsDelegatedRequest(request_id, frame, timeout=timeout)

    def __repr__(self) -> str:
        return f"WsSubscribe({self.key!r}, {_short(self.request.frame)})"


class WsUnsubscribe:
    """Remove a runtime subscription (and its routes); optionally send a frame.

    With ``frame`` (and ``request_id``), it is sent as a confirmed request
    and ``ask`` returns or raises its outcome; without, ``ask`` returns
    None. Either way the subscription is no longer replayed.
    """

    __slots__ = ("key", "request")

    def __init__(
        self,
        key: Hashable,
        frame: Frame | None = None,
        *,
        request_id: RequestId | None = None,
        timeout: float | None = None,
    ) -> None:
        hash(key)
        self.key = key
        self.request: WsDelegatedRequest | None = None
        if frame is not None:
            if request_id is None:
                msg = "request_id is needed to send an unsubscribe frame"
                raise TypeError(msg)
            self.request = WsDelegatedRequest(request_id, frame, timeout=timeout)

    def __repr__(self) -> str:
        return f"WsUnsubscribe({self.key!r})"


class WsSend:
    """A fire-and-forget frame, sent in order with requests.

    ``ask`` returns None once the frame is queued, or raises `WsSendRefused`
    if the outbound queue is full; ``tell`` never raises for a full queue
    (the refusal is counted in `WsStats.sends_refused`).

    Args:
        frame: `str` for a text frame, `bytes` for binary.

    Raises:
        TypeError: If ``frame`` is neither.
    """

    __slots__ = ("frame",)

    def __init__(self, frame: Frame) -> None:
        self.frame: Frame = check_frame(frame)

    def __repr__(self) -> str:
        return f"WsSend({_short(self.frame)})"


class WsGetStats:
    """Ask for a `WsStats` snapshot."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "WsGetStats()"


@dataclass(frozen=True, slots=True)
class WsDelegatedOk:
    """The successful outcome of a `WsDelegatedRequest`.

    Attributes:
        request_id: The request's id.
        confirmed: True if the endpoint's reply was seen, False for a request
            in `WsConfirmMode.SENT` that was written.
        response: The reply frame when ``confirmed``, else None.
        rate_limit_feedback: What the endpoint's matcher said about rate
            limits (`WsRequestMatch.rate_limit_feedback`), for a limiter in
            front of the actor; None if it said nothing.
    """

    request_id: RequestId
    confirmed: bool
    response: Frame | None = None
    rate_limit_feedback: Any = None


class WsRequestMatch(NamedTuple):
    """What `WsEndpoint.match_response` returns for a reply to a request.

    Attributes:
        request_id: The id of the request this frame answers.
        ok: True for a success, False for a refusal (`EndpointRejected`).
        message: A human-readable reason, used for refusals.
        rate_limit_feedback: Anything the endpoint says about rate limits;
            passed on untouched in `WsDelegatedOk.rate_limit_feedback` or
            `EndpointRejected.rate_limit_feedback`, for a limiter in front
            of the actor.
    """

    request_id: RequestId
    ok: bool = True
    message: str = ""
    rate_limit_feedback: Any = None


@dataclass(frozen=True, slots=True)
class WsInbound:
    """Told to inbound subscribers for every frame that is not a reply to a request.

    Attributes:
        frame: The frame as received.
        message: What `WsEndpoint.parse` made of it.
    """

    frame: Frame
    message: Any


@dataclass(frozen=True, slots=True)
class WsConnected:
    """Told to inbound subscribers when a connection opens.

    Attributes:
        url: The URL connected to (with several, the one that opened).
        generation: Counts connections this actor opened, from 1 (refused
            or failed attempts are not counted; see `WsStats.attempts`).
        subprotocol: The subprotocol the server chose, or None.
    """

    url: str
    generation: int
    subprotocol: str | None = None


@dataclass(frozen=True, slots=True)
class WsDisconnected:
    """Told to inbound subscribers when a connection is lost or refused.

    Attributes:
        cause: The exception that ended it (e.g. a ``ConnectionClosed`` with
            the transport error in its ``__cause__``).
        generation: The connection's number, as in `WsConnected.generation`;
            for a failed attempt (``was_open`` False), the number the
            connection would have had.
        reconnecting: True if the actor will try again.
        was_open: True if the connection had opened (a lost connection),
            False if the attempt failed (a refused or failed handshake).
    """

    cause: BaseException | None
    generation: int
    reconnecting: bool
    was_open: bool = True


@dataclass(frozen=True, slots=True)
class WsLateResponse:
    """Told to inbound subscribers for a reply that completes no request.

    That is a reply to a request that already ended (a reply after
    `Unconfirmed`, or any reply to a request in `WsConfirmMode.SENT`), or a
    reply whose id matches a request whose frame has not started writing:
    it cannot be that request's reply (a stale reply to an earlier use of
    the id, a spoof, a server bug), so it confirms nothing, is counted in
    `WsStats.stray_replies`, and the request is written as usual.

    Attributes:
        request_id: The request's id.
        frame: The reply.
    """

    request_id: RequestId
    frame: Frame


@dataclass(frozen=True, slots=True)
class WsGap:
    """Told to the subscribers when a stream's sequence numbers skip.

    `WsEndpoint.sequence` numbers each stream's messages; a gap re-sends
    that stream's subscription (from the runtime set, `WsSubscribe`)
    without dropping the connection. Messages numbered at or below the last
    one seen are duplicates: dropped and counted (`WsStats.duplicates`).

    Attributes:
        key: The stream.
        expected: The number that should have come.
        received: The number that came.
        resubscribed: True if its subscription was sent again.
    """

    key: Hashable
    expected: int
    received: int
    resubscribed: bool


@dataclass(frozen=True, slots=True)
class WsResolved:
    """What a probe (or a late reply) learnt about an `Unconfirmed` request.

    Told to the request's ``reply_to`` and to the subscribers.

    Attributes:
        request_id: The request's id.
        executed: True if it took effect, False if the endpoint does not
            have it, None if that could not be learnt (the probe failed).
        response: The probe's reply, or the late reply, or None.
        context: The request's ``context``.
    """

    request_id: RequestId
    executed: bool | None
    response: Frame | None
    context: Any = None


@dataclass(frozen=True, slots=True)
class WsStats:
    """A snapshot of a `WebSocketActor`'s state and counters.

    Attributes:
        state: ``"connecting"``, ``"open"``, ``"backoff"`` (waiting to
            reconnect), ``"closed"`` (disconnected for good: the endpoint's
            `WsEndpoint.on_disconnect` said not to reconnect; requests end
            `NotDelivered` at once) or ``"stopped"``.
        connected_since: Wall-clock time (`time.time`) the current connection
            opened, or None.
        reconnects: Connections opened after the first one (refused or
            failed attempts are not counted).
        pending: Distinct request ids in flight.
        queued: Frames waiting to be handed to the writer.
        frames_in: Frames received.
        frames_out: Frames written.
        bytes_in: Payload bytes received (text counted as UTF-8).
        bytes_out: Bytes written to the socket, WebSocket framing included.
        outcomes: Outcome name to count: ``confirmed``, ``sent``,
            ``rejected``, ``not_delivered``, ``unconfirmed``,
            ``payload_mismatch``, ``too_many_pending``.
        sends_refused: `WsSend` frames refused because the queue was full.
        stray_replies: Replies whose id matched a request whose frame had
            not started writing (so they cannot be its reply); each was told
            to the subscribers as `WsLateResponse` and confirmed nothing.
        inbound_dropped: Frames not told to a full subscriber, with
            ``subscriber_overflow="drop"``.
        reply_to_dropped: `WsOutcome` messages not told because the
            request's ``reply_to`` actor was dead.
        subscriptions: Runtime subscriptions in the current set
            (`WsSubscribe`), replayed on every reconnect.
        resends: Frames written again by outcome-driven retry
            (``WsDelegatedRequest(retry=True)``).
        gaps: Sequence gaps seen (`WsGap`).
        duplicates: Sequenced messages dropped as duplicates.
        probes: Probes sent to resolve `Unconfirmed` requests (`WsResolved`).
        rtt_p50: Median round trip in seconds, from heartbeat confirmations
            (`WsHeartbeat`) and keepalive pongs (the last 1024 samples), or
            None before any sample.
        rtt_p99: Their 99th percentile, or None.
        url: The URL of the current connection, or of the next attempt.
        hook_errors: Exceptions raised by (or garbage returned from)
            `WsEndpoint` hooks, and subscriber failures.
        last_error: A readable description of the last connection error, or
            None.
        attempts: Connection attempts made, successful or not.
        internal_errors: Bugs of pykka-ws caught while handling a message
            (each logged with its traceback; the asker got the exception).
            Should be 0: please report any.
    """

    state: str
    connected_since: float | None
    reconnects: int
    pending: int
    queued: int
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    outcomes: Mapping[str, int] = field(default_factory=dict)
    sends_refused: int = 0
    stray_replies: int = 0
    inbound_dropped: int = 0
    reply_to_dropped: int = 0
    subscriptions: int = 0
    resends: int = 0
    gaps: int = 0
    duplicates: int = 0
    probes: int = 0
    rtt_p50: float | None = None
    rtt_p99: float | None = None
    url: str | None = None
    hook_errors: int = 0
    last_error: str | None = None
    attempts: int = 0
    internal_errors: int = 0


_MIN_WINDOW = 4


@dataclass(frozen=True, slots=True)
class WsHeartbeat:
    """An application-level heartbeat: a confirmed request every ``interval`` seconds.

    Many venues want a JSON ping (``public/test``, ``{"op": "ping"}``), and a
    server can answer protocol pings while its application is dead. Every
    ``interval`` seconds while open, ``request()`` is sent; one that does not
    end confirmed fails the connection, which is replaced (backoff). Its
    confirmation time is a round-trip sample (`WsStats.rtt_p50`).

    Args:
        interval: Seconds between heartbeats (finite, > 0).
        request: Called on the actor's thread for each heartbeat; returns the
            `WsDelegatedRequest` to send (a fresh id each time). Its
            ``timeout`` (None: ``interval``) is how long a reply may take.
            A heartbeat refused here (`TooManyPending`, a full queue) is
            skipped, not held against the connection.
        max_rtt: A latency policy: once the 99th percentile of the last
            ``window`` heartbeat round trips (at least ``window // 4`` of
            them) exceeds ``max_rtt`` seconds, the connection is failed and
            replaced (a sustained breach, not one slow beat). None: no policy.
        window: Heartbeat round trips the policy looks at.
    """

    interval: float
    request: Callable[[], WsDelegatedRequest]
    max_rtt: float | None = None
    window: int = 32

    def __post_init__(self) -> None:
        check_timeout(self.interval, "interval")
        if self.max_rtt is not None:
            check_timeout(self.max_rtt, "max_rtt")
        if (
            isinstance(self.window, bool)
            or not isinstance(self.window, int)
            or self.window < _MIN_WINDOW
        ):
            msg = f"window must be an int >= {_MIN_WINDOW}, not {self.window!r}"
            raise ValueError(msg)
        if not callable(self.request):
            msg = f"request must be callable, not {type(self.request).__name__}"
            raise TypeError(msg)


@dataclass(frozen=True, slots=True)
class WsBackoff:
    """Reconnect delays: exponential, capped, with full jitter.

    The n-th consecutive failed attempt waits a uniformly random time in
    ``[0, min(cap, initial * factor ** n)]``. A connection that stayed open
    at least ``reset_after`` seconds resets n to 0; one that dies sooner does
    not, so a server that accepts and closes at once is not hammered.

    Raises:
        TypeError: If a value is not a number.
        ValueError: If a value is out of range.
    """

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    reset_after: float = 10.0

    def __post_init__(self) -> None:
        check_timeout(self.initial, "initial")
        check_timeout(self.cap, "cap")
        check_timeout(self.reset_after, "reset_after")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            msg = f"factor must be a number, not {type(self.factor).__name__}"
            raise TypeError(msg)
        if not math.isfinite(self.factor) or self.factor < 1:
            msg = f"factor must be finite and >= 1, not {self.factor!r}"
            raise ValueError(msg)
        if self.cap < self.initial:
            msg = f"cap ({self.cap}) must be >= initial ({self.initial})"
            raise ValueError(msg)

    def ceiling(self, attempt: int) -> float:
        """Return the largest delay for the given attempt (0-based)."""
        # Bound the exponent so factor ** attempt cannot overflow.
        exponent = min(attempt, 1024)
        try:
            value = self.initial * self.factor**exponent
        except OverflowError:
            return self.cap
        return min(self.cap, value)

    def delay(self, attempt: int, rng: Random) -> float:
        """Return a jittered delay for the given attempt (0-based)."""
        return rng.uniform(0.0, self.ceiling(attempt))


def _short(frame: Frame, limit: int = 60) -> str:
    text = repr(frame)
    return text if len(text) <= limit else text[: limit - 3] + "..."
