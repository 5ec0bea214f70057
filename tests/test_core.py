"""The outcome core (pykka_ws._core): every rule of DESIGN.md section 1, without I/O.

Like websockets' tests/test_protocol.py: a `Core` with a fake clock is fed
events, and each test asserts what it hands out to write and which outcome
every waiter gets. The writer is simulated exactly as the I/O layer does it:
``with core.claims.lock: claim.start()`` before a frame is written (a frame
whose start() returns False is skipped), ``claim.finish()`` once the kernel
took its bytes, then ``core.batch_written(...)``. A write that raised leaves
its claim STARTED and passes the error. No sockets, no threads, no sleeps.

Also the gated open and outcome-driven retry the core implements (DESIGN.md
sections 9 and 10), and `CoreMachine`, a hypothesis state machine that
feeds random event sequences and checks the section-6 invariants.
Every bug these tests found in the core is fixed; each test says which rule it holds.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pykka_ws import (
    EndpointRejected,
    NotDelivered,
    PayloadMismatch,
    TooManyPending,
    Unconfirmed,
    WsConfirmMode,
    WsDelegatedError,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsLateResponse,
    WsSendRefused,
)
from pykka_ws._claims import CANCELLED, DONE, PENDING, STARTED, Claim
from pykka_ws._core import NOT_A_REPLY, OUTCOMES, Batch, Core, SendItem
from pykka_ws._futures import Deferred
from pykka_ws._pending import NO_RESEND, Entry

C = WsConfirmMode.CONFIRMED
S = WsConfirmMode.SENT

pytestmark = pytest.mark.timeout(60)

T0 = 1000.0


# -- helpers ----------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


_NO_OUTCOME: Any = object()


class Waiter:
    """A waiter (see `pykka_ws._futures.Waiter`) that records what it is told."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def set_now(self, value: Any) -> None:
        self.calls.append(value)

    def set_exception_now(self, exc_info: Any) -> None:
        exc_type, exc, _tb = exc_info
        assert isinstance(exc, exc_type)
        self.calls.append(exc)

    @property
    def done(self) -> bool:
        assert len(self.calls) <= 1, f"more than one outcome: {self.calls!r}"
        return bool(self.calls)

    @property
    def outcome(self) -> Any:
        """The value or exception this waiter got, or `_NO_OUTCOME`."""
        return self.calls[0] if self.done else _NO_OUTCOME


def watch(deferred: Deferred | None) -> Waiter:
    assert deferred is not None
    waiter = Waiter()
    deferred.add_waiter(waiter)
    return waiter


def make_core(**overrides: Any) -> tuple[Core, FakeClock]:
    clock = FakeClock()
    settings_: dict[str, Any] = {
        "max_pending": 100,
        "capacity": 100,
        "max_batch": 10,
        "default_timeout": 5.0,
        "clock": clock,
    }
    settings_.update(overrides)
    return Core(**settings_), clock


def make_request(
    clock: FakeClock,
    request_id: int | str,
    frame: str | bytes | None = None,
    *,
    mode: WsConfirmMode = C,
    timeout: float | None = None,
    fingerprint: str | None = None,
    age: float = 0.0,
    retry: bool = False,
) -> WsDelegatedRequest:
    """A request constructed ``age`` seconds ago on the fake clock."""
    request = WsDelegatedRequest(
        request_id,
        frame if frame is not None else f'{{"id":{request_id!r}}}',
        confirm_mode=mode,
        timeout=timeout,
        fingerprint=fingerprint,
        retry=retry,
    )
    request.created_at = clock() - age
    return request


def ask(core: Core, clock: FakeClock, request_id: int | str, **kwargs: Any) -> Waiter:
    """Hand the core a new request and watch its outcome."""
    return watch(core.request(make_request(clock, request_id, **kwargs)))


def start(core: Core, claim: Claim) -> bool:
    """The writer starts a claim, as the I/O layer does: under the claim lock."""
    with core.claims.lock:
        return claim.start()


def size(frame: str | bytes) -> int:
    return len(frame.encode() if isinstance(frame, str) else frame)


def write_all(core: Core, batch: Batch) -> bool:
    """The writer writes (the rest of) ``batch`` and reports success."""
    frames = nbytes = 0
    for claim in batch.claims:
        if claim.state in {PENDING, CANCELLED} and not start(core, claim):
            continue
        if claim.state == STARTED:
            claim.finish()
        frames += 1
        nbytes += size(claim.frame)
    return core.batch_written(batch, frames, nbytes, None)


def write_failing(
    core: Core, batch: Batch, at: int, error: BaseException | None = None
) -> tuple[bool, BaseException]:
    """The frames before ``at`` are written; ``at`` starts and the write raises."""
    frames = nbytes = 0
    for claim in batch.claims[:at]:
        if claim.state in {PENDING, CANCELLED} and not start(core, claim):
            continue
        if claim.state == STARTED:
            claim.finish()
        frames += 1
        nbytes += size(claim.frame)
    cut = batch.claims[at]
    if cut.state == PENDING:
        start(core, cut)
    error = error if error is not None else OSError("connection reset")
    return core.batch_written(batch, frames, nbytes, error), error


def frames(batch: Batch | None) -> list[str | bytes]:
    assert batch is not None
    return [item.frame for item in batch.items]


def take(core: Core) -> Batch:
    batch = core.next_batch()
    assert batch is not None
    return batch


def live_queue(core: Core) -> list[str | bytes]:
    """The frames still to be handed out, in order (ended requests skipped)."""
    return [
        item.frame
        for item in core.queue
        if isinstance(item, SendItem) or core.table.get(item.request_id) is item
    ]


def ok(request_id: int | str, response: str | None = None, feedback: Any = None) -> WsDelegatedOk:
    if response is None:
        return WsDelegatedOk(request_id, confirmed=False)
    return WsDelegatedOk(
        request_id, confirmed=True, response=response, rate_limit_feedback=feedback
    )


def counts(core: Core) -> dict[str, int]:
    return {name: n for name, n in core.outcomes.items() if n}


# -- sent, confirmed, rejected ----------------------------------------------


def test_a_sent_mode_request_is_sent_once_its_write_completes() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1, mode=S, frame="hello")
    batch = take(core)
    assert frames(batch) == ["hello"]
    assert batch.generation == 1
    assert not waiter.done  # handed out is not written
    assert write_all(core, batch) is False
    assert waiter.outcome == ok(1)
    assert waiter.outcome.response is None
    assert counts(core) == {"sent": 1}
    assert (core.frames_out, core.bytes_out) == (1, 5)
    assert len(core.table) == 0
    # Any reply to a SENT request is a late response.
    assert core.reply(1, "reply") == WsLateResponse(1, "reply")


def test_a_matching_reply_confirms_a_written_request_with_the_reply_and_feedback() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, "a")
    write_all(core, take(core))
    assert not waiter.done  # written, waiting for the reply
    assert core.reply("a", "reply-frame", rate_limit_feedback={"left": 3}) is None
    assert waiter.outcome == ok("a", "reply-frame", {"left": 3})
    assert counts(core) == {"confirmed": 1}
    assert len(core.table) == 0
    assert core.next_deadline() is None


def test_a_failure_reply_rejects_with_response_message_and_rate_limit_feedback() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 7)
    write_all(core, take(core))
    assert (
        core.reply(7, b"no", ok=False, message="insufficient funds", rate_limit_feedback=9) is None
    )
    error = waiter.outcome
    assert isinstance(error, EndpointRejected)
    assert isinstance(error, WsDelegatedError)
    assert error.request_id == 7
    assert error.response == b"no"
    assert error.message == "insufficient funds"
    assert error.rate_limit_feedback == 9
    assert "insufficient funds" in str(error)
    assert counts(core) == {"rejected": 1}


def test_every_joined_waiter_gets_the_outcome_once() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiters = [ask(core, clock, 1) for _ in range(3)]
    batch = take(core)
    assert len(batch.items) == 1  # joined requests are one frame
    write_all(core, batch)
    core.reply(1, "r")
    assert [w.outcome for w in waiters] == [ok(1, "r")] * 3
    assert counts(core) == {"confirmed": 1}


# -- deadlines --------------------------------------------------------------


def test_the_deadline_counts_from_construction_not_from_when_the_core_sees_it() -> None:
    core, clock = make_core()
    waiter = ask(core, clock, 1, timeout=2.0, age=1.5)
    assert core.next_deadline() == T0 + 0.5
    core.expire(T0 + 0.49)
    assert not waiter.done
    core.expire(T0 + 0.5)
    assert isinstance(waiter.outcome, NotDelivered)


def test_a_request_without_a_timeout_takes_the_default_timeout() -> None:
    core, clock = make_core(default_timeout=3.0)
    ask(core, clock, 1, age=1.0)
    assert core.next_deadline() == T0 + 2.0


def test_a_request_whose_deadline_passed_before_the_core_saw_it_is_not_delivered_at_once() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1, timeout=1.0, age=1.0)
    error = waiter.outcome
    assert isinstance(error, NotDelivered)
    assert error.request_id == 1
    assert "deadline passed before the actor saw it" in str(error)
    assert core.next_batch() is None  # nothing to write
    assert len(core.table) == 0
    assert counts(core) == {"not_delivered": 1}


def test_expire_defaults_to_the_cores_clock() -> None:
    core, clock = make_core()
    waiter = ask(core, clock, 1, timeout=1.0)
    core.expire()
    assert not waiter.done
    clock.advance(1.0)
    assert core.expire() is False
    assert isinstance(waiter.outcome, NotDelivered)


def test_a_request_still_queued_while_disconnected_at_its_deadline_is_not_delivered() -> None:
    core, clock = make_core()
    waiter = ask(core, clock, 1, timeout=1.0)
    core.expire(clock.advance(1.0))
    error = waiter.outcome
    assert isinstance(error, NotDelivered)
    assert "before it was written" in str(error)
    assert core.queued == 0
    core.opened(1, [])
    assert core.next_batch() is None  # it is never written


