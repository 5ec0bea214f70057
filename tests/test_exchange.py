"""Exchange-grade connection: gated open, heartbeats, staleness, failover, Retry-After, secrets."""

from __future__ import annotations

import json
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Response
from websockets.sync.server import Server, ServerConnection, serve

from pykka_ws import (
    EndpointRejected,
    NotDelivered,
    Unconfirmed,
    WebSocketActor,
    WsConnected,
    WsDelegatedRequest,
    WsDisconnected,
    WsEndpoint,
    WsHeartbeat,
    WsOpenFailed,
    WsOutcome,
)
from pykka_ws.testing import WsTestServer

from .support import (
    FAST_BACKOFF_LOW_CAP,
    Collector,
    JsonEndpoint,
    json_reply,
    next_of,
    req_frame,
    stats,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


class AuthEndpoint(JsonEndpoint):
    """Logs in on every connection with a gated request."""

    def __init__(self, secret: str = "s3cret-client-secret") -> None:  # noqa: S107
        super().__init__()
        self.secret = secret
        self.logins = 0

    def on_open(self) -> list[Any]:  # type: ignore[override]
        self.logins += 1
        login = json.dumps({"id": f"auth-{self.logins}", "auth": self.secret})
        return [WsDelegatedRequest(f"auth-{self.logins}", login, timeout=2.0)]


def exchange_reply(frame: str | bytes) -> str | None:
    data = json.loads(frame)
    if "auth" in data:
        if data["auth"] == "wrong":
            return json.dumps({"id": data["id"], "error": "invalid credentials"})
        if data["auth"] == "silent":
            return None
        return None  # the test answers logins itself
    return json_reply(frame)


# -- gated open ---------------------------------------------------------------


def test_queued_traffic_waits_until_the_login_is_confirmed() -> None:
    with WsTestServer(exchange_reply) as srv:
        ref = WebSocketActor.start(srv.url, endpoint=AuthEndpoint())
        [login] = srv.wait_for_received(1)
        orders = [ref.ask(WsDelegatedRequest(i, req_frame(i)), block=False) for i in (1, 2)]
        held = stats(ref)  # handled after both asks: had they been written, they would be
        assert held.frames_out == 1
        assert held.queued == 2
        srv.send_to_all(json.dumps({"id": json.loads(login)["id"], "result": "welcome"}))
        assert all(o.get(timeout=10).confirmed for o in orders)
        assert [json.loads(f).get("id") for f in srv.received] == ["auth-1", 1, 2]


def test_a_rejected_login_closes_for_good_naming_the_request_and_the_reason() -> None:
    with WsTestServer(exchange_reply) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        ref = WebSocketActor.start(
            srv.url,
            endpoint=AuthEndpoint("wrong"),
            inbound=Collector.start(sink),
            backoff=FAST_BACKOFF_LOW_CAP,
        )
        order = ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=10), block=False)
        lost = next_of(sink, WsDisconnected)
        assert isinstance(lost.cause, WsOpenFailed)
        assert lost.cause.rejected is True
        assert isinstance(lost.cause.outcome, EndpointRejected)
        assert lost.reconnecting is False
        with pytest.raises(NotDelivered):
            order.get(timeout=10)
        current = stats(ref)
        assert current.state == "closed"
        assert "auth-1" in current.last_error
        assert "invalid credentials" in current.last_error
        assert current.attempts == 1
        assert [json.loads(f).get("id") for f in srv.received] == ["auth-1"]


def test_an_unconfirmed_login_reconnects_with_backoff_and_logs_in_again() -> None:
    with WsTestServer(exchange_reply) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        endpoint = AuthEndpoint("silent")
        ref = WebSocketActor.start(
            srv.url, endpoint=endpoint, inbound=Collector.start(sink), backoff=FAST_BACKOFF_LOW_CAP
        )
        lost = next_of(sink, WsDisconnected)
        assert isinstance(lost.cause, WsOpenFailed)
        assert lost.cause.rejected is False
        assert lost.reconnecting is True
        assert next_of(sink, WsConnected).generation == 2  # (next_of skipped the first)
        wait_until(lambda: endpoint.logins >= 2, 10, "a second login")
        assert stats(ref).reconnects >= 1


