"""Keepalive on the process-wide scheduler, and the threads a connection costs.

Keepalive pings are the owner's: timed by the one ``pykka-ws-scheduler``
thread and written by the writer, so websockets starts no keepalive thread
per connection. A pong that does not come within ``ping_timeout`` fails the
connection as websockets' own keepalive would (close code 1011).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pykka
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.frames import CloseCode

from pykka_ws import WsConnected, WsDelegatedRequest, WsDisconnected, _writer
from pykka_ws.testing import FaultProxy, WsTestServer
from tests.support import (
    DEADLINE_SLACK,
    Collector,
    inspectable,
    library_threads,
    next_of,
    req_frame,
    start,
    stats,
    wait_no_library_threads,
    wait_until,
)


def _keepalive_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "keepalive" in t.name]


def test_a_pong_that_does_not_come_fails_the_connection_from_the_scheduler(
    server: WsTestServer,
) -> None:
    proxy = FaultProxy("127.0.0.1", server.port).start()
    try:
        sink: queue.Queue[Any] = queue.Queue()
        actor, instances = inspectable()
        ref = start(
            proxy.url,
            actor=actor,
            inbound=Collector.start(sink),
            ping_interval=0.1,
            ping_timeout=0.3,
            close_timeout=0.2,
        )
        next_of(sink, WsConnected)
        # Pings are answered while the peer is alive: round-trip samples.
        wait_until(lambda: len(instances[0]._rtts) >= 2, 10, "two keepalive pongs")
        assert not _keepalive_threads()  # websockets' keepalive thread never started
        proxy.blackhole()
        blackholed = time.monotonic()
        event = next_of(sink, WsDisconnected, timeout=10.0)
        took = time.monotonic() - blackholed
        # The path taken: our pong check (a close frame 1011 "keepalive ping
        # timeout" failed the connection), by one interval plus the timeout.
        assert isinstance(event.cause, ConnectionClosedError)
        assert event.cause.sent is not None
        assert event.cause.sent.code == CloseCode.INTERNAL_ERROR
        assert event.cause.sent.reason == "keepalive ping timeout"
        assert took <= 0.1 + 0.3 + DEADLINE_SLACK
        proxy.restore()
        next_of(sink, WsConnected, timeout=10.0)
        assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed
    finally:
        pykka.ActorRegistry.stop_all()
        proxy.stop()


def test_answered_pings_keep_the_connection_and_go_on(server: WsTestServer) -> None:
    actor, instances = inspectable()
    ref = start(server.url, actor=actor, ping_interval=0.02, ping_timeout=0.1)
    # Many more intervals than one timeout pass: each pong re-arms the next ping.
    wait_until(lambda: len(instances[0]._rtts) >= 15, 10, "fifteen keepalive pongs")
    after = stats(ref)
    assert after.state == "open"
    assert after.reconnects == 0
    assert after.rtt_p50 is not None
    assert not _keepalive_threads()


def test_without_ping_timeout_pings_go_on_and_nothing_is_failed(server: WsTestServer) -> None:
    actor, instances = inspectable()
    ref = start(server.url, actor=actor, ping_interval=0.02, ping_timeout=None)
    wait_until(lambda: len(instances[0]._rtts) >= 5, 10, "five keepalive pongs")
    assert stats(ref).reconnects == 0


def test_no_ping_interval_sends_no_ping(server: WsTestServer) -> None:
    actor, instances = inspectable()
    ref = start(server.url, actor=actor, ping_interval=None)
    assert ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10).confirmed
    assert not instances[0]._rtts
    assert instances[0]._ping_out is None


def test_three_threads_per_connection_each_named_and_gone_after_stop(
    server: WsTestServer,
) -> None:
    count = 4
    before = set(threading.enumerate())
    refs = [start(server.url, ping_interval=0.05, ping_timeout=1.0) for _ in range(count)]
    # The connectors end once their connection is open.
    wait_until(
        lambda: not [t for t in library_threads() if t.name.startswith("pykka-ws-connect")],
        10,
        "connector threads to end",
    )
    names = sorted(t.name for t in library_threads())
    assert names.count("pykka-ws-scheduler") == 1
    per_connection = [n for n in names if n != "pykka-ws-scheduler"]
    # The owner, the writer and websockets' receiving thread: no keepalive thread.
    assert len(per_connection) == 3 * count, names
    assert sum(n.startswith("WebSocketActor") for n in per_connection) == count
    assert sum(n.startswith("WsWriter") for n in per_connection) == count
    assert sum(n.startswith("pykka-ws-recv-") for n in per_connection) == count
    # Every other thread started since the test began is the test server's.
    others = [
        t.name
        for t in set(threading.enumerate()) - before
        if t not in library_threads() and not t.name.startswith("pykka-ws-testing")
    ]
    assert not others
    for ref in refs:
        ref.stop()
    wait_no_library_threads()


def test_a_pong_handled_before_its_ping_sent_still_arms_the_next_ping(
    server: WsTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The receiving thread can hand the owner the pong before the writer's
    # PingSent arrives. Force that order for every ping: the writer returns
    # only once the owner has handled the pong.
    actor, instances = inspectable()
    pong_first: list[bool] = []

    def send_ping_late(connection: Any) -> tuple[threading.Event | None, float]:
        pong, sent_at = _writer.send_ping.__wrapped__(connection)  # type: ignore[attr-defined]
        if pong is not None and instances:
            handled = len(instances[0]._rtts) + 1
            pong.wait(10)
            wait_until(lambda: len(instances[0]._rtts) >= handled, 10, "the pong handled")
            pong_first.append(True)
        return pong, sent_at

    send_ping_late.__wrapped__ = _writer.send_ping  # type: ignore[attr-defined]
    monkeypatch.setattr(_writer, "send_ping", send_ping_late)
    ref = start(server.url, actor=actor, ping_interval=0.02, ping_timeout=1.0)
    wait_until(lambda: len(pong_first) >= 5, 10, "five pings, each pong handled first")
    assert stats(ref).reconnects == 0


def test_stop_does_not_wait_for_a_keepalive_ping_stuck_in_its_write(
    server: WsTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ping written when the peer stopped reading holds websockets' lock in
    # sendall until the socket goes: stop() must abort, not close() politely.
    holding = threading.Event()

    def stuck_ping(connection: Any) -> tuple[threading.Event | None, float]:
        with connection.protocol_mutex:
            holding.set()
            deadline = time.monotonic() + 10
            while connection.socket.fileno() != -1 and time.monotonic() < deadline:
                holding.wait(0.005)  # until the socket is shut and closed
        return None, time.monotonic()

    monkeypatch.setattr(_writer, "send_ping", stuck_ping)
    ref = start(
        server.url, ping_interval=0.02, ping_timeout=5.0, close_timeout=0.2, write_timeout=None
    )
    assert holding.wait(10)
    started = time.monotonic()
    ref.stop(timeout=15)
    took = time.monotonic() - started
    assert took < 0.2 + DEADLINE_SLACK, f"stop() took {took:.2f} s behind a stuck ping"
    wait_no_library_threads()
