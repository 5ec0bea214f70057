"""Regressions for promises the library broke under hostile use ("Never hang, never lie").

Each test here failed before its fix, against real loopback servers.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import pykka
import pytest
from pytest_mock import MockerFixture

from pykka_ws import (
    NotDelivered,
    SubscriberActor,
    Unconfirmed,
    WebSocketActor,
    WsBackoff,
    WsConnected,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsDisconnected,
    WsGetStats,
    WsInbound,
    WsLateResponse,
    _actor,
)
from pykka_ws._writer import WsWriter
from pykka_ws.testing import WsTestServer

from .support import (
    Collector,
    JsonEndpoint,
    json_reply,
    next_of,
    pause,
    req_frame,
    start,
    stats,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


# -- a reply for a frame that never reached the socket confirms nothing -----


class Unstarted(WebSocketActor):
    """Answers "unstarted": how many pending requests have not started writing."""

    def on_receive(self, message: Any) -> Any:
        if message == "unstarted":
            table = self._core.table  # the owner's thread: a consistent look
            return sum(1 for e in table if e.claim is None or e.claim.state == 0)
        return super().on_receive(message)


def test_reply_to_a_request_still_queued_confirms_nothing_and_the_request_is_written(
    server: WsTestServer, mocker: MockerFixture
) -> None:
    # Hold the frames between the owner and the socket: the writer waits
    # before writing (its claims stay PENDING; websockets' lock is free, so
    # replies are still read), and the owner may not write them itself.
    release = threading.Event()
    writes: list[object] = []
    write = WsWriter.on_receive

    def held_write(self: WsWriter, message: Any) -> Any:
        writes.append(message)
        assert release.wait(30), "the test never released the writer"
        return write(self, message)

    mocker.patch.object(WsWriter, "on_receive", held_write)
    mocker.patch.object(_actor, "try_write_now", return_value=None)
    sink: queue.Queue[Any] = queue.Queue()
    collector = Collector.start(sink)
    ref = start(server.url, inbound=collector, actor=Unstarted)
    futures = [ref.ask(WsDelegatedRequest(i, req_frame(i)), block=False) for i in range(100)]
    wait_until(
        lambda: ref.ask("unstarted", timeout=10) == 100, 10, "the requests queued, unstarted"
    )
    wait_until(lambda: writes, 10, "the writer to be handed the first batch")
    # Replies (a spoof, or a stale reply to an earlier use of the ids) for
    # frames that have not left: they must not confirm anything.
    server.wait_for_open_connections(1)  # the client may see it open first
    for i in range(100):
        server.send_to_all(json.dumps({"id": i, "result": "spoofed"}))
    wait_until(lambda: stats(ref).stray_replies == 100, 10, "the spoofed replies to be handled")
    late = [next_of(sink, WsLateResponse) for _ in range(100)]
    assert sorted(m.request_id for m in late) == list(range(100))
    assert all("spoofed" in m.frame for m in late)
    assert stats(ref).outcomes["confirmed"] == 0
    assert stats(ref).pending == 100
    assert server.received == []
    # Once the writer goes on, each request is written and confirmed by its
    # real reply, which the server sent after receiving it.
    release.set()
    results = [f.get(timeout=30) for f in futures]
    assert all(isinstance(r, WsDelegatedOk) and r.confirmed for r in results)
    assert all(json.loads(r.response)["result"] == "ok" for r in results)
    assert {json.loads(f)["id"] for f in server.received} == set(range(100))


# -- a joiner out of time gets what its id's frame would get ----------------


def test_joiner_whose_deadline_passed_is_unconfirmed_when_the_id_is_on_the_wire() -> None:
    with WsTestServer(None) as silent:  # receives, never replies
        ref = start(silent.url)
        first = ref.ask(WsDelegatedRequest(7, req_frame(7), timeout=10.0), block=False)
        silent.wait_for_received(1)
        wait_until(lambda: stats(ref).frames_out == 1, 5, "the frame to be written")
        late = WsDelegatedRequest(7, req_frame(7), timeout=0.001)
        wait_until(lambda: time.monotonic() > late.created_at + 0.001, 1, "its deadline")
        with pytest.raises(Unconfirmed) as excinfo:
            ref.ask(late, timeout=10)
        assert excinfo.value.written is True
        assert excinfo.value.request_id == 7
        # The first waiter is unharmed and the id was sent once.
        assert stats(ref).pending == 1
        ref.stop()
        with pytest.raises(Unconfirmed):
            first.get(timeout=10)
        assert len(silent.received) == 1


def test_late_request_for_an_id_not_in_flight_is_not_delivered(server: WsTestServer) -> None:
    ref = start(server.url)
    late = WsDelegatedRequest(8, req_frame(8), timeout=0.001)
    wait_until(lambda: time.monotonic() > late.created_at + 0.001, 1, "its deadline")
    with pytest.raises(NotDelivered):
        ref.ask(late, timeout=10)
    assert stats(ref).frames_out == 0


# -- counters count what their docs say ---------------------------------------


def test_generation_and_reconnects_count_connections_not_attempts() -> None:
    server = WsTestServer(json_reply)
    server.start()
    port = int(server.url.rsplit(":", 1)[1])
    server.stop()  # the port is known and nothing listens on it
    sink: queue.Queue[Any] = queue.Queue()
    collector = Collector.start(sink)
    ref = WebSocketActor.start(
        f"ws://127.0.0.1:{port}",
        endpoint=JsonEndpoint(),
        inbound=collector,
        backoff=WsBackoff(initial=0.01, cap=0.02),
    )
    wait_until(lambda: stats(ref).attempts >= 3, 10, "three refused attempts")
    refused = next_of(sink, WsDisconnected)
    assert refused.was_open is False
    assert refused.generation == 1  # the number the connection would have had
    server.start()
    try:
        connected = next_of(sink, WsConnected)
        assert connected.generation == 1
        current = stats(ref)
        assert current.reconnects == 0
        assert current.attempts >= 3
        # A lost connection and its replacement: generation 2, one reconnect.
        server.wait_for_open_connections(1)  # the client may see it open first
        server.close_connections()
        lost = next_of(sink, WsDisconnected)
        while not lost.was_open:  # refusals while the server lets it back in
            lost = next_of(sink, WsDisconnected)
        assert lost.generation == 1
        assert next_of(sink, WsConnected).generation == 2
        assert stats(ref).reconnects == 1
    finally:
        ref.stop()
        server.stop()


# -- a slow subscriber slows the socket, end to end --------------------------


class SlowSubscriber(pykka.ThreadingActor):
    """Works a while on every frame and records how full its inbox got."""

    def __init__(self, work: int, blocked: float = 0.0) -> None:
        super().__init__()
        self.work = work
        self.blocked = blocked  # seconds blocked per frame (the GIL let go), not CPU
        self.frames: list[Any] = []
        self.peak = 0
        self.events: list[object] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, WsInbound):
            self.peak = max(self.peak, self.actor_inbox.qsize())  # type: ignore[attr-defined]
            if self.blocked:
                pause(self.blocked)  # a slow consumer waiting on something else
            else:
                sum(range(self.work))  # a slow consumer: CPU spent per frame
            self.frames.append(message.frame)
            return None
        if message == "report":
            return list(self.frames), self.peak, list(self.events)
        self.events.append(message)
        return None


def _report(ref: pykka.ActorRef[Any]) -> tuple[list[Any], int, list[object]]:
    result: tuple[list[Any], int, list[object]] = ref.ask("report", timeout=10)
    return result


def _flood(server: WsTestServer, count: int) -> threading.Thread:
    # The client can see its connection open before the server has counted
    # it: a frame pushed before that goes to no one (a flake under load).
    server.wait_for_open_connections(1)

    def push() -> None:
        for i in range(count):
            server.send_to_all(json.dumps({"seq": i, "pad": "y" * 200}))

    thread = threading.Thread(target=push, name="test-flood", daemon=True)
    thread.start()
    return thread


class LightSlowSubscriber(SubscriberActor, SlowSubscriber):
    """The same, with `SubscriberActor`'s inbox (a `queue.SimpleQueue`)."""


