"""Beyond the anchors: outcome-driven retry, resolving Unconfirmed, per-stream gap recovery."""

from __future__ import annotations

import json
import queue
import threading
from collections import Counter
from functools import partial
from typing import Any

import pytest

from pykka_ws import (
    NotDelivered,
    Unconfirmed,
    WsConnected,
    WsDelegatedRequest,
    WsDisconnected,
    WsGap,
    WsInbound,
    WsLateResponse,
    WsOutcome,
    WsResolved,
    WsSubscribe,
    _recovery,
)
from pykka_ws._recovery import MAX_PROBES_IN_FLIGHT
from pykka_ws.testing import FaultProxy, WsTestServer

from .support import (
    FAST_BACKOFF_LOW_CAP,
    Collector,
    JsonEndpoint,
    inspectable,
    json_reply,
    next_of,
    req_frame,
    stats,
    wait_until,
)
from .support import start as start_actor

pytestmark = pytest.mark.timeout(60)

# The actors here reconnect fast unless a test says otherwise; start() returns
# once the connection is open.
start = partial(start_actor, backoff=FAST_BACKOFF_LOW_CAP)


# -- outcome-driven retry --------------------------------------------------------------


@pytest.mark.parametrize("retry", [True, False])
def test_a_write_cut_before_its_last_byte_is_sent_again_only_with_retry(retry: bool) -> None:
    with WsTestServer(json_reply, max_size=None) as srv, FaultProxy("127.0.0.1", srv.port) as proxy:
        sink: queue.Queue[Any] = queue.Queue()
        ref = start(
            proxy.url,
            inbound=Collector.start(sink),
            write_timeout=0.3,
            ping_interval=None,
            compression=None,  # so the 16 MiB stay 16 MiB on the wire
        )
        assert next_of(sink, WsConnected).generation == 1
        proxy.blackhole()  # nothing moves: the big frame cannot leave whole
        big = json.dumps({"id": 1, "pad": "x" * (16 * 1024 * 1024)})
        placed = ref.ask(WsDelegatedRequest(1, big, timeout=30.0, retry=retry), block=False)
        lost = next_of(sink, WsDisconnected, 30)
        assert "write timed out" in repr(lost.cause) + repr(lost.cause.__cause__)
        proxy.restore()
        if retry:
            assert placed.get(timeout=30).confirmed is True
            assert stats(ref).resends == 1
            assert [f for f in srv.received if f == big] == [big]  # the cut one never arrived
        else:
            with pytest.raises(NotDelivered):
                placed.get(timeout=30)
            assert stats(ref).resends == 0
            assert big not in srv.received


class FirstTimeSilent:
    """Server: ignores the first frame of each id, confirms the next."""

    def __init__(self) -> None:
        self.seen: Counter[Any] = Counter()
        self.lock = threading.Lock()

    def __call__(self, frame: str | bytes) -> str | None:
        request_id = json.loads(frame)["id"]
        with self.lock:
            self.seen[request_id] += 1
            first = self.seen[request_id] == 1
        return None if first else json_reply(frame)


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_written_request_on_a_lost_connection_is_resent_only_if_idempotent(
    idempotent: bool,
) -> None:
    reply = FirstTimeSilent()
    with WsTestServer(reply) as srv:
        ref = start(srv.url)
        placed = ref.ask(
            WsDelegatedRequest(7, req_frame(7), timeout=20.0, retry=True, idempotent=idempotent),
            block=False,
        )
        srv.wait_for_received(1)
        wait_until(lambda: stats(ref).frames_out == 1, 5, "the write")
        srv.wait_for_open_connections(1)
        srv.close_connections()
        if idempotent:
            assert placed.get(timeout=20).confirmed is True
            assert reply.seen[7] == 2
            assert stats(ref).resends == 1
        else:
            with pytest.raises(Unconfirmed) as excinfo:
                placed.get(timeout=20)
            assert excinfo.value.written is True
            assert reply.seen[7] == 1  # never on the wire twice
            assert stats(ref).resends == 0