def test_a_request_queued_behind_others_at_its_deadline_is_not_delivered() -> None:
    core, clock = make_core(max_batch=1)
    core.opened(1, [])
    first = ask(core, clock, 1, timeout=10.0)
    second = ask(core, clock, 2, timeout=1.0)
    batch = take(core)  # only the first: one batch in flight
    assert core.next_batch() is None
    core.expire(clock.advance(1.0))
    assert isinstance(second.outcome, NotDelivered)
    write_all(core, batch)
    assert core.next_batch() is None  # the second is never handed out
    core.reply(1, "r")
    assert first.outcome == ok(1, "r")


def test_at_a_deadline_a_pending_claim_is_cancelled_and_the_request_not_delivered() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1, timeout=1.0)
    batch = take(core)
    core.expire(clock.advance(1.0))
    assert batch.claims[0].state == CANCELLED
    assert isinstance(waiter.outcome, NotDelivered)
    assert start(core, batch.claims[0]) is False  # the writer must skip it
    assert core.batch_written(batch, 0, 0, None) is False
    assert core.frames_out == 0
    assert core.next_batch() is None


def test_at_a_deadline_a_started_claim_makes_the_request_unconfirmed_not_written() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1, timeout=1.0)
    batch = take(core)
    assert start(core, batch.claims[0])
    core.expire(clock.advance(1.0))
    error = waiter.outcome
    assert isinstance(error, Unconfirmed)
    assert error.written is False
    assert "under way" in str(error)
    assert batch.claims[0].state == STARTED  # the owner cannot cancel a started write
    # The write completing later changes nothing.
    write_all(core, batch)
    assert len(waiter.calls) == 1
    assert counts(core) == {"unconfirmed": 1}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(C, Unconfirmed), (S, WsDelegatedOk)],
    ids=["confirmed-mode-unconfirmed-written", "sent-mode-sent"],
)
def test_at_a_deadline_a_done_claim_counts_as_written_before_batch_written(
    mode: WsConfirmMode, expected: type
) -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1, timeout=1.0, mode=mode)
    batch = take(core)
    assert start(core, batch.claims[0])
    batch.claims[0].finish()
    core.expire(clock.advance(1.0))  # batch_written still "in the inbox"
    outcome = waiter.outcome
    assert isinstance(outcome, expected)
    if mode is S:
        assert outcome == ok(1)
    else:
        assert outcome.written is True
    assert core.batch_written(batch, 1, 10, None) is False  # ignored: ended already
    assert len(waiter.calls) == 1
    assert sum(core.outcomes.values()) == 1


def test_a_written_confirmed_request_with_no_reply_by_its_deadline_is_unconfirmed_written() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1, timeout=1.0)
    write_all(core, take(core))
    core.expire(clock.advance(0.999))
    assert not waiter.done
    core.expire(clock.advance(0.001))
    error = waiter.outcome
    assert isinstance(error, Unconfirmed)
    assert error.written is True
    assert "with no reply" in str(error)
    # A reply after the deadline is passed on, never dropped.
    assert core.reply(1, "late") == WsLateResponse(1, "late")


def test_expire_with_a_limit_returns_true_while_more_are_due() -> None:
    core, clock = make_core()
    waiters = [ask(core, clock, i, timeout=1.0 + i / 100) for i in range(5)]
    now = clock.advance(2.0)
    assert core.expire(now, limit=2) is True
    assert [w.done for w in waiters] == [True, True, False, False, False]  # earliest first
    assert core.next_deadline() is not None
    assert core.next_deadline() <= now  # more are already due
    assert core.expire(now, limit=2) is True
    assert core.expire(now, limit=2) is False
    assert all(isinstance(w.outcome, NotDelivered) for w in waiters)
    assert core.next_deadline() is None


# -- writing ----------------------------------------------------------------


def test_frames_go_out_in_order_preamble_first_at_most_max_batch_one_batch_at_a_time() -> None:
    core, clock = make_core(max_batch=3)
    ask(core, clock, 1, frame="r1")
    assert core.send("s1") is None
    ask(core, clock, 2, frame="r2")
    assert core.send("s2") is None
    assert core.next_batch() is None  # not open yet
    core.opened(1, ["auth", "sub"])
    assert core.queued == 6
    first = take(core)
    assert frames(first) == ["auth", "sub", "r1"]
    assert [c.frame for c in first.claims] == frames(first)
    assert all(c.state == PENDING for c in first.claims)
    assert core.next_batch() is None  # one batch in flight
    write_all(core, first)
    second = take(core)
    assert frames(second) == ["s1", "r2", "s2"]
    write_all(core, second)
    assert core.next_batch() is None  # nothing left
    assert core.queued == 0
    assert core.frames_out == 6


def test_next_batch_skips_requests_that_ended_while_queued_and_is_none_if_nothing_is_left() -> None:
    core, clock = make_core()
    ask(core, clock, 1, timeout=1.0)
    ask(core, clock, 2, timeout=1.0)
    core.expire(clock.advance(1.0))
    assert len(core.queue) == 2  # ended while queued: skipped when popped
    assert core.queued == 0
    core.opened(1, [])
    assert core.next_batch() is None
    assert len(core.queue) == 0
    ask(core, clock, 3, frame="three")
    assert frames(core.next_batch()) == ["three"]


def test_a_write_that_raised_ends_its_request_not_delivered_at_once_with_the_cause() -> None:
    core, clock = make_core()
    core.opened(1, [])
    written = ask(core, clock, 1, frame="one")
    cut = ask(core, clock, 2, frame="two")
    later = ask(core, clock, 3, frame="three")
    core.send("after")
    batch = take(core)
    failed, error = write_failing(core, batch, at=1)
    assert failed is True  # the caller must now call connection_lost
    outcome = cut.outcome
    assert isinstance(outcome, NotDelivered)
    assert outcome.__cause__ is error
    assert "the write failed" in str(outcome)
    assert not written.done  # written, waiting for its reply
    assert not later.done  # never tried: back in the queue
    assert live_queue(core) == ["three", "after"]
    assert core.queued == 2
    assert (core.frames_out, core.bytes_out) == (1, 3)
    core.connection_lost()
    core.deliver()
    assert isinstance(written.outcome, Unconfirmed)
    assert written.outcome.written is True
    assert not later.done  # waits for the next connection
    core.opened(2, [])
    assert frames(core.next_batch()) == ["three", "after"]


def test_a_failed_write_requeues_unstarted_frames_in_order_and_drops_unstarted_preamble() -> None:
    core, clock = make_core()
    core.opened(1, ["auth", "sub"])
    waiter = ask(core, clock, 1, frame="r1")
    core.send("s1")
    batch = take(core)
    assert frames(batch) == ["auth", "sub", "r1", "s1"]
    failed, _ = write_failing(core, batch, at=0)
    assert failed is True
    assert live_queue(core) == ["r1", "s1"]  # the dead connection's "sub" is dropped
    assert [item.claim for item in core.queue] == [None, None]
    assert all(c.state == CANCELLED for c in batch.claims[1:])
    core.connection_lost()
    assert not waiter.done
    core.opened(2, ["auth2"])
    assert frames(core.next_batch()) == ["auth2", "r1", "s1"]


def test_a_failed_write_for_a_connection_already_lost_does_not_fail_the_open_one() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1)
    batch = take(core)
    assert start(core, batch.claims[0])
    core.connection_lost()
    assert not waiter.done  # its write is under way: its result decides
    core.opened(2, [])
    failed, _ = write_failing(core, batch, at=0)
    assert failed is False  # generation 1's failure; generation 2 is fine
    assert isinstance(waiter.outcome, NotDelivered)


def test_a_failed_write_after_the_connection_was_reported_lost_returns_false() -> None:
    core, clock = make_core()
    core.opened(1, [])
    ask(core, clock, 1)
    batch = take(core)
    core.connection_lost()
    assert write_failing(core, batch, at=0)[0] is False


def test_a_send_cut_by_a_failed_write_is_lost_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core, _ = make_core()
    core.opened(1, [])
    core.send("s1")
    batch = take(core)
    with caplog.at_level(logging.WARNING, logger="pykka_ws"):
        assert write_failing(core, batch, at=0)[0] is True
    assert "a WsSend frame was lost with its connection" in caplog.text
    assert core.queued == 0


def test_batch_written_skips_items_requeued_at_a_disconnect() -> None:
    core, clock = make_core()
    core.opened(1, [])
    first = ask(core, clock, 1, frame="r1")
    second = ask(core, clock, 2, frame="r2")
    core.send("s1")
    batch = take(core)
    core.connection_lost()  # all three unstarted: claims cancelled, requeued
    assert all(c.state == CANCELLED for c in batch.claims)
    assert live_queue(core) == ["r1", "r2", "s1"]
    assert core.queued == 3
    # The writer skips them; its late report must not requeue them twice.
    assert write_all(core, batch) is False
    assert core.frames_out == 0
    assert live_queue(core) == ["r1", "r2", "s1"]
    assert core.queued == 3
    assert not first.done
    assert not second.done
    core.opened(2, [])
    batch = take(core)
    assert frames(batch) == ["r1", "r2", "s1"]
    write_all(core, batch)
    core.reply(1, "a")
    core.reply(2, "b")
    assert (first.outcome, second.outcome) == (ok(1, "a"), ok(2, "b"))


def test_batch_written_skips_requests_that_ended_already() -> None:
    core, clock = make_core()
    core.opened(1, [])
    by_deadline = ask(core, clock, 1, timeout=1.0)
    by_reply = ask(core, clock, 2, timeout=10.0)
    by_cancel = ask(core, clock, 3, timeout=10.0)
    batch = take(core)
    assert start(core, batch.claims[1])
    assert core.reply(2, "r") is None  # before batch_written
    assert core.cancel(3) is True
    core.expire(clock.advance(1.0))
    assert isinstance(by_deadline.outcome, NotDelivered)
    assert by_reply.outcome == ok(2, "r")
    assert isinstance(by_cancel.outcome, NotDelivered)
    write_all(core, batch)  # only claim 1 is written; the others were cancelled
    assert core.frames_out == 1
    assert [len(w.calls) for w in (by_deadline, by_reply, by_cancel)] == [1, 1, 1]
    assert counts(core) == {"confirmed": 1, "not_delivered": 2}
    assert core.queued == 0
    assert core.next_batch() is None


