"""Tests for pykka_ws.testing: WsTestServer and FaultProxy, over real sockets."""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
)
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from pykka_ws.testing import (
    DEFAULT_FAULT_WEIGHTS,
    ChaosServer,
    Fault,
    FaultPlan,
    FaultProxy,
    Frame,
    WsTestServer,
)

from .support import wait_until

PREFIX = "pykka-ws-testing-"


def echo(frame: Frame) -> Frame:
    return frame


def helper_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(PREFIX)]


def client(url: str, **kwargs: Any) -> ClientConnection:
    """Open a client connection; use it as a context manager."""
    return connect(url, proxy=None, open_timeout=5, close_timeout=2, **kwargs)


def handler_threads() -> list[str]:
    return [name for name in helper_threads() if name.startswith(PREFIX + "handler")]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    assert helper_threads() == []


@pytest.fixture
def server() -> Iterator[WsTestServer]:
    with WsTestServer(reply=echo) as srv:
        yield srv


# Replies and records


@pytest.mark.timeout(10)
def test_reply_function_echoes_a_single_frame(server: WsTestServer) -> None:
    with client(server.url) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=5) == b"\x00\x01"


@pytest.mark.timeout(10)
def test_reply_function_can_send_several_frames(server: WsTestServer) -> None:
    server.set_reply(lambda frame: [frame, f"{frame!s}-again", b"bin"])
    with client(server.url) as ws:
        ws.send("a")
        assert [ws.recv(timeout=5) for _ in range(3)] == ["a", "a-again", b"bin"]
        server.set_reply(lambda frame: (f"{frame!s}{i}" for i in range(2)))
        ws.send("g")
        assert [ws.recv(timeout=5) for _ in range(2)] == ["g0", "g1"]


@pytest.mark.timeout(10)
def test_reply_function_returning_none_sends_nothing(server: WsTestServer) -> None:
    server.set_reply(lambda frame: None if frame == "quiet" else frame)
    with client(server.url) as ws:
        ws.send("quiet")
        ws.send("loud")
        # Frames are handled in order: had "quiet" been answered, its reply
        # would come first.
        assert ws.recv(timeout=5) == "loud"
    assert server.received == ["quiet", "loud"]


@pytest.mark.timeout(10)
def test_server_without_reply_function_only_records() -> None:
    with WsTestServer() as srv, client(srv.url) as ws:
        ws.send("one")
        assert srv.wait_for_received(1) == ["one"]
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.2)


@pytest.mark.timeout(10)
def test_reply_function_errors_are_logged_and_serving_continues(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    def reply(frame: Frame) -> Frame:
        if frame == "boom":
            msg = "reply exploded"
            raise RuntimeError(msg)
        return frame

    server.set_reply(reply)
    with caplog.at_level(logging.ERROR, logger="pykka_ws.testing"), client(server.url) as ws:
        ws.send("boom")
        ws.send("fine")
        assert ws.recv(timeout=5) == "fine"
    assert any("reply function failed" in r.getMessage() for r in caplog.records)
    assert server.received == ["boom", "fine"]


@pytest.mark.timeout(10)
def test_received_records_every_connection_in_arrival_order(
    server: WsTestServer,
) -> None:
    with client(server.url) as first, client(server.url) as second:
        first.send("1")
        assert first.recv(timeout=5) == "1"
        second.send(b"2")
        assert second.recv(timeout=5) == b"2"
        first.send("3")
        assert server.wait_for_received(3) == ["1", b"2", "3"]
    snapshot = server.received
    snapshot.append("not recorded")
    assert server.received == ["1", b"2", "3"]
    server.clear_received()
    assert server.received == []


@pytest.mark.timeout(10)
def test_wait_for_received_raises_a_helpful_timeout_error(
    server: WsTestServer,
) -> None:
    with client(server.url) as ws:
        ws.send("only one")
        server.wait_for_received(1)
        with pytest.raises(TimeoutError, match=r"at least 2 frame.*received 1.*only one"):
            server.wait_for_received(2, timeout=0.1)


@pytest.mark.timeout(10)
def test_silent_server_records_frames_without_replying(server: WsTestServer) -> None:
    with client(server.url) as ws:
        server.set_silent(True)
        ws.send("hush")
        assert server.wait_for_received(1) == ["hush"]
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.2)
        server.set_silent(False)
        ws.send("speak")
        assert ws.recv(timeout=5) == "speak"