class AnswersBothAttemptsLate:
    """Server: silent on the first copy of an id; on the second, answers both.

    The reply to the first attempt comes after the second attempt was sent
    (as a venue that was slow to acknowledge the first copy would send it),
    then the reply to the second (its duplicate-order refusal, say).
    """

    def __init__(self) -> None:
        self.seen: Counter[Any] = Counter()
        self.lock = threading.Lock()

    def __call__(self, frame: str | bytes) -> list[str] | None:
        request_id = json.loads(frame)["id"]
        with self.lock:
            self.seen[request_id] += 1
            copy = self.seen[request_id]
        if copy == 1:
            return None
        return [
            json.dumps({"id": request_id, "result": "first attempt"}),
            json.dumps({"id": request_id, "result": "second attempt"}),
        ]


def test_replies_to_both_attempts_after_the_resend_complete_it_once_the_second_late() -> None:
    venue = AnswersBothAttemptsLate()
    with WsTestServer(venue) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        ref = start(srv.url, inbound=Collector.start(sink))
        assert next_of(sink, WsConnected).generation == 1
        placed = ref.ask(
            WsDelegatedRequest(8, req_frame(8), timeout=20.0, retry=True, idempotent=True),
            block=False,
        )
        srv.wait_for_received(1)
        wait_until(lambda: stats(ref).frames_out == 1, 5, "the write")
        srv.close_connections()
        ok = placed.get(timeout=20)
        assert ok.confirmed is True
        assert json.loads(ok.response) == {"id": 8, "result": "first attempt"}
        late = next_of(sink, WsLateResponse)  # the second reply: the request had ended
        assert late.request_id == 8
        assert json.loads(late.frame) == {"id": 8, "result": "second attempt"}
        assert venue.seen[8] == 2  # two attempts, no third
        current = stats(ref)
        assert current.resends == 1
        assert current.outcomes["confirmed"] == 1
        assert current.pending == 0


# -- resolving Unconfirmed ------------------------------------------------------------


class Venue:
    """A venue that executes orders silently (its ack is lost) and answers status probes."""

    def __init__(self, *, answer_probes: bool = True) -> None:
        self.orders: set[Any] = set()
        self.answer_probes = answer_probes
        self.probes = 0

    def __call__(self, frame: str | bytes) -> str | None:
        data = json.loads(frame)
        if "status_of" in data:
            self.probes += 1
            if not self.answer_probes:
                return None
            status = "filled" if data["status_of"] in self.orders else "unknown"
            return json.dumps({"id": data["id"], "result": {"status": status}})
        if data.get("do") == "place":
            self.orders.add(data["id"])  # executed; the ack never comes
            return None
        return json_reply(frame)


class ProbingEndpoint(JsonEndpoint):
    def probe(self, request_id: Any, frame: str | bytes) -> WsDelegatedRequest | None:
        probe_id = f"probe-{request_id}"
        status = json.dumps({"id": probe_id, "status_of": request_id})
        return WsDelegatedRequest(probe_id, status, timeout=0.5)

    def probe_result(self, response: str | bytes) -> bool | None:
        status = json.loads(response)["result"]["status"]
        return {"filled": True, "unknown": False}.get(status)


def test_an_order_executed_before_the_break_is_resolved_by_its_probe() -> None:
    venue = Venue()
    with WsTestServer(venue) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        desk = Collector.start(sink)
        ref = start(srv.url, ProbingEndpoint(), probe_delay=0.2)
        order = WsDelegatedRequest(
            11, req_frame(11, "place"), timeout=20.0, reply_to=desk, context="order 11"
        )
        ref.tell(order)
        srv.wait_for_received(1)
        wait_until(lambda: stats(ref).frames_out == 1, 5, "the write")
        srv.wait_for_open_connections(1)
        srv.close_connections()  # the break: the fill's ack is lost with it
        outcome = next_of(sink, WsOutcome)
        assert isinstance(outcome.error, Unconfirmed)
        resolved = next_of(sink, WsResolved)
        assert resolved == WsResolved(11, True, resolved.response, "order 11")
        assert json.loads(resolved.response)["result"]["status"] == "filled"
        assert stats(ref).probes == 1


