"""Market data: 50 routed subscriptions, a server heartbeat, a sequence gap, a drop.

Run it from a clone:

    python3 examples/market_data.py                  # starts a local market-data server
    python3 examples/market_data.py URL              # or talks to one at URL
    python3 examples/market_data.py --serve [PORT]   # only the server, for the line above

What it shows:

- 50 runtime subscriptions (`WsSubscribe`): trades, book and ticker channels
  for 17 symbols, each sent as a confirmed request and each *routed* by its
  key: `WsEndpoint.route` gives an update's channel, and that channel's
  consumer actor gets it, with no router actor in between. Three consumers,
  one per kind. A 51st is refused (the server takes 50 per connection): it
  ends `EndpointRejected` and is forgotten, never replayed.
- `WsEndpoint.answer`: the server sends its own heartbeat,
  ``{"type": "test_request", "id": n}``, and drops a connection that leaves
  one unanswered for half a second; the hook answers ``{"type": "heartbeat", "id": n}``.
- `WsEndpoint.sequence`: each channel's updates are numbered. The server
  skips a number once; only that channel is subscribed again (`WsGap`),
  without a reconnect.
- The server drops the connection once, midway, without a close frame. The
  actor reconnects and replays the 50 subscriptions; their confirmations
  come back as `WsLateResponse` (their subscribe requests have ended), and
  every stream resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone

import pykka
from exchange_server import threads_left
from jsonrpc_subscribe import Progress, say
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from pykka_ws import (
    EndpointRejected,
    SubscriberActor,
    WebSocketActor,
    WsBackoff,
    WsConnected,
    WsDelegatedError,
    WsDelegatedOk,
    WsDisconnected,
    WsEndpoint,
    WsGap,
    WsGetStats,
    WsInbound,
    WsLateResponse,
    WsRequestMatch,
    WsStats,
    WsSubscribe,
    ask,  # ref.ask(message), typed by message
)

if TYPE_CHECKING:
    from collections.abc import Hashable

    from pykka_ws import Frame

KINDS = ("trades", "book", "ticker")
SYMBOLS = ["BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "DOT", "AVAX", "LINK"]
SYMBOLS += ["LTC", "BCH", "ATOM", "UNI", "XLM", "ETC", "FIL", "NEAR"]  # 17
CHANNELS = [f"{KINDS[i % 3]}.{SYMBOLS[i // 3]}" for i in range(50)]  # 17 trades, 17 book, 16 ticker
ONE_TOO_MANY = f"ticker.{SYMBOLS[-1]}"
GAP_CHANNEL = "book.ETH"  # where the server loses an update
WAIT = 10.0  # seconds any step of the example may take before it gives up


def kind_of(channel: str) -> str:
    return channel.partition(".")[0]


# -- the server -------------------------------------------------------------------


@dataclass
class Session:
    """One client (its ``X-Client-Id`` header), across its connections."""

    seq: Counter[str] = field(default_factory=Counter)  # per channel; never restarts
    connections: int = 0
    heartbeat_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    skipped: bool = False


@dataclass
class Feed:
    """One connection: its subscriptions and heartbeats."""

    session: Session
    first: bool  # the session's first connection: dropped once, midway
    channels: dict[str, None] = field(default_factory=dict)  # an ordered set
    rounds: int = 0
    unanswered: dict[int, float] = field(default_factory=dict)  # heartbeat id -> sent at
    dropped: bool = False


class MarketDataServer:
    """A market-data feed on 127.0.0.1: `start` it, connect to `url`, `stop` it.

    Protocol (JSON text frames):

    - ``{"op": "subscribe", "id": n, "channel": "trades.BTC"}``: the reply is
      ``{"id": n, "result": "subscribed"}``, or an ``"error"`` past
      `MAX_SUBSCRIPTIONS` per connection. Every ``tick`` s each subscribed
      channel gets ``{"channel": ..., "seq": n, "price": ...}``, ``seq``
      counting up per channel and client, across its connections.
    - Every ``heartbeat_every`` ticks: ``{"type": "test_request", "id": n}``,
      to be answered ``{"type": "heartbeat", "id": n}`` within
      ``heartbeat_timeout`` s, or the connection is dropped.
    - Once per client: update number ``gap_at`` of `GAP_CHANNEL` is never
      sent, and its first connection is dropped (no close frame) after
      ``drop_after`` ticks with subscriptions.
    """

    MAX_SUBSCRIPTIONS = 50

    def __init__(
        self,
        port: int = 0,
        *,
        tick: float = 0.05,
        heartbeat_every: int = 2,
        heartbeat_timeout: float = 0.5,
        drop_after: int = 20,
        gap_at: int = 5,
    ) -> None:
        self._port = port
        self._tick_interval = tick
        self._heartbeat_every = heartbeat_every
        self._heartbeat_timeout = heartbeat_timeout
        self._drop_after = drop_after
        self._gap_at = gap_at
        self._lock = threading.Lock()  # guards the sessions and feeds
        self._sessions: dict[str, Session] = {}
        self._feeds: dict[ServerConnection, Feed] = {}
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._threads: list[threading.Thread] = []
        self.heartbeats_answered = 0  # test_requests answered, by every client
        self.dropped_unanswered = 0  # connections dropped for a heartbeat left unanswered

    @property
    def url(self) -> str:
        if self._server is None:
            msg = "the server is not started"
            raise RuntimeError(msg)
        host, port = self._server.socket.getsockname()[:2]
        return f"ws://{host}:{port}"

    def start(self) -> Self:
        self._server = serve(self._handle, "127.0.0.1", self._port, close_timeout=1)
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="market-serve"),
            threading.Thread(target=self._tick, name="market-ticker"),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and join every thread; idempotent."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join()

    def _handle(self, ws: ServerConnection) -> None:
        client = ws.request.headers.get("X-Client-Id", "") if ws.request else ""
        with self._lock:
            session = self._sessions.setdefault(client, Session())
            session.connections += 1
            feed = self._feeds[ws] = Feed(session, first=session.connections == 1)
        try:
            for frame in ws:
                reply = self._dispatch(feed, frame)
                if reply is not None:
                    ws.send(json.dumps(reply))
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._feeds.pop(ws, None)

    def _dispatch(self, feed: Feed, frame: str | bytes) -> dict[str, Any] | None:
        try:
            message = json.loads(frame)
        except ValueError:
            return {"id": None, "error": "not JSON"}
        if not isinstance(message, dict):
            return {"id": None, "error": "not an object"}
        if message.get("type") == "heartbeat":
            with self._lock:  # an answer to a heartbeat it does not wait for is ignored
                if feed.unanswered.pop(cast("int", message.get("id")), None) is not None:
                    self.heartbeats_answered += 1
            return None
        reply: dict[str, Any] = {"id": message.get("id")}
        if message.get("op") != "subscribe":
            return {**reply, "error": "unknown op"}
        channel = str(message.get("channel"))
        with self._lock:
            if channel not in feed.channels and len(feed.channels) >= self.MAX_SUBSCRIPTIONS:
                return {**reply, "error": f"at most {self.MAX_SUBSCRIPTIONS} subscriptions"}
            feed.channels[channel] = None
        return {**reply, "result": "subscribed"}

    def _tick(self) -> None:
        while not self._stopping.wait(self._tick_interval):
            with self._lock:
                feeds = list(self._feeds.items())
            for ws, feed in feeds:
                self._round(ws, feed)

    def _round(self, ws: ServerConnection, feed: Feed) -> None:
        """One tick of one connection: its updates, maybe a heartbeat, maybe the drop."""
        session, now = feed.session, time.monotonic()
        with self._lock:
            if not feed.channels or feed.dropped:
                return
            feed.rounds += 1
            late = any(now - sent > self._heartbeat_timeout for sent in feed.unanswered.values())
            frames = []
            for channel in feed.channels:
                seq = session.seq[channel] + 1
                if channel == GAP_CHANNEL and seq == self._gap_at and not session.skipped:
                    session.skipped, seq = True, seq + 1  # this one is lost on the way
                session.seq[channel] = seq
                price = 100.0 + (seq % 50) * 0.25
                frames.append(json.dumps({"channel": channel, "seq": seq, "price": price}))
            if feed.rounds % self._heartbeat_every == 0:
                heartbeat_id = next(session.heartbeat_ids)
                feed.unanswered[heartbeat_id] = now
                frames.append(json.dumps({"type": "test_request", "id": heartbeat_id}))
            self.dropped_unanswered += late
            drop = feed.dropped = late or (feed.first and feed.rounds == self._drop_after)
        try:
            for frame in frames:
                ws.send(frame)
            if drop:  # no close frame: to the client this looks like a network failure
                ws.socket.shutdown(socket.SHUT_RDWR)
        except (ConnectionClosed, OSError):
            pass  # it is closing: its handler cleans up


# -- the client -------------------------------------------------------------------


class MarketData(WsEndpoint):
    """The feed's hooks. They run on the WebSocket actor's thread, one at a time."""

    def __init__(self) -> None:
        self.heartbeats_answered = 0  # read it once the actor has stopped
        self._last: tuple[Frame, Any] | None = None

    def match_response(self, frame: Frame) -> WsRequestMatch | None:
        message = json.loads(frame)
        self._last = (frame, message)  # parse() comes next for this frame: decode once
        if "result" in message or "error" in message:
            return WsRequestMatch(
                message["id"], ok="error" not in message, message=str(message.get("error", ""))
            )
        return None

    def parse(self, frame: Frame) -> Any:
        last, self._last = self._last, None
        return last[1] if last is not None and last[0] is frame else json.loads(frame)

    def route(self, message: Any) -> Hashable | None:
        """An update's channel: the key of its subscription, and of its route."""
        return message["channel"] if "seq" in message else None

    def sequence(self, message: Any) -> tuple[Hashable, int] | None:
        """An update's stream (its channel, the subscription's key) and number."""
        return (message["channel"], message["seq"]) if "seq" in message else None

    def answer(self, message: Any) -> list[str]:
        """Answer the server's heartbeat; it drops a connection that does not."""
        if message.get("type") != "test_request":
            return []
        self.heartbeats_answered += 1
        return [json.dumps({"type": "heartbeat", "id": message["id"]})]