# Stalling


@pytest.mark.timeout(10)
def test_stalled_server_records_nothing_until_resumed(server: WsTestServer) -> None:
    with client(server.url) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        server.stall()
        for i in range(3):
            ws.send(f"stalled-{i}")
        with pytest.raises(TimeoutError, match="stalled"):
            server.wait_for_received(2, timeout=0.3)
        assert server.received == ["before"]
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.1)
        server.resume()
        expected = ["before", "stalled-0", "stalled-1", "stalled-2"]
        assert server.wait_for_received(4) == expected
        assert [ws.recv(timeout=5) for _ in range(3)] == expected[1:]


@pytest.mark.timeout(10)
def test_stalled_server_applies_backpressure_to_the_client(
    server: WsTestServer,
) -> None:
    sent = threading.Event()
    payload = b"x" * 65536
    count = 1000  # 62.5 MiB: far more than loopback socket buffers hold

    with client(server.url, compression=None) as ws:
        ws.send("warm-up")
        assert ws.recv(timeout=5) == "warm-up"
        server.set_reply(None)  # echoing would fill the client's buffers too
        server.stall()

        def flood() -> None:
            try:
                for _ in range(count):
                    ws.send(payload)
                sent.set()
            except ConnectionClosed:
                pass

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        assert not sent.wait(1.0), "the client could send everything while stalled"
        server.resume()
        assert sent.wait(8), "the client stayed blocked after resume()"
        sender.join(5)
        assert len(server.wait_for_received(count + 1, timeout=8)) == count + 1


# Pushing and closing


@pytest.mark.timeout(10)
def test_send_to_all_pushes_to_every_open_connection(server: WsTestServer) -> None:
    with client(server.url) as first, client(server.url) as second:
        server.wait_for_open_connections(2)
        assert server.send_to_all("push") == 2
        assert server.send_to_all(b"bin") == 2
        assert [first.recv(timeout=5), first.recv(timeout=5)] == ["push", b"bin"]
        assert [second.recv(timeout=5), second.recv(timeout=5)] == ["push", b"bin"]
    server.wait_for_open_connections(0)
    assert server.send_to_all("nobody") == 0
    with pytest.raises(TypeError):
        server.send_to_all(123)  # type: ignore[arg-type]


@pytest.mark.timeout(10)
def test_send_raw_text_to_all_sends_unvalidated_text_frames(
    server: WsTestServer,
) -> None:
    with client(server.url) as ws:
        server.wait_for_open_connections(1)
        assert server.send_raw_text_to_all("é".encode()) == 1
        assert ws.recv(timeout=5) == "é"
        assert server.send_raw_text_to_all(b"\xff\xfe") == 1
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=5)
        assert info.value.sent is not None
        assert info.value.sent.code == 1007  # invalid frame payload data
    with pytest.raises(TypeError):
        server.send_raw_text_to_all("not bytes")  # type: ignore[arg-type]


@pytest.mark.timeout(10)
def test_close_connections_politely_performs_the_closing_handshake(
    server: WsTestServer,
) -> None:
    with client(server.url) as ws:
        server.wait_for_open_connections(1)
        server.close_connections(code=1000, reason="bye")
        with pytest.raises(ConnectionClosedOK) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1000, "bye")
    server.wait_for_open_connections(0)


@pytest.mark.timeout(10)
def test_close_connections_politely_with_an_error_code(server: WsTestServer) -> None:
    with client(server.url) as ws:
        server.wait_for_open_connections(1)
        server.close_connections(code=4001, reason="custom")
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 4001