# -- secrets stay out of logs --------------------------------------------------------


def test_on_open_frames_appear_in_no_log_record_at_any_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class PlainAuth(WsEndpoint):
        def on_open(self) -> list[str]:
            return [json.dumps({"op": "login", "client_secret": "TOPSECRET-42"})]

    caplog.set_level(logging.DEBUG)
    with WsTestServer(json_reply) as srv:
        ref = WebSocketActor.start(srv.url, endpoint=PlainAuth(), inbound=None)
        srv.wait_for_received(1)
        ref.tell(WsDelegatedRequest(1, req_frame(1)))
        srv.wait_for_received(2)
        ref.stop()
    # The client's records (the test server's own logs are its business).
    client = [
        r
        for r in caplog.records
        if not r.name.startswith(("websockets.server", "pykka_ws.testing"))
    ]
    frames_logged = [r for r in client if r.name.startswith("websockets")]
    assert any("TEXT" in r.getMessage() for r in frames_logged)  # frames are logged...
    assert all("TOPSECRET" not in r.getMessage() for r in client)  # ...not this one
    assert any("on_open frame, not logged" in r.getMessage() for r in frames_logged)


# -- heartbeats, round trips, staleness --------------------------------------------------


class Pings:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> WsDelegatedRequest:
        self.count += 1
        return WsDelegatedRequest(
            f"hb-{self.count}", json.dumps({"id": f"hb-{self.count}"}), timeout=1.0
        )


def test_heartbeats_give_round_trips_and_an_unanswered_one_fails_the_connection() -> None:
    answering = threading.Event()
    answering.set()

    def reply(frame: str | bytes) -> str | None:
        if json.loads(frame)["id"].startswith("hb-") and not answering.is_set():
            return None
        return json_reply(frame)

    with WsTestServer(reply) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        ref = WebSocketActor.start(
            srv.url,
            endpoint=JsonEndpoint(),
            inbound=Collector.start(sink),
            heartbeat=WsHeartbeat(0.05, Pings()),
            ping_interval=None,
            backoff=FAST_BACKOFF_LOW_CAP,
        )
        wait_until(lambda: stats(ref).rtt_p50 is not None, 10, "a round-trip sample")
        current = stats(ref)
        assert current.rtt_p99 is not None
        assert 0 < current.rtt_p50 <= current.rtt_p99 < 1.0
        assert next_of(sink, WsConnected).generation == 1
        answering.clear()
        lost = next_of(sink, WsDisconnected)
        assert isinstance(lost.cause, TimeoutError)
        assert "heartbeat" in str(lost.cause)
        assert lost.reconnecting is True
        answering.set()
        assert next_of(sink, WsConnected).generation == 2


def test_a_connection_with_no_inbound_frame_for_stale_after_is_replaced() -> None:
    with WsTestServer(None) as silent:
        sink: queue.Queue[Any] = queue.Queue()
        ref = WebSocketActor.start(
            silent.url,
            endpoint=JsonEndpoint(),
            inbound=Collector.start(sink),
            stale_after=0.2,
            ping_interval=None,
            backoff=FAST_BACKOFF_LOW_CAP,
        )
        assert next_of(sink, WsConnected).generation == 1
        lost = next_of(sink, WsDisconnected)
        # The actor's own measure of the silence (a test's clock, read after
        # WsConnected arrived, would start late under load).
        quiet = float(re.search(r"no inbound frame for ([0-9.]+) s", str(lost.cause))[1])
        assert quiet >= 0.2
        assert "stale" in str(lost.cause)
        assert next_of(sink, WsConnected).generation == 2
        assert stats(ref).reconnects >= 1


def test_keepalive_pongs_are_round_trip_samples(server: WsTestServer) -> None:
    ref = WebSocketActor.start(server.url, ping_interval=0.05, ping_timeout=1.0)
    wait_until(lambda: stats(ref).rtt_p50 is not None, 10, "a keepalive sample")