# -- replies ----------------------------------------------------------------


@pytest.mark.parametrize("state", [STARTED, DONE], ids=["started", "done"])
def test_a_reply_completes_a_request_whose_write_started_and_batch_written_is_then_ignored(
    state: int,
) -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1)
    batch = take(core)
    assert start(core, batch.claims[0])
    if state == DONE:
        batch.claims[0].finish()
    assert core.reply(1, "fast reply") is None  # before the owner saw the write complete
    assert waiter.outcome == ok(1, "fast reply")
    assert write_all(core, batch) is False
    assert len(waiter.calls) == 1
    assert counts(core) == {"confirmed": 1}
    assert core.frames_out == 1


def test_a_reply_before_batch_written_wins_even_if_the_write_then_raises() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1)
    batch = take(core)
    assert start(core, batch.claims[0])
    core.reply(1, "r")
    assert write_failing(core, batch, at=0)[0] is True
    assert waiter.outcome == ok(1, "r")
    assert counts(core) == {"confirmed": 1}


@pytest.mark.parametrize("finish", [False, True], ids=["started", "done"])
def test_a_reply_for_a_sent_request_whose_write_started_completes_it_as_sent_and_is_late(
    finish: bool,
) -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1, mode=S)
    batch = take(core)
    assert start(core, batch.claims[0])
    if finish:
        batch.claims[0].finish()
    assert core.reply(1, "r", ok=False) == WsLateResponse(1, "r")
    assert waiter.outcome == ok(1)  # never "re-confirmed", never rejected
    write_all(core, batch)
    assert len(waiter.calls) == 1
    assert counts(core) == {"sent": 1}
    assert core.stray_replies == 0


@pytest.mark.parametrize("where", ["queued", "claim-pending"])
def test_reply_for_a_queued_request_confirms_nothing_and_it_is_still_written(where: str) -> None:
    core, clock = make_core()
    if where == "claim-pending":
        core.opened(1, [])
    waiter = ask(core, clock, 1, frame="req")
    batch = core.next_batch()
    assert (batch is not None) == (where == "claim-pending")
    assert core.reply(1, "stale", rate_limit_feedback=1) == WsLateResponse(1, "stale")
    assert core.stray_replies == 1
    assert not waiter.done
    assert counts(core) == {}
    assert len(core.table) == 1
    if batch is None:
        core.opened(1, [])
        batch = take(core)
    assert frames(batch) == ["req"]
    assert batch.claims[0].state == PENDING  # the stray reply cancelled nothing
    write_all(core, batch)
    assert core.reply(1, "real") is None
    assert waiter.outcome == ok(1, "real")


def test_a_stray_reply_to_a_sent_request_does_not_make_it_sent() -> None:
    core, clock = make_core()
    waiter = ask(core, clock, 1, mode=S)
    assert core.reply(1, "x") == WsLateResponse(1, "x")
    assert not waiter.done
    core.opened(1, [])
    write_all(core, take(core))
    assert waiter.outcome == ok(1)


def test_late_replies_for_recently_ended_ids_and_unknown_ids() -> None:
    core, clock = make_core(recent_ids=2, recent_ids_age=10.0)
    for request_id in (1, 2, 3):
        ask(core, clock, request_id, timeout=1.0)
    core.expire(clock.advance(1.0))
    assert core.reply(3, "late") == WsLateResponse(3, "late")
    assert core.reply(2, "late") == WsLateResponse(2, "late")
    assert core.reply(1, "x") is NOT_A_REPLY  # forgotten: only the newest two are kept
    assert core.reply(99, "x") is NOT_A_REPLY  # never pending: an ordinary inbound frame
    clock.advance(10.001)
    assert core.reply(3, "late") is NOT_A_REPLY  # forgotten by age
    assert core.stray_replies == 0


def test_a_reused_id_is_in_flight_again_not_recently_ended() -> None:
    core, clock = make_core()
    core.opened(1, [])
    ask(core, clock, 1, timeout=1.0)
    core.expire(clock.advance(1.0))
    core.next_batch()
    again = ask(core, clock, 1)
    assert core.reply(1, "stale") == WsLateResponse(1, "stale")  # queued: a stray
    assert core.stray_replies == 1
    write_all(core, take(core))
    assert core.reply(1, "real") is None
    assert again.outcome == ok(1, "real")


# -- disconnect -------------------------------------------------------------


def test_on_a_disconnect_written_confirmed_requests_end_unconfirmed_through_deliver() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiters = [ask(core, clock, i) for i in range(3)]
    write_all(core, take(core))
    core.connection_lost()
    assert core.outcomes["unconfirmed"] == 3  # decided and counted at once
    assert len(core.table) == 0
    assert core.pending_deliveries
    assert not any(w.done for w in waiters)
    assert core.reply(0, "late") == WsLateResponse(0, "late")
    assert core.deliver() is False
    assert not core.pending_deliveries
    for waiter in waiters:
        error = waiter.outcome
        assert isinstance(error, Unconfirmed)
        assert error.written is True
        assert "connection was lost" in str(error)


def test_on_a_disconnect_unstarted_handed_out_frames_go_back_to_the_front_in_order() -> None:
    core, clock = make_core(max_batch=4)
    core.opened(1, [])
    started = ask(core, clock, 1, frame="r1")
    core.send("s1")
    requeued = ask(core, clock, 2, frame="r2")
    core.send("s2")
    ask(core, clock, 3, frame="r3")  # still queued behind the batch
    core.send("s3")
    batch = take(core)
    assert frames(batch) == ["r1", "s1", "r2", "s2"]
    assert start(core, batch.claims[0])
    core.connection_lost()
    assert [c.state for c in batch.claims] == [STARTED, CANCELLED, CANCELLED, CANCELLED]
    assert live_queue(core) == ["s1", "r2", "s2", "r3", "s3"]
    assert core.queued == 5
    assert not requeued.done
    assert not started.done  # its write's result decides
    write_failing(core, batch, at=0)
    assert isinstance(started.outcome, NotDelivered)
    core.opened(2, ["auth"])
    assert frames(core.next_batch()) == ["auth", "s1", "r2", "s2"]


def test_the_dead_connections_preamble_frames_are_dropped_and_the_next_sends_its_own() -> None:
    core, clock = make_core(max_batch=2)
    core.opened(1, ["p1", "p2", "p3", "p4"])
    ask(core, clock, 1, frame="r1")
    batch = take(core)
    assert frames(batch) == ["p1", "p2"]
    assert start(core, batch.claims[0])
    batch.claims[0].finish()
    core.connection_lost()  # p2 (handed out, unstarted), p3 and p4 (queued) are dropped
    assert live_queue(core) == ["r1"]
    assert core.queued == 1
    write_all(core, batch)
    assert live_queue(core) == ["r1"]
    core.opened(2, ["q1"])
    assert frames(core.next_batch()) == ["q1", "r1"]


def test_a_disconnect_with_nothing_in_flight_keeps_the_queue() -> None:
    core, clock = make_core()
    ask(core, clock, 1, frame="r1")
    core.send("s1")
    core.connection_lost()
    assert live_queue(core) == ["r1", "s1"]
    assert core.queued == 2
    assert not core.pending_deliveries


def test_unwritten_requests_wait_for_the_next_connection_until_their_deadline() -> None:
    core, clock = make_core()
    core.opened(1, [])
    core.connection_lost()
    patient = ask(core, clock, 1, timeout=10.0, frame="patient")
    hurried = ask(core, clock, 2, timeout=1.0, frame="hurried")
    core.expire(clock.advance(1.0))
    assert isinstance(hurried.outcome, NotDelivered)
    assert not patient.done
    core.opened(2, [])
    batch = take(core)
    assert frames(batch) == ["patient"]
    assert batch.generation == 2
    write_all(core, batch)
    core.reply(1, "r")
    assert patient.outcome == ok(1, "r")


@pytest.mark.parametrize("reopened", [False, True], ids=["still-down", "reopened"])
def test_a_request_written_on_an_old_generation_ends_unconfirmed(reopened: bool) -> None:
    core, clock = make_core()
    core.opened(1, [])
    confirmed = ask(core, clock, 1)
    sent = ask(core, clock, 2, mode=S)
    batch = take(core)
    for claim in batch.claims:
        assert start(core, claim)
    core.connection_lost()  # both writes under way: their results decide
    assert not confirmed.done
    assert not sent.done
    if reopened:
        core.opened(2, [])
    assert write_all(core, batch) is False  # the kernel took them after all
    error = confirmed.outcome
    assert isinstance(error, Unconfirmed)
    assert error.written is True
    assert sent.outcome == ok(2)  # written is written, on any connection
    assert len(core.table) == 0


@pytest.mark.parametrize("mode", [C, S], ids=["confirmed", "sent"])
def test_a_request_whose_write_completed_ends_at_the_disconnect_even_before_batch_written(
    mode: WsConfirmMode,
) -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1, mode=mode)
    batch = take(core)
    assert start(core, batch.claims[0])
    batch.claims[0].finish()  # DONE: the kernel took it; batch_written is still to come
    core.connection_lost()
    outcome = waiter.outcome  # at once: no reply can come back on a connection that is gone
    if mode is S:
        assert outcome == ok(1)
    else:
        assert isinstance(outcome, Unconfirmed)
        assert outcome.written is True
        assert "connection was lost" in str(outcome)
    assert len(core.table) == 0
    core.opened(2, [])
    assert core.reply(1, "a reply on the new connection") == WsLateResponse(
        1, "a reply on the new connection"
    )
    assert core.batch_written(batch, 1, 1, None) is False  # its report changes nothing
    assert len(waiter.calls) == 1
    assert sum(core.outcomes.values()) == 1


def test_a_second_disconnect_before_the_old_batch_is_reported_requeues_nothing_twice() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1, frame="r1")
    batch = take(core)
    core.connection_lost()
    core.opened(2, [])
    assert core.next_batch() is None  # the old batch is still in flight
    core.connection_lost()
    assert live_queue(core) == ["r1"]
    assert core.queued == 1
    write_all(core, batch)
    core.opened(3, [])
    batch = take(core)
    assert frames(batch) == ["r1"]
    write_all(core, batch)
    core.reply(1, "r")
    assert waiter.outcome == ok(1, "r")