@pytest.mark.timeout(10)
def test_close_connections_abruptly_resets_without_a_close_frame(
    server: WsTestServer,
) -> None:
    with client(server.url) as ws:
        server.wait_for_open_connections(1)
        server.close_connections(abrupt=True)
        assert server.open_connections == 0
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is None
        assert ws.close_code == 1006
        assert isinstance(info.value.__cause__, ConnectionResetError)


@pytest.mark.timeout(10)
def test_accept_and_close_closes_each_connection_after_the_handshake(
    server: WsTestServer,
) -> None:
    server.set_accept_and_close(True)
    with client(server.url) as ws:
        with pytest.raises(ConnectionClosedOK) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001
    assert server.connections_accepted == 1
    server.wait_for_open_connections(0)
    server.set_accept_and_close(False)
    with client(server.url) as ws:
        ws.send("stays")
        assert ws.recv(timeout=5) == "stays"


@pytest.mark.timeout(10)
def test_reject_handshake_refuses_with_the_http_status(server: WsTestServer) -> None:
    server.set_reject_handshake(401)
    with pytest.raises(InvalidStatus) as info, client(server.url):
        pass
    assert info.value.response.status_code == 401
    server.set_reject_handshake(403)
    with pytest.raises(InvalidStatus) as info, client(server.url):
        pass
    assert info.value.response.status_code == 403
    assert server.rejected_handshakes == 2
    assert server.connections_accepted == 0
    server.set_reject_handshake(None)
    with client(server.url) as ws:
        ws.send("in")
        assert ws.recv(timeout=5) == "in"
    assert server.connections_accepted == 1


def test_reject_handshake_validates_the_status() -> None:
    srv = WsTestServer()
    with pytest.raises(ValueError, match="101"):
        srv.set_reject_handshake(101)
    with pytest.raises(ValueError, match="999"):
        srv.set_reject_handshake(999)


# Counters and waits


@pytest.mark.timeout(10)
def test_connection_counters_follow_clients(server: WsTestServer) -> None:
    assert (server.connections_accepted, server.open_connections) == (0, 0)
    with client(server.url):
        server.wait_for_connections(1)
        server.wait_for_open_connections(1)
        with client(server.url):
            server.wait_for_connections(2)
            server.wait_for_open_connections(2)
        server.wait_for_open_connections(1)
    server.wait_for_open_connections(0)
    assert server.connections_accepted == 2


@pytest.mark.timeout(10)
def test_waits_raise_timeout_errors(server: WsTestServer) -> None:
    with pytest.raises(TimeoutError, match="accepted connection"):
        server.wait_for_connections(1, timeout=0.1)
    with pytest.raises(TimeoutError, match="open connection"):
        server.wait_for_open_connections(1, timeout=0.1)


# Life cycle


def test_port_and_url_need_a_started_server() -> None:
    srv = WsTestServer()
    assert srv.host == "127.0.0.1"
    with pytest.raises(RuntimeError, match="start"):
        _ = srv.port
    srv.stop()  # stopping a server that never started is a no-op


@pytest.mark.timeout(10)
def test_url_points_at_the_bound_ephemeral_port(server: WsTestServer) -> None:
    assert server.port > 0
    assert server.url == f"ws://127.0.0.1:{server.port}"
    assert server.start() is server  # already running: no-op


@pytest.mark.timeout(10)
def test_stop_is_idempotent_and_start_listens_again_on_the_same_port() -> None:
    srv = WsTestServer(reply=echo).start()
    try:
        port = srv.port
        with client(srv.url) as ws:
            ws.send("first life")
            assert ws.recv(timeout=5) == "first life"
        srv.stop()
        srv.stop()
        assert helper_threads() == []
        with pytest.raises(OSError), client(f"ws://127.0.0.1:{port}"):
            pass
        srv.start()
        assert srv.port == port
        with client(srv.url) as ws:
            ws.send("second life")
            assert ws.recv(timeout=5) == "second life"
        assert srv.received == ["first life", "second life"]
        assert srv.connections_accepted == 2
    finally:
        srv.stop()


