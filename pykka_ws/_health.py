"""Connection health, for the owner actor: heartbeats, staleness, round trips.

`Health` is a part of `WebSocketActor` (a mixin, on the owner's thread
only). While a connection is open:

- with ``heartbeat=WsHeartbeat(interval, request)``, a confirmed request is
  sent every ``interval`` seconds; one that does not end confirmed fails the
  connection (it is replaced, with backoff). Its confirmation time is a
  round-trip sample;
- with ``stale_after=seconds``, no inbound frame for that long fails the
  connection;
- with ``ping_interval``, a keepalive ping is sent every ``ping_interval``
  seconds (timed by the process-wide scheduler, written by the writer: no
  keepalive thread per connection); a pong that does not come within
  ``ping_timeout`` fails the connection as websockets would (close code 1011,
  "keepalive ping timeout"). The next ping goes ``ping_interval`` after the
  last one was sent, once its pong came. Pongs are round-trip samples too
  (`_connection.Pong`).

`WsStats.rtt_p50` and ``rtt_p99`` come from the last `SAMPLES` samples.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from pykka_ws._errors import EndpointRejected, Unconfirmed
from pykka_ws._futures import TellOwner
from pykka_ws._messages import WsDelegatedRequest
from pykka_ws._scheduler import SCHEDULER
from pykka_ws._wire import PingSent, fail_keepalive, hand_ping_to_writer

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    import pykka

    from pykka_ws._connection import Connection, Pong
    from pykka_ws._futures import Deferred
    from pykka_ws._settings import Settings

__all__ = [
    "SAMPLES",
    "Health",
    "HeartbeatDone",
    "HeartbeatTick",
    "KeepaliveTick",
    "PongCheck",
    "StaleCheck",
    "percentile",
]

logger = logging.getLogger("pykka_ws")

SAMPLES = 1024
"""Round-trip samples kept for `WsStats.rtt_p50` and ``rtt_p99``."""


class HeartbeatTick:
    """Time for the next heartbeat of ``generation`` (told by the scheduler)."""

    __slots__ = ("generation",)

    def __init__(self, generation: int) -> None:
        self.generation = generation


class StaleCheck:
    """Time to look whether ``generation`` went stale (told by the scheduler)."""

    __slots__ = ("generation",)

    def __init__(self, generation: int) -> None:
        self.generation = generation


class KeepaliveTick:
    """Time for the next keepalive ping of ``generation`` (told by the scheduler)."""

    __slots__ = ("generation",)

    def __init__(self, generation: int) -> None:
        self.generation = generation


class PongCheck:
    """Time to look whether the pong for ``pong`` came (told by the scheduler)."""

    __slots__ = ("generation", "pong")

    def __init__(self, generation: int, pong: threading.Event) -> None:
        self.generation = generation
        self.pong = pong


class HeartbeatDone:
    """A heartbeat of ``generation`` ended (``error`` None: confirmed)."""

    __slots__ = ("error", "generation", "request_id", "sent_at")

    def __init__(
        self, generation: int, request_id: Any, sent_at: float, error: BaseException | None
    ) -> None:
        self.generation = generation
        self.request_id = request_id
        self.sent_at = sent_at
        self.error = error


class Health:
    """The health half of `WebSocketActor` (see the module docstring)."""

    # Set by WebSocketActor, used here.
    actor_ref: pykka.ActorRef[Any]
    _settings: Settings
    _generation: int
    _state: str
    _hook_errors: int
    _connection: Connection | None
    _writer: pykka.ActorRef[Any] | None

    def _init_health(self) -> None:
        self._rtts: deque[float] = deque(maxlen=SAMPLES)
        heartbeat = self._settings.heartbeat
        window = heartbeat.window if heartbeat is not None else 4
        self._beat_rtts: deque[float] = deque(maxlen=window)  # for the latency policy
        self._last_inbound = 0.0
        self._watch_stale = self._settings.stale_after is not None
        self._pinging = False  # a keepalive ping is with the writer: write nothing here
        self._ping_out: threading.Event | None = None  # the ping whose pong is awaited
        self._ping_sent_at = 0.0

    # Provided by WebSocketActor and ConnectionLife (declared, not defined:
    # a stub here would come first in WebSocketActor's method order).
    _submit: Callable[[WsDelegatedRequest], Deferred]
    _drop_connection: Callable[[BaseException], None]

    def _is_current(self, generation: int) -> bool:
        return generation == self._generation and self._state == "open"

    def _start_watching(self, generation: int) -> None:
        """A connection opened: schedule its heartbeats and staleness checks."""
        settings = self._settings
        if settings.heartbeat is not None:
            self._beat_rtts.clear()  # the policy judges each connection afresh
            SCHEDULER.call_later(
                settings.heartbeat.interval, self.actor_ref, HeartbeatTick(generation)
            )
        if settings.stale_after is not None:
            self._last_inbound = time.monotonic()
            SCHEDULER.call_later(settings.stale_after, self.actor_ref, StaleCheck(generation))
        if settings.ping_interval is not None:
            self._ping_out = None
            SCHEDULER.call_later(settings.ping_interval, self.actor_ref, KeepaliveTick(generation))

    # -- keepalive ------------------------------------------------------------

    def _on_keepalive_tick(self, message: KeepaliveTick) -> None:
        connection = self._connection
        if not self._is_current(message.generation) or connection is None:
            return
        if self._pinging:  # an older connection's ping is still with the writer
            interval = self._settings.ping_interval or 0.0
            SCHEDULER.call_later(interval, self.actor_ref, message)
            return
        assert self._writer is not None  # noqa: S101 - started before any connection
        self._pinging = True
        hand_ping_to_writer(self._writer, connection, message.generation, self.actor_ref)

    def _on_ping_sent(self, message: PingSent) -> None:
        self._pinging = False
        interval, timeout = self._settings.pings
        if message.pong is None or interval is None or not self._is_current(message.generation):
            return  # the connection is ending: its Closed is on the way
        self._ping_sent_at = message.sent_at
        # No pong awaited, or it came already (the receiving thread can beat the
        # writer's PingSent here, and _on_pong then had no ping to match): the
        # next ping one interval after this one. Exactly one of the two paths
        # schedules it.
        if timeout is None or message.pong.is_set():
            self._ping_out = None
            SCHEDULER.call_at(
                message.sent_at + interval, self.actor_ref, KeepaliveTick(message.generation)
            )
        else:
            self._ping_out = message.pong
            check = PongCheck(message.generation, message.pong)
            SCHEDULER.call_at(message.sent_at + timeout, self.actor_ref, check)

    def _on_pong_check(self, message: PongCheck) -> None:
        connection = self._connection
        if (
            message.pong is not self._ping_out
            or message.pong.is_set()
            or not self._is_current(message.generation)
            or connection is None
        ):
            return
        self._ping_out = None
        if not fail_keepalive(connection):  # a write holds websockets' lock
            self._drop_connection(TimeoutError("keepalive ping timeout"))

    def _on_heartbeat_tick(self, message: HeartbeatTick) -> None:
        heartbeat = self._settings.heartbeat
        if heartbeat is None or not self._is_current(message.generation):
            return
        SCHEDULER.call_later(heartbeat.interval, self.actor_ref, message)
        try:
            request = heartbeat.request()
            if not isinstance(request, WsDelegatedRequest):
                msg = f"heartbeat request() returned {type(request).__name__}"
                raise TypeError(msg)  # noqa: TRY301
        except Exception:
            self._hook_errors += 1
            logger.exception("pykka-ws: the heartbeat's request() failed; no heartbeat sent")
            return
        if request.timeout is None:
            request.timeout = heartbeat.interval  # a reply may take one interval
        sent_at = time.monotonic()
        deferred = self._submit(request)
        generation, request_id = message.generation, request.request_id
        deferred.add_waiter(
            TellOwner(
                self.actor_ref,
                lambda _v, error: HeartbeatDone(generation, request_id, sent_at, error),
            )
        )

    def _on_heartbeat_done(self, message: HeartbeatDone) -> None:
        error = message.error
        if error is None:
            rtt = time.monotonic() - message.sent_at
            self._rtts.append(rtt)
            self._check_latency(message.generation, rtt)
            return
        if not isinstance(error, Unconfirmed | EndpointRejected):
            # Refused here (TooManyPending, PayloadMismatch, a full queue):
            # that says nothing of the peer's health; skip this beat.
            logger.warning("pykka-ws: heartbeat %r not sent: %s", message.request_id, error)
            return
        if self._is_current(message.generation):
            cause = TimeoutError(f"heartbeat {message.request_id!r} not confirmed: {message.error}")
            cause.__cause__ = message.error
            self._drop_connection(cause)

    def _check_latency(self, generation: int, rtt: float) -> None:
        """The latency policy: a sustained p99 over ``max_rtt`` fails the connection."""
        heartbeat = self._settings.heartbeat
        if heartbeat is None or heartbeat.max_rtt is None or not self._is_current(generation):
            return
        beats = self._beat_rtts
        beats.append(rtt)
        if len(beats) < max(1, heartbeat.window // 4):
            return
        p99 = percentile(sorted(beats), 0.99)
        if p99 > heartbeat.max_rtt:
            beats.clear()
            self._drop_connection(
                TimeoutError(
                    f"heartbeat round trip p99 {p99:.3f} s over max_rtt {heartbeat.max_rtt} s"
                    f" (last {heartbeat.window} beats)"
                )
            )

    def _on_stale_check(self, message: StaleCheck) -> None:
        stale_after = self._settings.stale_after
        if stale_after is None or not self._is_current(message.generation):
            return
        quiet = time.monotonic() - self._last_inbound
        if quiet >= stale_after:
            self._drop_connection(TimeoutError(f"no inbound frame for {quiet:.3f} s (stale)"))
            return
        SCHEDULER.call_later(stale_after - quiet, self.actor_ref, message)

    def _on_pong(self, message: Pong) -> None:
        self._rtts.append(message.latency)
        interval, timeout = self._settings.pings
        pong = self._ping_out
        if (
            timeout is not None
            and interval is not None
            and pong is not None
            and pong.is_set()
            and self._is_current(message.generation)
        ):
            self._ping_out = None  # answered: the next ping one interval after this one
            when = self._ping_sent_at + interval
            SCHEDULER.call_at(when, self.actor_ref, KeepaliveTick(message.generation))

    def _rtt_percentiles(self) -> tuple[float | None, float | None]:
        if not self._rtts:
            return None, None
        ordered = sorted(self._rtts)
        return percentile(ordered, 0.50), percentile(ordered, 0.99)


def percentile(ordered: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of sorted samples (nearest rank)."""
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]
