"""The self-healing connection: reconnects, state replay, deadlines, keepalive, TLS."""

from __future__ import annotations

import itertools
import queue
import ssl
import threading
import time
from functools import partial
from typing import Any

import pykka
import pytest
import trustme
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError
from websockets.frames import CloseCode
from websockets.sync.server import serve

from pykka_ws import (
    NotDelivered,
    Unconfirmed,
    WebSocketActor,
    WsBackoff,
    WsConfirmMode,
    WsConnected,
    WsDelegatedError,
    WsDelegatedRequest,
    WsDisconnected,
    WsInbound,
    WsLateResponse,
    WsSend,
    WsSendRefused,
)
from pykka_ws.testing import FaultProxy, WsTestServer

from .support import (
    FAST_BACKOFF_EARLY_RESET,
    BlockingParse,
    Collector,
    JsonEndpoint,
    RecordingBackoff,
    inspectable,
    json_reply,
    next_of,
    pause,
    req_frame,
    stats,
    wait_no_library_threads,
    wait_state,
    wait_until,
)
from .support import start as start_actor

pytestmark = pytest.mark.timeout(30)

# The actors here reconnect fast unless a test says otherwise, and start()
# returns at once: a test waits for the state it needs.
start = partial(start_actor, wait_open=False, backoff=FAST_BACKOFF_EARLY_RESET)


# -- reconnect and state replay ---------------------------------------------


def test_on_open_frames_go_first_on_every_connection(server: WsTestServer) -> None:
    server.set_silent(True)
    ref = start(server.url, endpoint=JsonEndpoint(on_open=["auth", "subscribe"]))
    ref.tell(WsSend("after"))
    assert server.wait_for_received(3) == ["auth", "subscribe", "after"]
    server.clear_received()
    server.close_connections()
    server.wait_for_connections(2)
    ref.tell(WsSend("again"))
    assert server.wait_for_received(3) == ["auth", "subscribe", "again"]
    assert stats(ref).reconnects == 1


class RecordingOpen(JsonEndpoint):
    def __init__(self, log: queue.Queue[Any]) -> None:
        super().__init__()
        self.log = log

    def on_open(self) -> list[str]:
        self.log.put("on_open")
        return []


def test_on_open_runs_before_subscribers_hear_of_the_connection(server: WsTestServer) -> None:
    log: queue.Queue[Any] = queue.Queue()
    start(server.url, endpoint=RecordingOpen(log), inbound=Collector.start(log))
    assert log.get(timeout=5) == "on_open"
    assert isinstance(log.get(timeout=5), WsConnected)


def test_lost_connection_is_told_with_was_open(server: WsTestServer) -> None:
    sink: queue.Queue[Any] = queue.Queue()
    start(server.url, inbound=Collector.start(sink))
    next_of(sink, WsConnected)
    server.wait_for_open_connections(1)  # the client may see it open first
    server.close_connections()
    event = next_of(sink, WsDisconnected)
    assert event.was_open is True
    assert event.reconnecting is True


def test_server_restart_mid_stream(server: WsTestServer) -> None:
    port = server.port
    sink: queue.Queue[Any] = queue.Queue()
    collector = Collector.start(sink)
    ref = start(server.url, endpoint=JsonEndpoint(on_open=["auth"]), inbound=collector)
    next_of(sink, WsConnected)
    assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed

    server.stop()
    next_of(sink, WsDisconnected)
    # Asked while disconnected: waits for the next connection.
    during = ref.ask(WsDelegatedRequest(2, req_frame(2), timeout=10.0), block=False)

    with WsTestServer(json_reply, port=port) as restarted:
        assert next_of(sink, WsConnected).generation >= 2
        assert during.get(timeout=10).confirmed
        assert ref.ask(WsDelegatedRequest(3, req_frame(3)), timeout=10).confirmed
        assert restarted.received == ["auth", req_frame(2), req_frame(3)]
    assert stats(ref).outcomes["confirmed"] == 3


