"""A small Deribit-style exchange on 127.0.0.1, shared by the examples.

The examples start one themselves when they are given no URL. To run it on
its own and point an example at it from another terminal:

    python3 examples/exchange_server.py [PORT]      # prints its ws:// URL
    python3 examples/order_entry.py ws://127.0.0.1:PORT

It speaks JSON-RPC 2.0 over WebSocket (a real ``websockets.sync.server``
in background threads):

- ``public/subscribe {"channels": [...]}``: the result is the channels; then
  every 50 ms each subscribed channel gets a notification
  ``{"jsonrpc": "2.0", "method": "subscription",
  "params": {"channel": ..., "data": {"seq": n, ...}}}``.
- ``private/buy`` and ``private/sell`` ``{"instrument_name", "amount",
  "label"}``: the result is ``{"order": {...}}``.
- ``private/get_order_state_by_label {"label": ...}``: the orders it holds
  under that label (how a client reconciles an unconfirmed order).
- ``public/test``: the result is ``{"version": ...}``.

Any request may tell the exchange what to do with it, with a ``"behaviour"``
field in its params:

- ``"confirm"`` (the default): act on it and reply.
- ``"reject"``: reply with the error ``not_enough_funds`` (code 10009).
- ``"silent"``: act on it and never reply.
- ``"drop"``: act on it, then drop the connection without a close frame.
  With ``"down_for": seconds`` the exchange also refuses new connections
  (HTTP 503) for that long, as during maintenance.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
import threading
import time
from http import HTTPStatus
from typing import Any, Self

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

NOT_ENOUGH_FUNDS = {"code": 10009, "message": "not_enough_funds"}
METHOD_NOT_FOUND = {"code": -32601, "message": "Method not found"}
PARSE_ERROR = {"code": -32700, "message": "Parse error"}


class ExchangeServer:
    """The exchange: `start` it, connect to `url`, `stop` it (or use ``with``)."""

    def __init__(self, port: int = 0, tick_interval: float = 0.05) -> None:
        self._port = port
        self._tick_interval = tick_interval
        self._lock = threading.Lock()  # guards the state below
        self._subscriptions: dict[ServerConnection, set[str]] = {}
        self._orders: dict[str, list[dict[str, Any]]] = {}  # label -> orders
        self._order_ids = itertools.count(1)
        self._down_until = 0.0  # time.monotonic() until which handshakes are refused
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        if self._server is None:
            msg = "the exchange is not started"
            raise RuntimeError(msg)
        host, port = self._server.socket.getsockname()[:2]
        return f"ws://{host}:{port}"

    def start(self) -> Self:
        self._server = serve(
            self._handle, "127.0.0.1", self._port, process_request=self._admit, close_timeout=1
        )
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="exchange-serve"),
            threading.Thread(target=self._tick, name="exchange-ticker"),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and join every thread; idempotent."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()  # closes connections, waits for their handlers
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- connections -------------------------------------------------------

    def _admit(self, connection: ServerConnection, _request: Request) -> Response | None:
        """Refuse the handshake while the exchange is down."""
        with self._lock:
            down = time.monotonic() < self._down_until
        if down:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "down for maintenance\n")
        return None

    def _handle(self, ws: ServerConnection) -> None:
        """One connection: answer each request as its "behaviour" says."""
        with self._lock:
            self._subscriptions[ws] = set()
        try:
            for frame in ws:
                reply, behaviour = self._dispatch(ws, frame)
                if behaviour == "drop":
                    # No close frame: to the client this looks like a network failure.
                    ws.socket.shutdown(socket.SHUT_RDWR)
                    return
                if reply is not None and behaviour != "silent":
                    ws.send(json.dumps(reply))
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._subscriptions.pop(ws, None)

    def _dispatch(
        self, ws: ServerConnection, frame: str | bytes
    ) -> tuple[dict[str, Any] | None, str]:
        """Act on one request; return the reply (None: none) and its behaviour."""
        try:
            request = json.loads(frame)
        except ValueError:
            return {"jsonrpc": "2.0", "id": None, "error": PARSE_ERROR}, "confirm"
        if not isinstance(request, dict):
            return {"jsonrpc": "2.0", "id": None, "error": PARSE_ERROR}, "confirm"
        params = request.get("params")
        params = params if isinstance(params, dict) else {}
        behaviour = str(params.get("behaviour", "confirm"))
        if behaviour == "drop" and params.get("down_for"):
            with self._lock:
                self._down_until = time.monotonic() + float(params["down_for"])
        if "id" not in request:
            return None, behaviour  # a JSON-RPC notification gets no reply
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request["id"]}
        if behaviour == "reject":
            return {**reply, "error": NOT_ENOUGH_FUNDS}, behaviour
        method = request.get("method")
        if method == "public/subscribe":
            channels = [str(c) for c in params.get("channels", [])]
            with self._lock:
                self._subscriptions.setdefault(ws, set()).update(channels)
            reply["result"] = channels
        elif method in {"private/buy", "private/sell"}:
            reply["result"] = {"order": self._place(method, params)}
        elif method == "private/get_order_state_by_label":
            with self._lock:
                reply["result"] = list(self._orders.get(str(params.get("label")), []))
        elif method == "public/test":
            reply["result"] = {"version": "example-exchange-1.0"}
        else:
            reply["error"] = METHOD_NOT_FOUND
        return reply, behaviour

    def _place(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        label = str(params.get("label", ""))
        with self._lock:
            order = {
                "order_id": f"EX-{next(self._order_ids)}",
                "label": label,
                "direction": method.removeprefix("private/"),
                "instrument_name": params.get("instrument_name"),
                "amount": params.get("amount"),
                "order_state": "open",
            }
            self._orders.setdefault(label, []).append(order)
        return order

    # -- notifications -----------------------------------------------------

    def _tick(self) -> None:
        """Publish a notification on every subscribed channel, every tick."""
        for seq in itertools.count(1):
            if self._stopping.wait(self._tick_interval):
                return
            with self._lock:
                targets = [(ws, sorted(channels)) for ws, channels in self._subscriptions.items()]
            for ws, channels in targets:
                for channel in channels:
                    data = {"seq": seq, "last_price": 60000.0 + (seq % 20) * 0.5}
                    message = {
                        "jsonrpc": "2.0",
                        "method": "subscription",
                        "params": {"channel": channel, "data": data},
                    }
                    try:
                        ws.send(json.dumps(message))
                    except (ConnectionClosed, OSError):
                        break  # it is closing: its handler cleans up


def threads_left(timeout: float = 5.0) -> list[str]:
    """Join every other thread for up to ``timeout`` s; name those still alive."""
    deadline = time.monotonic() + timeout
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me:
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threading.enumerate() if t is not me and t.is_alive()]


def main(argv: list[str]) -> None:
    port = int(argv[1]) if len(argv) > 1 else 0
    with ExchangeServer(port) as exchange:
        print(f"exchange listening on {exchange.url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping", flush=True)


if __name__ == "__main__":
    main(sys.argv)