@pytest.mark.parametrize("kind", [SlowSubscriber, LightSlowSubscriber])
def test_slow_subscriber_slows_the_socket_with_memory_bounded_and_order_kept(
    server: WsTestServer, kind: type[SlowSubscriber]
) -> None:
    count = 3000
    subscriber = kind.start(20_000)
    inbox_type = queue.SimpleQueue if kind is LightSlowSubscriber else queue.Queue
    assert type(subscriber.actor_inbox) is inbox_type
    ref = start(server.url, inbound=subscriber, max_queue=32, subscriber_queue=64)
    flood = _flood(server, count)
    wait_until(lambda: len(_report(subscriber)[0]) == count, 50, "every frame delivered")
    flood.join(10)
    frames, peak, _ = _report(subscriber)
    assert [json.loads(f)["seq"] for f in frames] == list(range(count))  # nothing lost, in order
    # Its inbox held at most subscriber_queue + max_queue frames (+ the few
    # told before the owner looked, and its own "report" asks).
    assert peak <= 64 + 32 + 4, peak
    assert stats(ref).inbound_dropped == 0


def test_drop_policy_drops_frames_for_a_full_subscriber_and_counts_them(
    server: WsTestServer,
) -> None:
    count = 2000
    # Slow by blocking, not by CPU: a subscriber spinning in C code would
    # starve the reading threads of the GIL under load (a flake seen with two
    # busy loops), which is not what this test is about.
    subscriber = SlowSubscriber.start(0, blocked=0.005)
    ref = start(
        server.url,
        inbound=subscriber,
        subscriber_queue=16,
        subscriber_overflow="drop",
    )
    flood = _flood(server, count)
    wait_until(lambda: stats(ref).frames_in == count, 30, "every frame read")
    flood.join(10)
    dropped = stats(ref).inbound_dropped
    wait_until(lambda: len(_report(subscriber)[0]) == count - dropped, 30, "the rest delivered")
    frames, peak, events = _report(subscriber)
    assert dropped > 0
    assert peak <= 16 + 2, peak
    seqs = [json.loads(f)["seq"] for f in frames]
    assert seqs == sorted(seqs)  # what is delivered keeps its order
    assert any(isinstance(e, WsConnected) for e in events)  # events are never dropped