def test_a_disconnect_does_not_requeue_a_handed_out_request_that_ended_already() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1, timeout=1.0)
    batch = take(core)
    core.expire(clock.advance(1.0))
    core.connection_lost()
    assert isinstance(waiter.outcome, NotDelivered)
    assert live_queue(core) == []
    assert core.queued == 0
    write_all(core, batch)
    core.opened(2, [])
    assert core.next_batch() is None


# -- stop -------------------------------------------------------------------


def test_stop_ends_every_request_by_what_its_claim_says() -> None:
    core, clock = make_core(max_batch=5)
    core.opened(1, [])
    awaiting = ask(core, clock, "awaiting")
    write_all(core, take(core))
    done_c = ask(core, clock, "done-c")
    done_s = ask(core, clock, "done-s", mode=S)
    started = ask(core, clock, "started")
    unstarted = ask(core, clock, "unstarted")
    core.send("a send")
    queued = ask(core, clock, "queued")
    batch = take(core)
    assert frames(batch)[-1] == "a send"
    for claim in batch.claims[:3]:
        assert start(core, claim)
    batch.claims[0].finish()
    batch.claims[1].finish()
    assert core.stop() is True  # a claim is STARTED: a write may be stuck
    assert core.stopped
    assert [c.state for c in batch.claims] == [DONE, DONE, STARTED, CANCELLED, CANCELLED]
    assert len(core.table) == 0
    assert len(core.queue) == 0
    assert core.queued == 0
    core.deliver()
    assert not core.pending_deliveries
    assert isinstance(awaiting.outcome, Unconfirmed)
    assert awaiting.outcome.written is True
    assert isinstance(done_c.outcome, Unconfirmed)
    assert done_c.outcome.written is True
    assert done_s.outcome == ok("done-s")
    assert isinstance(started.outcome, Unconfirmed)
    assert started.outcome.written is False
    assert isinstance(unstarted.outcome, NotDelivered)
    assert isinstance(queued.outcome, NotDelivered)
    assert "stopped" in str(queued.outcome)
    assert counts(core) == {"unconfirmed": 3, "sent": 1, "not_delivered": 2}
    # The writer finishing afterwards changes nothing and writes nothing new.
    assert write_all(core, batch) is False
    assert core.frames_out == 4  # "awaiting", then the three this batch had started
    assert core.next_batch() is None
    waiters = (awaiting, done_c, done_s, started, unstarted, queued)
    assert all(len(w.calls) == 1 for w in waiters)


def test_stop_returns_false_when_no_write_is_under_way() -> None:
    core, clock = make_core()
    assert core.stop() is False
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1, mode=S)
    batch = take(core)
    start(core, batch.claims[0])
    batch.claims[0].finish()
    assert core.stop() is False  # done, not stuck
    assert waiter.outcome == ok(1)


def test_stop_delivers_the_queued_requests_waiters_in_slices() -> None:
    core, clock = make_core()
    waiters = [ask(core, clock, i) for i in range(5)]
    core.stop()
    assert core.outcomes["not_delivered"] == 5  # counted at once
    assert core.deliver(2) is True
    assert sum(w.done for w in waiters) == 2
    assert core.deliver(2) is True
    assert core.deliver(2) is False
    assert all(isinstance(w.outcome, NotDelivered) for w in waiters)


def test_after_stop_requests_are_not_delivered_and_sends_refused() -> None:
    core, clock = make_core(capacity=3)
    core.stop()
    waiter = ask(core, clock, 1)
    assert isinstance(waiter.outcome, NotDelivered)
    assert "stopped" in str(waiter.outcome)
    refused = watch(core.send("x"))
    assert isinstance(refused.outcome, WsSendRefused)
    assert refused.outcome.capacity == 3
    assert core.sends_refused == 1
    assert len(core.queue) == 0


# -- joining ----------------------------------------------------------------


def test_same_id_fingerprint_and_mode_joins_and_produces_one_frame() -> None:
    core, clock = make_core()
    first = ask(core, clock, 1, frame='{"id":1,"ts":1}', fingerprint="buy 1")
    second = ask(core, clock, 1, frame='{"id":1,"ts":2}', fingerprint="buy 1")
    assert len(core.table) == 1
    assert core.queued == 1
    core.opened(1, [])
    batch = take(core)
    assert frames(batch) == ['{"id":1,"ts":1}']  # the first frame; the joiner's is not sent
    write_all(core, batch)
    third = ask(core, clock, 1, frame='{"id":1,"ts":3}', fingerprint="buy 1")  # joins written
    assert core.next_batch() is None
    core.reply(1, "r")
    assert first.outcome == second.outcome == third.outcome == ok(1, "r")


@pytest.mark.parametrize(
    ("frame", "fingerprint", "mode"),
    [("other", None, C), ('{"id":1}', None, S), ('{"id":1}', "explicit", C)],
    ids=["other-frame", "other-mode", "explicit-fingerprint"],
)
def test_another_fingerprint_or_mode_is_a_payload_mismatch_and_the_first_is_unharmed(
    frame: str, fingerprint: str | None, mode: WsConfirmMode
) -> None:
    core, clock = make_core()
    core.opened(1, [])
    first = ask(core, clock, 1, frame='{"id":1}', timeout=10.0)
    mismatch = ask(core, clock, 1, frame=frame, fingerprint=fingerprint, mode=mode, timeout=1.0)
    error = mismatch.outcome
    assert isinstance(error, PayloadMismatch)
    assert error.request_id == 1
    assert core.next_deadline() == T0 + 10.0  # the mismatch did not shorten it
    batch = take(core)
    assert frames(batch) == ['{"id":1}']
    write_all(core, batch)
    core.reply(1, "r")
    assert first.outcome == ok(1, "r")
    assert counts(core) == {"payload_mismatch": 1, "confirmed": 1}


def test_the_shared_entry_keeps_the_earliest_deadline_of_its_waiters() -> None:
    core, clock = make_core()
    patient = ask(core, clock, 1, timeout=10.0)
    hurried = ask(core, clock, 1, timeout=2.0)
    later = ask(core, clock, 1, timeout=20.0)  # does not extend it
    assert core.next_deadline() == T0 + 2.0
    core.expire(clock.advance(2.0))
    assert all(isinstance(w.outcome, NotDelivered) for w in (patient, hurried, later))
    assert counts(core) == {"not_delivered": 1}


def _entry_in(core: Core, clock: FakeClock, where: str, mode: WsConfirmMode) -> Waiter:
    """Put request 1 in the state ``where`` and return its first waiter."""
    if where != "queued":
        core.opened(1, [])
    waiter = ask(core, clock, 1, mode=mode, timeout=10.0)
    if where == "queued":
        return waiter
    batch = take(core)
    claim = batch.claims[0]
    if where in {"started", "done", "written"}:
        assert start(core, claim)
    if where in {"done", "written"}:
        claim.finish()
    if where == "written":
        core.batch_written(batch, 1, 1, None)
    return waiter


@pytest.mark.parametrize(
    ("where", "mode", "expected", "written"),
    [
        ("queued", C, NotDelivered, None),
        ("claim-pending", C, NotDelivered, None),
        ("started", C, Unconfirmed, False),
        ("done", C, Unconfirmed, True),
        ("written", C, Unconfirmed, True),
        ("queued", S, NotDelivered, None),
        ("started", S, Unconfirmed, False),
        ("done", S, WsDelegatedOk, None),
    ],
)
def test_a_joiner_whose_deadline_passed_gets_what_the_entry_would_get_now(
    where: str, mode: WsConfirmMode, expected: type, written: bool | None
) -> None:
    core, clock = make_core()
    first = _entry_in(core, clock, where, mode)
    entry = core.table.get(1)
    assert entry is not None
    claim = entry.claim
    state = claim.state if claim is not None else None
    joiner = ask(core, clock, 1, mode=mode, timeout=1.0, age=1.0)
    outcome = joiner.outcome
    assert isinstance(outcome, expected)
    if expected is WsDelegatedOk:
        assert outcome == ok(1)
    if written is not None:
        assert outcome.written is written
    assert outcome.request_id == 1
    # The shared entry is unharmed: still in flight, its claim untouched.
    assert core.table.get(1) is entry
    assert entry.claim is claim
    assert (claim.state if claim is not None else None) == state
    assert not first.done
    assert core.next_deadline() == T0 + 10.0


def test_a_joiner_whose_deadline_passed_with_another_payload_is_a_payload_mismatch() -> None:
    core, clock = make_core()
    ask(core, clock, 1, frame="one")
    late = ask(core, clock, 1, frame="two", timeout=1.0, age=2.0)
    assert isinstance(late.outcome, PayloadMismatch)


@pytest.mark.parametrize("late", [False, True], ids=["in-time", "deadline-passed"])
def test_after_give_up_a_request_for_an_id_being_written_describes_that_frame(
    late: bool,
) -> None:
    core, clock = make_core()
    core.opened(1, [])
    first = ask(core, clock, 1)
    batch = take(core)
    assert start(core, batch.claims[0])
    core.connection_lost()
    core.give_up("the endpoint said stop")
    joiner = ask(core, clock, 1, timeout=1.0, age=1.0 if late else 0.0)
    other = ask(core, clock, 1, frame="another payload")
    assert isinstance(other.outcome, PayloadMismatch)
    write_all(core, batch)  # the kernel had taken the bytes before the close
    assert isinstance(first.outcome, Unconfirmed)
    assert first.outcome.written is True
    # Never "not delivered" while that id's frame is on the wire.
    error = joiner.outcome
    assert isinstance(error, Unconfirmed)
    assert error.written is (not late)  # late: resolved at once, while it was being written
    fresh = ask(core, clock, 2)  # an id not in flight: it will never be sent
    assert isinstance(fresh.outcome, NotDelivered)
    assert "the endpoint said stop" in str(fresh.outcome)


# -- limits -----------------------------------------------------------------