@pytest.mark.timeout(10)
def test_stop_joins_every_thread() -> None:
    before = set(threading.enumerate())
    srv = WsTestServer(reply=echo, ping_interval=0.05).start()
    with client(srv.url) as idle, client(srv.url) as stalled:
        idle.send("hi")
        assert idle.recv(timeout=5) == "hi"
        srv.wait_for_open_connections(2)
        names = helper_threads()
        for kind in ("accept", "handler", "recv", "keepalive"):
            assert any(name.startswith(PREFIX + kind) for name in names), names
        srv.stall()
        for i in range(40):  # more than websockets' receive queue holds
            stalled.send(f"frame {i}")
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 4
        # Right after stop(), while clients still hold their sockets.
        assert helper_threads() == []
        with pytest.raises(ConnectionClosed):
            idle.recv(timeout=5)
    wait_until(lambda: set(threading.enumerate()) <= before)
    assert set(threading.enumerate()) == before


@pytest.mark.timeout(10)
def test_stop_aborts_handshakes_in_progress() -> None:
    srv = WsTestServer().start()
    with socket.create_connection((srv.host, srv.port), timeout=5) as raw:
        # The connection is accepted and websockets reads its (missing) request.
        wait_until(lambda: any(n.startswith(PREFIX + "recv") for n in helper_threads()))
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 4
        assert helper_threads() == []
        assert raw.recv(1024) == b""
    assert srv.connections_accepted == 0


@pytest.mark.timeout(10)
def test_close_connections_politely_does_not_hang_on_a_stalled_server(
    server: WsTestServer,
) -> None:
    with client(server.url) as ws:
        server.wait_for_open_connections(1)
        server.stall()
        for i in range(40):
            ws.send(f"frame {i}")
        server.close_connections(code=1000)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    server.wait_for_open_connections(0)


@pytest.mark.timeout(10)
def test_tls_server_serves_wss_and_stops_during_a_tls_handshake() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    srv = WsTestServer(reply=echo, ssl=server_context).start()
    try:
        assert srv.url == f"wss://127.0.0.1:{srv.port}"
        assert server_context.maximum_version is ssl.TLSVersion.TLSv1_2  # capped (see _server)
        with client(srv.url, ssl=client_context, server_hostname="localhost") as ws:
            assert isinstance(ws.socket, ssl.SSLSocket)
            assert ws.socket.version() == "TLSv1.2"
            ws.send("secret")
            assert ws.recv(timeout=5) == "secret"
        # Let the first connection's handler finish, so that the handler we
        # wait for below is the raw connection's: it was accepted and is in
        # its TLS handshake (not in the listen backlog, which would get a RST).
        wait_until(lambda: not handler_threads())
        # A TCP client that never starts the TLS handshake.
        with socket.create_connection((srv.host, srv.port), timeout=5) as raw:
            wait_until(lambda: len(handler_threads()) == 1)
            started = time.monotonic()
            srv.stop()
            assert time.monotonic() - started < 4
            assert helper_threads() == []
            assert raw.recv(1024) == b""
    finally:
        srv.stop()


# FaultProxy


@pytest.fixture
def proxy(server: WsTestServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.host, server.port) as prx:
        yield prx


@pytest.mark.timeout(10)
def test_fault_proxy_forwards_both_directions(server: WsTestServer, proxy: FaultProxy) -> None:
    assert proxy.url == f"ws://127.0.0.1:{proxy.port}"
    assert proxy.port != server.port
    with client(proxy.url) as ws:
        ws.send("through")
        assert ws.recv(timeout=5) == "through"
        big = b"\xab" * 300_000
        ws.send(big)
        assert ws.recv(timeout=5) == big
    assert proxy.connections_accepted == 1
    assert server.connections_accepted == 1
    server.wait_for_open_connections(0)


@pytest.mark.timeout(10)
def test_blackhole_stops_forwarding_but_keeps_the_connection_open(
    server: WsTestServer, proxy: FaultProxy
) -> None:
    with client(proxy.url) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        proxy.blackhole()
        ws.send("into the void")
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.5)
        assert ws.state is State.OPEN
        assert server.received == ["before"]
        assert server.open_connections == 1
        proxy.restore()
        assert ws.recv(timeout=5) == "into the void"


