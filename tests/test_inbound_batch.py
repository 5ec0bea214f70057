"""Inbound frames reach the owner in batches: one pykka message per burst, order kept.

websockets' receiving thread queues each event (frame, pong, close) in the
connection's sink and tells the owner `InboundReady` only when none is on its
way; the owner takes up to a slice per message. Order (frames, then the close)
and the flow-control bounds are the same as one message per frame.
"""

from __future__ import annotations

import queue
from typing import Any

from pykka_ws import WsConnected, WsDisconnected, WsInbound
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