def test_subscriber_queue_and_overflow_are_checked_at_start() -> None:
    with pytest.raises(ValueError, match="subscriber_overflow"):
        WebSocketActor.start("ws://127.0.0.1:9", subscriber_overflow="latest")
    with pytest.raises(ValueError, match="subscriber_queue"):
        WebSocketActor.start("ws://127.0.0.1:9", subscriber_queue=0)
    with pytest.raises(TypeError, match="subscriber_queue"):
        WebSocketActor.start("ws://127.0.0.1:9", subscriber_queue=1.5)


# -- resolving many requests at once lets the inbox through -------------------


def _track(futures: list[Any], done: list[int]) -> list[int]:
    """Count outcomes in ``done`` as they are set (callbacks run on the owner's thread)."""
    for future in futures:
        future.add_done_callback(lambda _value, _error: done.append(1))
    return done


class StatsOnDisconnect(pykka.ThreadingActor):
    """On WsDisconnected, asks for stats and records how many outcomes were set by then."""

    def __init__(self, done: list[int]) -> None:
        super().__init__()
        self.done = done
        self.ref: pykka.ActorRef[Any] | None = None
        self.seen: list[int] = []
        self.answered = threading.Event()

    def on_receive(self, message: Any) -> None:
        if isinstance(message, pykka.ActorRef):
            self.ref = message
        elif isinstance(message, WsDisconnected) and self.ref is not None and not self.seen:
            future = self.ref.ask(WsGetStats(), block=False)

            def answered(_value: object, _error: object) -> None:
                self.seen.append(len(self.done))  # on the owner's thread, as it answers
                self.answered.set()

            future.add_done_callback(answered)


def test_a_disconnect_ending_many_requests_answers_stats_before_every_waiter_is_told() -> None:
    count = 20_000
    with WsTestServer(None) as silent:
        done: list[int] = []
        probe = StatsOnDisconnect.start(done)
        ref = start(
            silent.url,
            inbound=probe,
            max_pending_requests=count,
            outbound_capacity=count,
            default_timeout=60.0,
        )
        probe.tell(ref)
        futures = [ref.ask(WsDelegatedRequest(i, req_frame(i)), block=False) for i in range(count)]
        _track(futures, done)
        wait_until(lambda: stats(ref).frames_out == count, 30, "every request written")
        silent.close_connections(abrupt=True)
        assert probe.proxy().answered.get().wait(30)
        seen = probe.proxy().seen.get()
        errors = []
        for future in futures:
            with pytest.raises(Unconfirmed) as excinfo:
                future.get(timeout=30)
            errors.append(excinfo.value)
        assert all(e.written for e in errors)
        # The stats were answered while the 20,000 waiters were being told.
        assert 0 <= seen[0] < count, seen


def test_many_requests_expiring_at_once_let_stats_through_between_slices() -> None:
    count = 20_000
    with WsTestServer(None) as silent:
        ref = start(
            silent.url,
            max_pending_requests=count,
            outbound_capacity=count,
        )
        requests = [WsDelegatedRequest(i, req_frame(i), timeout=2.0) for i in range(count)]
        created = requests[0].created_at
        for request in requests:
            request.created_at = created  # one deadline for all
        futures = [ref.ask(request, block=False) for request in requests]
        done = _track(futures, [])
        seen: list[int] = []
        while len(done) < count:
            future = ref.ask(WsGetStats(), block=False)
            future.add_done_callback(lambda _v, _e: seen.append(len(done)))
            future.get(timeout=30)
        for future in futures:
            with pytest.raises((Unconfirmed, NotDelivered)):
                future.get(timeout=30)
        # Some stats were answered after the first waiters were told their
        # outcome and before the last were: the work went in slices.
        assert any(0 < value < count for value in seen), sorted(set(seen))[:5]


def test_stop_with_many_queued_answers_the_inbox_before_every_waiter_is_told(
    server: WsTestServer,
) -> None:
    count = 20_000
    ref = start(server.url, max_pending_requests=count, outbound_capacity=count)
    server.stop()  # nothing is written: every request stays queued
    wait_until(lambda: stats(ref).state != "open", 10, "the connection to be lost")
    futures = [ref.ask(WsDelegatedRequest(i, req_frame(i)), block=False) for i in range(count)]
    done = _track(futures, [])
    wait_until(lambda: stats(ref).queued == count, 10, "every request queued")
    stopping = ref.stop(block=False)
    # Asked right behind the stop: pykka would answer it only after on_stop,
    # that is after all 20,000 waiters were told.
    behind = ref.ask(WsGetStats(), block=False)
    seen: list[int] = []
    behind.add_done_callback(lambda _v, _e: seen.append(len(done)))
    with pytest.raises(pykka.ActorDeadError):
        behind.get(timeout=30)
    stopping.get(timeout=30)
    for future in futures:
        with pytest.raises(NotDelivered):
            future.get(timeout=30)
    assert len(done) == count
    assert seen[0] < count, seen
