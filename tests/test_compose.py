"""Composing with pykka actors: outcomes as messages, cancel, reconnect, routes, subscriptions."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
from typing import Any

import pykka
import pytest
from pytest_mock import MockerFixture

from pykka_ws import (
    EndpointRejected,
    NotDelivered,
    PayloadMismatch,
    Unconfirmed,
    WebSocketActor,
    WsBackoff,
    WsCancel,
    WsConnected,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsDisconnected,
    WsGetStats,
    WsInbound,
    WsOutcome,
    WsReconnect,
    WsRoute,
    WsSubscribe,
    WsUnroute,
    WsUnsubscribe,
    _actor,
    _writer,
    ask,
    ask_async,
    request,
)
from pykka_ws.testing import WsTestServer

from .support import (
    FAST_BACKOFF_LOW_CAP,
    Collector,
    JsonEndpoint,
    json_reply,
    next_of,
    req_frame,
    start,
    stats,
    wait_state,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


# -- reply_to and WsOutcome ---------------------------------------------------


def test_reply_to_is_told_the_outcome_with_its_context_on_tell(server: WsTestServer) -> None:
    sink: queue.Queue[Any] = queue.Queue()
    desk = Collector.start(sink)
    ref = start(server.url)
    ref.tell(WsDelegatedRequest(1, req_frame(1), reply_to=desk, context={"order": "A"}))
    ref.tell(WsDelegatedRequest(2, req_frame(2, "reject"), reply_to=desk, context="B"))
    first = next_of(sink, WsOutcome)
    second = next_of(sink, WsOutcome)
    assert first.request_id == 1
    assert first.context == {"order": "A"}
    assert first.error is None
    assert first.result() == WsDelegatedOk(1, confirmed=True, response=json_reply(req_frame(1)))
    assert second.request_id == 2
    assert second.context == "B"
    assert second.ok is None
    assert isinstance(second.error, EndpointRejected)
    with pytest.raises(EndpointRejected):
        second.result()


def test_reply_to_with_ask_tells_the_actor_and_answers_the_caller(server: WsTestServer) -> None:
    sink: queue.Queue[Any] = queue.Queue()
    desk = Collector.start(sink)
    ref = start(server.url)
    ok = ref.ask(WsDelegatedRequest(3, req_frame(3), reply_to=desk), timeout=10)
    assert ok.confirmed is True
    assert next_of(sink, WsOutcome).ok == ok


def test_every_joined_reply_to_is_told_once_and_one_frame_is_sent() -> None:
    with WsTestServer(None) as silent:
        sink: queue.Queue[Any] = queue.Queue()
        desks = [Collector.start(sink) for _ in range(3)]
        ref = start(silent.url)
        for i, desk in enumerate(desks):
            ref.tell(WsDelegatedRequest(5, req_frame(5), timeout=0.5, reply_to=desk, context=i))
        outcomes = [next_of(sink, WsOutcome) for _ in desks]
        assert sorted(o.context for o in outcomes) == [0, 1, 2]
        assert all(isinstance(o.error, Unconfirmed) for o in outcomes)
        assert len({id(o.error) for o in outcomes}) == 3  # each its own copy
        assert len(silent.received) == 1
        with pytest.raises(queue.Empty):
            sink.get(timeout=0.2)  # nothing told twice (a bounded look)


def test_refused_requests_tell_reply_to_too(server: WsTestServer) -> None:
    sink: queue.Queue[Any] = queue.Queue()
    desk = Collector.start(sink)
    with WsTestServer(None) as silent:
        ref = start(silent.url)
        ref.tell(WsDelegatedRequest(6, req_frame(6), timeout=5.0))
        ref.tell(WsDelegatedRequest(6, req_frame(6, "other"), reply_to=desk))
        outcome = next_of(sink, WsOutcome)
        assert isinstance(outcome.error, PayloadMismatch)


def test_dead_reply_to_is_dropped_and_counted(server: WsTestServer) -> None:
    sink: queue.Queue[Any] = queue.Queue()
    desk = Collector.start(sink)
    desk.stop()
    ref = start(server.url)
    ok = ref.ask(WsDelegatedRequest(7, req_frame(7), reply_to=desk), timeout=10)
    assert ok.confirmed is True
    wait_until(lambda: stats(ref).reply_to_dropped == 1, 5, "the drop to be counted")
    assert stats(ref).state == "open"


def test_reply_to_must_be_an_actor_ref() -> None:
    with pytest.raises(TypeError, match="reply_to"):
        WsDelegatedRequest(1, "x", reply_to="desk")  # type: ignore[arg-type]


def test_outcome_needs_exactly_one_of_ok_and_error() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        WsOutcome(1, None, None)
    ok = WsDelegatedOk(1, confirmed=False)
    with pytest.raises(ValueError, match="exactly one"):
        WsOutcome(1, ok, NotDelivered("x", request_id=1))


class Placer(pykka.ThreadingActor):
    """An actor placing requests without blocking: outcomes come back as messages."""

    def __init__(self, ws: pykka.ActorRef[Any], done: threading.Event, count: int) -> None:
        super().__init__()
        self.ws = ws
        self.done = done
        self.count = count
        self.outcomes: dict[int, WsOutcome] = {}

    def on_receive(self, message: Any) -> Any:
        if message == "go":
            for i in range(self.count):
                self.ws.tell(WsDelegatedRequest(i, req_frame(i), reply_to=self.actor_ref))
            return None
        if message == "report":
            return dict(self.outcomes)
        if isinstance(message, WsOutcome):
            self.outcomes[message.request_id] = message
            if len(self.outcomes) == self.count:
                self.done.set()
        return None


def test_an_actor_places_many_requests_without_blocking_its_thread(server: WsTestServer) -> None:
    ref = start(server.url)
    done = threading.Event()
    placer = Placer.start(ref, done, 200)
    placer.tell("go")
    assert done.wait(20)
    outcomes = placer.ask("report", timeout=10)
    assert sorted(outcomes) == list(range(200))
    assert all(o.ok is not None and o.ok.confirmed for o in outcomes.values())


def test_reply_to_racing_stop_is_always_told(server: WsTestServer) -> None:
    for _ in range(10):
        sink: queue.Queue[Any] = queue.Queue()
        desk = Collector.start(sink)
        ref = WebSocketActor.start(server.url, endpoint=JsonEndpoint())
        told: list[int] = []
        placing = threading.Event()

        def place(
            ws: pykka.ActorRef[Any] = ref,
            told: list[int] = told,
            desk: pykka.ActorRef[Any] = desk,
            placing: threading.Event = placing,
        ) -> None:
            for i in range(2000):
                try:
                    ws.tell(WsDelegatedRequest(i, req_frame(i, "silent"), reply_to=desk))
                except pykka.ActorDeadError:
                    return
                told.append(i)
                if i == 50:
                    placing.set()

        placer = threading.Thread(target=place)
        placer.start()
        assert placing.wait(10)
        ref.stop()
        placer.join(10)
        # Every request told before the stop gets exactly one outcome, those
        # left in the inbox behind the stop included (NotDelivered).
        seen = sorted(next_of(sink, WsOutcome).request_id for _ in told)
        assert seen == told
        assert sink.empty()
        desk.stop()


# -- the typed calls ------------------------------------------------------------


def test_request_returns_the_ok_and_raises_the_outcome(server: WsTestServer) -> None:
    ref = start(server.url)
    ok = request(ref, WsDelegatedRequest(1, req_frame(1)))
    assert ok.confirmed is True
    with pytest.raises(EndpointRejected):
        request(ref, WsDelegatedRequest(2, req_frame(2, "reject")))


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        ("1", TypeError),
        ([1], TypeError),
        (True, TypeError),
        (float("nan"), ValueError),
        (-1.0, ValueError),
        (0, ValueError),
        (float("inf"), ValueError),
        (1e300, ValueError),
    ],
)
def test_a_bad_timeout_of_request_and_ask_raises_before_anything_is_sent(
    server: WsTestServer, timeout: Any, error: type[Exception]
) -> None:
    ref = start(server.url)
    with pytest.raises(error, match="timeout"):
        request(ref, WsDelegatedRequest(1, req_frame(1)), timeout=timeout)
    with pytest.raises(error, match="timeout"):
        ask(ref, WsDelegatedRequest(2, req_frame(2)), timeout=timeout)
    # Nothing was asked: the actor saw no request, the server got no frame.
    assert request(ref, WsDelegatedRequest(3, req_frame(3)), timeout=10).confirmed
    assert [json.loads(f)["id"] for f in server.received] == [3]
    assert sum(stats(ref).outcomes.values()) == 1


def test_ask_async_is_typed_per_message(server: WsTestServer) -> None:
    ref = start(server.url)

    async def run() -> tuple[WsDelegatedOk, int, bool]:
        ok = await ask_async(ref, WsDelegatedRequest(1, req_frame(1)))
        current = await ask_async(ref, WsGetStats())
        cancelled = await ask_async(ref, WsCancel(99))
        return ok, current.frames_out, cancelled

    ok, frames_out, cancelled = asyncio.run(run())
    assert ok.confirmed is True
    assert frames_out == 1
    assert cancelled is False


# -- WsCancel -------------------------------------------------------------------


def test_cancel_of_a_queued_request_ends_every_waiter_and_it_is_never_sent(
    server: WsTestServer, mocker: MockerFixture
) -> None:
    release = threading.Event()
    handed = threading.Event()
    original = _writer.write_batch

    def held(batch: Any, claims: Any) -> Any:
        handed.set()
        assert release.wait(30)
        return original(batch, claims)

    mocker.patch.object(_writer, "write_batch", held)
    mocker.patch.object(_actor, "try_write_now", return_value=None)
    ref = start(server.url)
    first = ref.ask(WsDelegatedRequest(1, req_frame(1)), block=False)
    assert handed.wait(10)
    # Request 2 is queued behind the held batch; two waiters share it.
    second = ref.ask(WsDelegatedRequest(2, req_frame(2)), block=False)
    joiner = ref.ask(WsDelegatedRequest(2, req_frame(2)), block=False)
    assert ref.ask(WsCancel(2), timeout=10) is True
    for future in (second, joiner):
        with pytest.raises(NotDelivered):
            future.get(timeout=10)
    release.set()
    assert first.get(timeout=10).confirmed is True
    assert ref.ask(WsCancel(2), timeout=10) is False  # ended: nothing to cancel
    assert ref.ask(WsCancel(1), timeout=10) is False  # written and confirmed
    ref.ask(WsDelegatedRequest(3, req_frame(3)), timeout=10)
    assert server.received == [req_frame(1), req_frame(3)]  # 2 never went out


def test_cancel_of_a_written_request_is_refused() -> None:
    with WsTestServer(None) as silent:
        ref = start(silent.url)
        pending = ref.ask(WsDelegatedRequest(4, req_frame(4), timeout=10), block=False)
        silent.wait_for_received(1)
        wait_until(lambda: stats(ref).frames_out == 1, 5, "the write")
        assert ref.ask(WsCancel(4), timeout=10) is False
        assert ref.ask(WsCancel("unknown"), timeout=10) is False
        ref.stop()
        with pytest.raises(Unconfirmed):
            pending.get(timeout=10)


# -- WsReconnect ----------------------------------------------------------------


def test_reconnect_drops_the_connection_keeps_stats_and_the_reason() -> None:
    with WsTestServer(None) as silent:
        sink: queue.Queue[Any] = queue.Queue()
        collector = Collector.start(sink)
        ref = start(silent.url, inbound=collector)
        written = ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=30), block=False)
        silent.wait_for_received(1)
        assert next_of(sink, WsConnected).generation == 1
        assert ref.ask(WsReconnect("no answers for 5 s"), timeout=10) is True
        lost = next_of(sink, WsDisconnected)
        assert lost.was_open is True
        assert "no answers for 5 s" in stats(ref).last_error
        with pytest.raises(Unconfirmed) as excinfo:
            written.get(timeout=10)
        assert excinfo.value.written is True
        assert next_of(sink, WsConnected).generation == 2
        current = stats(ref)
        assert current.reconnects == 1
        assert current.frames_out == 1  # the stats survived


def test_reconnect_while_connecting_is_refused_and_during_backoff_connects_now() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never answers
    try:
        port = listener.getsockname()[1]
        ref = WebSocketActor.start(f"ws://127.0.0.1:{port}", endpoint=JsonEndpoint())
        wait_until(lambda: stats(ref).attempts == 1, 5, "the attempt")
        assert stats(ref).state == "connecting"
        assert ref.ask(WsReconnect(), timeout=10) is False
        assert stats(ref).attempts == 1
        ref.stop()
    finally:
        listener.close()
    with WsTestServer(json_reply) as srv:
        srv.set_reject_handshake(503)
        ref = WebSocketActor.start(
            srv.url, endpoint=JsonEndpoint(), backoff=WsBackoff(initial=60.0, cap=60.0)
        )
        # A 503 and then a backoff wait of up to a minute (jittered): ended
        # at once by WsReconnect, unless the draw was short enough to pass.
        wait_state(ref, "backoff", 10)
        before = stats(ref).attempts
        assert ref.ask(WsReconnect(), timeout=10) is True
        wait_until(lambda: stats(ref).attempts == before + 1, 10, "the attempt brought forward")


# -- routes and subscriptions -----------------------------------------------------


class ChannelEndpoint(JsonEndpoint):
    """Notifications are {"channel": ..., "data": ...}; their channel is the route key."""

    def parse(self, frame: str | bytes) -> Any:
        return json.loads(frame)

    def route(self, message: Any) -> Any:
        return message.get("channel") if isinstance(message, dict) else None


def test_frames_go_to_their_routes_and_the_rest_to_every_subscriber(
    server: WsTestServer,
) -> None:
    everyone: queue.Queue[Any] = queue.Queue()
    trades: queue.Queue[Any] = queue.Queue()
    books: queue.Queue[Any] = queue.Queue()
    general = Collector.start(everyone)
    trades_ref = Collector.start(trades)
    books_ref = Collector.start(books)
    ref = start(server.url, ChannelEndpoint(), inbound=general)
    ref.ask(WsRoute("trades", trades_ref), timeout=10)
    ref.ask(WsRoute("book", books_ref), timeout=10)
    server.wait_for_open_connections(1)
    server.send_to_all(json.dumps({"channel": "trades", "data": 1}))
    server.send_to_all(json.dumps({"channel": "book", "data": 2}))
    server.send_to_all(json.dumps({"channel": "status", "data": 3}))
    assert next_of(trades, WsInbound).message["data"] == 1
    assert next_of(books, WsInbound).message["data"] == 2
    assert next_of(everyone, WsInbound).message["data"] == 3  # no route: to everyone
    ref.ask(WsUnroute("trades"), timeout=10)
    server.send_to_all(json.dumps({"channel": "trades", "data": 4}))
    assert next_of(everyone, WsInbound).message["data"] == 4
    assert trades.empty()
    assert books.empty()


class SubscribingEndpoint(ChannelEndpoint):
    """Confirms {"id": n, "subscribe": ch} requests like any other."""


def subscribe_reply(frame: str | bytes) -> str | None:
    data = json.loads(frame)
    if "subscribe" in data and data["subscribe"] == "forbidden":
        return json.dumps({"id": data["id"], "error": "not allowed"})
    return json_reply(frame)


def test_subscriptions_are_confirmed_replayed_on_reconnect_and_removed() -> None:
    with WsTestServer(subscribe_reply) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        trades: queue.Queue[Any] = queue.Queue()
        collector = Collector.start(sink)
        trades_ref = Collector.start(trades)
        ref = start(srv.url, SubscribingEndpoint(), inbound=collector)
        ok = ref.ask(
            WsSubscribe(
                "trades",
                json.dumps({"id": 1, "subscribe": "trades"}),
                request_id=1,
                route=trades_ref,
            ),
            timeout=10,
        )
        assert ok.confirmed is True
        ref.ask(
            WsSubscribe("book", json.dumps({"id": 2, "subscribe": "book"}), request_id=2),
            timeout=10,
        )
        with pytest.raises(EndpointRejected):
            ref.ask(
                WsSubscribe("no", json.dumps({"id": 3, "subscribe": "forbidden"}), request_id=3),
                timeout=10,
            )
        assert stats(ref).subscriptions == 2  # the refused one left the set
        srv.wait_for_open_connections(1)
        srv.clear_received()
        srv.close_connections()
        assert next_of(sink, WsConnected).generation == 1
        assert next_of(sink, WsConnected).generation == 2
        replayed = srv.wait_for_received(2)
        assert sorted(json.loads(f)["subscribe"] for f in replayed) == ["book", "trades"]
        srv.wait_for_open_connections(1)
        srv.send_to_all(json.dumps({"channel": "trades", "data": 7}))
        assert next_of(trades, WsInbound).message["data"] == 7
        # Unsubscribed: gone from the set, no longer replayed.
        assert ref.ask(WsUnsubscribe("book"), timeout=10) is None
        gone = ref.ask(
            WsUnsubscribe("trades", json.dumps({"id": 4, "unsubscribe": "trades"}), request_id=4),
            timeout=10,
        )
        assert gone.confirmed is True
        assert stats(ref).subscriptions == 0
        srv.clear_received()
        srv.close_connections()
        assert next_of(sink, WsConnected).generation == 3
        ref.ask(WsDelegatedRequest(5, req_frame(5)), timeout=10)
        assert srv.received == [req_frame(5)]  # nothing replayed before it


def test_subscribe_while_disconnected_is_sent_once_when_the_connection_opens() -> None:
    srv = WsTestServer(subscribe_reply)
    srv.start()
    url = srv.url
    srv.stop()
    ref = WebSocketActor.start(url, endpoint=SubscribingEndpoint(), backoff=FAST_BACKOFF_LOW_CAP)
    pending = ref.ask(
        WsSubscribe("t", json.dumps({"id": 1, "subscribe": "t"}), request_id=1, timeout=10),
        block=False,
    )
    wait_until(lambda: stats(ref).attempts >= 2, 10, "refused attempts")
    srv.start()
    try:
        assert pending.get(timeout=10).confirmed is True
        # Queued as a request, not also replayed: one subscribe frame.
        assert [json.loads(f).get("subscribe") for f in srv.received] == ["t"]
    finally:
        ref.stop()
        srv.stop()


def test_route_and_subscribe_check_their_arguments() -> None:
    with pytest.raises(TypeError):
        WsRoute(["unhashable"], None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ref"):
        WsRoute("k", "not a ref")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="request_id"):
        WsUnsubscribe("k", "frame")
    with pytest.raises(TypeError, match="route"):
        WsSubscribe("k", "f", request_id=1, route="x")  # type: ignore[arg-type]


def test_typed_ask_returns_each_message_s_answer(server: WsTestServer) -> None:
    from pykka_ws import ask  # noqa: PLC0415

    ref = start(server.url)
    ok = ask(ref, WsDelegatedRequest(1, req_frame(1)), timeout=10)
    assert ok.confirmed is True
    assert ask(ref, WsGetStats(), timeout=10).frames_out == 1
    assert ask(ref, WsCancel(1), timeout=10) is False


def test_an_internal_error_still_tells_reply_to_an_ambiguous_outcome(
    server: WsTestServer, mocker: MockerFixture
) -> None:
    from pykka_ws._core import Core  # noqa: PLC0415

    sink: queue.Queue[Any] = queue.Queue()
    desk = Collector.start(sink)
    ref = start(server.url)
    broken = mocker.patch.object(Core, "request", side_effect=RuntimeError("a bug"))
    ref.tell(WsDelegatedRequest(1, req_frame(1), reply_to=desk, context="c"))
    outcome = next_of(sink, WsOutcome)
    assert broken.call_count == 1
    assert isinstance(outcome.error, Unconfirmed)
    assert isinstance(outcome.error.__cause__, RuntimeError)
    assert outcome.context == "c"
    assert stats(ref).internal_errors == 1