def test_too_many_pending_carries_the_limit_and_no_request_id() -> None:
    core, clock = make_core(max_pending=2)
    ask(core, clock, 1)
    ask(core, clock, 2)
    error = ask(core, clock, 3).outcome
    assert isinstance(error, TooManyPending)
    assert error.limit == 2
    assert error.request_id is None
    assert "2" in str(error)
    joiner = ask(core, clock, 1)  # joiners add no entry
    assert not joiner.done
    assert counts(core) == {"too_many_pending": 1}
    assert len(core.table) == 2
    assert core.queued == 2


def test_beyond_capacity_a_send_is_refused_and_a_request_not_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core, clock = make_core(capacity=2, max_batch=1)
    core.opened(1, [])
    ask(core, clock, 1)
    assert core.send("s1") is None
    assert core.queued == 2
    with caplog.at_level(logging.WARNING, logger="pykka_ws"):
        refused = watch(core.send("s2"))
        watch(core.send("s3"))
    error = refused.outcome
    assert isinstance(error, WsSendRefused)
    assert error.capacity == 2
    assert "outbound_capacity=2" in str(error)
    assert core.sends_refused == 2
    assert caplog.text.count("outbound queue full") == 1  # said once, not per frame
    full = ask(core, clock, 2)
    assert isinstance(full.outcome, NotDelivered)
    assert "outbound queue is full" in str(full.outcome)
    assert len(core.table) == 1  # the refused request holds no entry
    joiner = ask(core, clock, 1)  # a joiner takes no room
    assert not joiner.done
    # Once it drains, sends are taken again, and the next refusal is said again.
    write_all(core, take(core))
    assert core.send("s4") is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pykka_ws"):
        watch(core.send("s5"))
    assert caplog.text.count("outbound queue full") == 1
    assert counts(core) == {"not_delivered": 1}


# -- give up ----------------------------------------------------------------


def test_give_up_ends_queued_requests_and_refuses_later_requests_and_sends() -> None:
    core, clock = make_core()
    core.opened(1, [])
    written = ask(core, clock, 1)
    write_all(core, take(core))
    queued = [ask(core, clock, i) for i in (2, 3)]
    core.send("s1")
    core.connection_lost()
    core.give_up("the endpoint said stop")
    assert core.closed == "the endpoint said stop"
    assert len(core.queue) == 0
    assert core.queued == 0
    assert len(core.table) == 0
    assert core.outcomes["not_delivered"] == 2
    assert core.outcomes["unconfirmed"] == 1
    core.deliver()
    assert isinstance(written.outcome, Unconfirmed)
    for waiter in queued:
        assert isinstance(waiter.outcome, NotDelivered)
        assert "will not reconnect" in str(waiter.outcome)
    later = ask(core, clock, 4)
    assert isinstance(later.outcome, NotDelivered)
    assert "the endpoint said stop" in str(later.outcome)
    refused = watch(core.send("s2"))
    assert isinstance(refused.outcome, WsSendRefused)
    assert "the endpoint said stop" in str(refused.outcome)
    assert core.sends_refused == 1


def test_give_up_with_nothing_queued_ends_nothing() -> None:
    core, _ = make_core()
    core.give_up("no")
    assert not core.pending_deliveries
    assert counts(core) == {}


# -- cancel -----------------------------------------------------------------


def test_cancel_withdraws_a_queued_request_for_every_waiter() -> None:
    core, clock = make_core()
    waiters = [ask(core, clock, 1, frame="r1"), ask(core, clock, 1, frame="r1")]
    core.send("s1")
    assert core.cancel(1) is True
    for waiter in waiters:
        error = waiter.outcome
        assert isinstance(error, NotDelivered)
        assert "cancelled" in str(error)
    assert counts(core) == {"not_delivered": 1}
    assert core.queued == 1
    core.opened(1, [])
    assert frames(core.next_batch()) == ["s1"]  # never written
    assert core.cancel(1) is False  # ended
    assert core.reply(1, "x") == WsLateResponse(1, "x")


def test_cancel_withdraws_a_request_whose_claim_is_pending() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 1)
    batch = take(core)
    assert core.cancel(1) is True
    assert batch.claims[0].state == CANCELLED
    assert isinstance(waiter.outcome, NotDelivered)
    assert start(core, batch.claims[0]) is False
    core.batch_written(batch, 0, 0, None)
    assert core.queued == 0
    assert core.next_batch() is None


@pytest.mark.parametrize("where", ["started", "done", "written", "unknown"])
def test_cancel_is_false_once_started_written_ended_or_unknown(where: str) -> None:
    core, clock = make_core()
    if where == "unknown":
        assert core.cancel(1) is False
        return
    waiter = _entry_in(core, clock, where, C)
    assert core.cancel(1) is False
    assert not waiter.done
    assert core.table.get(1) is not None


# -- bulk deliveries --------------------------------------------------------


def test_bulk_outcomes_are_counted_at_once_and_delivered_in_slices() -> None:
    core, clock = make_core()
    core.opened(1, [])
    written = [ask(core, clock, i) for i in range(4)]
    write_all(core, take(core))
    queued = [ask(core, clock, i) for i in range(10, 13)]
    core.connection_lost()
    core.stop()
    assert core.outcomes == {**dict.fromkeys(OUTCOMES, 0), "unconfirmed": 4, "not_delivered": 3}
    assert len(core.table) == 0
    told = []
    while True:
        more = core.deliver(3)
        told.append(sum(w.done for w in written + queued))
        if not more:
            break
    assert told == [3, 6, 7]  # a slice may span the two bulk outcomes
    assert not core.pending_deliveries
    assert all(isinstance(w.outcome, Unconfirmed) and w.outcome.written for w in written)
    assert all(isinstance(w.outcome, NotDelivered) for w in queued)
    assert core.deliver(3) is False
    assert core.deliver() is False


def test_deliver_with_a_zero_budget_tells_nobody() -> None:
    core, clock = make_core()
    waiter = ask(core, clock, 1)
    core.stop()
    assert core.deliver(0) is True
    assert not waiter.done
    assert core.deliver(None) is False
    assert waiter.done


# -- queue compaction -------------------------------------------------------


def test_the_queue_is_compacted_when_many_requests_end_while_queued() -> None:
    core, clock = make_core(max_pending=1000, capacity=1000, max_batch=1000)
    keep = []
    for i in range(300):
        if i % 10 == 0:
            keep.append(ask(core, clock, i, frame=f"keep{i}", timeout=100.0))
            core.send(f"send{i}")
        else:
            ask(core, clock, i, frame=f"drop{i}", timeout=1.0)
    assert core.queued == 330
    core.expire(clock.advance(1.0))
    assert core.queued == 60
    assert len(core.queue) <= 2 * core.queued + 64
    expected = [f for i in range(0, 300, 10) for f in (f"keep{i}", f"send{i}")]
    assert live_queue(core) == expected
    core.opened(1, [])
    assert frames(core.next_batch()) == expected
    assert not any(w.done for w in keep)


# -- gated open (on_open requests) ----------------------------------------


def gate(clock: FakeClock, request_id: str, frame: str | None = None, **kwargs: Any) -> Any:
    """An on_open request."""
    return make_request(clock, request_id, frame or f"{request_id}-frame", timeout=30.0, **kwargs)


def test_on_open_requests_go_first_and_queued_traffic_waits_until_each_is_confirmed() -> None:
    core, clock = make_core()
    user = ask(core, clock, 1, frame="order")
    core.send("ping")
    login = gate(clock, "login", "auth")
    gates = core.opened(1, ["hello", login, "subscribe"])
    assert len(gates) == 1
    assert gates[0][0] is login
    waiter = watch(gates[0][1])
    assert core.gates == {"login"}
    assert core.queued == 5
    batch = take(core)
    assert frames(batch) == ["hello", "auth", "subscribe"]  # on_open parts, in order
    write_all(core, batch)
    assert core.next_batch() is None  # the gate holds the queued traffic
    assert core.reply("login", "welcome") is None
    assert waiter.outcome == ok("login", "welcome")
    assert core.next_batch() is None  # until the caller opens the gate
    assert core.ungate("login") is True
    assert not core.gates
    assert frames(core.next_batch()) == ["order", "ping"]
    assert not user.done


def test_the_gate_opens_only_once_every_on_open_request_is_confirmed() -> None:
    core, clock = make_core()
    core.opened(1, [gate(clock, "a"), gate(clock, "b")])
    assert core.gates == {"a", "b"}
    assert core.ungate("unknown") is False
    assert core.ungate("a") is False  # "b" still holds it
    assert core.ungate("a") is False
    assert core.ungate("b") is True
    assert not core.gates


def test_an_on_open_request_that_is_refused_does_not_gate_the_connection() -> None:
    core, clock = make_core()
    late = gate(clock, "late", age=31.0)  # its deadline passed before the connection opened
    ask(core, clock, 1, frame="order")
    ((request, refused),) = core.opened(1, [late])
    assert request is late
    assert isinstance(watch(refused).outcome, NotDelivered)
    assert not core.gates
    assert frames(core.next_batch()) == ["order"]


def test_an_on_open_request_joining_a_queued_one_at_the_front_gates_the_connection() -> None:
    core, clock = make_core()
    queued = ask(core, clock, "login", frame="auth", timeout=30.0)
    ask(core, clock, 1, frame="order")
    ((_, joined),) = core.opened(1, [gate(clock, "login", "auth")])
    assert joined is core.table.get("login")  # one entry, one frame
    assert core.gates == {"login"}
    batch = take(core)
    assert frames(batch) == ["auth"]
    write_all(core, batch)
    assert core.next_batch() is None
    core.reply("login", "ok")
    assert queued.outcome == ok("login", "ok")
    assert core.ungate("login") is True
    assert frames(core.next_batch()) == ["order"]


def test_an_on_open_request_joining_a_request_queued_behind_others_is_sent_first() -> None:
    core, clock = make_core()
    ask(core, clock, 1, frame="order")  # queued while disconnected
    ask(core, clock, "sub", frame="subscribe", timeout=30.0)  # a WsSubscribe, queued too
    core.opened(1, ["auth", gate(clock, "sub", "subscribe")])  # replayed on open: it joins
    sent: list[str | bytes] = []
    while (batch := core.next_batch()) is not None:
        sent += frames(batch)
        write_all(core, batch)
    assert "subscribe" in sent  # on_open requests go first, in order