def subscribe_frame(request_id: int, channel: str) -> str:
    return json.dumps({"op": "subscribe", "id": request_id, "channel": channel})


class Report:
    """Ask an actor below for what it counted."""


@dataclass(frozen=True)
class ConsumerReport:
    kind: str
    updates: dict[str, int]  # channel -> updates received
    other: int  # messages that were not updates of this kind


class Consumer(SubscriberActor):
    """Gets the updates of one kind, routed to it by channel (a lighter inbox: many frames)."""

    def __init__(self, kind: str, progress: Progress) -> None:
        super().__init__()
        self.kind, self.progress = kind, progress
        self.updates: Counter[str] = Counter()
        self.other = 0

    def on_receive(self, message: Any) -> Any:
        match message:
            case WsInbound(message={"channel": str(channel), "seq": seq, "price": price}) if (
                kind_of(channel) == self.kind
            ):
                if not self.updates:
                    say(f"[{self.kind}] first update: {channel} seq {seq} price {price}")
                self.updates[channel] += 1
                self.progress.bump(channel)
            case WsGap(key=key, expected=expected, received=received, resubscribed=again):
                # A gap goes to its stream's routes: this consumer's book is stale.
                what = "resubscribed" if again else "no subscription to send again"
                say(f"[{self.kind}] gap on {key}: expected {expected}, received {received}; {what}")
                self.progress.bump("gap")
            case Report():
                return ConsumerReport(self.kind, dict(self.updates), self.other)
            case _:
                self.other += 1
                say(f"[{self.kind}] not mine: {message!r}")
        return None


