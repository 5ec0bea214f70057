"""The pending-request table: dedup, cap and deadlines, with no threads and no I/O.

The owner actor is its only user and calls it from one thread. The clock is
injected so tests can drive time.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from pykka_ws._futures import Deferred

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Iterator

    from pykka_ws._claims import Claim
    from pykka_ws._messages import Frame, RequestId, WsConfirmMode

__all__ = [
    "NO_RESEND",
    "RESEND_UNSENT",
    "RESEND_WRITTEN",
    "Entry",
    "Insert",
    "PendingTable",
    "RecentIds",
]

NO_RESEND = 0
RESEND_UNSENT = 1
RESEND_WRITTEN = 2

# The heap may hold this many times the live entries (plus a constant)
# before it is rebuilt; stale items come from joins and completions.
_HEAP_SLACK_FACTOR = 2
_HEAP_SLACK_CONSTANT = 64


class Insert(enum.Enum):
    """What `PendingTable.insert_or_join` did."""

    INSERTED = "inserted"
    JOINED = "joined"
    MISMATCH = "mismatch"
    FULL = "full"


class Entry(Deferred):
    """One request id in flight, shared by every waiter that joined it.

    It is also the `Deferred` every caller of that id follows: one object
    per request, not two (fewer objects for the garbage collector to walk
    with many requests pending). The table owns ``request_id``,
    ``fingerprint``, ``confirm_mode`` and ``deadline``; the owner actor
    keeps its own bookkeeping in ``claim``, ``written`` and ``generation``.
    """

    # One per request in flight: slots keep it small (see bench/).
    __slots__ = (
        "claim",
        "confirm_mode",
        "deadline",
        "fingerprint",
        "frame",
        "generation",
        "heap_seq",
        "request_id",
        "resend",
        "sent_before",
        "written",
    )

    def __init__(
        self,
        request_id: RequestId,
        fingerprint: Hashable,
        confirm_mode: WsConfirmMode,
        deadline: float,
        frame: Frame,
    ) -> None:
        super().__init__()
        self.request_id = request_id
        self.fingerprint = fingerprint
        self.confirm_mode = confirm_mode
        self.deadline = deadline
        self.frame = frame
        self.heap_seq = 0
        self.claim: Claim | None = None
        self.written = False
        self.generation = 0
        # What may be sent again (outcome-driven retry): NO_RESEND,
        # RESEND_UNSENT (a frame that provably never left) or RESEND_WRITTEN
        # (also one written on a lost connection: idempotent).
        self.resend = NO_RESEND
        self.sent_before = False  # an earlier attempt was written (idempotent re-send)

    def __repr__(self) -> str:
        return (
            f"Entry(request_id={self.request_id!r}, mode={self.confirm_mode.name}, "
            f"deadline={self.deadline:.3f}, written={self.written})"
        )


class PendingTable:
    """Requests in flight, by id, with a min-heap of deadlines.

    - Same id, same fingerprint and same mode joins the entry in flight; the
      entry keeps the earliest deadline of its waiters.
    - Same id with anything else is a mismatch; the entry is untouched.
    - The cap counts distinct ids; joiners add nothing.
    - Deadlines sit in a heap with lazy deletion; it is rebuilt when stale
      items outnumber live ones, so it stays within a constant factor of
      ``len(self)``. Every operation is O(log n).

    Args:
        limit: Most distinct ids in flight at once (>= 1).
        clock: Monotonic clock in seconds; injected for tests.
    """

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            msg = f"limit must be an int, not {type(limit).__name__}"
            raise TypeError(msg)
        if limit < 1:
            msg = f"limit must be >= 1, not {limit}"
            raise ValueError(msg)
        self.limit = limit
        self.clock = clock
        self._entries: dict[RequestId, Entry] = {}
        self._heap: list[tuple[float, int, RequestId]] = []
        self._seq = itertools.count(1)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._entries

    @property
    def heap_size(self) -> int:
        """Items in the deadline heap, live and stale (for tests and stats)."""
        return len(self._heap)

    def get(self, request_id: RequestId) -> Entry | None:
        """Return the entry in flight for ``request_id``, or None."""
        return self._entries.get(request_id)

    def insert_or_join(
        self,
        request_id: RequestId,
        fingerprint: Hashable,
        confirm_mode: WsConfirmMode,
        deadline: float,
        frame: Frame,
    ) -> tuple[Insert, Entry | None]:
        """Insert a new entry, or join the one in flight.

        Returns:
            `Insert.INSERTED` or `Insert.JOINED` with the entry,
            `Insert.MISMATCH` with the entry in flight (untouched), or
            `Insert.FULL` with None.
        """
        entry = self._entries.get(request_id)
        if entry is not None:
            if entry.fingerprint != fingerprint or entry.confirm_mode is not confirm_mode:
                return Insert.MISMATCH, entry
            if deadline < entry.deadline:
                entry.deadline = deadline
                self._push(entry)
            return Insert.JOINED, entry
        if len(self._entries) >= self.limit:
            return Insert.FULL, None
        entry = Entry(request_id, fingerprint, confirm_mode, deadline, frame)
        self._entries[request_id] = entry
        self._push(entry)
        return Insert.INSERTED, entry

    def remove(self, entry: Entry) -> bool:
        """Remove ``entry`` if it is the one in flight; return whether it was.

        Its heap item goes stale and is skipped or rebuilt away later.
        """
        if self._entries.get(entry.request_id) is not entry:
            return False
        del self._entries[entry.request_id]
        if len(self._heap) > _HEAP_SLACK_FACTOR * len(self._entries) + _HEAP_SLACK_CONSTANT:
            self._compact()
        return True

    def remove_many(self, entries: Iterable[Entry]) -> None:
        """Remove every entry given (each must be the one in flight for its id).

        One heap rebuild at most, however many: O(k) plus one compaction.
        """
        table = self._entries
        for entry in entries:
            del table[entry.request_id]
        if len(self._heap) > _HEAP_SLACK_FACTOR * len(table) + _HEAP_SLACK_CONSTANT:
            self._compact()

    def expire_due(self, now: float | None = None, limit: int | None = None) -> list[Entry]:
        """Remove and return the entries whose deadline is <= ``now``, earliest first.

        Args:
            now: The time to expire at; defaults to the table's clock.
            limit: Most entries to return; the rest stay due for the next
                call (`next_deadline` then returns a time <= ``now``).
        """
        if now is None:
            now = self.clock()
        if limit is None:
            limit = len(self._entries)
        due: list[Entry] = []
        heap = self._heap
        while heap and heap[0][0] <= now and len(due) < limit:
            _deadline, seq, request_id = heapq.heappop(heap)
            entry = self._entries.get(request_id)
            if entry is not None and entry.heap_seq == seq:
                del self._entries[request_id]
                due.append(entry)
        return due

    def next_deadline(self) -> float | None:
        """Return the earliest live deadline, or None if nothing is pending."""
        heap = self._heap
        while heap:
            _deadline, seq, request_id = heap[0]
            entry = self._entries.get(request_id)
            if entry is not None and entry.heap_seq == seq:
                return entry.deadline
            heapq.heappop(heap)
        return None

    def drain(self) -> list[Entry]:
        """Remove and return every entry, in insertion order (fail-all)."""
        entries = list(self._entries.values())
        self._entries.clear()
        self._heap.clear()
        return entries

    def _push(self, entry: Entry) -> None:
        entry.heap_seq = seq = next(self._seq)
        heapq.heappush(self._heap, (entry.deadline, seq, entry.request_id))
        if len(self._heap) > _HEAP_SLACK_FACTOR * len(self._entries) + _HEAP_SLACK_CONSTANT:
            self._compact()

    def _compact(self) -> None:
        """Rebuild the heap from live entries once stale items dominate it."""
        self._heap = [(e.deadline, e.heap_seq, e.request_id) for e in self._entries.values()]
        heapq.heapify(self._heap)


class RecentIds:
    """Ids of requests that ended recently, bounded in count and age.

    A reply matching one of them is a late response, not an ordinary
    inbound frame.

    Args:
        max_count: Most ids remembered; the oldest are forgotten first.
        max_age: Seconds an id is remembered.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        max_count: int = 4096,
        max_age: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_count = max_count
        self.max_age = max_age
        self.clock = clock
        # OrderedDict, not dict: popping the oldest of a dict that has seen
        # many deletions walks its dead slots (measured: 2.3 us vs 0.23 us).
        self._ended: OrderedDict[RequestId, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ended)

    def add(self, request_id: RequestId) -> None:
        """Remember that ``request_id`` ended now."""
        ended = self._ended
        ended[request_id] = self.clock()
        ended.move_to_end(request_id)
        if len(ended) > self.max_count:
            ended.popitem(last=False)

    def add_many(self, request_ids: list[RequestId]) -> None:
        """Remember that all of ``request_ids`` ended now (only the newest fit)."""
        for request_id in request_ids[-self.max_count :]:
            self.add(request_id)

    def __contains__(self, request_id: object) -> bool:
        ended = self._ended
        ended_at = ended.get(request_id)  # type: ignore[call-overload]
        if ended_at is None:
            return False
        if ended_at >= self.clock() - self.max_age:
            return True
        del ended[request_id]  # type: ignore[arg-type]
        return False

    def discard(self, request_id: RequestId) -> None:
        """Forget ``request_id`` (it is in flight again)."""
        self._ended.pop(request_id, None)