def test_written_confirmed_request_is_unconfirmed_as_soon_as_its_connection_dies(
    server: WsTestServer,
) -> None:
    ref = start(server.url)
    wait_state(ref, "open")
    future = ref.ask(WsDelegatedRequest(1, req_frame(1, "silent"), timeout=20.0), block=False)
    server.wait_for_received(1)
    started = time.monotonic()
    server.close_connections(abrupt=True)
    with pytest.raises(Unconfirmed) as info:
        future.get(timeout=10)
    assert info.value.written is True
    assert time.monotonic() - started < 5.0  # long before the 20 s deadline


def test_request_queued_while_disconnected_is_not_delivered_at_its_deadline(
    server: WsTestServer,
) -> None:
    server.set_reject_handshake(503)
    ref = start(server.url)
    with pytest.raises(NotDelivered, match="before it was written"):
        ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=0.3), timeout=10)
    assert stats(ref).pending == 0
    assert server.received == []


def test_accept_and_close_server_is_not_hammered(server: WsTestServer) -> None:
    server.set_accept_and_close(True)
    backoff = RecordingBackoff(initial=0.05, factor=2.0, cap=0.4, reset_after=60.0)
    ref = start(server.url, backoff=backoff)
    draws = backoff.wait_for_draws(6, timeout=20.0)[:6]
    # Every connection dies as soon as it opens, yet the attempt counter
    # grows (no reset: the delays' ceilings double up to the cap)...
    assert [attempt for attempt, _, _ in draws] == list(range(6))
    # ...and each reconnection waits out its delay: the next connection, and
    # so the next delay, comes no sooner. A hot loop would not wait at all.
    for (_, delay, at), (_, _, next_at) in itertools.pairwise(draws):
        assert next_at - at >= delay
    # No connection but the first came without a delay drawn before it.
    accepted = server.connections_accepted
    assert accepted <= len(backoff.draws()) + 1
    assert stats(ref).state != "closed"  # it keeps trying


def test_handshake_refused_with_401_stops_reconnecting_with_a_clear_error(
    server: WsTestServer,
) -> None:
    server.set_reject_handshake(401)
    sink: queue.Queue[Any] = queue.Queue()
    ref = start(server.url, inbound=Collector.start(sink))
    event = next_of(sink, WsDisconnected)
    assert event.reconnecting is False
    assert event.was_open is False
    wait_state(ref, "closed")
    assert "401" in (stats(ref).last_error or "")
    with pytest.raises(NotDelivered, match="will not reconnect"):
        ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10)


class StopAfterFirstLoss(JsonEndpoint):
    def on_disconnect(self, cause: BaseException | None) -> bool:
        return False


def test_endpoint_can_decide_not_to_reconnect(server: WsTestServer) -> None:
    ref = start(server.url, endpoint=StopAfterFirstLoss())
    wait_state(ref, "open")
    server.wait_for_open_connections(1)  # the client may see it open first
    server.close_connections()
    wait_state(ref, "closed")
    assert server.connections_accepted == 1


# -- write deadline, keepalive, limits ---------------------------------------


def test_peer_that_stops_reading_fails_only_the_writer_and_is_replaced(
    server: WsTestServer,
) -> None:
    proxy = FaultProxy("127.0.0.1", server.port).start()
    try:
        ref = start(
            proxy.url,
            write_timeout=0.5,
            close_timeout=0.2,
            default_timeout=3.0,
            compression=None,
        )
        wait_state(ref, "open")
        proxy.blackhole()
        big = [
            ref.ask(WsDelegatedRequest(i, req_frame(i, pad="x" * 2**19)), block=False)
            for i in range(40)
        ]
        # The owner keeps answering while the writer is stuck (stats() fails
        # if no answer comes within 10 s).
        for _ in range(5):
            assert stats(ref).pending <= len(big)
        outcomes: dict[int, BaseException | None] = {}
        for i, future in enumerate(big):
            try:
                future.get(timeout=10)
                outcomes[i] = None
            except WsDelegatedError as error:
                outcomes[i] = error
        assert any(isinstance(e, NotDelivered) for e in outcomes.values())
        assert "write timed out" in (stats(ref).last_error or "")
        proxy.restore()
        wait_state(ref, "open", timeout=10)
        assert ref.ask(WsDelegatedRequest("x", req_frame("x")), timeout=10).confirmed
        received_ids = set(server.received)
        for i, error in outcomes.items():
            if isinstance(error, NotDelivered):
                assert req_frame(i, pad="x" * 2**19) not in received_ids
    finally:
        pykka.ActorRegistry.stop_all()
        proxy.stop()


