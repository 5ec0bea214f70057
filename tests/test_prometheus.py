"""pykka_ws.prometheus: the StatsCollector, scraped with generate_latest against real actors."""

from __future__ import annotations

import copy
import importlib
import itertools
import json
import math
import queue
import sys
import threading
import time
from typing import Any

import pykka
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pykka_ws import (
    EndpointRejected,
    PayloadMismatch,
    TooManyPending,
    Unconfirmed,
    WebSocketActor,
    WsConfirmMode,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsGetStats,
    WsHeartbeat,
    WsSend,
    WsStats,
)
from pykka_ws.prometheus import StatsCollector
from pykka_ws.testing import WsTestServer

from .support import BlockingParse, Collector, json_reply, req_frame, stats, wait_until
from .support import start as start_actor

pytestmark = pytest.mark.timeout(60)

OUTCOMES = (
    "confirmed",
    "sent",
    "rejected",
    "not_delivered",
    "unconfirmed",
    "payload_mismatch",
    "too_many_pending",
)
STATES = ("connecting", "open", "backoff", "closed", "stopped")
COUNTERS = (
    "connection_attempts",
    "reconnects",
    "received_frames",
    "sent_frames",
    "received_bytes",
    "sent_bytes",
    "sends_refused",
    "stray_replies",
    "inbound_dropped",
    "reply_to_dropped",
    "resends",
    "gaps",
    "duplicates",
    "probes",
    "hook_errors",
    "internal_errors",
)
GAUGES = ("pending", "queued", "subscriptions")

Key = tuple[str, tuple[tuple[str, str], ...]]


def start(url: str, **kwargs: Any) -> pykka.ActorRef[Any]:
    """An actor on ``url`` whose byte counts are predictable: no compression, no keepalive."""
    return start_actor(url, compression=None, ping_interval=None, **kwargs)