@pytest.mark.timeout(10)
def test_blackholed_proxy_accepts_new_connections_but_forwards_nothing(
    server: WsTestServer, proxy: FaultProxy
) -> None:
    proxy.blackhole()
    with pytest.raises(TimeoutError):
        connect(proxy.url, proxy=None, open_timeout=0.5)
    assert proxy.connections_accepted == 1
    assert server.connections_accepted == 0
    proxy.restore()
    with client(proxy.url) as ws:
        ws.send("back")
        assert ws.recv(timeout=5) == "back"


@pytest.mark.timeout(10)
def test_reset_all_resets_both_sides(server: WsTestServer, proxy: FaultProxy) -> None:
    with client(proxy.url) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
        server.wait_for_open_connections(1)
        proxy.reset_all()
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is None
        assert isinstance(info.value.__cause__, ConnectionResetError)
        server.wait_for_open_connections(0)
    with client(proxy.url) as ws:
        ws.send("again")
        assert ws.recv(timeout=5) == "again"
    assert proxy.connections_accepted == 2


@pytest.mark.timeout(10)
def test_fault_proxy_stop_closes_connections_and_joins_its_thread(
    server: WsTestServer,
) -> None:
    prx = FaultProxy(server.host, server.port).start()
    with client(prx.url) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        prx.stop()
        prx.stop()
        assert not any(n.startswith(PREFIX + "proxy") for n in helper_threads())
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    with pytest.raises(RuntimeError, match="restart"):
        prx.start()


# ChaosServer and FaultPlan


def confirm_fn(frame: Frame) -> Frame:
    return f"ok {frame!s}"


def reject_fn(frame: Frame) -> Frame:
    return f"no {frame!s}"


def chaos(fault: Fault, **plan: Any) -> ChaosServer:
    return ChaosServer(FaultPlan.only(fault, **plan), confirm=confirm_fn, reject=reject_fn, seed=7)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("fault", "expected"), [(Fault.CONFIRM, "ok a"), (Fault.REJECT, "no a")])
def test_chaos_server_answers_with_its_confirm_and_reject_functions(
    fault: Fault, expected: str
) -> None:
    with chaos(fault) as srv, client(srv.url) as ws:
        ws.send("a")
        assert ws.recv(timeout=5) == expected
    assert srv.fault_counts()[fault] == 1
    assert srv.received == ["a"]


@pytest.mark.timeout(10)
def test_chaos_server_sends_delayed_replies_late_while_it_keeps_reading() -> None:
    with chaos(Fault.DELAY, delay=0.3) as srv, client(srv.url) as ws:
        sent = time.monotonic()
        ws.send("a")
        ws.send("b")
        srv.wait_for_received(2)  # the delay does not hold up reading
        assert ws.recv(timeout=5) == "ok a"
        assert time.monotonic() - sent >= 0.3
        assert ws.recv(timeout=5) == "ok b"


@pytest.mark.timeout(10)
def test_chaos_server_stays_silent_and_logs_what_it_did() -> None:
    with chaos(Fault.SILENT) as srv, client(srv.url) as ws:
        ws.send("a")
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)
        [log] = srv.connection_logs()
    assert log.index == 1
    assert log.frames == ("a",)
    assert log.faults == ((Fault.SILENT, "a"),)
    assert log.closed is False


@pytest.mark.timeout(10)
def test_chaos_server_closes_politely_with_1011() -> None:
    with chaos(Fault.CLOSE) as srv, client(srv.url) as ws:
        ws.send("a")
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1011
        srv.wait_for_open_connections(0)