def test_silent_dead_peer_is_detected_by_keepalive_and_replaced(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = FaultProxy("127.0.0.1", server.port).start()
    try:
        sink: queue.Queue[Any] = queue.Queue()
        ref = start(
            proxy.url,
            inbound=Collector.start(sink),
            ping_interval=0.2,
            ping_timeout=0.2,
            close_timeout=0.2,
        )
        next_of(sink, WsConnected)
        proxy.blackhole()
        # Nothing is written on an idle connection: only keepalive can find
        # the peer dead (TCP would take minutes), and websockets says so.
        event = next_of(sink, WsDisconnected, timeout=10.0)
        assert isinstance(event.cause, ConnectionClosedError)
        assert event.cause.sent is not None
        assert event.cause.sent.code == CloseCode.INTERNAL_ERROR
        assert event.cause.sent.reason == "keepalive ping timeout"
        proxy.restore()
        next_of(sink, WsConnected, timeout=10.0)
        assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed
        # websockets' "keepalive ping failed" traceback is not an error here.
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
    finally:
        pykka.ActorRegistry.stop_all()
        proxy.stop()


def test_oversized_inbound_frame_fails_the_connection_which_is_replaced(
    server: WsTestServer,
) -> None:
    sink: queue.Queue[Any] = queue.Queue()
    ref = start(server.url, inbound=Collector.start(sink), max_size=1000)
    next_of(sink, WsConnected)
    server.wait_for_open_connections(1)  # the client may see it open first
    server.send_to_all("x" * 2000)
    event = next_of(sink, WsDisconnected)
    assert isinstance(event.cause, ConnectionClosedError)
    assert event.cause.sent is not None
    assert event.cause.sent.code == CloseCode.MESSAGE_TOO_BIG  # 1009, sent by the client
    next_of(sink, WsConnected)
    assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed


def test_invalid_utf8_text_frame_fails_the_connection_which_is_replaced(
    server: WsTestServer,
) -> None:
    sink: queue.Queue[Any] = queue.Queue()
    ref = start(server.url, inbound=Collector.start(sink))
    next_of(sink, WsConnected)
    server.wait_for_open_connections(1)  # the client may see it open first
    server.send_raw_text_to_all(b"\xff\xfe")
    event = next_of(sink, WsDisconnected)
    assert isinstance(event.cause, ConnectionClosedError)
    assert event.cause.sent is not None
    assert event.cause.sent.code == CloseCode.INVALID_DATA  # 1007, sent by the client
    next_of(sink, WsConnected)
    assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed


# -- inbound ------------------------------------------------------------------


def test_inbound_frames_and_late_responses_reach_subscribers(server: WsTestServer) -> None:
    sink: queue.Queue[Any] = queue.Queue()
    other: queue.Queue[Any] = queue.Queue()
    ref = start(server.url, inbound=[Collector.start(sink), Collector.start(other)])
    assert next_of(sink, WsConnected).url == server.url
    server.wait_for_open_connections(1)  # the client may see it open first
    server.send_to_all('{"channel": "ticker", "price": 1}')
    inbound = next_of(sink, WsInbound)
    assert inbound.message == {"channel": "ticker", "price": 1}
    assert next_of(other, WsInbound) == inbound

    with pytest.raises(Unconfirmed):
        ref.ask(WsDelegatedRequest(5, req_frame(5, "silent"), timeout=0.2), timeout=10)
    server.send_to_all('{"id": 5, "result": "late"}')
    late = next_of(sink, WsLateResponse)
    assert late.request_id == 5
    assert late.frame == '{"id": 5, "result": "late"}'

    sent = ref.ask(WsDelegatedRequest(6, req_frame(6), confirm_mode=WsConfirmMode.SENT), timeout=10)
    assert sent.confirmed is False
    assert next_of(sink, WsLateResponse).request_id == 6


def test_dead_subscriber_is_dropped_and_the_actor_lives_on(server: WsTestServer) -> None:
    sink: queue.Queue[Any] = queue.Queue()
    dead = Collector.start(queue.Queue())
    ref = start(server.url, inbound=[dead, Collector.start(sink)])
    next_of(sink, WsConnected)
    dead.stop()
    server.wait_for_open_connections(1)  # the client may see it open first
    server.send_to_all('{"hello": 1}')
    next_of(sink, WsInbound)
    assert ref.is_alive()
    assert stats(ref).hook_errors == 1


# -- TLS ----------------------------------------------------------------------


def tls_server(ca: trustme.CA, *hosts: str) -> WsTestServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(context)
    return WsTestServer(json_reply, ssl=context)


def test_tls_with_a_trusted_certificate_works(ca: trustme.CA) -> None:
    with tls_server(ca, "127.0.0.1", "localhost") as srv:
        client = ssl.create_default_context()
        ca.configure_trust(client)
        url = f"wss://127.0.0.1:{srv.port}"
        ref = start(url, ssl=client)
        assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed
        ref.stop()


@pytest.mark.parametrize("case", ["untrusted", "wrong-host"])
def test_tls_with_a_bad_certificate_is_refused_and_reported(ca: trustme.CA, case: str) -> None:
    hosts = ("127.0.0.1",) if case == "untrusted" else ("example.org",)
    with tls_server(ca, *hosts) as srv:
        client = ssl.create_default_context()
        if case == "wrong-host":
            ca.configure_trust(client)
        ref = start(f"wss://127.0.0.1:{srv.port}", ssl=client)
        wait_state(ref, "closed")
        error = stats(ref).last_error or ""
        assert "certificate" in error.lower()
        assert srv.connections_accepted == 0
        ref.stop()


# -- stop in every state -------------------------------------------------------


def test_stop_while_connecting_returns_promptly(server: WsTestServer) -> None:
    proxy = FaultProxy("127.0.0.1", server.port).start()
    try:
        proxy.blackhole()  # TCP connects, the handshake never answers
        ref = start(proxy.url, open_timeout=20.0)
        wait_until(lambda: proxy.connections_accepted >= 1, 5.0, "the TCP connection")
        future = ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=20.0), block=False)
        started = time.monotonic()
        ref.stop(timeout=10)
        assert time.monotonic() - started < 5.0
        with pytest.raises(NotDelivered):
            future.get(timeout=5)
        wait_no_library_threads()
    finally:
        proxy.stop()


