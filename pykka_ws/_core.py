"""The outcome core: every rule of DESIGN.md section 1, with no I/O.

No threads, no sockets, no pykka, no websockets; the clock is injected. The
core owns the outbound queue, the pending table, the write claims, the
connection generation and every classification. It is fed events and answers
with what to write next and which waiters end with which outcome; it resolves
waiters (`Deferred`) directly, one object per pending request.

Events, and what the caller must do after each (the owner actor is the
caller, from one thread):

- `request` and `send`: return what the asker gets; then call `next_batch`
  if nothing is in flight.
- `next_batch`: returns the next `Batch` to write on the open connection, or
  None. Write it (the claims decide which frames may still be written), then
  call `batch_written` with the result. Only one batch is in flight at once.
- `batch_written`: returns True if the write failed the open connection: the
  caller must then call `connection_lost`.
- `reply`: a matched reply. Returns `NOT_A_REPLY` (pass the frame on as an
  ordinary inbound frame), None (it completed a request), or a
  `WsLateResponse` to tell the subscribers.
- `expire`: returns True if more deadlines are already due (call it again
  after letting other work through); `next_deadline` says when to call next.
- `opened`, `connection_lost`, `give_up` (the connection will not be
  replaced) and `stop`.
- Bulk outcomes (thousands of requests ending at once) are decided at once
  and their waiters told in slices: while `pending_deliveries` is true, call
  `deliver` with a budget, letting other work through in between.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from pykka_ws._claims import CANCELLED, DONE, PENDING, STARTED, Claim
from pykka_ws._errors import (
    EndpointRejected,
    NotDelivered,
    PayloadMismatch,
    TooManyPending,
    WsSendRefused,
)
from pykka_ws._link import Batch, Item, Link, SendItem
from pykka_ws._messages import WsConfirmMode, WsDelegatedOk, WsLateResponse
from pykka_ws._outcomes import OUTCOMES, failed
from pykka_ws._pending import RESEND_UNSENT, RESEND_WRITTEN, Entry, Insert

if TYPE_CHECKING:
    from collections.abc import Callable

    from pykka_ws._futures import Deferred
    from pykka_ws._messages import Frame, RequestId, WsDelegatedRequest

__all__ = ["NOT_A_REPLY", "OUTCOMES", "Batch", "Core", "SendItem"]


logger = logging.getLogger("pykka_ws")


NOT_A_REPLY: Any = object()
"""`Core.reply`'s answer for a frame that is no reply: pass it on as inbound."""