def scrape(collector: StatsCollector) -> dict[Key, float]:
    """Register ``collector`` in a fresh registry, scrape it and parse the text back."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    samples: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def key(name: str, **labels: str) -> Key:
    return (name, tuple(sorted(labels.items())))


def connection_samples(
    *,
    state: str,
    outcomes: dict[str, int],
    values: dict[str, float],
    prefix: str = "pykka_ws",
    **base: str,
) -> dict[Key, float]:
    """Every sample of one answering connection: ``values`` by short name, 0 if not given."""
    expected = {key(f"{prefix}_up", **base): 1.0}
    for s in (*STATES, *([] if state in STATES else [state])):
        expected[key(f"{prefix}_state", **base, state=s)] = 1.0 if s == state else 0.0
    for outcome in (*OUTCOMES, *sorted(set(outcomes) - set(OUTCOMES))):
        expected[key(f"{prefix}_outcomes_total", **base, outcome=outcome)] = outcomes.get(
            outcome, 0
        )
    for name in GAUGES:
        expected[key(f"{prefix}_{name}", **base)] = values.get(name, 0)
    for name in COUNTERS:
        expected[key(f"{prefix}_{name}_total", **base)] = values.get(name, 0)
    if "connection_start_time_seconds" in values:
        expected[key(f"{prefix}_connection_start_time_seconds", **base)] = values[
            "connection_start_time_seconds"
        ]
    for quantile in ("0.5", "0.99"):
        if f"round_trip_{quantile}" in values:
            expected[key(f"{prefix}_round_trip_seconds", **base, quantile=quantile)] = values[
                f"round_trip_{quantile}"
            ]
    unknown = set(values) - {
        *GAUGES,
        *COUNTERS,
        "connection_start_time_seconds",
        "round_trip_0.5",
        "round_trip_0.99",
    }
    assert not unknown, f"a typo in the test: {unknown}"
    return expected


def reply_len(request_id: int, result: str = '"result": "ok"') -> int:
    return len(f'{{"id": {request_id}, {result}}}')


def client_frame_len(frame: str) -> int:
    """Bytes of a short, masked, uncompressed client text frame: 2 header + 4 mask + payload."""
    assert len(frame.encode()) < 126
    return 2 + 4 + len(frame.encode())


# -- a real actor, real traffic -------------------------------------------------------------


def test_a_scrape_gives_every_counter_of_real_traffic_exactly(server: WsTestServer) -> None:
    ref = start(server.url, max_pending_requests=1)
    written = [req_frame(1), req_frame(2), req_frame(3, do="reject")]
    ref.ask(WsDelegatedRequest(1, written[0]), timeout=10)
    ref.ask(WsDelegatedRequest(2, written[1]), timeout=10)
    with pytest.raises(EndpointRejected, match="insufficient funds"):
        ref.ask(WsDelegatedRequest(3, written[2]), timeout=10)
    written.append(req_frame(4, do="ignore"))
    sent = ref.ask(WsDelegatedRequest(4, written[-1], confirm_mode=WsConfirmMode.SENT), timeout=10)
    assert sent == WsDelegatedOk(4, confirmed=False, response=None)
    # id 9 is never answered: it holds the only pending slot until its deadline.
    written.append(req_frame(9, do="ignore"))
    unanswered = ref.ask(WsDelegatedRequest(9, written[-1], timeout=2.0), block=False)
    with pytest.raises(PayloadMismatch):
        ref.ask(WsDelegatedRequest(9, req_frame(9, do="other")), timeout=10)
    with pytest.raises(TooManyPending):
        ref.ask(WsDelegatedRequest(10, req_frame(10)), timeout=10)
    written.append(json.dumps({"method": "ping"}))
    ref.tell(WsSend(written[-1]))
    with pytest.raises(Unconfirmed):
        unanswered.get(timeout=10)
    wait_until(lambda: stats(ref).frames_out == len(written), 10, "every frame written")
    wait_until(lambda: len(server.received) == len(written), 10, "the server to get them")

    before = stats(ref)
    samples = scrape(StatsCollector(ref, timeout=10))
    after = stats(ref)
    assert before == after  # nothing moved during the scrape
    assert before.connected_since is not None
    assert samples == connection_samples(
        state="open",
        outcomes={
            "confirmed": 2,
            "rejected": 1,
            "sent": 1,
            "unconfirmed": 1,
            "payload_mismatch": 1,
            "too_many_pending": 1,
        },
        values={
            "connection_attempts": 1,
            "received_frames": 3,
            "sent_frames": 6,
            "received_bytes": reply_len(1)
            + reply_len(2)
            + reply_len(3, '"error": "insufficient funds"'),
            "sent_bytes": sum(client_frame_len(frame) for frame in written),
            "connection_start_time_seconds": before.connected_since,
        },
    )
    # The single ref has no connection label; no round trip was measured yet.
    assert all(dict(labels).keys() <= {"state", "outcome"} for _, labels in samples)
    assert not any(name == "pykka_ws_round_trip_seconds" for name, _ in samples)


def test_heartbeat_round_trips_are_quantile_gauges(server: WsTestServer) -> None:
    ids = itertools.count()

    def beat() -> WsDelegatedRequest:
        request_id = f"hb-{next(ids)}"
        return WsDelegatedRequest(request_id, json.dumps({"id": request_id}), timeout=5.0)

    ref = start(server.url, heartbeat=WsHeartbeat(0.05, beat))
    wait_until(lambda: stats(ref).rtt_p50 is not None, 10, "a heartbeat round trip")
    samples = scrape(StatsCollector(ref, timeout=10))
    p50 = samples[key("pykka_ws_round_trip_seconds", quantile="0.5")]
    p99 = samples[key("pykka_ws_round_trip_seconds", quantile="0.99")]
    assert 0 < p50 <= p99 < 5.0
    assert samples[key("pykka_ws_outcomes_total", outcome="confirmed")] >= 1


def test_metric_types_and_help(server: WsTestServer) -> None:
    ref = start(server.url)
    registry = CollectorRegistry()
    registry.register(StatsCollector(ref, prefix="ws", timeout=10))
    text = generate_latest(registry).decode()
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert types == {
        "ws_up": "gauge",
        "ws_state": "gauge",
        "ws_outcomes": "counter",
        "ws_pending": "gauge",
        "ws_queued": "gauge",
        "ws_subscriptions": "gauge",
        "ws_connection_start_time_seconds": "gauge",
        **{f"ws_{name}": "counter" for name in COUNTERS},
    }
    assert "# TYPE ws_sent_bytes_total counter\n" in text
    assert "# HELP ws_pending Distinct request ids in flight.\n" in text


# -- every WsStats field, exactly -------------------------------------------------------------

FIXED = WsStats(
    state="draining",  # a state this version does not know yet
    connected_since=1_700_000_000.25,
    reconnects=2,
    pending=3,
    queued=4,
    frames_in=5,
    frames_out=6,
    bytes_in=7,
    bytes_out=8,
    outcomes={"confirmed": 9, "too_many_pending": 10, "new_kind": 11},
    sends_refused=12,
    stray_replies=13,
    inbound_dropped=14,
    reply_to_dropped=15,
    subscriptions=16,
    resends=17,
    gaps=18,
    duplicates=19,
    probes=20,
    rtt_p50=0.125,
    rtt_p99=0.5,
    url="wss://example.invalid/?token=secret",
    hook_errors=21,
    last_error="certificate verify failed",
    attempts=22,
    internal_errors=23,
)

FIXED_VALUES: dict[str, float] = {
    "reconnects": 2,
    "pending": 3,
    "queued": 4,
    "received_frames": 5,
    "sent_frames": 6,
    "received_bytes": 7,
    "sent_bytes": 8,
    "sends_refused": 12,
    "stray_replies": 13,
    "inbound_dropped": 14,
    "reply_to_dropped": 15,
    "subscriptions": 16,
    "resends": 17,
    "gaps": 18,
    "duplicates": 19,
    "probes": 20,
    "hook_errors": 21,
    "connection_attempts": 22,
    "internal_errors": 23,
    "connection_start_time_seconds": 1_700_000_000.25,
    "round_trip_0.5": 0.125,
    "round_trip_0.99": 0.5,
}


class FixedStats(WebSocketActor):
    """A real WebSocketActor that answers WsGetStats with FIXED, and counts the asks."""

    def __init__(self, *args: Any, asks: queue.Queue[None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asks = asks

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, WsGetStats):
            self.asks.put(None)
            return FIXED
        return super().on_receive(message)


def test_every_wsstats_field_is_exported_exactly(server: WsTestServer) -> None:
    asks: queue.Queue[None] = queue.Queue()
    ref = FixedStats.start(server.url, asks=asks)
    collector = StatsCollector({"venue": ref}, prefix="my_app", timeout=10)

    registry = CollectorRegistry()
    registry.register(collector)
    assert asks.qsize() == 0  # registering describes, it does not ask
    assert all(not family.samples for family in collector.describe())
    text = generate_latest(registry).decode()
    assert asks.qsize() == 1

    assert _parse(text) == connection_samples(
        state="draining",
        outcomes={"confirmed": 9, "too_many_pending": 10, "new_kind": 11},
        values=FIXED_VALUES,
        prefix="my_app",
        connection="venue",
    )
    # Neither the URL (it may hold a token) nor the error text is exposed.
    assert "secret" not in text
    assert "certificate" not in text


def test_a_second_collector_with_the_same_prefix_is_refused_by_the_registry(
    server: WsTestServer,
) -> None:
    ref = start(server.url)
    registry = CollectorRegistry()
    registry.register(StatsCollector(ref))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(StatsCollector(ref))
    registry.register(StatsCollector(ref, prefix="other"))
    names = {name for name, _ in _parse(generate_latest(registry).decode())}
    assert {"pykka_ws_up", "other_up"} <= names


def _parse(text: str) -> dict[Key, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- several connections ----------------------------------------------------------------------


def test_several_refs_by_name_and_by_position(server: WsTestServer) -> None:
    alpha = start(server.url)
    beta = start(server.url)
    alpha.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10)
    alpha.ask(WsDelegatedRequest(2, req_frame(2)), timeout=10)
    with pytest.raises(EndpointRejected, match="insufficient funds"):
        beta.ask(WsDelegatedRequest(1, req_frame(1, do="reject")), timeout=10)

    by_name = scrape(StatsCollector({"alpha": alpha, "beta": beta}, timeout=10))
    by_position = scrape(StatsCollector([alpha, beta], timeout=10))
    for samples, (a, b) in ((by_name, ("alpha", "beta")), (by_position, ("0", "1"))):
        for connection, outcome, count in ((a, "confirmed", 2), (b, "rejected", 1)):
            for kind in OUTCOMES:
                assert samples[
                    key("pykka_ws_outcomes_total", connection=connection, outcome=kind)
                ] == (count if kind == outcome else 0)
        assert samples[key("pykka_ws_sent_frames_total", connection=a)] == 2
        assert samples[key("pykka_ws_sent_frames_total", connection=b)] == 1
        assert samples[key("pykka_ws_up", connection=a)] == 1
        assert samples[key("pykka_ws_up", connection=b)] == 1
        assert samples[key("pykka_ws_state", connection=b, state="open")] == 1
        assert {dict(labels)["connection"] for _, labels in samples} == {a, b}


# -- dead and stuck actors ----------------------------------------------------------------


def test_a_stopped_actor_is_reported_down_at_once_and_the_others_still_scraped(
    server: WsTestServer,
) -> None:
    live = start(server.url)
    gone = start(server.url)
    gone.stop()
    collector = StatsCollector({"live": live, "gone": gone}, timeout=30)
    began = time.monotonic()
    samples = scrape(collector)
    elapsed = time.monotonic() - began
    assert elapsed < 15  # not the 30 s timeout: a dead actor's ask fails at once
    assert samples[key("pykka_ws_up", connection="live")] == 1
    assert samples[key("pykka_ws_up", connection="gone")] == 0
    assert samples[key("pykka_ws_state", connection="live", state="open")] == 1
    gone_samples = [k for k in samples if ("connection", "gone") in k[1]]
    assert gone_samples == [key("pykka_ws_up", connection="gone")]

    # A single stopped actor: only its up gauge.
    assert scrape(StatsCollector(gone, timeout=30)) == {key("pykka_ws_up"): 0}


def test_an_actor_that_does_not_answer_is_down_after_the_timeout_not_later() -> None:
    endpoint = BlockingParse(hold=30.0)
    with WsTestServer(json_reply) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        ref = start(srv.url, endpoint=endpoint, inbound=Collector.start(sink))
        srv.wait_for_open_connections(1)
        try:
            srv.send_to_all('{"note": 1}')  # parse() holds the actor's thread
            assert endpoint.entered.wait(10)
            collector = StatsCollector(ref, timeout=0.3)
            began = time.monotonic()
            samples = scrape(collector)
            elapsed = time.monotonic() - began
            assert samples == {key("pykka_ws_up"): 0}
            assert 0.3 <= elapsed < 15
        finally:
            endpoint.release.set()
        # Once released, the actor answers again (the late asks included).
        samples = scrape(StatsCollector(ref, timeout=10))
        assert samples[key("pykka_ws_up")] == 1
        assert samples[key("pykka_ws_received_frames_total")] == 1


def test_concurrent_scrapes_of_one_collector(server: WsTestServer) -> None:
    ref = start(server.url)
    ref.ask(WsDelegatedRequest(1, req_frame(1)), timeout=10)
    collector = StatsCollector(ref, timeout=10)
    results: list[dict[Key, float]] = []
    lock = threading.Lock()

    def run() -> None:
        samples = scrape(collector)
        with lock:
            results.append(samples)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
        assert not thread.is_alive()
    assert len(results) == 4
    for samples in results:
        assert samples[key("pykka_ws_outcomes_total", outcome="confirmed")] == 1
        assert samples[key("pykka_ws_up")] == 1


# -- bad input ------------------------------------------------------------------------------


def test_bad_refs_are_refused_at_construction(server: WsTestServer) -> None:
    ref = start(server.url)
    other = copy.copy(ref)  # a second ref to the same actor
    assert other is not ref
    not_ws = Collector.start(queue.Queue())
    for bad in (None, 5, "ws://x", b"x", {ref}, iter([ref]), [ref, "x"], {"a": 1}):
        with pytest.raises(TypeError):
            StatsCollector(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not the ref of a WebSocketActor"):
        StatsCollector(not_ws)
    with pytest.raises(TypeError, match="names must be str"):
        StatsCollector({1: ref})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one"):
        StatsCollector([])
    with pytest.raises(ValueError, match="at least one"):
        StatsCollector({})
    with pytest.raises(ValueError, match="must not be empty"):
        StatsCollector({"": ref})
    with pytest.raises(ValueError, match="given twice"):
        StatsCollector([ref, ref])
    with pytest.raises(ValueError, match="given twice"):
        StatsCollector({"a": ref, "b": other})


@pytest.mark.parametrize("prefix", ["", "1ws", "ws-x", "ws:x", "ws x", "wś"])
def test_a_bad_prefix_is_refused(server: WsTestServer, prefix: str) -> None:
    ref = start(server.url)
    with pytest.raises(ValueError, match="prefix"):
        StatsCollector(ref, prefix=prefix)


def test_a_bad_prefix_or_timeout_type_is_refused(server: WsTestServer) -> None:
    ref = start(server.url)
    with pytest.raises(TypeError, match="prefix"):
        StatsCollector(ref, prefix=5)  # type: ignore[arg-type]
    for timeout in (True, "1", None):
        with pytest.raises(TypeError, match="timeout"):
            StatsCollector(ref, timeout=timeout)  # type: ignore[arg-type]
    for number in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="timeout"):
            StatsCollector(ref, timeout=number)
    collector = StatsCollector(ref, prefix="_ok_1", timeout=3)
    assert (collector.prefix, collector.timeout) == ("_ok_1", 3.0)
    assert collector.connections == {"": ref}


# -- the extra --------------------------------------------------------------------------------


def test_without_prometheus_client_the_import_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(sys.modules):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "pykka_ws.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'pykka-ws\[prometheus\]'"):
        importlib.import_module("pykka_ws.prometheus")