@pytest.mark.parametrize("state", ["open", "backoff", "closed"])
def test_stop_in_each_state_leaves_no_thread(server: WsTestServer, state: str) -> None:
    if state == "closed":
        server.set_reject_handshake(403)
    # Exactly 5 s of backoff (no jitter): "backoff" lasts long enough to be seen.
    ref = start(server.url, backoff=RecordingBackoff(initial=5.0, cap=5.0, jitter=False))
    if state == "backoff":
        wait_state(ref, "open")
        server.wait_for_open_connections(1)  # the client may see it open first
        server.close_connections()
    wait_state(ref, state)
    ref.stop(timeout=10)
    wait_no_library_threads()


# -- limits against a hostile peer ---------------------------------------------


def test_flooding_peer_is_held_back_by_max_queue_and_nothing_is_lost(
    server: WsTestServer,
) -> None:
    actor_class, instances = inspectable()

    endpoint = BlockingParse()
    sink: queue.Queue[Any] = queue.Queue()
    max_queue = 8
    ref = actor_class.start(
        server.url, endpoint=endpoint, inbound=Collector.start(sink), max_queue=max_queue
    )
    try:
        next_of(sink, WsConnected)
        server.wait_for_open_connections(1)  # the client may see it open first
        for i in range(500):
            server.send_to_all(f'{{"n": {i}}}')
        # The owner is stuck in parse() on the first frame; at most max_queue
        # frames are told and not yet handled (that one included, or not).
        # They wait, batched: in the connection's sink, or taken by the owner
        # in its current batch (one InboundReady in its inbox stands for them).
        connection = instances[0]._connection
        assert connection is not None
        sink_ = connection._sink

        def waiting() -> int:
            return sink_.told - sink_.done

        wait_until(lambda: waiting() >= max_queue, 10.0, "the flood to reach the owner")
        # It stays there: watch for a while (the scenario is the passing time)
        # that the receiving thread, with ~490 frames left to read, tells no more.
        watch_until = time.monotonic() + 0.2
        while time.monotonic() < watch_until:
            assert waiting() <= max_queue
            assert len(sink_.events) <= max_queue
            assert instances[0].actor_inbox.qsize() <= 1  # type: ignore[attr-defined]
            pause(0.01)
    finally:
        endpoint.release.set()
    seen = [next_of(sink, WsInbound).message["n"] for _ in range(500)]
    assert seen == list(range(500))
    assert ref.is_alive()


