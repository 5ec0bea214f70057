"""JSON-RPC 2.0 subscriptions that survive a reconnect, Deribit style.

Run it from a clone:

    python3 examples/jsonrpc_subscribe.py        # starts a local exchange
    python3 examples/jsonrpc_subscribe.py URL    # or talks to one at URL

(URL should be an ``examples/exchange_server.py``: the example asks it to
drop the connection half way through.)

What it shows:

- `pykka_ws.jsonrpc`: `JsonRpcEndpoint` pairs ``{"id": n, "result": ...}``
  and ``{"id": n, "error": {...}}`` replies with requests (an error is an
  `EndpointRejected` naming its message and code) and hands every other
  frame to the subscribers decoded, as a dict; `request` builds a call's
  `WsDelegatedRequest`, `request_frame` and `notification` bare frames.
- `SubscribingEndpoint`: its ``on_open()`` sends one ``public/subscribe``
  for every channel wanted so far, on every (re)connection: that is how the
  subscriptions come back after a reconnect.
- A consumer pykka actor, given as ``inbound=``, that receives the
  notifications (matched as dicts) and the connection events.
- The exchange drops the connection; the actor reconnects, replays the
  subscriptions, and the notifications resume.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone

import pykka
from exchange_server import ExchangeServer, threads_left

from pykka_ws import (
    EndpointRejected,
    WebSocketActor,
    WsBackoff,
    WsConnected,
    WsDelegatedError,
    WsDisconnected,
    WsGetStats,
    WsInbound,
    WsLateResponse,
    WsSend,
    WsStats,
    jsonrpc,
    request,  # ref.ask(req), typed: returns the WsDelegatedOk, raises the rest
)

TICKER = "ticker.BTC-PERPETUAL.100ms"
TRADES = "trades.BTC-PERPETUAL.100ms"
WAIT = 10.0  # seconds any step of the example may take before it gives up

_say_lock = threading.Lock()


def say(text: str) -> None:
    """Print a line; several threads print here, one whole line at a time."""
    with _say_lock:
        print(text, flush=True)


# -- the endpoint ---------------------------------------------------------------


class SubscribingEndpoint(jsonrpc.JsonRpcEndpoint):
    """Replays every wanted channel on each (re)connection.

    `want` is called by the application's thread and ``on_open`` by the
    actor's thread, so the channel set is guarded by a lock and ``on_open``
    works on a copy. A channel is recorded *before* its subscribe request is
    sent: should the connection drop before the reply, the next connection
    subscribes it anyway (subscribing twice is harmless).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, None] = {}  # an ordered set
        self._replays = itertools.count(1)  # only the actor's thread uses it

    def want(self, *channels: str) -> None:
        with self._lock:
            self._channels.update(dict.fromkeys(channels))

    def on_open(self) -> list[str]:
        with self._lock:
            channels = list(self._channels)
        if not channels:
            return []
        # String ids never clash with the application's integer request ids.
        # The reply matches no pending request, so it reaches the consumer as
        # an ordinary WsInbound (the decoded reply object).
        request_id = f"on-open-{next(self._replays)}"
        return [jsonrpc.request_frame(request_id, "public/subscribe", {"channels": channels})]


# -- the consumer ---------------------------------------------------------------