class Core(Link):
    """The outbound queue, pending requests and their outcomes.

    How requests end (outcomes, deadlines, bulk deliveries) is `Ledger`'s;
    this class adds the events: requests, writes, replies, the connection.

    Args:
        max_pending: Most distinct request ids in flight.
        capacity: Most frames queued for writing.
        max_batch: Most frames in one `Batch`.
        default_timeout: Seconds to a request's deadline when it sets none.
        recent_ids: How many ended ids are remembered (late replies).
        recent_ids_age: Seconds they are remembered.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        *,
        max_pending: int,
        capacity: int,
        max_batch: int,
        default_timeout: float,
        recent_ids: int = 4096,
        recent_ids_age: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            max_pending=max_pending,
            recent_ids=recent_ids,
            recent_ids_age=recent_ids_age,
            clock=clock,
        )
        self.capacity = capacity
        self.max_batch = max_batch
        self.default_timeout = default_timeout
        self.inflight: Batch | None = None
        self.gates: set[RequestId] = set()  # on_open requests not yet confirmed
        self.generation = 0  # of the open connection, or of the last one
        self.open = False
        self.closed: str | None = None  # why it will not reconnect, once it will not
        self.stopped = False
        self.stray_replies = 0
        self.resends = 0
        self.sends_refused = 0
        self.frames_out = 0
        self.bytes_out = 0
        self._refusing = False

    # -- requests and sends -------------------------------------------------

    def request(self, request: WsDelegatedRequest) -> Deferred:
        """A request arrives: queue it, join the one in flight, or refuse it."""
        timeout = request.timeout if request.timeout is not None else self.default_timeout
        deadline = request.created_at + timeout
        request_id = request.request_id
        if (self.closed is not None or self.stopped) and request_id not in self.table:
            # (With the id in flight, its frame still being written, it joins
            # or mismatches as usual: the outcome describes that frame.)
            self.outcomes["not_delivered"] += 1
            return failed(
                NotDelivered(
                    f"request {request_id!r}: the actor is disconnected and will not "
                    f"reconnect ({self.closed or 'stopped'})",
                    request_id=request_id,
                )
            )
        if deadline <= self.clock():
            entry = self.table.get(request_id)
            if entry is None:
                self.outcomes["not_delivered"] += 1
                return failed(
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
        result, entry = self.table.insert_or_join(
            request_id, request.join_key, request.confirm_mode, deadline, request.frame
        )
        if result is Insert.INSERTED:
            assert entry is not None  # noqa: S101 - for the type checker
            if self.queued >= self.capacity:
                self.table.remove(entry)
                self.outcomes["not_delivered"] += 1
                entry.fail(
                    NotDelivered(
                        f"request {request_id!r}: the outbound queue is full "
                        f"(outbound_capacity={self.capacity})",
                        request_id=request_id,
                    )
                )
                return entry
            self.recent.discard(request_id)
            if request.retry:
                entry.resend = RESEND_WRITTEN if request.idempotent else RESEND_UNSENT
            self.queue.append(entry)
            self.queued += 1
            return entry
        if result is Insert.JOINED:
            assert entry is not None  # noqa: S101
            return entry
        if result is Insert.MISMATCH:
            self.outcomes["payload_mismatch"] += 1
            return failed(
                PayloadMismatch(
                    f"request {request_id!r} is in flight with another payload "
                    "(fingerprint or confirm_mode differs)",
                    request_id=request_id,
                )
            )
        self.outcomes["too_many_pending"] += 1
        limit = self.table.limit
        return failed(
            TooManyPending(f"{limit} requests are in flight (max_pending_requests)", limit=limit)
        )

    def send(self, frame: Frame) -> Deferred | None:
        """A `WsSend` arrives: queue it (None), or refuse it (a failed Deferred)."""
        if self.closed is not None or self.stopped:
            self.sends_refused += 1
            return failed(
                WsSendRefused(
                    "the actor is disconnected and will not reconnect "
                    f"({self.closed or 'stopped'})",
                    capacity=self.capacity,
                )
            )
        if self.queued >= self.capacity:
            self.sends_refused += 1
            if not self._refusing:  # a tell's refusal is silent otherwise: say it once
                self._refusing = True
                logger.warning(
                    "pykka-ws: outbound queue full (outbound_capacity=%d): refusing WsSend "
                    "frames until it drains; see WsStats.sends_refused",
                    self.capacity,
                )
            return failed(
                WsSendRefused(
                    f"the outbound queue is full (outbound_capacity={self.capacity})",
                    capacity=self.capacity,
                )
            )
        self._refusing = False
        self.queue.append(SendItem(frame))
        self.queued += 1
        return None

    def cancel(self, request_id: RequestId) -> bool:
        """Withdraw a request whose frame has not started: every waiter ends NotDelivered.

        Returns False if it has started, was written, has ended, or is unknown.
        """
        entry = self.table.get(request_id)
        if entry is None or entry.written or entry.sent_before:
            return False
        claim = entry.claim
        if claim is not None and self.claims.cancel(claim) != CANCELLED:
            return False
        self.table.remove(entry)
        self._end_not_delivered(entry, "cancelled before it was written")
        return True

    # -- writing ------------------------------------------------------------

    def next_batch(self) -> Batch | None:
        """Take the next frames to write, if the connection is open and idle."""
        if self.inflight is not None or not self.open or not self.queue:
            return None
        queue = self.queue
        table_get = self.table.get
        items: list[Item] = []
        claims: list[Claim] = []
        generation = self.generation
        gates = self.gates
        while queue and len(items) < self.max_batch:
            if gates and not self._is_preamble(queue[0]):
                break  # the gate is closed: on_open requests first
            item = queue.popleft()
            if isinstance(item, Entry):
                if table_get(item.request_id) is not item:
                    continue  # ended while queued; already uncounted
                item.generation = generation
            self.queued -= 1
            item.claim = claim = Claim(item.frame)
            items.append(item)
            claims.append(claim)
        if not items:
            return None
        self.inflight = batch = Batch(generation, claims, items)
        return batch

    def _is_preamble(self, item: Item) -> bool:
        if isinstance(item, SendItem):
            return item.preamble and not item.behind_gate
        return item.request_id in self.gates or self.table.get(item.request_id) is not item

    def batch_written(
        self, batch: Batch, frames_out: int, bytes_out: int, error: BaseException | None
    ) -> bool:
        """Account for a written batch; return True if it failed the open connection.

        Each frame's claim says what happened to it: DONE frames were
        written, STARTED ones were cut by ``error`` (`NotDelivered`: none of
        them arrived whole), PENDING ones were never tried and go back to
        the front of the queue in order.
        """
        if self.inflight is not batch:  # pragma: no cover - one batch at a time
            return False
        self.inflight = None
        self.frames_out += frames_out
        self.bytes_out += bytes_out
        requeue: list[Item] = []
        table_get = self.table.get
        for item, claim in zip(batch.items, batch.claims, strict=True):
            if item.claim is not claim:
                continue  # requeued at a disconnect
            state = claim.state
            if isinstance(item, SendItem):
                if state == PENDING:
                    self.claims.cancel(claim)
                    if not item.preamble:
                        item.claim = None
                        requeue.append(item)
                elif state == STARTED:
                    logger.warning("pykka-ws: a WsSend frame was lost with its connection")
                continue
            if table_get(item.request_id) is not item:
                continue  # ended already (a reply, a deadline)
            if state == DONE:
                if self._on_written(item):
                    requeue.append(item)
            elif state == STARTED:
                if item.resend and item.deadline > self.clock():
                    # Cut before its last byte: it never arrived whole. Again.
                    item.claim = None
                    self.resends += 1
                    requeue.append(item)
                    continue
                self.table.remove(item)
                if item.sent_before:  # an earlier attempt was written: ambiguous
                    self._end_unconfirmed(
                        item, "its re-send failed; an earlier attempt was written", written=True
                    )
                else:
                    self._end_not_delivered(item, "the write failed", error)
            else:
                # PENDING: never tried. (Not CANCELLED: every path that
                # cancels a claim takes its entry out of the table or drops
                # the claim first.)
                self.claims.cancel(claim)
                item.claim = None
                requeue.append(item)
        if requeue:
            self.queue.extendleft(reversed(requeue))
            self.queued += len(requeue)
        return error is not None and batch.generation == self.generation and self.open

    def _on_written(self, entry: Entry) -> bool:
        """An entry's frame was written; return True if it must be sent again (requeue it)."""
        entry.written = True
        if entry.confirm_mode is WsConfirmMode.SENT:
            self.table.remove(entry)
            self._end_sent(entry)
        elif entry.generation != self.generation or not self.open:
            if entry.resend == RESEND_WRITTEN:  # idempotent: its connection died; again
                self._send_again(entry)
                return True
            self.table.remove(entry)
            self._end_unconfirmed(
                entry, "its connection was lost before a reply could come", written=True
            )
        return False

    def _send_again(self, entry: Entry) -> None:
        """An idempotent request written on a lost connection: queue it again."""
        entry.written = False
        entry.sent_before = True
        entry.claim = None
        self.resends += 1

    # -- replies ------------------------------------------------------------

    def reply(
        self,
        request_id: RequestId,
        frame: Frame,
        *,
        ok: bool = True,
        message: str = "",
        rate_limit_feedback: Any = None,
        generation: int | None = None,
    ) -> Any:
        """A reply matched to ``request_id`` arrived.

        Returns `NOT_A_REPLY`, None, or a `WsLateResponse` to tell the
        subscribers (see the module docstring).
        """
        entry = self.table.get(request_id)
        if entry is None:
            if request_id in self.recent:
                return WsLateResponse(request_id, frame)
            return NOT_A_REPLY
        claim = entry.claim
        # No lock: if the writer starts it just after this read, it still
        # had not started when the reply (received before) was read.
        if (not entry.written and (claim is None or not claim.started)) or (
            generation is not None and entry.generation != generation
        ):
            # (Or read on another connection than the one its frame went
            # out on: a reply from a connection we dropped, for an id sent
            # again on this one, is not this frame's reply.)
            # Its frame has not reached the socket (still queued, or its
            # claim is PENDING): this cannot be its reply (a stale reply to
            # an earlier use of the id, a spoof, a server bug). It confirms
            # nothing; the request stays queued and is written as usual.
            self.stray_replies += 1
            return WsLateResponse(entry.request_id, frame)
        self.table.remove(entry)
        request_id = entry.request_id  # the request's own, not an equal one
        if entry.confirm_mode is WsConfirmMode.SENT:
            # The reply proves the write; it is never "re-confirmed".
            self._end_sent(entry)
            return WsLateResponse(request_id, frame)
        if ok:
            result = WsDelegatedOk(request_id, True, frame, rate_limit_feedback)  # noqa: FBT003
            self._end(entry, "confirmed", result)
            return None
        error = EndpointRejected(
            f"request {request_id!r} rejected by the endpoint: {message}",
            request_id=request_id,
            response=frame,
            reason=message,
            rate_limit_feedback=rate_limit_feedback,
        )
        self._end(entry, "rejected", error)
        return None