def test_header_values_are_never_logged(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    ref = start(
        server.url,
        additional_headers={"Authorization": "Bearer s3cret-token", "X-Api-Key": "k3y-value"},
    )
    wait_state(ref, "open")
    assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed
    # The server's own log (websockets.server) is the peer's business; ours:
    client_log = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server")
    )
    assert "Authorization: <redacted>" in client_log  # the line is there, the value is not
    assert "X-Api-Key: <redacted>" in client_log
    assert "s3cret-token" not in client_log
    assert "k3y-value" not in client_log


SECRET = "sk_live_SUPERSECRET"  # noqa: S105 - a made-up token to look for in messages


@pytest.mark.parametrize(
    ("settings", "error", "says"),
    [
        ({"additional_headers": {"Authorization": f"Bearer {SECRET}\n"}}, ValueError, "CR, LF"),
        ({"additional_headers": {"X-Key": f"{SECRET}\r\nX-Evil: 1"}}, ValueError, "CR, LF"),
        ({"additional_headers": {5: SECRET}}, TypeError, "names must be str"),
        ({"additional_headers": {"Bad Name": SECRET}}, ValueError, "header name"),
        ({"additional_headers": {"X-Key": 5}}, TypeError, "must be a str"),
        ({"additional_headers": "Authorization: x"}, TypeError, "mapping"),
        ({"user_agent_header": "agent\r\nX-Evil: 1"}, ValueError, "CR, LF"),
        ({"user_agent_header": 5}, TypeError, "must be a str"),
        ({"subprotocols": "chat"}, TypeError, "sequence of str"),
        ({"subprotocols": [5]}, TypeError, "must be str"),
        ({"subprotocols": ["has space"]}, ValueError, "not a valid token"),
    ],
)
def test_bad_handshake_settings_are_refused_at_start_without_showing_the_value(
    settings: dict[str, Any], error: type[Exception], says: str
) -> None:
    # Before, each was accepted and every connection attempt failed for ever
    # (or "chat" became the subprotocols c, h, a, t).
    with pytest.raises(error, match=says) as refused:
        WebSocketActor.start("ws://127.0.0.1:9", **settings)
    assert SECRET not in str(refused.value)
    assert not pykka.ActorRegistry.get_all()  # nothing started


def test_valid_handshake_settings_reach_the_server(server: WsTestServer) -> None:
    ref = start(
        server.url,
        additional_headers=[("X-Api-Key", "k3y-value"), ("X-Region", "eu-west\t1")],
        user_agent_header="desk/1.0 (pykka-ws)",
        subprotocols=("v1.exchange",),
    )
    assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed


@pytest.mark.parametrize(
    "headers",
    [
        [("Cookie", "a=1"), ("Cookie", "b=2")],
        Headers([("Cookie", "a=1"), ("Cookie", "b=2")]),
    ],
    ids=["pairs", "Headers"],
)
def test_a_header_name_given_twice_is_sent_twice(headers: Any) -> None:
    seen: list[list[str]] = []

    def process_request(_connection: Any, request: Any) -> None:
        seen.append(request.headers.get_all("Cookie"))

    with serve(lambda ws: ws.recv(), "127.0.0.1", 0, process_request=process_request) as srv:
        port = srv.socket.getsockname()[1]
        threading.Thread(target=srv.serve_forever, name="test-ws-server", daemon=True).start()
        ref = start(f"ws://127.0.0.1:{port}", additional_headers=headers)
        wait_state(ref, "open")
        ref.stop()
        srv.shutdown()
    assert seen == [["a=1", "b=2"]]