class Progress:
    """Counters the consumer bumps and the main thread waits on."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._counts: Counter[str] = Counter()

    def bump(self, key: str) -> None:
        with self._changed:
            self._counts[key] += 1
            self._changed.notify_all()

    def wait_for(self, key: str, at_least: int = 1, timeout: float = WAIT) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._counts[key] >= at_least, timeout):
                msg = f"gave up after {timeout} s waiting for {at_least} x {key!r}"
                raise TimeoutError(msg)


class Consumer(pykka.ThreadingActor):
    """Receives what the WebSocket actor tells its ``inbound`` subscribers."""

    SHOW = 2  # notifications printed per channel and connection

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.connection = 0
        self.seen: Counter[tuple[int, str]] = Counter()

    def on_receive(self, message: Any) -> None:
        match message:
            case WsConnected(generation=generation):
                self.connection = generation
                say(f"[consumer] connected (connection {generation})")
                self.progress.bump(f"connected {generation}")
            case WsDisconnected(cause=cause, generation=generation, reconnecting=reconnecting):
                what = "reconnecting" if reconnecting else "giving up"
                say(f"[consumer] connection {generation} lost ({describe(cause)}); {what}")
                self.progress.bump(f"disconnected {generation}")
            case WsInbound(
                message={
                    "method": "subscription",
                    "params": {"channel": str(channel), "data": data},
                }
            ):
                key = (self.connection, channel)
                self.seen[key] += 1
                if self.seen[key] <= self.SHOW:
                    say(
                        f"[consumer] connection {self.connection}: {channel} "
                        f"seq {data.get('seq')} last_price {data.get('last_price')}"
                    )
                self.progress.bump(f"{channel} on {self.connection}")
            case WsInbound(message={"id": str(rid), "result": result}) if rid.startswith("on-open"):
                say(f"[consumer] connection {self.connection}: on_open subscribed {result}")
                self.progress.bump(f"on_open on {self.connection}")
            case WsInbound(message=other) | WsLateResponse(frame=other):
                say(f"[consumer] other message: {other!r}")


def describe(error: BaseException | None) -> str:
    return "no cause" if error is None else f"{type(error).__name__}: {error}"


# -- the story ------------------------------------------------------------------


def main(argv: list[str]) -> int:
    exchange = ExchangeServer().start() if len(argv) < 2 else None
    url = exchange.url if exchange is not None else argv[1]
    say(f"exchange: {url}" + (" (local, started by this example)" if exchange else ""))

    say(f"1. on_open subscribes {TICKER} as soon as the connection opens")
    progress = Progress()
    consumer = Consumer.start(progress)
    endpoint = SubscribingEndpoint()
    endpoint.want(TICKER)  # wanted before the connection opens: on_open subscribes it
    ws = WebSocketActor.start(
        url,
        endpoint=endpoint,
        inbound=consumer,
        default_timeout=5.0,
        backoff=WsBackoff(initial=0.2, cap=1.0),  # quick reconnects for the demo
    )
    ids = itertools.count(1)
    try:
        progress.wait_for("on_open on 1")
        progress.wait_for(f"{TICKER} on 1", at_least=Consumer.SHOW)

        say(f"2. subscribe {TRADES} with a confirmed request")
        endpoint.want(TRADES)  # first, so a reconnect replays it even if the reply is lost
        subscribe = jsonrpc.request(next(ids), "public/subscribe", {"channels": [TRADES]})
        ok = request(ws, subscribe)
        reply = json.loads(ok.response or "{}")
        say(f"   subscribe confirmed (request {ok.request_id}): {reply.get('result')}")
        try:
            request(ws, jsonrpc.request(next(ids), "public/no_such_method"))
        except EndpointRejected as refused:  # the JSON-RPC error's message and code
            say(
                f"   an unknown method is refused (request {refused.request_id}): {refused.message}"
            )
        progress.wait_for(f"{TRADES} on 1", at_least=Consumer.SHOW)

        say("3. the exchange drops the connection")
        # A JSON-RPC notification (no id: there is no reply to wait for), fire and forget.
        ws.tell(WsSend(jsonrpc.notification("public/test", {"behaviour": "drop"})))
        progress.wait_for("disconnected 1")

        say("4. the actor reconnects and on_open replays both subscriptions")
        progress.wait_for("connected 2")
        progress.wait_for("on_open on 2")
        progress.wait_for(f"{TICKER} on 2", at_least=Consumer.SHOW)
        progress.wait_for(f"{TRADES} on 2", at_least=Consumer.SHOW)
        say("   notifications resumed on both channels")

        stats = cast("WsStats", ws.ask(WsGetStats()))  # pykka's ask is typed Any
        say(
            f"stats: state={stats.state} reconnects={stats.reconnects} "
            f"frames_in={stats.frames_in} frames_out={stats.frames_out} outcomes="
            + ", ".join(f"{k}={v}" for k, v in stats.outcomes.items() if v)
        )
    except (TimeoutError, WsDelegatedError) as error:
        say(f"stopped early: {type(error).__name__}: {error}")
        return 1
    finally:
        ws.stop()
        consumer.stop()
        if exchange is not None:
            exchange.stop()
    left = threads_left()
    say(f"threads left: {', '.join(left) or 'none'}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