def test_heartbeat_must_be_a_wsheartbeat() -> None:
    with pytest.raises(TypeError, match="heartbeat"):
        WebSocketActor.start("ws://127.0.0.1:9", heartbeat=5.0)
    with pytest.raises(TypeError, match="callable"):
        WsHeartbeat(1.0, "ping")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval"):
        WsHeartbeat(0, Pings())


# -- failover, subprotocol, Retry-After ---------------------------------------------------


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}"  # nothing listens there any more


def test_each_attempt_after_a_failure_takes_the_next_url() -> None:
    with WsTestServer(json_reply) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        dead = _dead_url()
        ref = WebSocketActor.start(
            [dead, srv.url],
            endpoint=JsonEndpoint(),
            inbound=Collector.start(sink),
            backoff=FAST_BACKOFF_LOW_CAP,
        )
        refused = next_of(sink, WsDisconnected)
        assert refused.was_open is False
        connected = next_of(sink, WsConnected)
        assert connected.url == srv.url
        assert stats(ref).url == srv.url
        assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed


@pytest.fixture
def raw_server() -> Iterator[tuple[Server, list[float]]]:
    """A websockets server: subprotocols, and a first handshake refused with Retry-After."""
    handshakes: list[float] = []

    def process_request(connection: ServerConnection, request: Any) -> Response | None:
        handshakes.append(time.monotonic())
        if len(handshakes) == 1:
            headers = Headers({"Retry-After": "1"})
            return Response(503, "Service Unavailable", headers, b"busy\n")
        return None

    def handler(connection: ServerConnection) -> None:
        for message in connection:
            connection.send(json_reply(message) or "")

    server = serve(
        handler,
        "127.0.0.1",
        0,
        process_request=process_request,
        subprotocols=["v2.exchange", "v1.exchange"],
    )
    thread = threading.Thread(target=server.serve_forever, name="test-raw-server")
    thread.start()
    try:
        yield server, handshakes
    finally:
        server.shutdown()
        thread.join(10)


def test_retry_after_on_a_503_is_honoured_and_the_subprotocol_is_reported(
    raw_server: tuple[Server, list[float]],
) -> None:
    server, handshakes = raw_server
    port = server.socket.getsockname()[1]
    sink: queue.Queue[Any] = queue.Queue()
    WebSocketActor.start(
        f"ws://127.0.0.1:{port}",
        endpoint=JsonEndpoint(),
        inbound=Collector.start(sink),
        subprotocols=["v1.exchange", "v2.exchange"],
        backoff=FAST_BACKOFF_LOW_CAP,  # alone, it would retry within 10 ms
    )
    refused = next_of(sink, WsDisconnected)
    assert refused.was_open is False
    connected = next_of(sink, WsConnected)
    assert connected.subprotocol == "v2.exchange"  # the server's preference
    assert len(handshakes) == 2
    assert handshakes[1] - handshakes[0] >= 1.0