def test_a_frame_buffered_before_the_break_and_executed_after_it_is_found_by_the_probe() -> None:
    # The peer goes silent with the order in a buffer on the way (the proxy
    # holds it): the actor sees a dead peer, the order ends Unconfirmed, and
    # the venue only gets it when the path comes back. probe_delay is what
    # keeps the probe from asking before the order can have arrived.
    venue = Venue()
    with WsTestServer(venue) as srv, FaultProxy("127.0.0.1", srv.port) as proxy:
        sink: queue.Queue[Any] = queue.Queue()
        desk = Collector.start(sink)
        ref = start(
            proxy.url, ProbingEndpoint(), probe_delay=2.0, ping_interval=0.2, ping_timeout=0.3
        )
        proxy.blackhole()
        ref.tell(WsDelegatedRequest(14, req_frame(14, "place"), timeout=30.0, reply_to=desk))
        outcome = next_of(sink, WsOutcome)  # the dead peer is noticed: ambiguous
        assert isinstance(outcome.error, Unconfirmed)
        assert outcome.error.written is True
        assert 14 not in venue.orders  # held on the way
        proxy.restore()  # the buffered order reaches the venue now, after the break
        resolved = next_of(sink, WsResolved, 20)
        assert (resolved.request_id, resolved.executed) == (14, True)
        kinds = ["status" if "status_of" in json.loads(f) else "order" for f in srv.received]
        assert kinds == ["order", "status"]  # the order arrived before the probe asked
        assert stats(ref).probes == 1


def test_a_probe_that_is_not_answered_resolves_as_unknown() -> None:
    venue = Venue(answer_probes=False)
    with WsTestServer(venue) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        desk = Collector.start(sink)
        ref = start(srv.url, ProbingEndpoint(), probe_delay=0.05)
        ref.tell(WsDelegatedRequest(12, req_frame(12, "place"), timeout=0.3, reply_to=desk))
        assert isinstance(next_of(sink, WsOutcome).error, Unconfirmed)
        resolved = next_of(sink, WsResolved)
        assert resolved.request_id == 12
        assert resolved.executed is None
        assert resolved.response is None
        assert venue.probes == 1


def test_a_late_reply_resolves_an_unconfirmed_request_and_no_probe_is_sent() -> None:
    with WsTestServer(None) as silent:
        sink: queue.Queue[Any] = queue.Queue()
        desk = Collector.start(sink)
        ref = start(silent.url, ProbingEndpoint(), probe_delay=30.0)
        ref.tell(WsDelegatedRequest(13, req_frame(13), timeout=0.2, reply_to=desk))
        assert isinstance(next_of(sink, WsOutcome).error, Unconfirmed)
        silent.wait_for_open_connections(1)
        silent.send_to_all(json.dumps({"id": 13, "result": "ok"}))
        resolved = next_of(sink, WsResolved)
        assert resolved.request_id == 13
        assert resolved.executed is True
        assert json.loads(resolved.response) == {"id": 13, "result": "ok"}
        assert stats(ref).probes == 0


