"""Every outcome of a delegated request, against a local server.

Run it from a clone:

    python3 examples/demo.py

It starts a loopback WebSocket server (`pykka_ws.testing.WsTestServer`) that
confirms, rejects or ignores JSON requests as each asks, connects a
`WebSocketActor` to it, and prints one line per outcome with its latency.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone

import pykka

from pykka_ws import (
    WebSocketActor,
    WsConfirmMode,
    WsDelegatedError,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsEndpoint,
    WsGetStats,
    WsRequestMatch,
    WsStats,
    request,
)
from pykka_ws.testing import WsTestServer


class JsonRpcEndpoint(WsEndpoint):
    """Replies look like {"id": n, "result": ...} or {"id": n, "error": ...}."""

    def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
        message = json.loads(frame)
        if not isinstance(message, dict) or "id" not in message:
            return None
        if "error" in message:
            return WsRequestMatch(message["id"], ok=False, message=message["error"]["message"])
        return WsRequestMatch(message["id"])


def exchange(frame: str | bytes) -> str | None:
    """The server: do what the request's "do" field says."""
    request = json.loads(frame)
    action = request.get("do", "confirm")
    if action == "confirm":
        return json.dumps({"id": request["id"], "result": {"order": "accepted"}})
    if action == "reject":
        return json.dumps({"id": request["id"], "error": {"message": "insufficient funds"}})
    return None  # stay silent


def order(request_id: int, do: str = "confirm", qty: int = 1) -> str:
    return json.dumps({"id": request_id, "method": "buy", "qty": qty, "do": do})


def show(label: str, started: float, outcome: WsDelegatedOk | WsDelegatedError) -> None:
    took = (time.monotonic() - started) * 1000
    if isinstance(outcome, WsDelegatedError):
        text = f"{type(outcome).__name__}: {outcome}"
    else:
        text = repr(outcome)
    print(f"{label:<16} {took:8.1f} ms  {text}", flush=True)


def ask(ref: pykka.ActorRef[Any], label: str, req: WsDelegatedRequest) -> None:
    started = time.monotonic()
    outcome: WsDelegatedOk | WsDelegatedError
    try:
        outcome = request(ref, req)  # ref.ask(req), typed: returns the ok, raises the rest
    except WsDelegatedError as error:
        outcome = error
    show(label, started, outcome)


def stats(ref: pykka.ActorRef[Any]) -> WsStats:
    return cast("WsStats", ref.ask(WsGetStats()))  # pykka's ask is typed Any


def main() -> None:
    server = WsTestServer(exchange).start()
    ref = WebSocketActor.start(
        server.url, endpoint=JsonRpcEndpoint(), max_pending_requests=3, default_timeout=2.0
    )
    try:
        ask(ref, "confirmed", WsDelegatedRequest(1, order(1)))
        ask(ref, "sent", WsDelegatedRequest(2, order(2), confirm_mode=WsConfirmMode.SENT))
        ask(ref, "rejected", WsDelegatedRequest(3, order(3, "reject")))
        ask(ref, "unconfirmed", WsDelegatedRequest(4, order(4, "silent"), timeout=0.3))

        # Request 5 is in flight (the server will not answer it) ...
        held = [
            ref.ask(WsDelegatedRequest(i, order(i, "silent"), timeout=0.5), block=False)
            for i in (5, 6, 7)
        ]
        # ... so the same id with another payload is refused at once,
        ask(ref, "payload mismatch", WsDelegatedRequest(5, order(5, "silent", qty=9)))
        # and a fourth id is over max_pending_requests=3.
        ask(ref, "too many pending", WsDelegatedRequest(8, order(8)))
        for future in held:
            try:
                future.get()
            except WsDelegatedError:
                pass

        # The server goes away: the frame can never be written.
        server.stop()
        deadline = time.monotonic() + 5
        while stats(ref).state == "open" and time.monotonic() < deadline:
            time.sleep(0.01)
        ask(ref, "not delivered", WsDelegatedRequest(9, order(9), timeout=0.3))

        print(f"stats: {stats(ref).outcomes}")
    finally:
        ref.stop()
        server.stop()


if __name__ == "__main__":
    main()
