"""Write claims: the one token that decides whether a frame was written.

Every write attempt of one frame has a `Claim`. The writer and the owner race
on it, and this module is the only code that moves it::

    PENDING -> STARTED    the writer, just before it encodes and sends the frame
    PENDING -> CANCELLED  the owner, at a deadline, a disconnect, a cancel or stop
    STARTED -> DONE       the writer, once the kernel took the frame's last byte

Exactly one of start and cancel wins: both run under the `ClaimLock` the owner
and the writer share. Any other move is a bug and raises `IllegalClaimMove` at
once, as h11 raises on an illegal state transition, instead of limping on.
What the owner reads off a claim after a deadline, disconnect or stop:
CANCELLED means the frame never left (``NotDelivered``), STARTED that it may
have (``Unconfirmed(written=False)``), DONE that it was written.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pykka_ws._messages import Frame

__all__ = ["CANCELLED", "DONE", "PENDING", "STARTED", "Claim", "ClaimLock", "IllegalClaimMove"]

PENDING = 0
STARTED = 1
CANCELLED = 2
DONE = 3

STATE_NAMES = {PENDING: "PENDING", STARTED: "STARTED", CANCELLED: "CANCELLED", DONE: "DONE"}

MOVES = {
    PENDING: frozenset({STARTED, CANCELLED}),
    STARTED: frozenset({DONE}),
    CANCELLED: frozenset(),
    DONE: frozenset(),
}
"""The legal moves, from each state: the whole state machine."""


class IllegalClaimMove(RuntimeError):
    """A claim was moved in a way the state machine does not allow (a bug)."""

    def __init__(self, state: int, target: int) -> None:
        super().__init__(
            f"illegal write-claim move {STATE_NAMES[state]} -> {STATE_NAMES[target]}; "
            f"from {STATE_NAMES[state]} only "
            f"{sorted(STATE_NAMES[s] for s in MOVES[state]) or 'nothing'} is allowed"
        )
        self.state = state
        self.target = target


class Claim:
    """One write attempt of one frame."""

    # One per frame written: slots make it cheaper to create.
    __slots__ = ("frame", "state")

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self.state = PENDING

    def start(self) -> bool:
        """PENDING -> STARTED (the writer, holding the `ClaimLock`).

        Returns False if the owner cancelled it first: the frame must then
        not be written.

        Raises:
            IllegalClaimMove: If it was already started or done.
        """
        state = self.state
        if state == PENDING:
            self.state = STARTED
            return True
        if state == CANCELLED:
            return False
        raise IllegalClaimMove(state, STARTED)

    def finish(self) -> None:
        """STARTED -> DONE (the writer: the kernel took the frame's last byte).

        Needs no lock: only the writer moves a started claim.

        Raises:
            IllegalClaimMove: If it was not started.
        """
        if self.state != STARTED:
            raise IllegalClaimMove(self.state, DONE)
        self.state = DONE

    @property
    def started(self) -> bool:
        """Whether the frame's write has started (STARTED or DONE)."""
        return self.state == STARTED or self.state == DONE  # noqa: PLR1714 - no set per call

    def __repr__(self) -> str:
        return f"Claim({STATE_NAMES[self.state]})"


class ClaimLock:
    """The lock under which the writer starts claims and the owner cancels them.

    The writer holds `lock` while it starts a window of claims
    (``with claim_lock.lock: claim.start()``); the owner cancels through
    `cancel` and `cancel_all`, which take it.
    """

    __slots__ = ("lock",)

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def cancel(self, claim: Claim) -> int:
        """PENDING -> CANCELLED if the writer has not started it; return its state now."""
        with self.lock:
            if claim.state == PENDING:
                claim.state = CANCELLED
            return claim.state

    def cancel_all(self, claims: Iterable[Claim]) -> bool:
        """Cancel every claim not yet started; return whether any had started and not finished."""
        stuck = False
        with self.lock:
            for claim in claims:
                state = claim.state
                if state == PENDING:
                    claim.state = CANCELLED
                elif state == STARTED:
                    stuck = True
        return stuck
