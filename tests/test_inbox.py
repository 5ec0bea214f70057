"""The owner's and the writer's inboxes are C FIFOs (`queue.SimpleQueue`), order kept."""

from __future__ import annotations

import queue

from pykka_ws import WsDelegatedRequest, WsSend
from pykka_ws.testing import WsTestServer
from tests.support import inspectable, req_frame, start

FRAMES = 500


def test_owner_and_writer_inboxes_are_simple_queues_and_keep_order(server: WsTestServer) -> None:
    actor_class, instances = inspectable()
    ref = start(server.url, actor=actor_class)
    owner = instances[0]
    assert isinstance(owner.actor_inbox, queue.SimpleQueue)
    assert owner._writer is not None
    assert isinstance(owner._writer.actor_inbox, queue.SimpleQueue)
    for i in range(FRAMES):
        ref.tell(WsSend(f"frame-{i}"))
    assert ref.ask(WsDelegatedRequest("last", req_frame("last")), timeout=10).confirmed
    received = [f for f in server.wait_for_received(FRAMES + 1) if str(f).startswith("frame-")]
    assert received == [f"frame-{i}" for i in range(FRAMES)]