class HeldProbes:
    """A venue that executes orders silently and holds every probe until released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: list[str] = []
        self.most_held = 0
        self.released = False

    def __call__(self, frame: str | bytes) -> str | None:
        data = json.loads(frame)
        if "status_of" not in data:
            return None  # executed; the ack is lost
        answer = json.dumps({"id": data["id"], "result": {"status": "filled"}})
        with self.lock:
            if self.released:
                return answer
            self.held.append(answer)
            self.most_held = max(self.most_held, len(self.held))
        return None

    def release(self) -> list[str]:
        with self.lock:
            self.released = True
            held, self.held = self.held, []
        return held


class PatientProbes(ProbingEndpoint):
    """Probes that wait long for their answer (the test holds them on purpose)."""

    def probe(self, request_id: Any, frame: str | bytes) -> WsDelegatedRequest | None:
        probe = super().probe(request_id, frame)
        assert probe is not None
        return WsDelegatedRequest(probe.request_id, probe.frame, timeout=30.0)


def test_probes_after_a_mass_break_go_out_a_few_at_a_time() -> None:
    count = MAX_PROBES_IN_FLIGHT + 24
    venue = HeldProbes()
    actor_class, instances = inspectable()
    with WsTestServer(venue) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        desk = Collector.start(sink)
        ref = start(srv.url, PatientProbes(), probe_delay=0.1, actor=actor_class)
        for request_id in range(count):
            ref.tell(
                WsDelegatedRequest(
                    request_id, req_frame(request_id, "place"), timeout=30.0, reply_to=desk
                )
            )
        srv.wait_for_received(count)
        wait_until(lambda: stats(ref).frames_out == count, 5, "the writes")
        srv.close_connections()  # every order ambiguous at once
        actor = instances[0]
        # The first MAX_PROBES_IN_FLIGHT probes are sent; the others wait for a slot.
        wait_until(lambda: len(actor._probes_waiting) == count - MAX_PROBES_IN_FLIGHT, 10, "queue")
        wait_until(lambda: len(venue.held) == MAX_PROBES_IN_FLIGHT, 10, "the first probes")
        assert stats(ref).probes == MAX_PROBES_IN_FLIGHT
        srv.wait_for_open_connections(1)
        for answer in venue.release():
            srv.send_to_all(answer)
        told = [sink.get(timeout=10) for _ in range(2 * count)]
        resolved = sorted(m.request_id for m in told if isinstance(m, WsResolved))
        assert resolved == list(range(count))
        assert all(m.executed for m in told if isinstance(m, WsResolved))
        assert venue.most_held == MAX_PROBES_IN_FLIGHT
        assert stats(ref).probes == count


def resolutions(sink: queue.Queue[Any], count: int) -> list[WsResolved]:
    """The next ``count`` WsResolved told to ``sink`` (other messages skipped)."""
    return [next_of(sink, WsResolved) for _ in range(count)]


def test_a_probe_for_an_earlier_use_of_an_id_never_answers_for_a_later_one() -> None:
    venue = HeldProbes()
    with WsTestServer(venue) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        desk = Collector.start(sink)
        ref = start(srv.url, PatientProbes(), probe_delay=0.05)
        order = partial(WsDelegatedRequest, 7, req_frame(7, "place"), timeout=0.3, reply_to=desk)
        ref.tell(order(context="first"))
        assert isinstance(next_of(sink, WsOutcome).error, Unconfirmed)
        wait_until(lambda: len(venue.held) == 1, 10, "the first use's probe")
        ref.tell(order(context="again"))  # the same id placed again: ambiguous too
        assert isinstance(next_of(sink, WsOutcome).error, Unconfirmed)
        # The first use can no longer be told apart from the second: unknown.
        [first] = resolutions(sink, 1)
        assert (first.context, first.executed) == ("first", None)
        wait_until(lambda: stats(ref).probes == 2, 10, "the second use's probe")
        srv.wait_for_open_connections(1)
        for answer in venue.release():
            srv.send_to_all(answer)
        [again] = resolutions(sink, 1)  # by its own probe, not the first one's
        assert (again.context, again.executed) == ("again", True)
        assert stats(ref).probes == 2


def test_a_late_reply_takes_a_request_out_of_the_probe_queue() -> None:
    venue = HeldProbes()
    actor_class, instances = inspectable()
    with WsTestServer(venue) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        desk = Collector.start(sink)
        # max_pending_requests=4: one probe in flight at a time (a quarter).
        ref = start(
            srv.url, PatientProbes(), probe_delay=0.05, max_pending_requests=4, actor=actor_class
        )
        for request_id in (1, 2):
            ref.tell(
                WsDelegatedRequest(
                    request_id, req_frame(request_id, "place"), timeout=0.3, reply_to=desk
                )
            )
        outcomes = [next_of(sink, WsOutcome) for _ in range(2)]
        assert all(isinstance(o.error, Unconfirmed) for o in outcomes)
        actor = instances[0]
        wait_until(lambda: len(venue.held) == 1, 10, "one probe in flight")
        wait_until(lambda: len(actor._probes_waiting) == 1, 10, "the other waiting its turn")
        waiting = next(iter(actor._probes_waiting))
        srv.send_to_all(json.dumps({"id": waiting, "result": "ok"}))  # its late ack
        [late] = resolutions(sink, 1)
        assert (late.request_id, late.executed) == (waiting, True)
        assert len(actor._probes_waiting) == 0
        for answer in venue.release():
            srv.send_to_all(answer)
        [probed] = resolutions(sink, 1)
        assert probed.request_id == 3 - waiting
        assert probed.executed is True
        assert stats(ref).probes == 1  # the late-acknowledged one was never probed


def test_beyond_max_unresolved_the_oldest_is_resolved_as_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_recovery, "MAX_UNRESOLVED", 2)
    with WsTestServer(None) as silent:
        sink: queue.Queue[Any] = queue.Queue()
        desk = Collector.start(sink)
        ref = start(silent.url, PatientProbes(), probe_delay=30.0)
        for request_id in (1, 2, 3):
            ref.tell(
                WsDelegatedRequest(request_id, req_frame(request_id), timeout=0.2, reply_to=desk)
            )
            assert isinstance(next_of(sink, WsOutcome).error, Unconfirmed)
        [forgotten] = resolutions(sink, 1)  # long before any probe is due
        assert (forgotten.request_id, forgotten.executed) == (1, None)
        assert stats(ref).probes == 0


# -- per-stream gap recovery -------------------------------------------------------------


class SequencedEndpoint(JsonEndpoint):
    def parse(self, frame: str | bytes) -> Any:
        return json.loads(frame)

    def sequence(self, message: Any) -> tuple[Any, int] | None:
        if isinstance(message, dict) and "seq" in message:
            return message["channel"], message["seq"]
        return None


def test_a_gap_resubscribes_only_that_stream_and_a_duplicate_is_dropped() -> None:
    with WsTestServer(json_reply) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        ref = start(srv.url, SequencedEndpoint(), inbound=Collector.start(sink))
        for key, request_id in (("trades", 1), ("book", 2)):
            ref.ask(
                WsSubscribe(key, json.dumps({"id": request_id, "sub": key}), request_id=request_id),
                timeout=10,
            )
        srv.wait_for_open_connections(1)
        srv.clear_received()

        def push(channel: str, seq: int) -> None:
            srv.send_to_all(json.dumps({"channel": channel, "seq": seq}))

        for seq in (1, 2, 3):
            push("trades", seq)
        push("book", 1)
        push("trades", 5)  # 4 is missing
        push("trades", 5)  # a duplicate
        push("trades", 6)
        told: list[Any] = []
        while sum(isinstance(m, WsInbound) for m in told) < 6:
            told.append(sink.get(timeout=10))
        [gap] = [m for m in told if isinstance(m, WsGap)]
        assert gap == WsGap("trades", 4, 5, resubscribed=True)
        delivered = [m.message for m in told if isinstance(m, WsInbound)]
        assert [(m["channel"], m["seq"]) for m in delivered] == [
            ("trades", 1),
            ("trades", 2),
            ("trades", 3),
            ("book", 1),
            ("trades", 5),
            ("trades", 6),
        ]
        resubscribed = srv.wait_for_received(1)
        assert [json.loads(f)["sub"] for f in resubscribed] == ["trades"]  # not "book"
        current = stats(ref)
        assert current.gaps == 1
        assert current.duplicates == 1
        assert current.reconnects == 0  # without dropping the connection
        assert not any(isinstance(m, WsConnected) and m.generation > 1 for m in told)


class UnhashableStreams(SequencedEndpoint):
    def sequence(self, message: Any) -> tuple[Any, int] | None:
        if isinstance(message, dict) and "seq" in message:
            return [message["channel"]], message["seq"]  # a list: no stream key
        return None


def test_a_sequence_hook_with_an_unhashable_key_is_a_hook_error_and_the_frame_delivered() -> None:
    with WsTestServer(json_reply) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        ref = start(srv.url, UnhashableStreams(), inbound=Collector.start(sink))
        srv.wait_for_open_connections(1)
        for seq in (1, 2):
            srv.send_to_all(json.dumps({"channel": "trades", "seq": seq}))
        first = next_of(sink, WsInbound)
        second = next_of(sink, WsInbound)
        assert [first.message["seq"], second.message["seq"]] == [1, 2]
        current = stats(ref)
        assert current.hook_errors == 2
        assert current.internal_errors == 0
        assert current.gaps == 0
