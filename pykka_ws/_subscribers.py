"""The inbound subscribers: who is told what, with memory bounded end to end.

Runs on the owner actor's thread only. A frame read from the socket is
credited back to the receiving thread (`Sink.handled`) once it has been
handled *and* every subscriber's inbox is below ``subscriber_queue``. The
receiving thread stops reading once ``max_queue`` frames are told and not
credited, so a slow subscriber slows the socket (TCP backpressure; nothing
dropped, order kept) instead of growing its inbox without bound. While
credits are held back, the scheduler looks again every `CREDIT_POLL`
seconds. With ``overflow="drop"`` reading never pauses: a frame for a full
subscriber is dropped for it and counted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pykka

from pykka_ws._scheduler import SCHEDULER

if TYPE_CHECKING:
    from collections.abc import Hashable

    from pykka_ws._connection import Sink
    from pykka_ws._scheduler import TimerHandle

__all__ = ["CREDIT_POLL", "CreditCheck", "Subscribers"]

logger = logging.getLogger("pykka_ws")

CREDIT_POLL = 0.002
"""Seconds between looks at a full subscriber's inbox while reading is paused."""


class CreditCheck:
    """Look again whether the subscribers have room (told by the scheduler)."""

    __slots__ = ()


class Subscribers:
    """Tells the subscribers, and holds back read credit while one is full.

    Args:
        refs: The subscribers.
        owner: The owner actor, told `CreditCheck` by the scheduler.
        limit: Most messages waiting in a subscriber's inbox.
        overflow: ``"block"`` (pause reading) or ``"drop"``.
    """

    __slots__ = (
        "dead",
        "dropped",
        "limit",
        "owed",
        "owed_sink",
        "owner",
        "refs",
        "routes",
        "throttle",
        "watched",
    )

    def __init__(
        self, refs: list[pykka.ActorRef[Any]], owner: pykka.ActorRef[Any], limit: int, overflow: str
    ) -> None:
        self.refs = refs
        self.routes: dict[Hashable, list[pykka.ActorRef[Any]]] = {}
        self.watched = list(refs)  # every subscriber, routed or not, once
        self.owner = owner
        self.limit = limit
        self.throttle = overflow == "block"
        self.owed = 0  # frames handled but not credited to the receiving thread
        self.owed_sink: Sink | None = None
        self.dropped = 0  # frames not told to a full subscriber ("drop")
        self.dead = 0  # subscribers found dead and dropped

    def publish(self, message: object, *, frame: bool = False, key: Hashable = None) -> None:
        """Tell ``message`` to the subscribers of ``key`` if it has routes, else to all.

        A ``frame`` may be dropped for a full subscriber (``overflow="drop"``).
        """
        targets = self.refs
        if key is not None:
            routed = self.routes.get(key)
            if routed:
                targets = routed
        drop = frame and not self.throttle
        for ref in list(targets):
            if drop and inbox_size(ref) >= self.limit:
                self.dropped += 1
                continue
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                logger.warning("pykka-ws: inbound subscriber %s is dead; dropping it", ref)
                targets.remove(ref)
                self.dead += 1
                self._rewatch()

    def add_route(self, key: Hashable, ref: pykka.ActorRef[Any]) -> None:
        """Route ``key``'s messages to ``ref`` too."""
        routed = self.routes.setdefault(key, [])
        if ref not in routed:
            routed.append(ref)
            self._rewatch()

    def remove_route(self, key: Hashable, ref: pykka.ActorRef[Any] | None) -> None:
        """Stop routing ``key`` to ``ref`` (None: to anyone)."""
        routed = self.routes.get(key)
        if routed is None:
            return
        if ref is None:
            routed.clear()
        elif ref in routed:
            routed.remove(ref)
        if not routed:
            del self.routes[key]
        self._rewatch()

    def _rewatch(self) -> None:
        watched = list(self.refs)
        for routed in self.routes.values():
            watched.extend(r for r in routed if r not in watched)
        self.watched = watched

    def credit(self, sink: Sink, frames: int = 1) -> TimerHandle | None:
        """Give ``sink``'s receiving thread room for ``frames`` more, unless one is full.

        Called once per batch of frames handled: a subscriber's inbox is
        looked at once per batch. The bound holds all the same: every frame
        told since the last look that found room is uncredited, and there are
        at most ``max_queue`` of those.

        Returns a timer to keep if it started polling (see `check`).
        """
        if not self.owed and not self.watched:
            sink.handled(frames)  # nobody to wait for: the common fast path
            return None
        if self.owed:
            if sink is self.owed_sink:
                self.owed += frames
                return None
            self.release()  # an older connection's: let its thread end
        if self.throttle and self.full():
            self.owed_sink = sink
            self.owed = frames
            return SCHEDULER.call_later(CREDIT_POLL, self.owner, CreditCheck())
        sink.handled(frames)
        return None

    def check(self) -> TimerHandle | None:
        """A `CreditCheck` came: release the credits, or poll again (a timer)."""
        if not self.owed:
            return None
        if self.full():
            return SCHEDULER.call_later(CREDIT_POLL, self.owner, CreditCheck())
        self.release()
        return None

    def full(self) -> bool:
        """Whether a subscriber's inbox holds ``limit`` messages or more."""
        limit = self.limit
        return any(inbox_size(ref) >= limit for ref in self.watched)

    def release(self) -> None:
        """Return every credit held back (the connection is gone, or there is room)."""
        sink, owed = self.owed_sink, self.owed
        self.owed, self.owed_sink = 0, None
        if sink is not None and owed:
            sink.handled(owed)


def inbox_size(ref: pykka.ActorRef[Any]) -> int:
    """Messages waiting in an actor's inbox (0 if its inbox cannot say)."""
    qsize = getattr(ref.actor_inbox, "qsize", None)  # queue.Queue for ThreadingActor
    return qsize() if qsize is not None else 0