def test_url_must_be_one_or_a_sequence_of_urls() -> None:
    with pytest.raises(ValueError, match="empty"):
        WebSocketActor.start([])
    with pytest.raises(TypeError):
        WebSocketActor.start(["ws://127.0.0.1:9", 5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="valid"):
        WebSocketActor.start(["ws://127.0.0.1:9", "http://x"])


def test_a_server_heartbeat_is_answered_by_the_answer_hook() -> None:
    class Answering(JsonEndpoint):
        def parse(self, frame: str | bytes) -> Any:
            return json.loads(frame)

        def answer(self, message: Any) -> list[str]:
            if isinstance(message, dict) and message.get("type") == "test_request":
                return [json.dumps({"type": "heartbeat", "test_id": message["test_id"]})]
            return []

    with WsTestServer(None) as srv:
        ref = WebSocketActor.start(srv.url, endpoint=Answering())
        wait_until(lambda: stats(ref).state == "open", 10, "the connection")
        srv.wait_for_open_connections(1)
        srv.send_to_all(json.dumps({"type": "test_request", "test_id": "T1"}))
        [answer] = srv.wait_for_received(1)
        assert json.loads(answer) == {"type": "heartbeat", "test_id": "T1"}


def test_an_on_open_request_tells_its_reply_to() -> None:
    sink: queue.Queue[Any] = queue.Queue()
    desk = Collector.start(sink)

    class Login(JsonEndpoint):
        def on_open(self) -> list[Any]:  # type: ignore[override]
            return [WsDelegatedRequest("auth", req_frame("auth"), reply_to=desk, context="login")]

    with WsTestServer(json_reply) as srv:
        WebSocketActor.start(srv.url, endpoint=Login())
        outcome = next_of(sink, WsOutcome)
        assert outcome.request_id == "auth"
        assert outcome.context == "login"
        assert outcome.ok is not None
        assert outcome.ok.confirmed is True


def test_only_a_caller_s_inserted_requests_are_probed() -> None:
    probed: list[Any] = []

    class Probing(JsonEndpoint):
        def probe(self, request_id: Any, frame: str | bytes) -> WsDelegatedRequest | None:
            probed.append(request_id)
            return None  # nothing to ask: the request stays unresolved

    pings = Pings()
    with WsTestServer(None) as silent:
        ref = WebSocketActor.start(
            silent.url,
            endpoint=Probing(),
            heartbeat=WsHeartbeat(30.0, pings),  # none sent before the test ends
            probe_delay=0.01,
        )
        wait_until(lambda: stats(ref).state == "open", 10, "the connection")
        joined = [
            ref.ask(WsDelegatedRequest(7, req_frame(7), timeout=0.2), block=False) for _ in range(2)
        ]
        for future in joined:
            with pytest.raises(Unconfirmed):
                future.get(timeout=10)
        wait_until(lambda: probed, 10, "the probe")
        # One probe for the two joined callers; the actor's own requests
        # (heartbeats, probes) are never probed.
        ref.stop()
        assert probed == [7]


def test_a_heartbeat_refused_locally_does_not_fail_the_connection() -> None:
    with WsTestServer(None) as silent:
        sink: queue.Queue[Any] = queue.Queue()
        ref = WebSocketActor.start(
            silent.url,
            endpoint=JsonEndpoint(),
            inbound=Collector.start(sink),
            max_pending_requests=1,
            heartbeat=WsHeartbeat(0.05, Pings()),
            ping_interval=None,
        )
        assert next_of(sink, WsConnected).generation == 1
        # The one pending slot is taken: every heartbeat is TooManyPending.
        held = ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=1.0), block=False)
        with pytest.raises(Unconfirmed):
            held.get(timeout=10)
        current = stats(ref)
        assert current.outcomes["too_many_pending"] >= 1
        assert current.reconnects == 0
        assert current.state == "open"


def test_a_sustained_round_trip_over_max_rtt_fails_the_connection() -> None:
    slow = threading.Event()
    delay = threading.Event()  # never set: waiting on it is the server's slowness

    def reply(frame: str | bytes) -> str | None:
        if slow.is_set() and json.loads(frame)["id"].startswith("hb-"):
            delay.wait(0.05)  # the scenario: a slow application, not a test wait
        return json_reply(frame)

    with WsTestServer(reply) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        WebSocketActor.start(
            srv.url,
            endpoint=JsonEndpoint(),
            inbound=Collector.start(sink),
            heartbeat=WsHeartbeat(0.02, Pings(), max_rtt=0.04, window=8),
            ping_interval=None,
            backoff=FAST_BACKOFF_LOW_CAP,
        )
        assert next_of(sink, WsConnected).generation == 1
        slow.set()
        lost = next_of(sink, WsDisconnected)
        assert "over max_rtt" in str(lost.cause)
        assert lost.reconnecting is True


def test_max_rtt_and_window_are_checked() -> None:
    with pytest.raises(ValueError, match="max_rtt"):
        WsHeartbeat(1.0, Pings(), max_rtt=0)
    with pytest.raises(ValueError, match="window"):
        WsHeartbeat(1.0, Pings(), window=2)
