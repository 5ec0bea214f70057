"""How requests end: the outcome of an entry at a deadline, a stop or in bulk.

The half of the outcome core (`_core.Core` is the other) that turns an
entry's state (its claim, whether it was written, its mode) into exactly one
outcome, records it (counters, recently ended ids) and tells its waiters,
directly or, for thousands at once, in slices (`Ledger.deliver`). Pure: no
threads, no sockets, no pykka, no websockets; an injected clock.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from pykka_ws._claims import DONE, PENDING, STARTED, ClaimLock
from pykka_ws._errors import NotDelivered, Unconfirmed
from pykka_ws._futures import Deferred
from pykka_ws._messages import WsConfirmMode, WsDelegatedOk
from pykka_ws._pending import Entry, PendingTable, RecentIds

if TYPE_CHECKING:
    from collections.abc import Callable

    from pykka_ws._link import Item

__all__ = ["OUTCOMES", "Ledger", "failed"]

OUTCOMES = (
    "confirmed",
    "sent",
    "rejected",
    "not_delivered",
    "unconfirmed",
    "payload_mismatch",
    "too_many_pending",
)
"""The outcome names counted in `WsStats.outcomes`."""


class Ledger:
    """Pending entries, the queue's accounting, and how each entry ends.

    Args:
        max_pending: Most distinct request ids in flight.
        recent_ids: How many ended ids are remembered (late replies).
        recent_ids_age: Seconds they are remembered.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        *,
        max_pending: int,
        recent_ids: int = 4096,
        recent_ids_age: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.table = PendingTable(max_pending, clock=clock)
        self.recent = RecentIds(recent_ids, recent_ids_age, clock=clock)
        self.claims = ClaimLock()
        self.queue: deque[Item] = deque()
        self.queued = 0  # live items in self.queue
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        # Outcomes decided in bulk, waiters not yet told: (entries, outcome, why).
        self._deliveries: deque[tuple[list[Entry], str, str]] = deque()

    def _joiner_expired(self, entry: Entry) -> Deferred:
        """Resolve a late joiner as ``entry`` would end at a deadline now; keep the entry."""
        request_id = entry.request_id
        why = f"request {request_id!r}: its deadline passed before the actor saw it"
        claim = entry.claim
        state = claim.state if claim is not None else PENDING
        if entry.written or state == DONE or entry.sent_before:
            if entry.confirm_mode is WsConfirmMode.SENT:
                self.outcomes["sent"] += 1
                deferred = Deferred()
                deferred.resolve(WsDelegatedOk(request_id, confirmed=False))
                return deferred
            self.outcomes["unconfirmed"] += 1
            return failed(
                Unconfirmed(
                    f"{why}; the frame of that id was written, with no reply yet",
                    request_id=request_id,
                    written=True,
                )
            )
        if state == STARTED:
            self.outcomes["unconfirmed"] += 1
            return failed(
                Unconfirmed(
                    f"{why}; the frame of that id is being written",
                    request_id=request_id,
                    written=False,
                )
            )
        self.outcomes["not_delivered"] += 1
        return failed(
            NotDelivered(f"{why}; the frame of that id has not been written", request_id=request_id)
        )

    # -- outcomes -----------------------------------------------------------

    def _end(self, entry: Entry, outcome: str, result: Any) -> None:
        """Record an entry's outcome; it is already out of the table."""
        if entry.claim is None and not entry.written:
            self.queued -= 1  # it was still in the queue; skipped when popped
            if len(self.queue) > 2 * self.queued + 64:
                # Many ended while queued (a long disconnect): drop them now
                # so the queue stays within a constant factor of the live.
                table_get = self.table.get
                self.queue = deque(
                    item
                    for item in self.queue
                    if not isinstance(item, Entry) or table_get(item.request_id) is item
                )
        self.recent.add(entry.request_id)
        self.outcomes[outcome] += 1
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
            state = self.claims.cancel(claim)
            if state == STARTED:
                self._end_unconfirmed(entry, f"{why} while its write was under way", written=False)
                return
            written = state == DONE
        if not written and entry.sent_before:
            # Not written again yet, but an earlier attempt was: ambiguous.
            self._end_unconfirmed(entry, f"{why}; an earlier attempt was written", written=True)
        elif not written:
            self._end_not_delivered(entry, f"{why} before it was written")
        elif entry.confirm_mode is WsConfirmMode.SENT:
            self._end_sent(entry)
        else:
            self._end_unconfirmed(entry, f"{why} with no reply", written=True)

    def expire(self, now: float | None = None, limit: int | None = None) -> bool:
        """End the requests whose deadline has passed, at most ``limit`` of them.

        Returns True if more were due than ``limit``: call again soon.
        """
        due = self.table.expire_due(now, limit)
        for entry in due:
            self._classify_unfinished(entry, "deadline passed")
        return limit is not None and len(due) == limit

    def next_deadline(self) -> float | None:
        """The earliest deadline pending, or None."""
        return self.table.next_deadline()

    # -- outcomes in bulk ---------------------------------------------------

    def _end_many(self, entries: list[Entry], outcome: str, why: str) -> None:
        """End many entries at once (out of the table, not queued).

        The bookkeeping is done now (table, recent ids, counters), so the
        state is exactly as if each had ended; their waiters are told by
        `deliver`, in slices.
        """
        if entries:
            self.table.remove_many(entries)
            self._record_many(entries, outcome, why)

    def _record_many(self, entries: list[Entry], outcome: str, why: str) -> None:
        """`_end_many` for entries already out of the table."""
        self.recent.add_many([entry.request_id for entry in entries])
        self.outcomes[outcome] += len(entries)
        self._deliveries.append((entries, outcome, why))

    @property
    def pending_deliveries(self) -> bool:
        """Whether waiters of bulk outcomes are still to be told (`deliver`)."""
        return bool(self._deliveries)

    def deliver(self, budget: int | None = None) -> bool:
        """Tell up to ``budget`` waiters of bulk outcomes theirs (None: all).

        Returns True if some are left.
        """
        deliveries = self._deliveries
        left = budget
        while deliveries and left != 0:
            entries, outcome, why = deliveries[0]
            while entries and left != 0:
                entry = entries.pop()  # the order waiters are told in is no promise
                if left is not None:
                    left -= 1
                request_id = entry.request_id
                message = f"request {request_id!r}: {why}"
                if outcome == "unconfirmed":
                    entry.fail(Unconfirmed(message, request_id=request_id, written=True))
                else:
                    entry.fail(NotDelivered(message, request_id=request_id))
            if not entries:
                deliveries.popleft()
        return bool(deliveries)


def failed(error: BaseException) -> Deferred:
    """A Deferred that already failed with ``error``."""
    deferred = Deferred()
    deferred.fail(error)
    return deferred
