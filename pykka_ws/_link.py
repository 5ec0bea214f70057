"""The connection's events in the outcome core: opened (and its gate), lost, given up, stopped.

`Link` is the part of the pure core (`_core.Core` builds on it; `_outcomes.Ledger`
under both decides how entries end) that a connection's life changes: on
``opened`` the preamble goes first and ``on_open`` requests gate what follows;
on ``connection_lost`` unstarted writes go back to the front, the dead
connection's own frames are dropped, written requests end (or, idempotent, are
sent again); ``give_up`` and ``stop`` end the rest. No I/O, like the rest of
the core.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from pykka_ws._claims import CANCELLED, DONE
from pykka_ws._outcomes import Ledger
from pykka_ws._pending import RESEND_WRITTEN, Entry

if TYPE_CHECKING:
    from collections.abc import Callable

    from pykka_ws._claims import Claim
    from pykka_ws._futures import Deferred
    from pykka_ws._messages import Frame, RequestId, WsDelegatedRequest

__all__ = ["Batch", "Item", "Link", "SendItem"]


class SendItem:
    """A `WsSend` frame (or an ``on_open`` frame) in the outbound queue."""

    __slots__ = ("behind_gate", "claim", "frame", "preamble")

    def __init__(self, frame: Frame, *, preamble: bool = False, behind_gate: bool = False) -> None:
        self.frame = frame
        self.claim: Claim | None = None
        self.preamble = preamble  # a connection's own frame: dropped with it
        self.behind_gate = behind_gate  # sent only once the on_open requests are confirmed


Item = Entry | SendItem


class Batch:
    """Frames to write, in order, on the connection of ``generation``.

    ``items[i]`` owns ``claims[i]``. ``connection`` and ``held`` belong to the
    I/O layer (the connection to write on; bytes a partial write left for
    the writer) and are never read here.
    """

    __slots__ = ("claims", "connection", "generation", "held", "items")

    def __init__(self, generation: int, claims: list[Claim], items: list[Item]) -> None:
        self.generation = generation
        self.claims = claims
        self.items = items
        self.connection: Any = None
        self.held: Any = None


class Link(Ledger):
    """The connection's events (see the module docstring); `Core` adds the rest."""

    # Set or defined by Core.
    inflight: Batch | None
    gates: set[RequestId]
    generation: int
    open: bool
    closed: str | None
    stopped: bool
    resends: int
    request: Callable[[WsDelegatedRequest], Deferred]
    _on_written: Callable[[Entry], bool]
    _send_again: Callable[[Entry], None]

    # -- the connection -----------------------------------------------------

    def opened(
        self,
        generation: int,
        preamble: list[Frame | WsDelegatedRequest],
        behind_gate: list[Frame] | None = None,
    ) -> list[tuple[WsDelegatedRequest, Deferred]]:
        """The connection of ``generation`` opened; ``preamble`` goes first, in order.

        Plain frames are just sent. Requests *gate* the connection: nothing
        queued after them is written until each has ended confirmed (the
        caller watches the returned deferreds, calls `ungate` for each
        confirmed one, and fails the connection for any other outcome).
        ``behind_gate`` frames (replayed subscriptions) follow the preamble,
        once the gate is open: a venue refuses private subscriptions before
        the login is confirmed.
        """
        self.generation = generation
        self.open = True
        items: list[Item] = []
        gates: list[tuple[WsDelegatedRequest, Deferred]] = []
        for part in preamble:
            if isinstance(part, str | bytes):
                items.append(SendItem(part, preamble=True))
                continue
            before = len(self.queue)
            deferred = self.request(part)
            gates.append((part, deferred))
            inserted = len(self.queue) > before
            if inserted:  # it was appended; it goes first
                items.append(self.queue.pop())
                self.queued -= 1
            if self.table.get(part.request_id) is deferred:
                # Inserted, or joined an attempt of the id still in flight:
                # either way nothing queued goes before it has ended confirmed.
                self.gates.add(part.request_id)
                entry = deferred
                if not inserted and not entry.written and entry.claim is None:
                    # Joined one still queued behind other traffic: it goes
                    # first, or the gate would wait on what it holds back.
                    self.queue.remove(entry)
                    self.queued -= 1
                    items.append(entry)
        items.extend(SendItem(f, preamble=True, behind_gate=True) for f in behind_gate or ())
        if items:
            self.queue.extendleft(reversed(items))
            self.queued += len(items)
        return gates

    def ungate(self, request_id: RequestId) -> bool:
        """An ``on_open`` request ended confirmed; return True if the gate is now open."""
        gates = self.gates
        if request_id not in gates:
            return False
        gates.discard(request_id)
        return not gates

    def connection_lost(self) -> None:
        """The open connection is gone: requeue, end what cannot be answered."""
        self.open = False
        gates, self.gates = self.gates, set()
        # Handed to the writer but not started: back to the front, in order.
        inflight = self.inflight
        if inflight is not None:
            requeue: list[Item] = []
            table_get = self.table.get
            for item in inflight.items:
                claim = item.claim
                if claim is None:
                    continue
                state = self.claims.cancel(claim)
                if state == DONE and isinstance(item, Entry) and table_get(item.request_id) is item:
                    # Written, its batch_written still to come: it ends now
                    # as a written request on a lost connection does.
                    if self._on_written(item):
                        requeue.append(item)
                    continue
                if state != CANCELLED:
                    continue
                item.claim = None
                if isinstance(item, SendItem):
                    if not item.preamble:
                        requeue.append(item)
                elif self.table.get(item.request_id) is item:
                    requeue.append(item)
            self.queue.extendleft(reversed(requeue))
            self.queued += len(requeue)
        # The dead connection's on_open frames and requests: the next one
        # sends its own.
        if any(isinstance(item, SendItem) and item.preamble for item in self.queue):
            kept = [i for i in self.queue if not (isinstance(i, SendItem) and i.preamble)]
            self.queued -= len(self.queue) - len(kept)
            self.queue = deque(kept)
        for request_id in gates:
            entry = self.table.get(request_id)
            if entry is not None and not entry.written and entry.claim is None:
                self.table.remove(entry)
                self._classify_unfinished(entry, "its connection was lost")
        # Written and waiting for a reply on this connection: none can come.
        generation = self.generation
        lost = [e for e in self.table if e.written and e.generation == generation]
        if any(e.resend == RESEND_WRITTEN for e in lost):
            # Idempotent: written on a connection that died, sent again.
            again = [e for e in lost if e.resend == RESEND_WRITTEN]
            lost = [e for e in lost if e.resend != RESEND_WRITTEN]
            for entry in again:
                self._send_again(entry)
            self.queue.extendleft(reversed(again))
            self.queued += len(again)
        self._end_many(lost, "unconfirmed", "its connection was lost with no reply")

    def give_up(self, reason: str) -> None:
        """The connection will not be replaced: queued requests end NotDelivered."""
        self.open = False
        self.closed = reason
        table_get = self.table.get
        queued = [
            item
            for item in self.queue
            if isinstance(item, Entry) and table_get(item.request_id) is item
        ]
        self.queue.clear()
        self.queued = 0
        sent_before = [e for e in queued if e.sent_before]
        if sent_before:
            queued = [e for e in queued if not e.sent_before]
            self.table.remove_many(sent_before)
            self._record_many(
                sent_before, "unconfirmed", "an earlier attempt was written; no reconnect"
            )
        self._end_many(queued, "not_delivered", "the actor will not reconnect")

    def stop(self) -> bool:
        """End every request; return whether a write is stuck (a claim STARTED).

        Queued or unstarted requests end `NotDelivered`, started ones
        `Unconfirmed(written=False)`, written ones `Unconfirmed(written=True)`
        (or sent, in `SENT` mode). Nothing may be written after this. The
        queued ones' waiters are told by `deliver`, in slices.
        """
        self.stopped = True
        self.open = False
        inflight = self.inflight
        stuck = inflight is not None and self.claims.cancel_all(inflight.claims)
        queued: list[Entry] = []
        for entry in self.table.drain():
            if entry.claim is None and not entry.written and not entry.sent_before:
                queued.append(entry)
            else:
                self._classify_unfinished(entry, "the actor stopped")
        self.queue.clear()
        self.queued = 0
        if queued:
            self._record_many(queued, "not_delivered", "the actor stopped before it was written")
        return stuck
