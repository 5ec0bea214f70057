"""Loopback WebSocket servers and TCP fault injection for tests.

This module is public: pykka-ws uses it for its own test suite and you can use
it in yours. It provides three helpers that run real sockets on the loopback
interface, in background threads, with no mocking involved:

* :class:`WsTestServer` is a real :mod:`websockets` server (the threading
  implementation, ``websockets.sync.server``) listening on an ephemeral port.
  A *reply function* decides what to send back for every received frame, every
  received frame is recorded, and a set of switches injects misbehaviour:
  silence, stalled reads (backpressure), unsolicited pushes, polite or abrupt
  (TCP RST) disconnections, connections closed right after the handshake and
  refused handshakes (HTTP 401, 403, ...).
* :class:`ChaosServer` is a :class:`WsTestServer` whose behaviour for every
  received frame is drawn from a seeded random mix (a :class:`FaultPlan`):
  confirm, reject, reply late, stay silent, stop reading for a while, send
  garbage (invalid UTF-8, junk, oversized frames, a lying frame header), close
  or reset the connection. It records the server's view (every frame received
  complete, per connection: :class:`ConnectionLog`) so that tests can check
  delivery invariants against it.
* :class:`FaultProxy` is a TCP proxy placed between a client and a server. It
  injects faults that need the socket level: a *blackhole* (the peer silently
  died: no FIN, no RST, nothing forwarded) and connection resets.

Every wait has a timeout (the one exception is sending to a client that does
not read, see :meth:`WsTestServer.send_to_all`), and :meth:`WsTestServer.stop`
/ :meth:`FaultProxy.stop` join every thread that the helper started, including
the per-connection threads of :mod:`websockets`. Every such thread is named
``pykka-ws-testing-...``. The helpers support websockets 15 to 17.

Example::

    from websockets.sync.client import connect

    from pykka_ws.testing import FaultProxy, WsTestServer

    with WsTestServer(reply=lambda frame: frame) as server:  # an echo server
        with connect(server.url, proxy=None) as websocket:
            websocket.send("hello")
            assert websocket.recv(timeout=5) == "hello"
        assert server.wait_for_received(1) == ["hello"]

With a proxy in the middle::

    with WsTestServer(reply=lambda frame: frame) as server:
        with FaultProxy(server.host, server.port) as proxy:
            with connect(proxy.url, proxy=None) as websocket:
                proxy.blackhole()
                websocket.send("held")  # the proxy forwards nothing...
                server.wait_for_received(1, timeout=0.5)  # ...so: TimeoutError

A seeded chaos run::

    plan = FaultPlan(weights={Fault.CONFIRM: 8, Fault.SILENT: 1, Fault.RESET: 1})
    with ChaosServer(plan, confirm=lambda frame: "ok " + frame, seed=42) as server:
        ...  # drive a client at server.url, then check its outcomes against
        logs = server.connection_logs()  # what the server received complete

Diagnostics are logged to the ``pykka_ws.testing`` logger; :mod:`websockets`
keeps logging to its own loggers (``websockets.server``).
"""

from __future__ import annotations

from pykka_ws.testing._chaos import (
    DEFAULT_FAULT_WEIGHTS,
    ChaosServer,
    ConnectionLog,
    Fault,
    FaultPlan,
)
from pykka_ws.testing._common import Frame, ReplyFn
from pykka_ws.testing._proxy import FaultProxy
from pykka_ws.testing._server import WsTestServer

__all__ = [
    "DEFAULT_FAULT_WEIGHTS",
    "ChaosServer",
    "ConnectionLog",
    "Fault",
    "FaultPlan",
    "FaultProxy",
    "Frame",
    "ReplyFn",
    "WsTestServer",
]