@pytest.mark.timeout(10)
def test_chaos_server_resets_without_a_close_frame() -> None:
    with chaos(Fault.RESET) as srv, client(srv.url) as ws:
        ws.send("a")
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is None
        srv.wait_for_open_connections(0)
        assert srv.connection_logs()[0].closed is True


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("fault", "code"),
    [(Fault.INVALID_UTF8, 1007), (Fault.OVERSIZE, 1009), (Fault.HUGE_HEADER, 1009)],
)
def test_chaos_server_garbage_makes_the_client_fail_the_connection(fault: Fault, code: int) -> None:
    with chaos(fault, oversize=2000) as srv, client(srv.url, max_size=1000) as ws:
        ws.send("a")
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=5)
        assert info.value.sent is not None
        assert info.value.sent.code == code
        srv.wait_for_open_connections(0)


@pytest.mark.timeout(10)
def test_chaos_server_junk_is_drawn_from_the_plan() -> None:
    junk = ("junk-1", b"junk-2")
    with chaos(Fault.JUNK, junk=junk) as srv, client(srv.url) as ws:
        for _ in range(5):
            ws.send("a")
            assert ws.recv(timeout=5) in junk


@pytest.mark.timeout(10)
def test_chaos_server_stall_stops_handling_but_records_what_arrives_complete() -> None:
    # A stall far longer than the test: what arrives meanwhile is recorded
    # as received complete, and not handled.
    with chaos(Fault.STALL, stall=60.0) as srv, client(srv.url) as ws:
        ws.send("a")  # handled: stalls the connection
        srv.wait_for_received(1)
        ws.send("b")  # arrives complete, not handled until the stall is over
        wait_until(lambda: srv.connection_logs()[0].frames == ("a", "b"))
        assert srv.received == ["a"]
        assert [fault for fault, _ in srv.connection_logs()[0].faults] == [Fault.STALL]
    # A short one ends on its own: the frame held back is handled then.
    with chaos(Fault.STALL, stall=0.3) as srv, client(srv.url) as ws:
        ws.send("a")
        srv.wait_for_received(1)
        ws.send("b")
        assert srv.wait_for_received(2, timeout=5) == ["a", "b"]
        log = srv.connection_logs()[0]
        # "a" arrived before it stalled the connection, and "b" was handled
        # after the stall: at least `stall` seconds after "a" arrived.
        assert time.monotonic() - log.received_at[0] >= 0.3
        assert [fault for fault, _ in log.faults] == [Fault.STALL, Fault.STALL]


@pytest.mark.timeout(10)
def test_chaos_server_records_frames_per_connection_with_fragments_joined() -> None:
    with ChaosServer(FaultPlan.only(Fault.SILENT), seed=1) as srv:
        with client(srv.url) as ws:
            ws.send("one")
            ws.send(["frag", "mented"])
            ws.send(b"\x00\x01")
            srv.wait_for_received(3)
        with client(srv.url) as ws:
            ws.send("two")
            srv.wait_for_received(4)
        srv.wait_for_open_connections(0)
        logs = srv.connection_logs()
    assert [log.index for log in logs] == [1, 2]
    assert logs[0].frames == ("one", "fragmented", b"\x00\x01")
    assert logs[1].frames == ("two",)
    assert all(log.closed for log in logs)
    times = [t for log in logs for t in log.received_at]
    assert times == sorted(times)


def fault_sequence(seed: int) -> list[Fault]:
    plan = FaultPlan(weights={Fault.CONFIRM: 1, Fault.REJECT: 1, Fault.SILENT: 1, Fault.DELAY: 1})
    with ChaosServer(plan, confirm=confirm_fn, seed=seed) as srv, client(srv.url) as ws:
        for i in range(30):
            ws.send(str(i))
        srv.wait_for_received(30)
        wait_until(lambda: len(srv.connection_logs()[0].faults) == 30)
        return [fault for fault, _ in srv.connection_logs()[0].faults]


@pytest.mark.timeout(20)
def test_chaos_server_replays_the_same_faults_with_the_same_seed() -> None:
    first = fault_sequence(1234)
    assert fault_sequence(1234) == first
    assert len(set(first)) > 1


