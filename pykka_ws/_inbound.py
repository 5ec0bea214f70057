"""The inbound path, for the owner actor: match, parse, answer, route, credit.

`InboundPath` is a part of `WebSocketActor` (a mixin, on the owner's thread
only). Each complete message websockets' receiving thread reads comes here
(`_connection.Inbound`): the endpoint's matcher pairs replies with requests
(the core decides what a reply completes), the rest is parsed, answered
(`WsEndpoint.answer`), checked for sequence gaps and told to its routes or to
every subscriber; then the frame is credited back to the receiving thread,
unless a subscriber is full (`_subscribers`).

Frames arrive in batches (`_connection.InboundReady`: one pykka message for
every event queued meanwhile, up to `BATCH` handled per message), in the
order the receiving thread read them, with its `Pong` and `Closed` events in
their place. A batch's frames are credited together, once a subscriber's
inbox has been looked at (one look per batch, not per frame).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from pykka_ws._connection import Inbound
from pykka_ws._core import NOT_A_REPLY
from pykka_ws._endpoint import WsEndpoint
from pykka_ws._messages import WsInbound, WsRequestMatch, check_frame

if TYPE_CHECKING:
    from collections import OrderedDict
    from collections.abc import Callable

    from pykka_ws._connection import InboundReady, Sink
    from pykka_ws._core import Core
    from pykka_ws._messages import Frame, RequestId
    from pykka_ws._scheduler import TimerHandle
    from pykka_ws._subscribers import CreditCheck, Subscribers

__all__ = ["BATCH", "InboundPath"]

logger = logging.getLogger("pykka_ws")

BATCH = 256
"""Most inbound events handled per `InboundReady`; the inbox is let through between."""


class InboundPath:
    """The inbound half of `WebSocketActor` (see the module docstring)."""

    # Set or defined by WebSocketActor and its other halves.
    _core: Core
    _subscribers: Subscribers
    _credit_timer: TimerHandle | None
    _frames_in: int
    _bytes_in: int
    _answering: bool
    _matching: bool
    _parsing: bool
    _watch_stale: bool
    _last_inbound: float
    _sequenced: bool
    _generation: int  # ConnectionLife's: the current attempt
    _unresolved: OrderedDict[RequestId, Any]  # Recovery's (only its emptiness is read here)
    _call_hook: Callable[..., Any]
    _hook_garbage: Callable[[str, object], None]
    _flush: Callable[[], None]
    _in_sequence: Callable[[Any], bool]
    _late_reply: Callable[..., None]
    _handlers: dict[type, Any]
    _internal_errors: int
    actor_ref: Any

    # -- inbound ------------------------------------------------------------

    def _init_inbound(self, endpoint: WsEndpoint) -> None:
        """Note which hooks the endpoint overrides (the others need no call)."""
        self._answering = _overrides(endpoint, "answer")
        self._matching = _overrides(endpoint, "match_response")
        self._parsing = _overrides(endpoint, "parse")

    def _on_inbound_ready(self, message: InboundReady) -> None:
        """Handle the events the receiving thread queued, in order; credit the frames."""
        sink = message.sink
        # A dropped connection's frames (a health decision, WsReconnect), or an
        # older attempt's, are stale: credited and discarded, never told after
        # its WsDisconnected (nor parsed against the next connection's state).
        stale = sink.dropped or sink.generation != self._generation
        frames = 0
        try:
            for event in sink.take(BATCH):
                try:
                    if type(event) is Inbound:
                        frames += 1
                        if not stale:
                            self._frame(event)
                        continue
                    if frames:  # credit what came before, first (Closed releases credits)
                        self._credit(sink, frames)
                        frames = 0
                    self._handlers[type(event)](event)
                except Exception:  # a bug: the other events go on
                    self._internal_errors += 1
                    logger.exception("pykka-ws: internal error handling %r", event)
        finally:
            if frames:
                self._credit(sink, frames)
            if sink.finish():
                self.actor_ref.tell(message)  # behind what else waits in the inbox

    def _on_inbound(self, message: Inbound) -> None:
        """One frame on its own (the batch path is `_on_inbound_ready`)."""
        self._frame(message)
        self._credit(message.sink, 1)

    def _frame(self, message: Inbound) -> None:
        frame = message.frame
        if self._watch_stale:
            self._last_inbound = time.monotonic()
        self._frames_in += 1
        self._bytes_in += message.size
        # Hooks left at their defaults are not called (same result, less work).
        match = self._call_hook("match_response", frame) if self._matching else None
        if match is not None and self._on_matches(match, frame, message.generation):
            return
        parsed = self._call_hook("parse", frame) if self._parsing else frame
        if parsed is not None and self._answering:
            self._answer(parsed)
        if parsed is not None and (not self._sequenced or self._in_sequence(parsed)):
            subscribers = self._subscribers
            key = self._call_hook("route", parsed) if subscribers.routes else None
            subscribers.publish(WsInbound(frame, parsed), frame=True, key=key)

    def _answer(self, parsed: Any) -> None:
        frames = self._call_hook("answer", parsed)
        try:
            for frame in frames:
                self._core.send(check_frame(frame, "answer() frame"))
        except TypeError:
            self._hook_garbage("answer", type(frames).__name__)
        if self._core.inflight is None:
            self._flush()

    def _credit(self, sink: Sink, frames: int) -> None:
        timer = self._subscribers.credit(sink, frames)
        if timer is not None:
            self._credit_timer = timer

    def _on_credit_check(self, _message: CreditCheck) -> None:
        self._credit_timer = self._subscribers.check()

    def _on_matches(self, match: object, frame: Frame, generation: int) -> bool:
        """Complete the requests a frame's matches name; return whether all were replies.

        A batch reply (a sequence of matches) completes each of its ids; if
        any answers no request, the frame is passed on as inbound too.
        """
        if isinstance(match, WsRequestMatch):  # a NamedTuple: before the tuple test
            return self._on_match(match, frame, generation)
        if isinstance(match, list | tuple) and all(isinstance(m, WsRequestMatch) for m in match):
            answered = [self._on_match(one, frame, generation) for one in match]  # in order
            return bool(answered) and all(answered)
        self._hook_garbage("match_response", match)
        return False

    def _on_match(self, match: WsRequestMatch, frame: Frame, generation: int | None = None) -> bool:
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
            generation=generation,
        )
        if late is NOT_A_REPLY:
            return False
        if late is not None:
            self._subscribers.publish(late, frame=True)
            if self._unresolved:
                self._late_reply(request_id, frame, ok=match.ok)
        return True


def _overrides(endpoint: WsEndpoint, name: str) -> bool:
    """Whether ``endpoint``'s hook ``name`` is not `WsEndpoint`'s default."""
    method = getattr(endpoint, name)
    return getattr(method, "__func__", None) is not getattr(WsEndpoint, name)
