"""Inbound frames reach the owner in batches: one pykka message per burst, order kept.

websockets' receiving thread queues each event (frame, pong, close) in the
connection's sink and tells the owner `InboundReady` only when none is on its
way; the owner takes up to a slice per message. Order (frames, then the close)
and the flow-control bounds are the same as one message per frame.
"""

from __future__ import annotations

import queue
from typing import Any

from pykka_ws import WsConnected, WsDisconnected, WsInbound, WsReconnect
from pykka_ws._connection import InboundReady
from pykka_ws._inbound import BATCH
from pykka_ws.testing import WsTestServer
from tests.support import BlockingParse, Collector, inspectable, next_of, stats, wait_until

FRAMES = 600


def test_a_burst_comes_in_few_messages_in_order_then_the_close(server: WsTestServer) -> None:
    actor_class, instances = inspectable()
    readies: list[int] = []

    class Counting(actor_class):  # type: ignore[misc, valid-type]
        def _on_inbound_ready(self, message: InboundReady) -> None:
            readies.append(len(message.sink.events))
            super()._on_inbound_ready(message)

    endpoint = BlockingParse()
    sink: queue.Queue[Any] = queue.Queue()
    ref = Counting.start(
        server.url, endpoint=endpoint, inbound=Collector.start(sink), max_queue=FRAMES + 10
    )
    next_of(sink, WsConnected)
    server.wait_for_open_connections(1)
    server.send_to_all('{"n": 0}')
    assert endpoint.entered.wait(10)  # the owner is held in parse() on the first frame
    for i in range(1, FRAMES):
        server.send_to_all(f'{{"n": {i}}}')
    connection = instances[0]._connection
    assert connection is not None
    events = connection._sink.events
    wait_until(lambda: len(events) >= FRAMES - 1, 10, "the burst to queue in the sink")
    server.close_connections()
    wait_until(lambda: len(events) >= FRAMES, 10, "the close to queue behind the frames")
    endpoint.release.set()
    seen = [next_of(sink, WsInbound).message["n"] for _ in range(FRAMES)]
    assert seen == list(range(FRAMES))
    # Nothing of that connection comes after its WsDisconnected.
    assert isinstance(next_of(sink, WsDisconnected), WsDisconnected)
    assert not [m for m in list(sink.queue) if isinstance(m, WsInbound)]
    # The path taken: the burst came in a handful of messages, not one each.
    assert len(readies) <= 2 + FRAMES // BATCH + 2, readies
    assert stats(ref).frames_in == FRAMES


def test_frames_of_a_dropped_connection_are_not_told_after_its_disconnect(
    server: WsTestServer,
) -> None:
    # The owner is held on the first frame while the burst queues in the sink;
    # a WsReconnect waits in the inbox behind it. The first batch is handled
    # (before the drop); the rest of the dropped connection's frames come to
    # the owner after it (the sink re-tells itself behind the WsReconnect) and
    # are stale: credited and discarded, never told after WsDisconnected.
    actor_class, instances = inspectable()
    endpoint = BlockingParse()
    sink: queue.Queue[Any] = queue.Queue()
    ref = actor_class.start(
        server.url, endpoint=endpoint, inbound=Collector.start(sink), max_queue=FRAMES + 10
    )
    next_of(sink, WsConnected)
    server.wait_for_open_connections(1)
    server.send_to_all('{"n": 0}')
    assert endpoint.entered.wait(10)
    for i in range(1, FRAMES):
        server.send_to_all(f'{{"n": {i}}}')
    connection = instances[0]._connection
    assert connection is not None
    events = connection._sink.events
    wait_until(lambda: len(events) >= FRAMES - BATCH, 10, "the rest of the burst in the sink")
    dropped = ref.ask(WsReconnect("test"), block=False)
    endpoint.release.set()
    assert dropped.get(timeout=10) is True
    told: list[Any] = []
    while not (told and isinstance(told[-1], WsConnected)):
        told.append(sink.get(timeout=10))
    cut = next(i for i, m in enumerate(told) if isinstance(m, WsDisconnected))
    before = [m.message["n"] for m in told[:cut] if isinstance(m, WsInbound)]
    assert before == list(range(len(before)))
    assert 1 <= len(before) < FRAMES  # the path taken: part of the burst came after the drop
    assert not [m for m in told[cut:] if isinstance(m, WsInbound)]
    assert stats(ref).frames_in == len(before)