def test_a_dead_request_at_the_front_of_a_gated_queue_is_skipped() -> None:
    core, clock = make_core()
    expired = ask(core, clock, 1, frame="r1", timeout=1.0)
    waiting = ask(core, clock, 2, frame="r2", timeout=30.0)
    core.opened(1, [gate(clock, "login")])
    batch = take(core)
    assert frames(batch) == ["login-frame"]
    core.expire(clock.advance(1.0))
    assert isinstance(expired.outcome, NotDelivered)
    write_all(core, batch)
    assert core.next_batch() is None  # r1 is dropped, r2 still waits for the gate
    assert live_queue(core) == ["r2"]
    core.reply("login", "ok")
    assert core.ungate("login") is True
    assert frames(core.next_batch()) == ["r2"]
    assert not waiting.done


def test_a_lost_connection_ends_its_unwritten_on_open_requests_not_delivered() -> None:
    core, clock = make_core(max_batch=3)
    user = ask(core, clock, 1, frame="order")
    names = ["confirmed", "written", "sent", "started", "requeued", "queued"]
    parts = [gate(clock, n, mode=S if n == "sent" else C) for n in names]
    waiters = {n: watch(d) for n, (_, d) in zip(names, core.opened(1, parts), strict=True)}
    first = take(core)
    assert frames(first) == ["confirmed-frame", "written-frame", "sent-frame"]
    write_all(core, first)
    core.reply("confirmed", "ok")
    assert core.ungate("confirmed") is False
    second = take(core)
    assert frames(second) == ["started-frame", "requeued-frame", "queued-frame"]
    assert start(core, second.claims[0])
    core.connection_lost()
    assert not core.gates
    assert waiters["confirmed"].outcome == ok("confirmed", "ok")
    assert waiters["sent"].outcome == ok("sent")
    assert not waiters["started"].done  # its write's result decides
    for name in ("requeued", "queued"):
        error = waiters[name].outcome
        assert isinstance(error, NotDelivered)
        assert "connection was lost before it was written" in str(error)
    core.deliver()
    assert isinstance(waiters["written"].outcome, Unconfirmed)
    assert live_queue(core) == ["order"]  # the next connection sends its own on_open parts
    assert core.queued == 1
    write_failing(core, second, at=0)
    assert isinstance(waiters["started"].outcome, NotDelivered)
    core.opened(2, [])
    assert frames(core.next_batch()) == ["order"]
    assert not user.done


def test_an_on_open_request_joining_an_old_attempt_still_gates_the_connection() -> None:
    core, clock = make_core()
    core.opened(1, [gate(clock, "login", "auth")])
    old = take(core)
    assert start(core, old.claims[0])
    core.connection_lost()
    ask(core, clock, 1, frame="order")
    core.opened(2, [gate(clock, "login", "auth")])
    assert core.gates == {"login"}  # joined the old attempt, and gated on it
    write_failing(core, old, at=0)  # the old attempt's write raised
    assert core.next_batch() is None  # nothing was confirmed on connection 2: traffic waits


# -- outcome-driven retry ----------------------------------------------------


def ask_retry(
    core: Core, clock: FakeClock, request_id: int | str, **kwargs: Any
) -> tuple[WsDelegatedRequest, Waiter]:
    request = WsDelegatedRequest(
        request_id, f"f{request_id}", retry=True, **{"timeout": 10.0, **kwargs}
    )
    request.created_at = clock()
    return request, watch(core.request(request))


def test_a_retry_request_cut_by_a_failed_write_is_written_again_on_the_next_connection() -> None:
    core, clock = make_core()
    core.opened(1, [])
    _, waiter = ask_retry(core, clock, 1)
    ask(core, clock, 2, frame="f2")
    batch = take(core)
    failed, _ = write_failing(core, batch, at=0)
    assert failed is True
    assert not waiter.done  # it never arrived whole: sent again, not NotDelivered
    assert core.resends == 1
    assert live_queue(core) == ["f1", "f2"]  # in order, at the front
    core.connection_lost()
    core.opened(2, [])
    batch = take(core)
    assert frames(batch) == ["f1", "f2"]
    write_all(core, batch)
    core.reply(1, "r")
    assert waiter.outcome == ok(1, "r")


def test_a_retry_request_cut_once_its_deadline_passed_ends_not_delivered() -> None:
    core, clock = make_core()
    core.opened(1, [])
    _, waiter = ask_retry(core, clock, 1, timeout=1.0)
    batch = take(core)
    assert start(core, batch.claims[0])
    clock.advance(1.0)  # the deadline passed; the expiry has not run yet
    write_failing(core, batch, at=0)
    assert isinstance(waiter.outcome, NotDelivered)
    assert core.resends == 0


@pytest.mark.parametrize("when", ["awaiting-reply", "done-in-flight", "reported-after"])
def test_a_retry_request_written_on_a_lost_connection_is_not_resent_without_idempotent(
    when: str,
) -> None:
    core, clock = make_core()
    core.opened(1, [])
    _, waiter = ask_retry(core, clock, 1)
    batch = take(core)
    assert start(core, batch.claims[0])
    if when != "reported-after":
        batch.claims[0].finish()
    if when == "awaiting-reply":
        core.batch_written(batch, 1, 2, None)
    core.connection_lost()
    if when == "reported-after":
        write_all(core, batch)
    core.deliver()
    error = waiter.outcome
    assert isinstance(error, Unconfirmed)  # ambiguous: never re-sent automatically
    assert error.written is True
    assert core.resends == 0


@pytest.mark.parametrize("when", ["awaiting-reply", "done-in-flight", "reported-after"])
def test_an_idempotent_request_written_on_a_lost_connection_is_sent_again(when: str) -> None:
    core, clock = make_core()
    core.opened(1, [])
    _, waiter = ask_retry(core, clock, 1, idempotent=True)
    batch = take(core)
    assert start(core, batch.claims[0])
    if when != "reported-after":
        batch.claims[0].finish()
    if when == "awaiting-reply":
        write_all(core, batch)
    core.connection_lost()
    if when != "awaiting-reply":
        write_all(core, batch)
    core.deliver()
    assert not waiter.done
    assert core.resends == 1
    assert live_queue(core) == ["f1"]
    core.opened(2, [])
    batch = take(core)
    assert frames(batch) == ["f1"]
    write_all(core, batch)
    core.reply(1, "r")  # a reply to any attempt completes it
    assert waiter.outcome == ok(1, "r")


def test_a_sent_mode_retry_request_is_sent_once_written_on_any_connection() -> None:
    core, clock = make_core()
    core.opened(1, [])
    _, waiter = ask_retry(core, clock, 1, idempotent=True, confirm_mode=S)
    batch = take(core)
    assert start(core, batch.claims[0])
    core.connection_lost()
    write_all(core, batch)
    assert waiter.outcome == ok(1)
    assert core.resends == 0


@pytest.mark.parametrize("then", ["deadline", "stop", "give_up", "cancel"])
def test_an_idempotent_request_resent_after_a_written_attempt_is_never_not_delivered(
    then: str,
) -> None:
    core, clock = make_core()
    core.opened(1, [])
    _, waiter = ask_retry(core, clock, 1, idempotent=True, timeout=2.0)
    write_all(core, take(core))  # written: the endpoint may have acted on it
    core.connection_lost()
    assert not waiter.done  # to be sent again on the next connection
    if then == "deadline":
        core.expire(clock.advance(2.0))
    elif then == "stop":
        core.stop()
    elif then == "give_up":
        core.give_up("gone")
    else:
        assert core.cancel(1) is False  # its frame did start writing, once
        assert not waiter.done  # still to be sent again
        core.stop()
    core.deliver()
    assert waiter.done
    assert not isinstance(waiter.outcome, NotDelivered)


@pytest.mark.parametrize(
    ("second", "when"),
    [
        ("idempotent", "done-in-flight"),
        ("idempotent", "reported-after"),
        ("unstarted", "done-in-flight"),
    ],
)
def test_idempotent_resends_go_out_again_in_their_original_order(second: str, when: str) -> None:
    core, clock = make_core()
    core.opened(1, [])
    ask_retry(core, clock, "A", idempotent=True)
    if second == "idempotent":
        ask_retry(core, clock, "B", idempotent=True)
    else:
        ask(core, clock, "B", frame="fB")
    batch = take(core)
    for claim in batch.claims[: 2 if second == "idempotent" else 1]:
        assert start(core, claim)
        if when == "done-in-flight":
            claim.finish()
    core.connection_lost()
    write_all(core, batch)
    core.opened(2, [])
    assert frames(core.next_batch()) == ["fA", "fB"]


# -- the whole core against its invariants ----------------------------------


IDS = (1, 2, 3, 4)


class Record:
    """What the machine knows of one waiter."""

    def __init__(
        self, waiter: Waiter, entry: Entry | None, deadline: float, immediate: str
    ) -> None:
        self.waiter = waiter
        self.entry = entry  # the entry its outcome describes, if any
        self.deadline = deadline
        self.immediate = immediate  # why it was resolved at once, or ""


class GateWaiter:
    """Turns an on_open request's outcome into an event, as the actor's _GateWaiter does."""

    def __init__(self, events: list[tuple[int, BaseException | None]], generation: int) -> None:
        self.events = events
        self.generation = generation

    def set_now(self, value: Any) -> None:
        self.events.append((self.generation, None))

    def set_exception_now(self, exc_info: Any) -> None:
        self.events.append((self.generation, exc_info[1]))


