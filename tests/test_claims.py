"""The write-claim state machine (pykka_ws._claims): pure, no threads."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pykka_ws._claims import (
    CANCELLED,
    DONE,
    MOVES,
    PENDING,
    STARTED,
    STATE_NAMES,
    Claim,
    ClaimLock,
    IllegalClaimMove,
)

pytestmark = pytest.mark.timeout(60)


class RecordingLock:
    """Stands in for the lock: records whether it is held, and refuses re-entry."""

    def __init__(self) -> None:
        self.held = False
        self.entered = 0

    def __enter__(self) -> Self:
        assert not self.held, "the claim lock is not re-entrant"
        self.held = True
        self.entered += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.held = False


class LockCheckingClaim(Claim):
    """A claim whose state may only change while ``lock`` is held."""

    __slots__ = ("lock",)

    def __init__(self, lock: RecordingLock) -> None:
        self.lock = lock
        super().__init__("frame")

    def __setattr__(self, name: str, value: object) -> None:
        if name == "state" and hasattr(self, "state"):
            assert self.lock.held, "a claim was cancelled without the lock"
        super().__setattr__(name, value)


def claim_in(state: int) -> Claim:
    """A claim moved to ``state`` by the legal path."""
    claim = Claim("frame")
    if state == STARTED:
        assert claim.start()
    elif state == DONE:
        assert claim.start()
        claim.finish()
    elif state == CANCELLED:
        assert ClaimLock().cancel(claim) == CANCELLED
    return claim


def test_a_new_claim_is_pending_and_not_started() -> None:
    claim = Claim(b"\x00frame")
    assert claim.state == PENDING
    assert claim.frame == b"\x00frame"
    assert not claim.started
    assert repr(claim) == "Claim(PENDING)"


def test_start_wins_when_it_comes_first_and_cancel_then_leaves_the_claim_started() -> None:
    claim = Claim("frame")
    assert claim.start() is True
    assert claim.state == STARTED
    assert claim.started
    assert ClaimLock().cancel(claim) == STARTED
    assert claim.state == STARTED


def test_cancel_wins_when_it_comes_first_and_start_then_refuses() -> None:
    claim = Claim("frame")
    assert ClaimLock().cancel(claim) == CANCELLED
    assert claim.start() is False
    assert claim.state == CANCELLED
    assert not claim.started
    assert repr(claim) == "Claim(CANCELLED)"


def test_finish_moves_a_started_claim_to_done_which_counts_as_started() -> None:
    claim = Claim("frame")
    claim.start()
    claim.finish()
    assert claim.state == DONE
    assert claim.started
    assert repr(claim) == "Claim(DONE)"
    assert ClaimLock().cancel(claim) == DONE
    assert claim.state == DONE


def test_cancelling_twice_keeps_the_claim_cancelled() -> None:
    claim = Claim("frame")
    lock = ClaimLock()
    assert lock.cancel(claim) == CANCELLED
    assert lock.cancel(claim) == CANCELLED


def test_starting_twice_is_an_illegal_move_with_a_readable_message() -> None:
    claim = claim_in(STARTED)
    with pytest.raises(IllegalClaimMove) as caught:
        claim.start()
    error = caught.value
    assert isinstance(error, RuntimeError)
    assert (error.state, error.target) == (STARTED, STARTED)
    assert str(error) == (
        "illegal write-claim move STARTED -> STARTED; from STARTED only ['DONE'] is allowed"
    )
    assert claim.state == STARTED  # untouched


def test_starting_a_done_claim_is_an_illegal_move() -> None:
    claim = claim_in(DONE)
    with pytest.raises(IllegalClaimMove, match=r"DONE -> STARTED; from DONE only nothing"):
        claim.start()
    assert claim.state == DONE


def test_finishing_an_unstarted_claim_is_an_illegal_move() -> None:
    claim = Claim("frame")
    with pytest.raises(IllegalClaimMove) as caught:
        claim.finish()
    assert str(caught.value) == (
        "illegal write-claim move PENDING -> DONE; "
        "from PENDING only ['CANCELLED', 'STARTED'] is allowed"
    )
    assert claim.state == PENDING


def test_finishing_a_cancelled_claim_is_an_illegal_move() -> None:
    claim = claim_in(CANCELLED)
    with pytest.raises(IllegalClaimMove) as caught:
        claim.finish()
    assert (caught.value.state, caught.value.target) == (CANCELLED, DONE)
    assert "CANCELLED -> DONE; from CANCELLED only nothing is allowed" in str(caught.value)
    assert claim.state == CANCELLED


def test_finishing_twice_is_an_illegal_move() -> None:
    claim = claim_in(DONE)
    with pytest.raises(IllegalClaimMove, match="DONE -> DONE"):
        claim.finish()


def test_cancel_all_cancels_the_pending_and_reports_a_started_one() -> None:
    claims = [claim_in(s) for s in (PENDING, STARTED, DONE, CANCELLED, PENDING)]
    assert ClaimLock().cancel_all(claims) is True
    assert [c.state for c in claims] == [CANCELLED, STARTED, DONE, CANCELLED, CANCELLED]


@pytest.mark.parametrize("states", [(), (PENDING,), (DONE, CANCELLED, PENDING)])
def test_cancel_all_is_false_when_no_claim_is_started(states: tuple[int, ...]) -> None:
    claims = [claim_in(s) for s in states]
    assert ClaimLock().cancel_all(claims) is False
    assert all(c.state in {CANCELLED, DONE} for c in claims)


def test_cancel_and_cancel_all_move_claims_only_under_the_lock() -> None:
    claim_lock = ClaimLock()
    recording = RecordingLock()
    claim_lock.lock = recording  # type: ignore[assignment]
    one = LockCheckingClaim(recording)
    assert claim_lock.cancel(one) == CANCELLED
    many = [LockCheckingClaim(recording) for _ in range(3)]
    with recording:
        assert many[0].start()  # the writer's side, holding the lock
    assert claim_lock.cancel_all(many) is True
    assert recording.entered == 3
    assert not recording.held
    assert [c.state for c in many] == [STARTED, CANCELLED, CANCELLED]


def test_the_claim_lock_is_a_real_lock_released_after_each_call() -> None:
    claim_lock = ClaimLock()
    claim_lock.cancel(Claim("f"))
    claim_lock.cancel_all([Claim("f")])
    assert not claim_lock.lock.locked()
    with claim_lock.lock:  # how the writer starts a window of claims
        assert Claim("f").start()


def test_the_move_table_is_the_documented_state_machine() -> None:
    expected = {PENDING: {STARTED, CANCELLED}, STARTED: {DONE}, CANCELLED: set(), DONE: set()}
    assert expected == MOVES
    assert set(STATE_NAMES) == set(MOVES)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["start", "finish", "cancel", "cancel_all"]), max_size=8))
def test_any_sequence_of_moves_follows_the_move_table(moves: list[str]) -> None:
    claim = Claim("frame")
    lock = ClaimLock()
    for move in moves:
        before = claim.state
        if move == "start":
            if before in {STARTED, DONE}:
                with pytest.raises(IllegalClaimMove):
                    claim.start()
            else:
                assert claim.start() is (before == PENDING)
        elif move == "finish":
            if before != STARTED:
                with pytest.raises(IllegalClaimMove):
                    claim.finish()
            else:
                claim.finish()
        elif move == "cancel":
            assert lock.cancel(claim) == claim.state
        else:
            assert lock.cancel_all([claim]) is (claim.state == STARTED)
        after = claim.state
        assert after == before or after in MOVES[before]
        if before == PENDING and move in {"cancel", "cancel_all"}:
            assert after == CANCELLED