def test_redact_replaces_the_header_values_in_an_error_text() -> None:
    from pykka_ws._lifecycle import redact  # noqa: PLC0415

    kwargs = {"additional_headers": [("Authorization", f"Bearer {SECRET}"), ("X-Id", "7")]}
    text = f"InvalidHeaderValue: invalid Authorization header: Bearer {SECRET} (id 7)"
    redacted = redact(text, kwargs)
    assert redacted == "InvalidHeaderValue: invalid Authorization header: <redacted> (id 7)"
    assert redact(None, kwargs) is None
    assert redact(text, {"additional_headers": None}) == text


def test_backoff_is_not_reset_by_connections_that_die_young(server: WsTestServer) -> None:
    # reset_after is far longer than any connection here lives, however slow
    # the machine: the attempt counter must only grow.
    backoff = RecordingBackoff(initial=0.01, factor=2.0, cap=0.05, reset_after=60.0)
    sink: queue.Queue[Any] = queue.Queue()
    start(server.url, backoff=backoff, inbound=Collector.start(sink))
    next_of(sink, WsConnected)
    server.wait_for_open_connections(1)  # the client may see it open first
    server.set_accept_and_close(True)
    server.close_connections()
    draws = backoff.wait_for_draws(5)
    assert [attempt for attempt, _, _ in draws[:5]] == [0, 1, 2, 3, 4]
    assert server.connections_accepted >= 5  # each of them opened, then died


def test_backoff_resets_only_after_a_connection_that_stayed_up(server: WsTestServer) -> None:
    reset_after = 0.3
    backoff = RecordingBackoff(initial=0.01, factor=2.0, cap=0.05, reset_after=reset_after)
    sink: queue.Queue[Any] = queue.Queue()
    server.set_reject_handshake(503)
    start(server.url, backoff=backoff, inbound=Collector.start(sink))
    # Attempts that never open do not reset the counter.
    backoff.wait_for_draws(3)
    server.set_reject_handshake(None)
    connected = next_of(sink, WsConnected)
    seen = time.monotonic()  # the actor took the connection as open before this
    before = backoff.attempts()
    assert before == list(range(len(before)))
    assert len(before) >= 3
    # The connection stays up for reset_after, by the actor's clock too: it
    # recorded its opening before telling WsConnected, and will see the close
    # after close_connections() below. (The scenario is the passing time.)
    wait_until(lambda: time.monotonic() - seen >= reset_after, 5.0, "reset_after to pass")
    server.wait_for_open_connections(1)  # the client may see it open first
    server.close_connections()
    assert next_of(sink, WsDisconnected).generation == connected.generation
    attempts = backoff.wait_for_draws(len(before) + 1)
    assert attempts[len(before)][0] == 0  # reset: the next delay is the first one


def test_many_small_batches_drain_without_recursion_when_the_connection_opens(
    server: WsTestServer,
) -> None:
    server.set_reject_handshake(503)
    server.set_silent(True)
    ref = start(server.url, max_batch=1, outbound_capacity=5000)
    frames = [f"f{i}" for i in range(3000)]
    for frame in frames:
        ref.tell(WsSend(frame))
    assert stats(ref).queued == 3000
    server.set_reject_handshake(None)
    assert server.wait_for_received(3000, timeout=20) == frames
    after = stats(ref)
    assert after.queued == 0
    assert after.frames_out == 3000
    assert ref.stop(timeout=10)
    wait_no_library_threads()


def test_requests_that_expire_while_queued_do_not_pile_up(server: WsTestServer) -> None:
    actor_class, instances = inspectable()
    server.set_reject_handshake(503)
    ref = actor_class.start(
        server.url,
        endpoint=JsonEndpoint(),
        backoff=WsBackoff(initial=5.0, cap=5.0),
        max_pending_requests=5000,
    )
    futures = [
        ref.ask(WsDelegatedRequest(i, req_frame(i), timeout=0.05), block=False) for i in range(2000)
    ]
    for future in futures:
        with pytest.raises(NotDelivered):
            future.get(timeout=10)
    assert stats(ref).queued == 0
    assert len(instances[0]._core.queue) <= 64


def test_send_after_giving_up_is_refused_with_the_reason(server: WsTestServer) -> None:
    server.set_reject_handshake(401)
    ref = start(server.url)
    wait_state(ref, "closed")
    with pytest.raises(WsSendRefused, match="will not reconnect"):
        ref.ask(WsSend("late"), timeout=10)
    assert stats(ref).queued == 0