class CoreMachine(RuleBasedStateMachine):
    """Random events against the section-6 invariants.

    Events: requests (some joining an id in flight, some late, some with
    ``retry``), sends, writes, replies, cancels, deadlines, disconnects,
    reconnects (some gated by an on_open request), give_up, and stop (in
    `teardown`, wherever the run left the core). The simulated writer
    advances one claim at a time (start, finish), so every other event
    lands at every point of a write. Checked throughout: each waiter gets
    at most one outcome, and it is true of its frame ("confirmed"/"sent"
    only if the write started, ``Unconfirmed(written=True)`` only if it
    completed, `NotDelivered` only if it never started or was cut); no
    frame is handed out for an ended request, nor twice (unless cut and
    retried); no frame starts on a dead connection; a waiter is told by
    its deadline; the queue's count is exact. At the end: every waiter
    told once, the table and queue empty. (``idempotent`` is left to the
    unit tests above.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.core = Core(
            max_pending=3,
            capacity=6,
            max_batch=3,
            default_timeout=2.0,
            recent_ids=8,
            recent_ids_age=5.0,
            clock=self.clock,
        )
        self.generation = 0
        self.records: list[Record] = []
        self.batch: Batch | None = None
        # Sets of the objects themselves (identity-hashed), which keeps them
        # alive: a set of id()s could mistake a new object for a dead one.
        self.started_entries: set[Entry] = set()  # the writer started their frame
        self.done_entries: set[Entry] = set()  # the kernel took their frame
        self.failed_entries: set[Entry] = set()  # their write raised
        self.started_sends: set[SendItem] = set()
        # Outcomes of on_open requests, as the actor's GateDone messages:
        # (generation, error or None), handled later by `gate_done`.
        self.gate_events: list[tuple[int, BaseException | None]] = []

    # -- helpers

    def check_outcome(self, record: Record) -> None:
        """What a waiter was told must be true of the frame it describes."""
        outcome = record.waiter.outcome
        entry = record.entry
        if record.immediate in {"refused", "closed"}:
            # Its own frame was never queued.
            assert isinstance(outcome, (NotDelivered, PayloadMismatch, TooManyPending))
            return
        assert entry is not None
        key = entry
        if isinstance(outcome, WsDelegatedOk):
            # "Confirmed" and "sent" only for frames whose write had started.
            assert key in self.started_entries
            assert outcome.confirmed is (entry.confirm_mode is C)
            if record.immediate == "late" and not outcome.confirmed:
                assert key in self.done_entries
        elif isinstance(outcome, EndpointRejected):
            assert key in self.started_entries
            assert entry.confirm_mode is C
        elif isinstance(outcome, Unconfirmed):
            assert key in self.started_entries
            if outcome.written:
                assert key in self.done_entries
        else:
            assert isinstance(outcome, NotDelivered), outcome
            if record.immediate == "late":
                return  # checked when it was told: the frame had not started then
            # Never started, or its write raised before completing.
            assert key not in self.started_entries or key in self.failed_entries
            assert key not in self.done_entries

    def may_hand_out(self, entry: Entry) -> bool:
        """Never started, or cut before its last byte and retried (never written)."""
        if entry not in self.started_entries:
            return True
        return (
            entry.resend != NO_RESEND
            and entry in self.failed_entries
            and (entry not in self.done_entries)
        )

    def resolved(self, record: Record) -> bool:
        if record.waiter.done:
            self.check_outcome(record)
            return True
        return False

    # -- events

    @initialize(preamble=st.sampled_from([0, 0, 1]), gate=st.booleans())
    def open_first(self, preamble: int, gate: bool) -> None:
        self.opened(preamble, gate)

    @rule(
        request_id=st.sampled_from(IDS),
        variant=st.sampled_from([0, 0, 1]),
        mode=st.sampled_from([C, C, S]),
        timeout=st.sampled_from([None, 0.5, 3.0, 10.0]),
        age=st.sampled_from([0.0, 0.0, 0.0, 0.6, 4.0]),
        send=st.sampled_from([False, False, False, True]),
        retry=st.sampled_from([False, False, True]),
    )
    def request(
        self,
        request_id: int,
        variant: int,
        mode: WsConfirmMode,
        timeout: float | None,
        age: float,
        send: bool,
        retry: bool,
    ) -> None:
        """A request (or, one time in four, a `WsSend`); some retry a cut frame."""
        if send:
            self.send(f"s{variant}")
        else:
            self.submit(request_id, f"{request_id}/{variant}", mode, timeout, age, retry=retry)

    @precondition(lambda self: len(self.core.table) > 0)
    @rule(
        data=st.data(),
        timeout=st.sampled_from([None, 0.5, 3.0]),
        age=st.sampled_from([0.0, 0.6, 4.0]),
    )
    def join(self, data: st.DataObject, timeout: float | None, age: float) -> None:
        """Another request for an id in flight, same payload: it joins (or is late)."""
        entry = data.draw(st.sampled_from(list(self.core.table)))
        self.submit(entry.request_id, entry.frame, entry.confirm_mode, timeout, age)

    def submit(
        self,
        request_id: int | str,
        frame: str | bytes,
        mode: WsConfirmMode,
        timeout: float | None,
        age: float,
        *,
        retry: bool = False,
    ) -> None:
        core = self.core
        request = make_request(
            self.clock, request_id, frame, mode=mode, timeout=timeout, age=age, retry=retry
        )
        deadline = request.created_at + (timeout if timeout is not None else 2.0)
        prior = core.table.get(request_id)
        full = len(core.table) >= core.table.limit and prior is None
        room = core.queued < core.capacity
        # Once it will not reconnect, only an id in flight is still taken
        # (it joins or mismatches: the outcome describes that id's frame).
        closed = (core.closed is not None or core.stopped) and prior is None
        matches = prior is not None and (prior.fingerprint, prior.confirm_mode) == (
            request.join_key,
            mode,
        )
        late = matches and deadline <= self.clock()
        if late:
            assert prior is not None
            claim = prior.claim
            prior_state = claim.state if claim is not None else None
        deferred = core.request(request)
        waiter = watch(deferred)
        entry = deferred if isinstance(deferred, Entry) else prior
        immediate = ""
        if closed:
            immediate = "closed"
        elif late:
            immediate = "late"
            # Resolved at once, as the shared entry would be at a deadline now.
            assert prior is not None
            outcome = waiter.outcome
            if prior.written or prior_state == DONE:
                if mode is S:
                    assert outcome == ok(request_id)
                else:
                    assert isinstance(outcome, Unconfirmed)
                    assert outcome.written
            elif prior_state == STARTED:
                assert isinstance(outcome, Unconfirmed)
                assert not outcome.written
            else:
                assert isinstance(outcome, NotDelivered)
            assert core.table.get(request_id) is prior  # the entry is unharmed
        elif not isinstance(deferred, Entry) or (not room and prior is None):
            immediate = "refused"
        self.records.append(Record(waiter, entry, deadline, immediate))
        if closed or (prior is None and deadline <= self.clock()):
            assert isinstance(waiter.outcome, NotDelivered)
            assert core.table.get(request_id) is None
        elif prior is not None and not matches:
            assert isinstance(waiter.outcome, PayloadMismatch)
            assert core.table.get(request_id) is prior
        elif prior is not None:
            assert (deferred is prior) is not late
        elif full:
            assert isinstance(waiter.outcome, TooManyPending)
        elif not room:
            assert isinstance(waiter.outcome, NotDelivered)
        else:
            assert deferred is core.table.get(request_id)
            assert not waiter.done
        self.flush()

    def send(self, frame: str) -> None:
        core = self.core
        closed = core.closed is not None or core.stopped
        room = core.queued < core.capacity
        result = core.send(frame)
        if closed or not room:
            assert isinstance(watch(result).outcome, WsSendRefused)
        else:
            assert result is None
        self.flush()

    def flush(self) -> None:
        """Take the next batch if none is in flight, as the actor does after each event."""
        core = self.core
        if self.batch is not None:
            assert core.next_batch() is None  # one batch at a time
            return
        gated = set(core.gates)
        batch = core.next_batch()
        if batch is None:
            return
        assert core.open
        if gated:
            # Until every on_open request is confirmed, only on_open parts go.
            for item in batch.items:
                if isinstance(item, SendItem):
                    assert item.preamble
                else:
                    assert item.request_id in gated
        assert not core.stopped
        assert batch.generation == self.generation
        assert 1 <= len(batch.items) <= core.max_batch
        for item, claim in zip(batch.items, batch.claims, strict=True):
            assert item.claim is claim
            assert claim.state == PENDING
            if isinstance(item, Entry):
                # No frame is handed out for an attempt that ended, or twice
                # (but again if it was cut before its last byte, with retry).
                assert core.table.get(item.request_id) is item
                assert self.may_hand_out(item)
            else:
                assert item not in self.started_sends
        self.batch = batch

    @precondition(lambda self: self.batch is not None)
    @rule(how=st.sampled_from(["step", "step", "taken", "complete", "complete", "raise"]))
    def write(self, how: str) -> None:
        """The writer moves on: one claim, all of them (unreported), or its write ends.

        ``taken``: the kernel took every frame it may write, but the write's
        completion is not reported yet (it is "still in the inbox").
        """
        if how == "step":
            self.write_one_step()
        elif how == "taken":
            while self.write_one_step():
                pass
        else:
            self.write_ends(fail=how == "raise")

    def write_one_step(self) -> bool:
        """The writer starts the next claim, or finishes the one it started.

        Returns False once there is nothing left to do.
        """
        batch = self.batch
        assert batch is not None
        for item, claim in zip(batch.items, batch.claims, strict=True):
            if claim.state == STARTED:
                claim.finish()
                if isinstance(item, Entry):
                    self.done_entries.add(item)
                return True
            if claim.state == PENDING:
                self.start_claim(batch, item, claim)
                return True
        return False

    def start_claim(self, batch: Batch, item: Entry | SendItem, claim: Claim) -> bool:
        if not start(self.core, claim):
            return False
        core = self.core
        # Only the live connection's frames start: a disconnect or stop
        # cancels every claim not yet started.
        assert core.open
        assert batch.generation == core.generation
        if isinstance(item, Entry):
            assert core.table.get(item.request_id) is item, "an ended request was written"
            self.started_entries.add(item)
        else:
            self.started_sends.add(item)
        return True

    def write_ends(self, fail: bool) -> None:
        """The write completes (every claim it may), or raises at the next frame."""
        batch = self.batch
        assert batch is not None
        self.batch = None
        core = self.core
        error: BaseException | None = None
        count = nbytes = 0
        for item, claim in zip(batch.items, batch.claims, strict=True):
            if claim.state == DONE:
                count += 1
                continue
            if claim.state == CANCELLED:
                continue
            if fail:
                if claim.state == PENDING and not self.start_claim(batch, item, claim):
                    continue
                if isinstance(item, Entry):
                    self.failed_entries.add(item)
                error = OSError("reset")
                break
            if claim.state == PENDING and not self.start_claim(batch, item, claim):
                continue
            claim.finish()
            count += 1
            nbytes += size(claim.frame)
            if isinstance(item, Entry):
                self.done_entries.add(item)
        if fail and error is None:
            error = OSError("reset")  # raised after the last frame was taken
        live = core.open and batch.generation == core.generation
        failed = core.batch_written(batch, count, nbytes, error)
        assert failed == (error is not None and live)
        if failed:
            self.lose()
        self.flush()

    def some_id(self, data: st.DataObject) -> int | str:
        """Mostly an id in flight; else one that ended or was never used."""
        in_flight = sorted((e.request_id for e in self.core.table), key=str)
        if in_flight and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(in_flight))
        return data.draw(st.sampled_from((*IDS, "g", 99)))

    @rule(data=st.data(), what=st.sampled_from(["ok", "ok", "rejected", "cancel"]))
    def reply_or_cancel(self, data: st.DataObject, what: str) -> None:
        """A matched reply (success or failure) for some id, or a cancel of it."""
        request_id = self.some_id(data)
        if what == "cancel":
            self.cancel(request_id)
        else:
            self.reply(request_id, ok_=what == "ok")

    def reply(self, request_id: int | str, *, ok_: bool) -> None:
        core = self.core
        entry = core.table.get(request_id)
        recent = request_id in core.recent
        strays = core.stray_replies
        answer = core.reply(request_id, f"reply to {request_id}", ok=ok_)
        if entry is None:
            assert answer == (
                WsLateResponse(request_id, f"reply to {request_id}") if recent else NOT_A_REPLY
            )
            return
        claim = entry.claim
        if entry.written or (claim is not None and claim.started):
            assert core.table.get(request_id) is None
            assert entry.done
            assert (answer is None) == (entry.confirm_mode is C)
            assert core.stray_replies == strays
        else:
            # Its frame has not started: the reply confirms nothing.
            assert isinstance(answer, WsLateResponse)
            assert core.table.get(request_id) is entry
            assert core.stray_replies == strays + 1

    @rule(
        step=st.sampled_from([0.1, 0.5, 1.0, 3.0]),
        limit=st.sampled_from([None, 1]),
        budget=st.sampled_from([None, 1, 2]),
    )
    def advance_and_expire(self, step: float, limit: int | None, budget: int | None) -> None:
        core = self.core
        now = self.clock.advance(step)
        while core.expire(now, limit):
            pass
        while core.deliver(budget):
            pass
        for record in self.records:
            if record.deadline <= now:
                # Every waiter is told no later than its own deadline.
                assert self.resolved(record), "a waiter outlived its deadline"
        next_deadline = core.next_deadline()
        assert next_deadline is None or next_deadline > now

    @precondition(lambda self: self.core.open)
    @rule()
    def connection_lost(self) -> None:
        self.lose()

    def lose(self) -> None:
        core = self.core
        generation = core.generation
        core.connection_lost()
        assert not core.open
        # No reply can come on a connection that is gone.
        assert not [e for e in core.table if e.written and e.generation == generation]
        assert not any(isinstance(i, SendItem) and i.preamble for i in core.queue)
        # A frame the kernel took ends its request at once (or had already).
        assert not [e for e in core.table if e.claim is not None and e.claim.state == DONE]
        assert not core.gates

    @precondition(
        lambda self: not self.core.open and not self.core.stopped and not self.core.closed
    )
    @rule(preamble=st.sampled_from([0, 0, 1]), gate=st.booleans())
    def opened(self, preamble: int, gate: bool) -> None:
        """A connection opens: plain on_open frames, and maybe an on_open request."""
        core = self.core
        self.generation += 1
        generation = self.generation
        parts: list[str | bytes | WsDelegatedRequest] = [
            f"p{generation}.{i}" for i in range(preamble)
        ]
        # Only when "g" is not in flight any more (a frame of an earlier
        # connection's "g" still being written would be joined instead; see
        # test_an_on_open_request_joining_an_old_attempt_still_gates_the_connection).
        if gate and core.table.get("g") is None:
            parts.insert(0, make_request(self.clock, "g", "login", timeout=3.0))
        room = core.queued < core.capacity
        gates = core.opened(generation, parts)
        for request, deferred in gates:
            waiter = watch(deferred)
            inserted = isinstance(deferred, Entry) and not deferred.done and room
            entry = deferred if isinstance(deferred, Entry) else None
            deadline = request.created_at + 3.0
            self.records.append(Record(waiter, entry, deadline, "" if inserted else "refused"))
            assert ("g" in core.gates) is inserted
            deferred.add_waiter(GateWaiter(self.gate_events, generation))
        self.flush()

    @precondition(lambda self: self.gate_events)
    @rule()
    def gate_done(self) -> None:
        """The actor learns an on_open request's outcome: open the gate, or drop the connection."""
        core = self.core
        generation, error = self.gate_events.pop(0)
        if generation != core.generation or not core.open:
            return  # a stale event
        if error is None:
            if core.ungate("g"):
                assert not core.gates
                self.flush()
        else:
            self.lose()

    @precondition(lambda self: not self.core.open and not self.core.closed and self.generation >= 3)
    @rule()
    def give_up(self) -> None:
        """Rare (after a few connections): nothing is queued after it."""
        core = self.core
        core.give_up("gone")
        assert len(core.queue) == 0
        assert core.queued == 0

    def cancel(self, request_id: int | str) -> None:
        core = self.core
        entry = core.table.get(request_id)
        claim = entry.claim if entry is not None else None
        expected = (
            entry is not None
            and not entry.written
            and (claim is None or claim.state in {PENDING, CANCELLED})
        )
        assert core.cancel(request_id) is expected
        if expected:
            assert entry is not None
            assert entry.done
            assert core.table.get(request_id) is None

    def check_all_resolved(self) -> None:
        core = self.core
        assert len(core.table) == 0
        assert len(core.queue) == 0
        assert core.queued == 0
        assert not core.pending_deliveries
        assert core.next_batch() is None
        for record in self.records:
            assert self.resolved(record), "a waiter was left hanging"

    # -- invariants

    @invariant()
    def every_waiter_has_at_most_one_outcome_and_each_is_honest(self) -> None:
        for record in self.records:
            self.resolved(record)  # asserts at most one, and checks it

    @invariant()
    def the_queue_counts_are_consistent(self) -> None:
        core = self.core
        live = [
            item
            for item in core.queue
            if isinstance(item, SendItem) or core.table.get(item.request_id) is item
        ]
        assert core.queued == len(live)
        assert len(core.table) <= core.table.limit
        for item in live:
            assert item.claim is None
            if isinstance(item, Entry):
                assert not item.written
                assert self.may_hand_out(item)
        for entry in core.table:
            if entry.written:
                # Only a CONFIRMED request written on the open connection
                # still waits: a reply can come for no other.
                assert entry.confirm_mode is C
                assert core.open
                assert entry.generation == core.generation

    def teardown(self) -> None:
        """Stop, wherever the run left the core: mid-write, disconnected, closed."""
        core = self.core
        batch = self.batch
        stuck = core.stop()
        assert stuck == (batch is not None and any(c.state == STARTED for c in batch.claims))
        core.deliver()
        self.check_all_resolved()
        # Nothing after stop changes an outcome or writes a frame.
        outcomes = dict(core.outcomes)
        if batch is not None:
            for claim in batch.claims:
                assert claim.state != PENDING
                if claim.state == STARTED:
                    claim.finish()
            assert core.batch_written(batch, 0, 0, None) is False
        assert core.outcomes == outcomes
        assert isinstance(watch(core.request(make_request(self.clock, 1))).outcome, NotDelivered)
        assert isinstance(watch(core.send("late")).outcome, WsSendRefused)
        self.check_all_resolved()


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


