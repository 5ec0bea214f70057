"""Delegated requests end to end, against real WebSocket servers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from functools import partial
from typing import Any

import pykka
import pytest
from pytest_mock import MockerFixture

from pykka_ws import (
    EndpointRejected,
    NotDelivered,
    PayloadMismatch,
    TooManyPending,
    Unconfirmed,
    WebSocketActor,
    WsConfirmMode,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsRequestMatch,
    WsSend,
    WsSendRefused,
    _actor,
    _writer,
)
from pykka_ws._claims import DONE
from pykka_ws.testing import FaultProxy, WsTestServer

from .support import (
    JsonEndpoint,
    inspectable,
    json_reply,
    req_frame,
    stats,
    wait_no_library_threads,
    wait_until,
)
from .support import start as start_actor

pytestmark = pytest.mark.timeout(30)

SENT = WsConfirmMode.SENT

# start() returns once the connection is open, within 5 s.
start = partial(start_actor, open_within=5.0)


# -- the outcomes -----------------------------------------------------------


def test_confirmed_request_returns_the_reply(server: WsTestServer) -> None:
    ref = start(server.url)
    ok = ref.ask(WsDelegatedRequest(7, req_frame(7)), timeout=10)
    assert ok == WsDelegatedOk(7, confirmed=True, response='{"id": 7, "result": "ok"}')
    assert server.received == [req_frame(7)]
    assert stats(ref).outcomes["confirmed"] == 1


def test_sent_request_returns_once_written(server: WsTestServer) -> None:
    server.set_silent(True)
    ref = start(server.url)
    ok = ref.ask(WsDelegatedRequest(1, req_frame(1), confirm_mode=SENT), timeout=10)
    assert ok == WsDelegatedOk(1, confirmed=False, response=None)
    assert server.wait_for_received(1) == [req_frame(1)]
    assert stats(ref).outcomes["sent"] == 1


def test_rejected_request_raises_endpoint_rejected_with_the_reply(server: WsTestServer) -> None:
    ref = start(server.url)
    with pytest.raises(EndpointRejected) as info:
        ref.ask(WsDelegatedRequest(3, req_frame(3, "reject")), timeout=10)
    assert info.value.request_id == 3
    assert info.value.message == "insufficient funds"
    assert json.loads(info.value.response) == {"id": 3, "error": "insufficient funds"}
    assert stats(ref).outcomes["rejected"] == 1


def test_silence_until_the_deadline_is_unconfirmed_and_leaves_nothing_pending(
    server: WsTestServer,
) -> None:
    ref = start(server.url)
    with pytest.raises(Unconfirmed) as info:
        ref.ask(WsDelegatedRequest(4, req_frame(4, "silent"), timeout=0.2), timeout=10)
    assert info.value.written is True
    assert info.value.request_id == 4
    after = stats(ref)
    assert after.pending == 0
    assert after.queued == 0
    assert after.outcomes["unconfirmed"] == 1


def test_request_to_a_server_that_is_gone_is_not_delivered(server: WsTestServer) -> None:
    ref = start(server.url)
    server.stop()
    wait_until(lambda: stats(ref).state != "open", 5.0, "the actor to see the close")
    with pytest.raises(NotDelivered) as info:
        ref.ask(WsDelegatedRequest(5, req_frame(5), timeout=0.3), timeout=10)
    assert info.value.request_id == 5
    assert stats(ref).pending == 0


def test_write_that_raises_is_not_delivered_at_once(
    server: WsTestServer, mocker: MockerFixture
) -> None:
    # A mock is the only way to make the socket's send() fail on a healthy
    # connection. Only the client writes with socket.send(); websockets'
    # server writes with sendall().
    ref = start(server.url)
    error = BrokenPipeError(32, "Broken pipe")
    send = mocker.patch.object(socket.socket, "send", side_effect=error)
    with pytest.raises(NotDelivered) as info:
        ref.ask(WsDelegatedRequest(6, req_frame(6), timeout=5.0), timeout=2.0)
    assert info.value.__cause__ is error
    assert send.call_count >= 1  # the owner's or the writer's write went through the mock
    assert server.received == []
    mocker.stopall()
    wait_until(lambda: stats(ref).reconnects == 1, 5.0, "the failed connection's replacement")
    assert ref.ask(WsDelegatedRequest(7, req_frame(7)), timeout=10).confirmed


def test_expired_request_is_not_delivered_before_reaching_the_actor(server: WsTestServer) -> None:
    ref = start(server.url)
    request = WsDelegatedRequest(8, req_frame(8), timeout=0.001)
    wait_until(lambda: WsDelegatedRequest(0, "x").created_at > request.created_at + 0.002)
    with pytest.raises(NotDelivered, match="deadline passed before"):
        ref.ask(request, timeout=10)
    assert server.received == []


def test_ask_without_blocking_gives_a_future_that_raises_the_outcome(
    server: WsTestServer,
) -> None:
    ref = start(server.url)
    ok_future = ref.ask(WsDelegatedRequest(1, req_frame(1)), block=False)
    rejected_future = ref.ask(WsDelegatedRequest(2, req_frame(2, "reject")), block=False)
    assert ok_future.get(timeout=10).confirmed is True
    with pytest.raises(EndpointRejected):
        rejected_future.get(timeout=10)
    assert pykka.get_all([ok_future], timeout=10)[0].request_id == 1


# -- joining, mismatch, cap -------------------------------------------------


def test_25_concurrent_asks_with_one_id_send_one_frame_and_share_one_outcome(
    server: WsTestServer,
) -> None:
    gate = threading.Event()

    def gated_reply(frame: str | bytes) -> str | None:
        gate.wait(10)
        return json_reply(frame)

    server.set_reply(gated_reply)
    ref = start(server.url)
    submitted = threading.Semaphore(0)
    outcomes: list[object] = []
    lock = threading.Lock()

    def caller() -> None:
        future = ref.ask(WsDelegatedRequest("order-1", req_frame("order-1")), block=False)
        submitted.release()
        result = future.get(timeout=10)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=caller) for _ in range(25)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert submitted.acquire(timeout=10)
    stats(ref)  # the inbox is FIFO: all 25 asks are handled before this answer
    gate.set()
    for thread in threads:
        thread.join(10)
    assert len(outcomes) == 25
    assert all(o == outcomes[0] for o in outcomes)
    assert outcomes[0] == WsDelegatedOk(
        "order-1", confirmed=True, response=json_reply(req_frame("order-1"))
    )
    assert server.received == [req_frame("order-1")]
    assert stats(ref).outcomes["confirmed"] == 1


def test_joiners_that_time_out_together_each_get_their_own_unconfirmed(
    server: WsTestServer,
) -> None:
    ref = start(server.url)
    futures = [
        ref.ask(WsDelegatedRequest(9, req_frame(9, "silent"), timeout=0.2), block=False)
        for _ in range(3)
    ]
    errors = []
    for future in futures:
        with pytest.raises(Unconfirmed) as info:
            future.get(timeout=10)
        errors.append(info.value)
    assert len({id(e) for e in errors}) == 3  # no shared traceback across threads
    assert {(e.request_id, e.written) for e in errors} == {(9, True)}
    assert server.received == [req_frame(9, "silent")]


def test_payload_mismatch_leaves_the_first_request_unharmed(server: WsTestServer) -> None:
    gate = threading.Event()
    server.set_reply(lambda frame: json_reply(frame) if gate.wait(10) else None)
    ref = start(server.url)
    first = ref.ask(WsDelegatedRequest(1, req_frame(1, qty=5)), block=False)
    with pytest.raises(PayloadMismatch) as info:
        ref.ask(WsDelegatedRequest(1, req_frame(1, qty=6)), timeout=10)
    assert info.value.request_id == 1
    with pytest.raises(PayloadMismatch):
        ref.ask(WsDelegatedRequest(1, req_frame(1, qty=5), confirm_mode=SENT), timeout=10)
    gate.set()
    assert first.get(timeout=10).confirmed is True
    assert server.received == [req_frame(1, qty=5)]
    assert stats(ref).outcomes["payload_mismatch"] == 2


def test_too_many_pending_then_recovers_after_expiry(server: WsTestServer) -> None:
    ref = start(server.url, max_pending_requests=2)
    held = [
        ref.ask(WsDelegatedRequest(i, req_frame(i, "silent"), timeout=0.3), block=False)
        for i in (1, 2)
    ]
    with pytest.raises(TooManyPending) as info:
        ref.ask(WsDelegatedRequest(3, req_frame(3)), timeout=10)
    assert info.value.limit == 2
    assert info.value.request_id is None
    for future in held:
        with pytest.raises(Unconfirmed):
            future.get(timeout=10)
    assert ref.ask(WsDelegatedRequest(3, req_frame(3)), timeout=10).confirmed is True
    assert stats(ref).outcomes["too_many_pending"] == 1


def test_ten_thousand_expired_requests_leave_table_heap_and_queue_empty(
    server: WsTestServer,
) -> None:
    actor_class, instances = inspectable()

    ref = actor_class.start(
        server.url, endpoint=JsonEndpoint(), max_pending_requests=20_000, outbound_capacity=20_000
    )
    for i in range(10_000):
        ref.tell(WsDelegatedRequest(i, req_frame(i, "silent"), timeout=0.2))
    wait_until(
        lambda: stats(ref).outcomes["unconfirmed"] + stats(ref).outcomes["not_delivered"] == 10_000,
        20.0,
        "every request to expire",
    )
    after = stats(ref)
    assert after.pending == 0
    assert after.queued == 0
    assert instances[0]._core.table.heap_size == 0


def test_told_request_is_deduplicated_and_counted(server: WsTestServer) -> None:
    gate = threading.Event()
    server.set_reply(lambda frame: json_reply(frame) if gate.wait(10) else None)
    ref = start(server.url)
    ref.tell(WsDelegatedRequest(1, req_frame(1)))
    joined = ref.ask(WsDelegatedRequest(1, req_frame(1)), block=False)
    stats(ref)
    gate.set()
    assert joined.get(timeout=10).confirmed is True
    assert server.received == [req_frame(1)]
    assert stats(ref).outcomes["confirmed"] == 1


# -- ordering and the writer ------------------------------------------------


def test_sends_and_requests_reach_the_server_in_the_order_given(server: WsTestServer) -> None:
    server.set_silent(True)
    ref = start(server.url, max_batch=3)
    expected = []
    for i in range(30):
        if i % 3 == 0:
            frame = f"send-{i}"
            ref.tell(WsSend(frame))
        else:
            frame = req_frame(i)
            ref.tell(WsDelegatedRequest(i, frame, confirm_mode=SENT))
        expected.append(frame)
    assert server.wait_for_received(30) == expected


def test_send_beyond_outbound_capacity_is_refused_and_request_not_delivered(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = FaultProxy("127.0.0.1", server.port).start()
    try:
        ref = start(
            proxy.url, outbound_capacity=2, max_batch=1, write_timeout=30.0, compression=None
        )
        proxy.blackhole()
        big = "x" * (16 * 2**20)  # far more than the socket buffers hold: the write sticks
        ref.tell(WsSend(big))
        wait_until(lambda: stats(ref).queued == 0, 5.0, "the big frame to reach the writer")
        ref.tell(WsSend("a"))
        ref.tell(WsSend("b"))
        with pytest.raises(WsSendRefused) as info:
            ref.ask(WsSend("c"), timeout=10)
        assert info.value.capacity == 2
        ref.tell(WsSend("d"))  # refused too, silently for a tell: logged once, counted
        assert stats(ref).sends_refused == 2
        assert caplog.text.count("outbound queue full") == 1
        with pytest.raises(NotDelivered, match="outbound queue is full"):
            ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10)
    finally:
        pykka.ActorRegistry.stop_all()
        proxy.stop()


def test_stuck_write_at_its_deadline_is_unconfirmed_unwritten_and_the_rest_not_delivered(
    server: WsTestServer,
) -> None:
    proxy = FaultProxy("127.0.0.1", server.port).start()
    try:
        ref = start(proxy.url, write_timeout=30.0, compression=None)
        proxy.blackhole()
        big = req_frame(1, pad="x" * (16 * 2**20))
        # Its write starts as soon as the owner sees it and never ends; the
        # deadline leaves the owner ample time to get there on a busy machine.
        stuck = ref.ask(WsDelegatedRequest(1, big, timeout=2.0), block=False)
        behind = [
            ref.ask(WsDelegatedRequest(i, req_frame(i), timeout=0.5), block=False) for i in (2, 3)
        ]
        with pytest.raises(Unconfirmed) as info:
            stuck.get(timeout=10)
        assert info.value.written is False
        for future in behind:
            with pytest.raises(NotDelivered):
                future.get(timeout=10)
        # The owner kept answering while the writer was stuck.
        assert stats(ref).pending == 0
    finally:
        pykka.ActorRegistry.stop_all()
        proxy.stop()


def test_reply_processed_before_its_write_completion_still_confirms(
    server: WsTestServer, mocker: MockerFixture
) -> None:
    # Under pipelining the reply often reaches the owner before the writer's
    # completion (_WriteDone) does. To force that order, the owner's own
    # non-blocking write declines (as when websockets' lock is busy), so the
    # frame goes to the writer, and the writer holds its completion back
    # after send() returned: the claim is DONE, _WriteDone not yet told.
    # (A reply cannot be processed while the claim is STARTED on a real
    # connection: websockets' receiving thread waits for the lock the
    # writer holds inside send().)
    declined = mocker.patch.object(_actor, "try_write_now", return_value=None)
    written = threading.Event()
    release = threading.Event()
    batches: list[Any] = []
    original = _writer.write_batch

    def held_completion(batch: Any, claims: Any) -> Any:
        result = original(batch, claims)
        batches.append(batch)
        written.set()
        release.wait(10)
        return result

    mocker.patch.object(_writer, "write_batch", held_completion)
    ref = start(server.url)
    try:
        ok = ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10)
        assert ok == WsDelegatedOk(1, confirmed=True, response=json_reply(req_frame(1)))
        # The path under test was taken: the owner's own write declined, the
        # writer wrote the frame, and the reply was processed before the
        # write completion (frames_out is counted when _WriteDone is).
        assert declined.call_count == 1
        assert written.is_set()
        [batch] = batches
        assert [claim.state for claim in batch.claims] == [DONE]
        held = stats(ref)
        assert held.frames_out == 0
        assert held.outcomes["confirmed"] == 1
        assert held.pending == 0
    finally:
        release.set()
    # The late _WriteDone is ignored: no second outcome, the frame counted once.
    wait_until(lambda: stats(ref).frames_out == 1, 5.0, "the write completion")
    ok2 = ref.ask(WsDelegatedRequest(2, req_frame(2)), timeout=10)
    assert ok2.confirmed is True
    assert len(batches) == 2
    after = stats(ref)
    assert after.outcomes["confirmed"] == 2
    assert sum(after.outcomes.values()) == 2
    assert after.frames_out == 2
    assert server.received == [req_frame(1), req_frame(2)]


# -- hooks ------------------------------------------------------------------


class RaisingMatcher(JsonEndpoint):
    def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
        if "boom" in str(frame):
            msg = "matcher bug"
            raise RuntimeError(msg)
        return super().match_response(frame)


def test_matcher_that_raises_is_counted_and_the_actor_lives_on(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.set_reply(lambda frame: "boom" if "boom" in str(frame) else json_reply(frame))
    ref = start(server.url, endpoint=RaisingMatcher())
    ref.tell(WsSend("boom"))
    wait_until(lambda: stats(ref).hook_errors == 1, 5.0, "the hook error to be counted")
    assert ref.is_alive()
    assert "matcher bug" in caplog.text
    assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed is True


class GarbageMatcher(JsonEndpoint):
    def match_response(self, frame: str | bytes) -> Any:
        return {"id": 1}


def test_matcher_returning_garbage_is_counted_and_ignored(server: WsTestServer) -> None:
    ref = start(server.url, endpoint=GarbageMatcher())
    with pytest.raises(Unconfirmed):
        ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=0.3), timeout=10)
    assert stats(ref).hook_errors == 1  # one reply, one garbage match
    assert ref.is_alive()


# -- stop -------------------------------------------------------------------


def test_stop_resolves_every_waiter_and_leaves_no_library_thread(
    server: WsTestServer, mocker: MockerFixture
) -> None:
    ref = start(server.url, default_timeout=30.0)
    written = ref.ask(WsDelegatedRequest(1, req_frame(1, "silent")), block=False)
    server.wait_for_received(1)
    # The next frame is handed to the writer, which is held before it starts
    # writing: at stop() its claim is still PENDING.
    declined = mocker.patch.object(_actor, "try_write_now", return_value=None)
    handed = threading.Event()
    go = threading.Event()
    original = _writer.write_batch

    def held_before_writing(batch: Any, claims: Any) -> Any:
        handed.set()
        go.wait(10)
        return original(batch, claims)

    mocker.patch.object(_writer, "write_batch", held_before_writing)
    unstarted = ref.ask(WsDelegatedRequest(2, req_frame(2), confirm_mode=SENT), block=False)
    assert handed.wait(10), "the frame never reached the writer"
    assert declined.call_count == 1
    stopping = ref.stop(block=False)
    try:
        # Ended by stop() before it stops the writer: not started, never sent.
        with pytest.raises(NotDelivered):
            unstarted.get(timeout=10)
    finally:
        go.set()
    stopping.get(timeout=10)
    with pytest.raises(Unconfirmed) as info:
        written.get(timeout=5)
    assert info.value.written is True
    wait_no_library_threads()
    assert server.received == [req_frame(1, "silent")]


def test_stop_while_disconnected_ends_queued_requests_not_delivered(
    server: WsTestServer,
) -> None:
    ref = start(server.url, default_timeout=30.0)
    server.stop()
    wait_until(lambda: stats(ref).state != "open", 5.0, "the actor to see the close")
    queued = [ref.ask(WsDelegatedRequest(i, req_frame(i)), block=False) for i in range(5)]
    stats(ref)
    ref.stop(timeout=10)
    for future in queued:
        with pytest.raises(NotDelivered):
            future.get(timeout=5)
    wait_no_library_threads()


def test_stop_twice_is_harmless(server: WsTestServer) -> None:
    ref = start(server.url)
    assert ref.stop(timeout=10) is True
    assert ref.stop(timeout=10) is False
    wait_no_library_threads()


def test_ask_after_stop_raises_actor_dead_error(server: WsTestServer) -> None:
    ref = start(server.url)
    ref.stop(timeout=10)
    with pytest.raises(pykka.ActorDeadError):
        ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10)


def test_stop_all_stops_the_owner_and_its_writer(server: WsTestServer) -> None:
    start(server.url)
    assert [r.actor_class for r in pykka.ActorRegistry.get_all()] == [WebSocketActor]
    pykka.ActorRegistry.stop_all(timeout=10)
    wait_no_library_threads()


# -- bad input at the boundary ----------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"url": 5}, TypeError),
        ({"url": "http://127.0.0.1:1"}, ValueError),
        ({"url": "not a url"}, ValueError),
        ({"endpoint": object()}, TypeError),
        ({"inbound": object()}, TypeError),
        ({"max_pending_requests": 0}, ValueError),
        ({"max_pending_requests": 1.5}, TypeError),
        ({"default_timeout": 0}, ValueError),
        ({"default_timeout": "5"}, TypeError),
        ({"outbound_capacity": -1}, ValueError),
        ({"max_batch": 0}, ValueError),
        ({"backoff": 1.0}, TypeError),
        ({"write_timeout": -1}, ValueError),
        ({"ping_interval": 0}, ValueError),
        ({"max_size": 0}, ValueError),
        ({"compression": "zstd"}, ValueError),
        ({"ssl": object()}, TypeError),
        ({"url": "wss://127.0.0.1:9", "ssl": False}, TypeError),
    ],
)
def test_bad_start_arguments_raise_in_the_caller_and_start_nothing(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    kwargs.setdefault("url", "ws://127.0.0.1:9")
    with pytest.raises(error):
        WebSocketActor.start(**kwargs)
    assert pykka.ActorRegistry.get_all() == []
    wait_no_library_threads()


def test_unknown_message_does_not_kill_the_actor(server: WsTestServer) -> None:
    ref = start(server.url)
    ref.tell("what is this")
    assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed is True


class FeedbackMatcher(JsonEndpoint):
    def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
        match = super().match_response(frame)
        return None if match is None else match._replace(rate_limit_feedback={"credits": 42})


def test_rate_limit_feedback_reaches_the_caller_on_success_and_refusal(
    server: WsTestServer,
) -> None:
    ref = start(server.url, endpoint=FeedbackMatcher())
    ok = ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10)
    assert ok.rate_limit_feedback == {"credits": 42}
    with pytest.raises(EndpointRejected) as info:
        ref.ask(WsDelegatedRequest(2, req_frame(2, "reject")), timeout=10)
    assert info.value.rate_limit_feedback == {"credits": 42}