@dataclass(frozen=True)
class MonitorReport:
    replayed: dict[int, int]  # connection -> subscription confirmations after it opened
    test_requests: int
    unexpected: int


class Monitor(pykka.ThreadingActor):
    """The ``inbound`` subscriber: events, gaps, late replies, the server's heartbeats."""

    def __init__(self, progress: Progress, subscription_ids: set[int]) -> None:
        super().__init__()
        self.progress, self.subscription_ids = progress, subscription_ids
        self.connection = 0
        self.replayed: Counter[int] = Counter()
        self.test_requests = 0
        self.unexpected = 0

    def on_receive(self, message: Any) -> Any:
        match message:
            case WsConnected(url=url, generation=generation):
                self.connection = generation
                say(f"[monitor] connection {generation} open ({url})")
                self.progress.bump(f"connected {generation}")
            case WsDisconnected(cause=cause, generation=generation, reconnecting=reconnecting):
                what = "reconnecting" if reconnecting else "giving up"
                say(f"[monitor] connection {generation} lost ({type(cause).__name__}); {what}")
                self.progress.bump(f"disconnected {generation}")
            case WsGap(key=key, expected=expected, received=received, resubscribed=again):
                what = "resubscribed" if again else "no subscription to send again"
                say(f"[monitor] gap on {key}: expected {expected}, received {received}; {what}")
                self.progress.bump("gap")
            # A replayed subscription's confirmation: a reply to a request that
            # ended long ago, so not a reply to any pending request. (Within
            # the actor's recent_ids_age it is a WsLateResponse, later a
            # plain WsInbound.)
            case (
                WsLateResponse(request_id=int(request_id))
                | WsInbound(message={"id": int(request_id), "result": _})
            ) if request_id in self.subscription_ids:
                self.replayed[self.connection] += 1
                self.progress.bump(f"replayed on {self.connection}")
            case WsInbound(message={"type": "test_request"}):
                self.test_requests += 1
            case Report():
                return MonitorReport(dict(self.replayed), self.test_requests, self.unexpected)
            case _:
                self.unexpected += 1
                say(f"[monitor] unexpected: {message!r}")
        return None


