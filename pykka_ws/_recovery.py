"""Recovery beyond a reconnect, for the owner actor: probes and sequence gaps.

`Recovery` is a part of `WebSocketActor` (a mixin, on the owner's thread only).

- **Resolving Unconfirmed.** With `WsEndpoint.probe`, a request that ends
  ``Unconfirmed(written=True)`` is probed once a connection is open and
  ``probe_delay`` seconds have passed; `WsEndpoint.probe_result` reads the
  answer, and `WsResolved` is told to the request's ``reply_to`` and to the
  subscribers. A late reply to such a request resolves it the same way (and
  no probe is sent). At most `MAX_UNRESOLVED` requests wait to be resolved
  (beyond, the oldest is resolved as unknown), and at most
  `MAX_PROBES_IN_FLIGHT` probes (and a quarter of ``max_pending_requests``)
  are in flight at once: after a break that leaves a thousand orders
  ambiguous, the probes go out a few at a time and leave the pending table
  to the callers. Each ambiguous outcome is its own entry: a probe sent for
  an earlier use of an id never answers for a later request with that id.
- **Per-stream gaps.** With `WsEndpoint.sequence`, a skipped number re-sends
  that stream's subscription and tells `WsGap`; duplicates are dropped.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import pykka

from pykka_ws._endpoint import WsEndpoint
from pykka_ws._errors import EndpointRejected, Unconfirmed
from pykka_ws._futures import TellOwner
from pykka_ws._messages import WsDelegatedRequest, WsGap, WsResolved
from pykka_ws._scheduler import SCHEDULER

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from pykka._types import OptExcInfo

    from pykka_ws._futures import Deferred
    from pykka_ws._messages import Frame, RequestId
    from pykka_ws._subscribers import Subscribers

__all__ = ["MAX_PROBES_IN_FLIGHT", "MAX_UNRESOLVED", "ProbeDone", "ProbeDue", "Recovery"]

logger = logging.getLogger("pykka_ws")

MAX_STREAMS = 4096
"""Most sequenced streams tracked; beyond, the oldest is forgotten (a new baseline)."""

MAX_UNRESOLVED = 4096
"""Most Unconfirmed requests waiting for a probe or a late reply at once."""

MAX_PROBES_IN_FLIGHT = 16
"""Most probes in flight at once; the others wait for one to end, in order."""

_PROBE_TRIES = 60
"""How often a probe waits ``probe_delay`` more for an open connection."""


class _Ambiguous:
    """One Unconfirmed(written=True) outcome waiting to be resolved."""

    __slots__ = ("request", "tries")

    def __init__(self, request: WsDelegatedRequest) -> None:
        self.request = request
        self.tries = 0  # how often its probe waited for an open connection


class ProbeDue:
    """Time to probe an Unconfirmed request (told by the scheduler)."""

    __slots__ = ("entry",)

    def __init__(self, entry: _Ambiguous) -> None:
        self.entry = entry


class ProbeDone:
    """A probe ended (``error`` None: confirmed with ``response``)."""

    __slots__ = ("entry", "error", "response")

    def __init__(
        self, entry: _Ambiguous, response: Frame | None, error: BaseException | None
    ) -> None:
        self.entry = entry
        self.response = response
        self.error = error


class Recovery:
    """The recovery half of `WebSocketActor` (see the module docstring)."""

    # Set by WebSocketActor and its other halves, used here.
    actor_ref: pykka.ActorRef[Any]
    _endpoint: WsEndpoint
    _subscribers: Subscribers
    _subscriptions: dict[Hashable, WsDelegatedRequest]
    _state: str
    _submit: Callable[[WsDelegatedRequest], Deferred]
    _call_hook: Callable[..., Any]
    _hook_garbage: Callable[[str, object], None]

    def _init_recovery(self, probe_delay: float, max_pending: int) -> None:
        endpoint_class = type(self._endpoint)
        self._probing = endpoint_class.probe is not WsEndpoint.probe
        self._sequenced = endpoint_class.sequence is not WsEndpoint.sequence
        self._probe_delay = probe_delay
        # Unconfirmed(written=True) outcomes not yet resolved, oldest first.
        self._unresolved: OrderedDict[RequestId, _Ambiguous] = OrderedDict()
        self._last_seq: dict[Hashable, int] = {}
        self._gaps = 0
        self._duplicates = 0
        self._probes = 0
        self._probes_in_flight = 0
        self._probe_slots = max(1, min(MAX_PROBES_IN_FLIGHT, max_pending // 4))
        # Due probes waiting for a free slot, in order.
        self._probes_waiting: OrderedDict[RequestId, _Ambiguous] = OrderedDict()

    # -- resolving Unconfirmed ---------------------------------------------------

    def _watch_for_probe(self, request: WsDelegatedRequest, deferred: Deferred) -> None:
        if self._probing:
            deferred.add_waiter(_Unconfirmed(self, request))

    def _on_unconfirmed(self, request: WsDelegatedRequest) -> None:
        """A watched request ended Unconfirmed(written=True): probe it later."""
        unresolved = self._unresolved
        request_id = request.request_id
        entry = _Ambiguous(request)
        earlier = unresolved.pop(request_id, None)
        if earlier is not None:  # an earlier use of the id, still unresolved
            self._probes_waiting.pop(request_id, None)
            self._resolve(earlier.request, None, None)
        unresolved[request_id] = entry
        if len(unresolved) > MAX_UNRESOLVED:
            forgotten_id, forgotten = unresolved.popitem(last=False)
            self._probes_waiting.pop(forgotten_id, None)
            self._resolve(forgotten.request, None, None)
        SCHEDULER.call_later(self._probe_delay, self.actor_ref, ProbeDue(entry))

    def _current(self, entry: _Ambiguous) -> bool:
        """Whether ``entry`` still waits to be resolved (not resolved, not replaced)."""
        return self._unresolved.get(entry.request.request_id) is entry

    def _on_probe_due(self, message: ProbeDue) -> None:
        entry = message.entry
        if not self._current(entry):
            return  # resolved already (a late reply), or replaced
        request = entry.request
        if self._probes_in_flight >= self._probe_slots:
            self._probes_waiting[request.request_id] = entry  # sent when a probe ends
            return
        if self._state != "open":
            if entry.tries < _PROBE_TRIES:
                entry.tries += 1
                SCHEDULER.call_later(self._probe_delay, self.actor_ref, ProbeDue(entry))
            else:
                del self._unresolved[request.request_id]
                self._resolve(request, None, None)
            return
        probe = self._call_hook("probe", request.request_id, request.frame)
        if not isinstance(probe, WsDelegatedRequest):
            if probe is not None:
                self._hook_garbage("probe", type(probe).__name__)
            return  # nothing to ask: a late reply may still resolve it
        self._probes += 1
        self._probes_in_flight += 1
        self._submit(probe).add_waiter(TellOwner(self.actor_ref, _probe_done(entry)))

    def _on_probe_done(self, message: ProbeDone) -> None:
        self._probes_in_flight -= 1
        waiting = self._probes_waiting
        while waiting and self._probes_in_flight < self._probe_slots:
            _, due = waiting.popitem(last=False)
            self._on_probe_due(ProbeDue(due))
        entry = message.entry
        if not self._current(entry):
            return  # resolved meanwhile, or the id was used again: not this probe's
        del self._unresolved[entry.request.request_id]
        executed: bool | None = None
        if message.response is not None:  # a reply, a refusal included ("not found")
            executed = self._call_hook("probe_result", message.response)
            if executed is not None and not isinstance(executed, bool):
                self._hook_garbage("probe_result", executed)
                executed = None
        self._resolve(entry.request, executed, message.response)

    def _late_reply(self, request_id: RequestId, frame: Frame, *, ok: bool) -> None:
        """A reply for an ended request: it resolves an Unconfirmed one."""
        entry = self._unresolved.pop(request_id, None)
        if entry is not None:
            self._probes_waiting.pop(request_id, None)
            self._resolve(entry.request, ok, frame)

    def _resolve(
        self, request: WsDelegatedRequest, executed: bool | None, response: Frame | None
    ) -> None:
        resolved = WsResolved(request.request_id, executed, response, request.context)
        if request.reply_to is not None:
            try:
                request.reply_to.tell(resolved)
            except pykka.ActorDeadError:
                pass
        self._subscribers.publish(resolved)

    # -- per-stream gaps ---------------------------------------------------------

    def _in_sequence(self, message: Any) -> bool:
        """Check a parsed message's stream number; return whether to deliver it."""
        numbered = self._call_hook("sequence", message)
        if numbered is None:
            return True
        try:
            key, number = numbered
            if isinstance(number, bool) or not isinstance(number, int):
                raise TypeError  # noqa: TRY301
            hash(key)  # a stream key is a dict key
        except Exception:  # noqa: BLE001 - garbage of any kind (a key whose hash raises...)
            self._hook_garbage("sequence", numbered)
            return True
        seqs = self._last_seq
        last = seqs.get(key)
        if last is None and len(seqs) >= MAX_STREAMS:
            seqs.pop(next(iter(seqs)))  # bounded: the oldest stream is forgotten
        seqs[key] = max(number, last) if last is not None else number
        if last is None or number == last + 1:
            return True
        if number <= last:
            self._duplicates += 1
            return False
        self._gaps += 1
        subscription = self._subscriptions.get(key)
        if subscription is not None:
            again = WsDelegatedRequest(
                subscription.request_id, subscription.frame, timeout=subscription.timeout
            )
            self._submit(again)
        # To the stream's routes if it has some (its consumer must know), else to all.
        self._subscribers.publish(WsGap(key, last + 1, number, subscription is not None), key=key)
        return True


class _Unconfirmed:
    """A watched request's waiter: Unconfirmed(written=True) schedules a probe."""

    __slots__ = ("owner", "request")

    def __init__(self, owner: Recovery, request: WsDelegatedRequest) -> None:
        self.owner = owner
        self.request = request

    def set_now(self, _value: Any) -> None:
        """Sent or confirmed: nothing to resolve."""

    def set_exception_now(self, exc_info: OptExcInfo) -> None:
        error = exc_info[1]
        if isinstance(error, Unconfirmed) and error.written:
            self.owner._on_unconfirmed(self.request)  # noqa: SLF001 - its owner, same thread


def _probe_done(entry: _Ambiguous) -> Callable[[Any, BaseException | None], ProbeDone]:
    """What a probe's end tells the owner: its reply, a refusal included ("not found")."""

    def build(value: Any, error: BaseException | None) -> ProbeDone:
        if error is None:
            return ProbeDone(entry, getattr(value, "response", None), None)
        response = error.response if isinstance(error, EndpointRejected) else None
        return ProbeDone(entry, response, error)

    return build