def test_replayed_subscriptions_wait_behind_the_gate_and_go_right_after_it() -> None:
    core, clock = make_core()
    login = make_request(clock, "auth", '{"id":"auth"}')
    queued = ask(core, clock, 9)  # queued traffic, from before the connection
    [(_, gate)] = core.opened(1, [login], ['{"sub":"private"}'])
    first = take(core)
    assert frames(first) == ['{"id":"auth"}']  # the subscription waits for the login
    write_all(core, first)
    assert core.next_batch() is None  # the gate is closed
    assert core.reply("auth", '{"id":"auth","result":true}') is None
    assert watch(gate).outcome == ok("auth", '{"id":"auth","result":true}')
    assert core.ungate("auth") is True
    assert frames(take(core)) == ['{"sub":"private"}', '{"id":9}']
    assert not queued.done


def test_a_reply_read_on_another_connection_confirms_nothing() -> None:
    core, clock = make_core()
    core.opened(1, [])
    waiter = ask(core, clock, 5)
    write_all(core, take(core))  # written on connection 1
    late = core.reply(5, '{"id":5}', generation=2)  # read on connection 2
    assert isinstance(late, WsLateResponse)
    assert not waiter.done
    assert core.stray_replies == 1
    assert core.reply(5, '{"id":5}', generation=1) is None
    assert waiter.outcome == ok(5, '{"id":5}')


def test_a_resend_cut_after_the_deadline_of_a_written_idempotent_request_is_unconfirmed() -> None:
    core, clock = make_core()
    core.opened(1, [])
    _, waiter = ask_retry(core, clock, 1, idempotent=True, timeout=2.0)
    write_all(core, take(core))  # the first attempt was written
    core.connection_lost()
    core.opened(2, [])
    batch = take(core)  # the re-send
    clock.advance(3.0)  # its deadline passes while it is being written
    write_failing(core, batch, 0)
    core.deliver()
    assert isinstance(waiter.outcome, Unconfirmed)
    assert waiter.outcome.written is True