@pytest.mark.timeout(10)
def test_chaos_server_picks_a_seed_when_given_none_and_checks_its_arguments() -> None:
    assert isinstance(ChaosServer().seed, int)
    assert ChaosServer(seed=5).seed == 5
    assert ChaosServer().plan == FaultPlan()
    with pytest.raises(TypeError):
        ChaosServer(seed="5")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ChaosServer({Fault.CONFIRM: 1})  # type: ignore[arg-type]


@pytest.mark.timeout(10)
def test_chaos_server_inject_does_a_fault_to_every_open_connection() -> None:
    with chaos(Fault.CONFIRM) as srv, client(srv.url) as ws1, client(srv.url) as ws2:
        srv.wait_for_open_connections(2)
        with pytest.raises(ValueError, match="cannot be injected"):
            srv.inject(Fault.CONFIRM)
        assert srv.inject(Fault.RESET) == 2
        for ws in (ws1, ws2):
            with pytest.raises(ConnectionClosedError):
                ws.recv(timeout=5)
        srv.wait_for_open_connections(0)
        assert srv.inject(Fault.RESET) == 0
        assert srv.fault_counts()[Fault.RESET] == 2


@pytest.mark.timeout(10)
def test_chaos_server_stop_joins_everything_with_replies_pending_and_connections_stalled() -> None:
    plan = FaultPlan(weights={Fault.DELAY: 1, Fault.STALL: 1}, delay=30.0, stall=30.0)
    srv = ChaosServer(plan, confirm=confirm_fn, seed=3).start()
    with client(srv.url) as ws:
        for i in range(20):
            ws.send(str(i))
        wait_until(lambda: Fault.STALL in {f for f, _ in srv.connection_logs()[0].faults})
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 4
        assert helper_threads() == []
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)


def test_fault_plan_draws_only_weighted_faults() -> None:
    plan = FaultPlan(weights={Fault.CONFIRM: 3, Fault.RESET: 1, Fault.CLOSE: 0})
    rng = random.Random(0)
    drawn = [plan.draw(rng) for _ in range(400)]
    assert set(drawn) == {Fault.CONFIRM, Fault.RESET}
    assert drawn.count(Fault.CONFIRM) > drawn.count(Fault.RESET)
    assert {FaultPlan.only(Fault.JUNK).draw(rng) for _ in range(20)} == {Fault.JUNK}
    assert sum(DEFAULT_FAULT_WEIGHTS.values()) > 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"weights": {"confirm": 1}}, TypeError),
        ({"weights": [(Fault.CONFIRM, 1)]}, TypeError),
        ({"weights": {Fault.CONFIRM: "1"}}, TypeError),
        ({"weights": {Fault.CONFIRM: True}}, TypeError),
        ({"weights": {Fault.CONFIRM: -1}}, ValueError),
        ({"weights": {Fault.CONFIRM: float("nan")}}, ValueError),
        ({"weights": {Fault.CONFIRM: 0}}, ValueError),
        ({"weights": {}}, ValueError),
        ({"delay": -0.1}, ValueError),
        ({"delay": float("inf")}, ValueError),
        ({"stall": "1"}, TypeError),
        ({"oversize": 0}, ValueError),
        ({"oversize": 1.5}, TypeError),
        ({"junk": ()}, ValueError),
        ({"junk": (1,)}, TypeError),
    ],
)
def test_fault_plan_refuses_bad_settings(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        FaultPlan(**kwargs)


@pytest.mark.timeout(10)
def test_chaos_server_set_plan_changes_the_mix_from_the_next_frame() -> None:
    with chaos(Fault.SILENT) as srv, client(srv.url) as ws:
        ws.send("a")
        srv.wait_for_received(1)
        srv.set_plan(FaultPlan.only(Fault.CONFIRM))
        assert srv.plan == FaultPlan.only(Fault.CONFIRM)
        ws.send("b")
        assert ws.recv(timeout=5) == "ok b"
        with pytest.raises(TypeError):
            srv.set_plan({Fault.CONFIRM: 1})  # type: ignore[arg-type]
    assert [fault for fault, _ in srv.connection_logs()[0].faults] == [Fault.SILENT, Fault.CONFIRM]