# -- the story --------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--serve"]:
        return serve_forever(int(argv[2]) if len(argv) > 2 else 0)
    server = MarketDataServer().start() if len(argv) < 2 else None
    url = server.url if server is not None else argv[1]
    say(f"market data: {url}" + (" (local, started by this example)" if server else ""))

    progress = Progress()
    consumers = {kind: Consumer.start(kind, progress) for kind in KINDS}
    monitor = Monitor.start(progress, set(range(1, len(CHANNELS) + 1)))
    endpoint = MarketData()
    ws = WebSocketActor.start(
        url,
        endpoint=endpoint,
        inbound=monitor,  # events and unrouted messages; updates go to their routes
        additional_headers={"X-Client-Id": uuid.uuid4().hex},  # the server's session key
        backoff=WsBackoff(initial=0.1, cap=0.5),  # quick reconnects for the demo
        stale_after=2.0,  # a feed with no frame (update, heartbeat) for 2 s is replaced
    )
    try:
        stats = story(ws, consumers, progress)
    except (TimeoutError, WsDelegatedError) as error:
        say(f"stopped early: {type(error).__name__}: {error}")
        return 1
    finally:
        ws.stop()  # from here on the endpoint is ours to read
        reports = [cast("ConsumerReport", c.ask(Report())) for c in consumers.values()]
        seen = cast("MonitorReport", monitor.ask(Report()))
        pykka.ActorRegistry.stop_all()
        if server is not None:
            server.stop()

    for report in reports:
        say(
            f"consumer {report.kind}: {sum(report.updates.values())} updates "
            f"on {len(report.updates)} {report.kind} channels, other messages: {report.other}"
        )
    say(f"reconnects: {stats.reconnects}")
    say(f"subscriptions replayed: {seen.replayed.get(2, 0)} of {stats.subscriptions}")
    say(f"heartbeats answered: {endpoint.heartbeats_answered} of {seen.test_requests}")
    say(f"gaps: {stats.gaps}, duplicates dropped: {stats.duplicates}")
    say(f"unexpected messages: {seen.unexpected}")
    if server is not None:
        say(
            f"server: {server.heartbeats_answered} heartbeats answered, "
            f"{server.dropped_unanswered} connections dropped for an unanswered one"
        )
    left = threads_left()
    say(f"threads left: {', '.join(left) or 'none'}")
    return 1 if left else 0


def story(
    ws: pykka.ActorRef[Any], consumers: dict[str, pykka.ActorRef[Any]], progress: Progress
) -> WsStats:
    """Subscribe, then watch the gap, the drop, the replay; return the final stats."""
    say(f"1. {len(CHANNELS)} subscriptions, each routed to its kind's consumer")
    placed = [
        ws.ask(
            WsSubscribe(
                channel,
                subscribe_frame(request_id, channel),
                request_id=request_id,
                route=consumers[kind_of(channel)],  # this channel's updates go there
            ),
            block=False,
        )
        for request_id, channel in enumerate(CHANNELS, 1)
    ]
    confirmed = [cast("WsDelegatedOk", p.get(timeout=WAIT)).confirmed for p in placed]
    say(f"   {sum(confirmed)} confirmed")
    extra = WsSubscribe(ONE_TOO_MANY, subscribe_frame(51, ONE_TOO_MANY), request_id=51)
    try:
        ask(ws, extra)
    except EndpointRejected as refused:
        say(f"   a 51st is refused ({json.loads(refused.response)['error']}): not replayed")

    say("2. the server loses an update on one channel")
    progress.wait_for("gap")

    say("3. the server drops the connection")
    progress.wait_for("disconnected 1")
    # A consumer answers once it has handled every update told before the ask:
    # all of connection 1's. Whatever it counts later came on connection 2.
    reports = [cast("ConsumerReport", c.ask(Report(), timeout=WAIT)) for c in consumers.values()]
    before = {channel: n for r in reports for channel, n in r.updates.items()}

    say("4. the actor reconnects and replays the subscriptions")
    progress.wait_for("connected 2")
    progress.wait_for("replayed on 2", at_least=len(CHANNELS))
    for channel in CHANNELS:
        progress.wait_for(channel, at_least=before.get(channel, 0) + 3)
    say("   every stream resumed")
    return ask(ws, WsGetStats())


def serve_forever(port: int) -> int:
    server = MarketDataServer(port).start()
    print(f"market data on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
