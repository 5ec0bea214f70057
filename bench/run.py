"""pykka-ws benchmarks: ``python bench/run.py [--quick] [--sections ...] [--json PATH]``.

Sections (``--sections`` takes a comma-separated subset, default all):

- ``seq``: sequential confirmed round trip, pykka-ws ``ask`` vs raw websockets.
- ``pipe``: 256 requests in flight, and ``WsSend`` fire-and-forget, vs raw.
- ``table``: the pending table alone: cost per operation at 1k vs 100k live
  entries, and bytes per entry.
- ``timer``: how late ``Unconfirmed`` arrives after the deadline, with 10,000
  requests pending on a silent server.
- ``inbound``: frames/s delivered to a subscriber actor (100 B JSON frames
  pushed by the server as fast as it can) vs raw websockets' ``recv()`` loop;
  with a JSON matcher on every frame vs raw ``recv()`` + one ``json.loads``;
  and parsed and routed by channel (``WsRoute``).
- ``conns``: 200 connections in one process (in child processes, one for
  pykka-ws and one for raw): throughput, threads and RSS per connection.
- ``conns1k``: the same with 1,000 connections (against an asyncio server in
  its own process), with the time to open and close them all.
- ``sio``: python-socketio's ``call()`` (optional: bench/requirements.txt).

``--plot FILE`` measures sequential round trips of pykka-ws, raw websockets
and python-socketio (interleaved rounds) and draws their latency CDF to FILE
(PNG; needs matplotlib). Alone it runs only that; with ``--sections`` it runs
those sections too.

The WebSocket server (bench/server.py) runs in its own process. Each figure
is the median of several rounds that alternate pykka-ws and its baseline, and
every ratio compares figures of the same run.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import json
import math
import queue
import sys
import threading
import time
import tracemalloc
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import common
import pykka
from common import Child, Row, Section, check, median, percentile, ratio
from rpc import (
    JsonRpcEndpoint,
    notice_frame,
    push_request,
    raw_connect,
    reply_id,
    request_frame,
    start_actor,
    ws_url,
)

import pykka_ws
from pykka_ws import (
    NotDelivered,
    SubscriberActor,
    Unconfirmed,
    WsConfirmMode,
    WsDelegatedError,
    WsDelegatedRequest,
    WsEndpoint,
    WsGetStats,
    WsInbound,
    WsRequestMatch,
    WsRoute,
    WsSend,
)
from pykka_ws._messages import frame_digest
from pykka_ws._pending import PendingTable

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterator

    from websockets.sync.client import ClientConnection

    from pykka_ws import WebSocketActor

    ActorRef = pykka.ActorRef[WebSocketActor]

SECTIONS = ("seq", "pipe", "inbound", "table", "timer", "conns", "conns1k", "sio")
SIO_REQUIREMENTS = "pip install -r bench/requirements.txt"
_US = 1e6
_PAUSE = threading.Event()  # never set: waiting on it is a plain pause


class BenchError(RuntimeError):
    """A benchmark saw a wrong answer (the figures would be meaningless)."""


@dataclass(frozen=True)
class Config:
    """Sizes of every section; ``--quick`` scales them down."""

    quick: bool = False
    rounds: int = 7
    seq_requests: int = 1500
    warmup: int = 300
    pipe_requests: int = 15_000
    window: int = 256
    send_frames: int = 20_000
    table_rounds: int = 3
    table_ops: int = 100_000
    table_sizes: tuple[int, int] = (1_000, 100_000)
    table_memory_entries: int = 100_000
    timer_requests: int = 10_000
    timer_timeout: float = 3.0
    timer_rounds: int = 3
    timer_waiters: int = 4
    timer_probes: int = 200
    inbound_frames: int = 50_000
    inbound_rounds: int = 5
    connections: int = 200
    conn_seconds: float = 2.0
    conn_rounds: int = 3
    connections_1k: int = 1000
    conn1k_seconds: float = 3.0
    conn1k_rounds: int = 3
    plot_rounds: int = 7
    plot_requests: int = 1500
    sio_requests: int = 1000
    sio_pipe_requests: int = 5000


QUICK = Config(
    quick=True,
    rounds=3,
    seq_requests=300,
    warmup=50,
    pipe_requests=3000,
    send_frames=3000,
    table_rounds=1,
    table_ops=20_000,
    table_memory_entries=20_000,
    timer_requests=2000,
    timer_timeout=1.0,
    timer_rounds=1,
    timer_probes=50,
    inbound_frames=5000,
    inbound_rounds=2,
    connections=40,
    conn_seconds=0.5,
    conn_rounds=2,
    connections_1k=100,
    conn1k_seconds=0.5,
    conn1k_rounds=1,
    plot_rounds=2,
    plot_requests=300,
    sio_requests=200,
    sio_pipe_requests=1000,
)


class Context:
    """What every section needs: the sizes, the server, unique request ids."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server: Child | None = None
        self.control: ClientConnection | None = None
        self.url = ""
        self._ids = itertools.count(1)

    def connect(self, server: Child, port: int) -> None:
        """Adopt the WebSocket server and open the control connection to it."""
        self.server = server
        self.url = ws_url(port)
        self.control = raw_connect(self.url)

    def close(self) -> None:
        """Close the control connection and stop the server."""
        if self.control is not None:
            self.control.close()
        if self.server is not None:
            self.server.close()

    def next_id(self) -> int:
        """Return a request id never used before in this run."""
        return next(self._ids)

    def ids(self) -> Iterator[int]:
        """The run's id counter, for hot loops."""
        return self._ids

    def server_cpu(self) -> float:
        """CPU seconds the WebSocket server process has used so far (asked over the wire)."""
        if self.control is None:
            return math.nan
        request_id = self.next_id()
        self.control.send(f'{{"id":{request_id},"method":"cpu"}}')
        reply = json.loads(self.control.recv(timeout=10))
        if reply["id"] != request_id:
            raise BenchError("control reply mismatch")
        return float(reply["result"]["cpu"])


def _collect() -> None:
    gc.collect()


def _expect_confirmed(result: Any) -> None:
    if not result.confirmed:
        raise BenchError(f"expected a confirmed outcome, got {result!r}")


def _us(values: list[float]) -> list[float]:
    return [v * _US for v in values]


# -- 1. sequential round trip ----------------------------------------------


def lib_sequential(ref: ActorRef, ctx: Context, n: int) -> tuple[list[float], float]:
    """Return ``n`` confirmed round-trip latencies (s) and client CPU seconds per request."""
    ids = ctx.ids()
    ask = ref.ask
    perf = time.perf_counter
    latencies = []
    cpu = time.process_time()
    for _ in range(n):
        request_id = next(ids)
        start = perf()
        result = ask(
            WsDelegatedRequest(request_id, request_frame(request_id), timeout=5.0), timeout=10
        )
        latencies.append(perf() - start)
        _expect_confirmed(result)
    return latencies, (time.process_time() - cpu) / n


def raw_sequential(ws: ClientConnection, ctx: Context, n: int) -> tuple[list[float], float]:
    """Return ``n`` raw send+recv latencies (s) and client CPU seconds per request."""
    ids = ctx.ids()
    perf = time.perf_counter
    latencies = []
    cpu = time.process_time()
    for _ in range(n):
        request_id = next(ids)
        start = perf()
        ws.send(request_frame(request_id))
        got = reply_id(ws.recv(timeout=10))
        latencies.append(perf() - start)
        if got != request_id:
            raise BenchError(f"reply {got} for request {request_id}")
    return latencies, (time.process_time() - cpu) / n


def _interleave(
    rounds: int,
    ctx: Context,
    runners: dict[str, Callable[[], dict[str, float]]],
    server_cpu: dict[str, Callable[[], float]] | None = None,
) -> dict[str, list[dict[str, float]]]:
    """Run each runner once per round, in turn; add its server's CPU per request to each.

    ``server_cpu`` maps a runner's name to its server's CPU clock; by default
    every runner uses bench/server.py.
    """
    results: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            clock = (server_cpu or {}).get(name, ctx.server_cpu)
            _collect()
            server_before = clock()
            result = runner()
            result["server_cpu_us"] = (clock() - server_before) / result["n"] * _US
            results[name].append(result)
    return results


def _figure(results: list[dict[str, float]], key: str) -> float:
    return median([r[key] for r in results])


def _compare(
    metric: str,
    a: float,
    b: float,
    unit: str,
    *,
    target: tuple[str, float] | None = None,
    note: str = "",
) -> Row:
    """A row comparing a with b; the target, if any, applies to the ratio a/b."""
    value = ratio(a, b)
    if target is None:
        return Row(metric, a, b, unit, value, note=note)
    op, limit = target
    return Row(metric, a, b, unit, value, f"ratio {op} {limit:g}", check(value, op, limit), note)


def bench_seq(ctx: Context) -> Section:
    """Section 1: sequential confirmed round trip."""
    cfg = ctx.config
    n = cfg.seq_requests
    ref = start_actor(ctx.url)
    ws = raw_connect(ctx.url)
    try:
        lib_sequential(ref, ctx, cfg.warmup)
        raw_sequential(ws, ctx, cfg.warmup)

        def lib() -> dict[str, float]:
            latencies, cpu = lib_sequential(ref, ctx, n)
            return _latency_summary(latencies, cpu, n)

        def raw() -> dict[str, float]:
            latencies, cpu = raw_sequential(ws, ctx, n)
            return _latency_summary(latencies, cpu, n)

        results = _interleave(cfg.rounds, ctx, {"pykka-ws": lib, "raw": raw})
    finally:
        ref.stop()
        ws.close()
    lib_r, raw_r = results["pykka-ws"], results["raw"]
    section = Section("seq", "1. sequential round trip (ask CONFIRMED vs raw send+recv)")
    section.rows = [
        _compare(
            "round trip p50",
            _figure(lib_r, "p50_us"),
            _figure(raw_r, "p50_us"),
            "us",
            target=("<=", 1.2),
        ),
        _compare("round trip p99", _figure(lib_r, "p99_us"), _figure(raw_r, "p99_us"), "us"),
        _compare(
            "client CPU per request",
            _figure(lib_r, "cpu_us"),
            _figure(raw_r, "cpu_us"),
            "us",
            target=("<=", 1.3),
        ),
        _compare(
            "server CPU per request",
            _figure(lib_r, "server_cpu_us"),
            _figure(raw_r, "server_cpu_us"),
            "us",
        ),
    ]
    section.notes = [
        f"{cfg.rounds} rounds of {n} requests each, alternating; figures are medians of rounds"
    ]
    section.rounds = results
    return section


def _latency_summary(latencies: list[float], cpu: float, n: int) -> dict[str, float]:
    lat = _us(latencies)
    return {
        "p50_us": percentile(lat, 50),
        "p99_us": percentile(lat, 99),
        "mean_us": sum(lat) / len(lat),
        "cpu_us": cpu * _US,
        "n": n,
    }


# -- 2. pipelined and fire-and-forget ---------------------------------------


def lib_pipelined(ref: ActorRef, ctx: Context, n: int, window: int) -> dict[str, float]:
    """``n`` confirmed requests, at most ``window`` in flight; return rate and CPU."""
    ids = ctx.ids()
    ask = ref.ask
    in_flight: deque[Any] = deque()
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(n):
        request_id = next(ids)
        request = WsDelegatedRequest(request_id, request_frame(request_id), timeout=30.0)
        in_flight.append(ask(request, block=False))
        if len(in_flight) >= window:
            _expect_confirmed(in_flight.popleft().get(timeout=30))
    while in_flight:
        _expect_confirmed(in_flight.popleft().get(timeout=30))
    elapsed = time.perf_counter() - start
    return _rate(n, elapsed, time.process_time() - cpu)


def raw_pipelined(ws: ClientConnection, ctx: Context, n: int, window: int) -> dict[str, float]:
    """``n`` raw requests, at most ``window`` in flight, from one thread; return rate and CPU."""
    ids = ctx.ids()
    sent: deque[int] = deque()
    send = ws.send
    recv = ws.recv
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(min(window, n)):
        request_id = next(ids)
        send(request_frame(request_id))
        sent.append(request_id)
    remaining = n - len(sent)
    for _ in range(n):
        got = reply_id(recv(timeout=30))
        if got != sent.popleft():
            raise BenchError(f"reply {got} out of order")
        if remaining:
            remaining -= 1
            request_id = next(ids)
            send(request_frame(request_id))
            sent.append(request_id)
    elapsed = time.perf_counter() - start
    return _rate(n, elapsed, time.process_time() - cpu)


def lib_sends(ref: ActorRef, ctx: Context, n: int) -> dict[str, float]:
    """``n`` ``WsSend`` tells, then a confirmed request behind them; return rate and CPU."""
    tell = ref.tell
    cpu = time.process_time()
    start = time.perf_counter()
    for seq in range(n):
        tell(WsSend(notice_frame(seq)))
    request_id = ctx.next_id()
    result = ref.ask(
        WsDelegatedRequest(request_id, request_frame(request_id), timeout=60.0), timeout=90
    )
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    _expect_confirmed(result)
    received = json.loads(result.response)["result"]["sends"]
    if received != n:
        raise BenchError(f"the server received {received} of {n} WsSend frames")
    return _rate(n, elapsed, cpu)


def raw_sends(ws: ClientConnection, ctx: Context, n: int) -> dict[str, float]:
    """``n`` raw sends, then a request behind them; return rate and CPU."""
    send = ws.send
    cpu = time.process_time()
    start = time.perf_counter()
    for seq in range(n):
        send(notice_frame(seq))
    request_id = ctx.next_id()
    send(request_frame(request_id))
    reply = json.loads(ws.recv(timeout=60))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if reply["id"] != request_id or reply["result"]["sends"] != n:
        raise BenchError(f"the server received {reply['result']['sends']} of {n} frames")
    return _rate(n, elapsed, cpu)


def burst_refusals(ctx: Context, n: int) -> int:
    """Tell ``n`` `WsSend` frames to an actor with default settings; return how many it refused."""
    ref = start_actor(ctx.url)
    try:
        for seq in range(n):
            ref.tell(WsSend(notice_frame(seq)))
        deadline = time.monotonic() + 60.0
        while True:  # until every frame is written or refused
            stats = ref.ask(WsGetStats())
            if stats.frames_out + stats.sends_refused >= n or time.monotonic() > deadline:
                return stats.sends_refused
            _PAUSE.wait(0.01)
    finally:
        ref.stop()


def _rate(n: int, elapsed: float, cpu: float) -> dict[str, float]:
    return {"n": n, "elapsed_s": elapsed, "rate": n / elapsed, "cpu_us": cpu / n * _US}


def bench_pipe(ctx: Context) -> Section:
    """Section 2: pipelined requests and fire-and-forget sends."""
    cfg = ctx.config
    n, window, sends = cfg.pipe_requests, cfg.window, cfg.send_frames
    # A burst of tells larger than outbound_capacity would be refused (counted,
    # not raised): room for the whole burst keeps the comparison about speed.
    capacity = max(4096, sends + 16)
    ref = start_actor(ctx.url, max_pending_requests=max(1024, window), outbound_capacity=capacity)
    ws = raw_connect(ctx.url)
    try:
        lib_pipelined(ref, ctx, min(n, 2000), window)
        raw_pipelined(ws, ctx, min(n, 2000), window)
        pipe = _interleave(
            cfg.rounds,
            ctx,
            {
                "pykka-ws": lambda: lib_pipelined(ref, ctx, n, window),
                "raw": lambda: raw_pipelined(ws, ctx, n, window),
            },
        )
        refused_before = ref.ask(WsGetStats()).sends_refused
        fire = _interleave(
            cfg.rounds,
            ctx,
            {
                "pykka-ws": lambda: lib_sends(ref, ctx, sends),
                "raw": lambda: raw_sends(ws, ctx, sends),
            },
        )
        refused = ref.ask(WsGetStats()).sends_refused - refused_before
    finally:
        ref.stop()
        ws.close()
    default_refused = burst_refusals(ctx, sends)
    lib_p, raw_p = pipe["pykka-ws"], pipe["raw"]
    lib_f, raw_f = fire["pykka-ws"], fire["raw"]
    section = Section("pipe", f"2. pipelined ({window} in flight) and fire-and-forget")
    section.rows = [
        _compare(
            "pipelined confirmed requests",
            _figure(lib_p, "rate"),
            _figure(raw_p, "rate"),
            "/s",
            target=(">=", 0.8),
        ),
        _compare(
            "  client CPU per request", _figure(lib_p, "cpu_us"), _figure(raw_p, "cpu_us"), "us"
        ),
        _compare(
            "  server CPU per request",
            _figure(lib_p, "server_cpu_us"),
            _figure(raw_p, "server_cpu_us"),
            "us",
        ),
        _compare(
            "WsSend fire-and-forget",
            _figure(lib_f, "rate"),
            _figure(raw_f, "rate"),
            "/s",
            target=(">=", 0.9),
        ),
        _compare(
            "  client CPU per frame", _figure(lib_f, "cpu_us"), _figure(raw_f, "cpu_us"), "us"
        ),
        _compare(
            "  server CPU per frame",
            _figure(lib_f, "server_cpu_us"),
            _figure(raw_f, "server_cpu_us"),
            "us",
        ),
    ]
    section.notes = [
        (
            f"{cfg.rounds} alternating rounds; {n} requests (window {window}) and {sends} frames "
            "per round"
        ),
        "raw pipelined: one thread sends up to the window, then one send per reply",
        (
            "fire-and-forget is timed until a confirmed request queued behind the frames returns; "
            "the server's count of frames received is checked"
        ),
        (
            f"actor for these rounds: outbound_capacity={capacity}; WsSend frames it refused: "
            f"{refused}"
        ),
        (
            f"with the default outbound_capacity (4096), a burst of {sends} WsSend tells had "
            f"{default_refused} refused (silently: tell, counted in WsStats.sends_refused)"
        ),
    ]
    section.rounds = {
        "pipelined": pipe,
        "fire_and_forget": fire,
        "sends_refused": refused,
        "default_capacity_burst_refused": default_refused,
    }
    return section


# -- 2b. inbound frames to a subscriber ---------------------------------------


class _Tally:
    """What a `Subscriber` counted, shared with the thread that times the round."""

    def __init__(self) -> None:
        self.target = 0
        self.count = 0
        self.finished = 0.0
        self.done = threading.Event()

    def reset(self, target: int) -> None:
        """Expect ``target`` frames next; raise if the last round saw more or fewer."""
        if self.count != self.target:
            raise BenchError(f"subscriber saw {self.count} frames, expected {self.target}")
        self.done.clear()
        self.count = 0
        self.target = target


class Subscriber(SubscriberActor):
    """An inbound subscriber that counts `WsInbound` messages and notes when the last came.

    A `SubscriberActor`, as the README advises for a subscriber told many
    frames: pykka's `ThreadingActor` with a `queue.SimpleQueue` inbox.
    """

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self.tally = tally

    def on_receive(self, message: Any) -> None:
        """Count a frame; at the target, note the time and wake the timer."""
        if isinstance(message, WsInbound):
            tally = self.tally
            tally.count += 1
            if tally.count == tally.target:
                tally.finished = time.perf_counter()
                tally.done.set()


class PlainSubscriber(Subscriber):
    """The same on pykka's own inbox (a `queue.Queue`): any `pykka.ThreadingActor`."""

    _create_actor_inbox = staticmethod(queue.Queue)  # what pykka.ThreadingActor makes


class RoutedEndpoint(WsEndpoint):
    """A market-data endpoint: a prefix test for replies, messages parsed and routed by channel."""

    def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
        """Parse only frames that can be replies (they start with an id)."""
        if isinstance(frame, str) and frame.startswith('{"id"'):
            reply = json.loads(frame)
            return WsRequestMatch(reply["id"], ok="error" not in reply)
        return None

    def parse(self, frame: str | bytes) -> Any:
        """One ``json.loads`` per inbound frame."""
        return json.loads(frame)

    def route(self, message: Any) -> Hashable | None:
        """The message's channel."""
        return message.get("channel") if isinstance(message, dict) else None


def lib_inbound(ref: ActorRef, tally: _Tally, n: int) -> dict[str, float]:
    """Ask the server to push ``n`` frames; time them until the subscriber has the last."""
    tally.reset(n)
    frame = push_request(n)
    cpu = time.process_time()
    start = time.perf_counter()
    ref.tell(WsSend(frame))
    if not tally.done.wait(120):
        raise BenchError(f"the subscriber got {tally.count} of {n} frames in 120 s")
    elapsed = tally.finished - start
    return _rate(n, elapsed, time.process_time() - cpu)


def raw_inbound(ws: ClientConnection, n: int, *, parse: bool) -> dict[str, float]:
    """Ask the server to push ``n`` frames; ``recv()`` them (``json.loads`` each if ``parse``)."""
    recv = ws.recv
    loads = json.loads
    frame = push_request(n)
    replies = 0
    cpu = time.process_time()
    start = time.perf_counter()
    ws.send(frame)
    if parse:
        for _ in range(n):
            message = loads(recv(timeout=30))
            if "id" in message:  # what the matcher checks
                replies += 1
    else:
        for _ in range(n):
            recv(timeout=30)
    elapsed = time.perf_counter() - start
    if replies:
        raise BenchError(f"{replies} pushed frames looked like replies")
    return _rate(n, elapsed, time.process_time() - cpu)


def raw_inbound_routed(ws: ClientConnection, n: int) -> dict[str, float]:
    """Like `raw_inbound` with ``json.loads`` and a look at each message's channel."""
    recv = ws.recv
    loads = json.loads
    frame = push_request(n)
    other = 0
    cpu = time.process_time()
    start = time.perf_counter()
    ws.send(frame)
    for _ in range(n):
        if loads(recv(timeout=30)).get("channel") != "ticks":
            other += 1
    elapsed = time.perf_counter() - start
    if other:
        raise BenchError(f"{other} pushed frames on another channel")
    return _rate(n, elapsed, time.process_time() - cpu)


def bench_inbound(ctx: Context) -> Section:
    """Section 2b: frames/s delivered to a subscriber actor vs raw websockets' recv loop."""
    cfg = ctx.config
    n, rounds = cfg.inbound_frames, cfg.inbound_rounds
    warm = min(n, 2000)
    tallies = {name: _Tally() for name in ("plain", "json", "routed", "pykka")}
    subscribers = {
        name: (PlainSubscriber if name == "pykka" else Subscriber).start(tally)
        for name, tally in tallies.items()
    }
    refs: list[ActorRef] = []
    ws = raw_connect(ctx.url)
    try:
        plain = start_actor(ctx.url, endpoint=WsEndpoint(), inbound=subscribers["plain"])
        refs.append(plain)
        matched = start_actor(ctx.url, endpoint=JsonRpcEndpoint(), inbound=subscribers["json"])
        refs.append(matched)
        routed = start_actor(ctx.url, endpoint=RoutedEndpoint())
        refs.append(routed)
        routed.ask(WsRoute("ticks", subscribers["routed"]))
        on_pykka = start_actor(ctx.url, endpoint=WsEndpoint(), inbound=subscribers["pykka"])
        refs.append(on_pykka)
        cases = ((plain, "plain"), (matched, "json"), (routed, "routed"), (on_pykka, "pykka"))
        for ref, name in cases:
            lib_inbound(ref, tallies[name], warm)
        raw_inbound(ws, warm, parse=False)
        raw_inbound(ws, warm, parse=True)
        results = {
            "plain": _interleave(
                rounds,
                ctx,
                {
                    "pykka-ws": lambda: lib_inbound(plain, tallies["plain"], n),
                    "raw": lambda: raw_inbound(ws, n, parse=False),
                },
            ),
            "json": _interleave(
                rounds,
                ctx,
                {
                    "pykka-ws": lambda: lib_inbound(matched, tallies["json"], n),
                    "raw": lambda: raw_inbound(ws, n, parse=True),
                },
            ),
            "routed": _interleave(
                rounds,
                ctx,
                {
                    "pykka-ws": lambda: lib_inbound(routed, tallies["routed"], n),
                    "raw": lambda: raw_inbound_routed(ws, n),
                },
            ),
            "pykka": _interleave(
                rounds,
                ctx,
                {
                    "pykka-ws": lambda: lib_inbound(on_pykka, tallies["pykka"], n),
                    "raw": lambda: raw_inbound(ws, n, parse=False),
                },
            ),
        }
        for tally in tallies.values():
            tally.reset(0)  # checks the last round's count
        dropped = sum(ref.ask(WsGetStats()).inbound_dropped for ref in refs)
    finally:
        for ref in refs:
            ref.stop()
        for subscriber in subscribers.values():
            subscriber.stop()
        ws.close()
    section = Section("inbound", "2b. inbound frames to a subscriber actor (100 B JSON, pushed)")
    labels = {
        "plain": ("inbound frames to a subscriber", (">=", 0.9)),
        "json": ("  with a JSON matcher on every frame", (">=", 0.8)),
        "routed": ("  parsed + routed by channel (WsRoute)", None),
        "pykka": ("  to a plain pykka.ThreadingActor", None),
    }
    for key, (label, target) in labels.items():
        lib_r, raw_r = results[key]["pykka-ws"], results[key]["raw"]
        section.rows += [
            _compare(label, _figure(lib_r, "rate"), _figure(raw_r, "rate"), "/s", target=target),
            _compare(
                "    client CPU per frame", _figure(lib_r, "cpu_us"), _figure(raw_r, "cpu_us"), "us"
            ),
            _compare(
                "    server CPU per frame",
                _figure(lib_r, "server_cpu_us"),
                _figure(raw_r, "server_cpu_us"),
                "us",
            ),
        ]
    section.notes = [
        (
            f"{rounds} alternating rounds of {n:,} frames per figure; the server pushes "
            "pre-encoded frames in 51 KB writes, as fast as the client reads"
        ),
        (
            "pykka-ws: a WsSend asks for the push; timed until the subscriber actor has the last "
            "WsInbound (default max_queue and subscriber_queue, overflow 'block'); raw: one "
            "thread's recv() loop"
        ),
        (
            "the subscriber is a pykka_ws.SubscriberActor (a queue.SimpleQueue inbox), except "
            "on the last row: pykka's default inbox (queue.Queue, a Python-level Condition)"
        ),
        (
            "JSON matcher: match_response json.loads every frame (bench/rpc.py JsonRpcEndpoint) "
            "vs raw recv + one json.loads; routed: a prefix test, parse = json.loads, route = "
            "channel, one WsRoute, vs raw recv + json.loads + the channel's lookup"
        ),
        f"frames dropped for full subscribers: {dropped}",
    ]
    section.rounds = results
    return section


# -- 3. pending table --------------------------------------------------------


def _filled_table(live: int) -> tuple[PendingTable, deque[Any]]:
    """A table with ``live`` entries whose deadlines are 1..live microseconds."""
    frame = request_frame(0)
    fingerprint = frame_digest(frame)
    mode = WsConfirmMode.CONFIRMED
    table: PendingTable = PendingTable(live + 1, clock=lambda: 0.0)
    entries: deque[Any] = deque()
    for i in range(live):
        entries.append(table.insert_or_join(i, fingerprint, mode, (i + 1) * 1e-6, frame)[1])
    return table, entries


def table_insert_expire(live: int, ops: int) -> float:
    """Seconds per (insert + expire one) at ``live`` live entries, steady state."""
    table, _entries = _filled_table(live)
    frame = request_frame(0)
    fingerprint = frame_digest(frame)
    mode = WsConfirmMode.CONFIRMED
    insert, expire = table.insert_or_join, table.expire_due
    expired = 0
    _collect()
    start = time.perf_counter()
    for k in range(ops):
        request_id = live + k
        insert(request_id, fingerprint, mode, (request_id + 1) * 1e-6, frame)
        expired += len(expire((k + 1) * 1e-6))
    elapsed = time.perf_counter() - start
    if expired != ops or len(table) != live:
        raise BenchError(f"expired {expired} of {ops}; {len(table)} live of {live}")
    return elapsed / ops


def table_insert_remove(live: int, ops: int) -> float:
    """Seconds per (insert + remove the oldest), the reply path, at ``live`` live entries."""
    table, entries = _filled_table(live)
    frame = request_frame(0)
    fingerprint = frame_digest(frame)
    mode = WsConfirmMode.CONFIRMED
    insert, remove = table.insert_or_join, table.remove
    _collect()
    start = time.perf_counter()
    for k in range(ops):
        request_id = live + k
        entries.append(insert(request_id, fingerprint, mode, 1.0 + k, frame)[1])
        remove(entries.popleft())
    elapsed = time.perf_counter() - start
    if len(table) != live or table.heap_size > 3 * live + 64:
        raise BenchError(f"{len(table)} live of {live}, heap {table.heap_size}")
    return elapsed / ops


def table_bytes_per_entry(n: int, *, request_objects: bool) -> float:
    """Bytes traced per pending entry (the frame itself excluded).

    With ``request_objects`` the id and default fingerprint are made per entry
    (as a `WsDelegatedRequest` does), else they exist beforehand and only the
    table's own structures count (an entry is also its callers' deferred).
    """
    frame = request_frame(0)
    mode = WsConfirmMode.CONFIRMED
    table: PendingTable = PendingTable(n)
    base = 10**9
    ids = [] if request_objects else [base + i for i in range(n)]
    fingerprints = [] if request_objects else [frame_digest(frame) for _ in range(n)]
    _collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        if request_objects:
            for i in range(n):
                table.insert_or_join(base + i, frame_digest(frame), mode, 1.0 + i, frame)
        else:
            for i in range(n):
                table.insert_or_join(ids[i], fingerprints[i], mode, 1.0 + i, frame)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    if len(table) != n:
        raise BenchError("table not filled")
    return (after - before) / n


def bench_table(ctx: Context) -> Section:
    """Section 3: the pending table, no network."""
    cfg = ctx.config
    small, large = cfg.table_sizes
    ops = cfg.table_ops
    results: dict[str, list[float]] = {
        f"{kind}_{size}": []
        for kind in ("expire", "remove", "expire_nogc")
        for size in (small, large)
    }
    for _ in range(cfg.table_rounds):
        for size in (small, large):
            results[f"expire_{size}"].append(table_insert_expire(size, ops) * _US)
            results[f"remove_{size}"].append(table_insert_remove(size, ops) * _US)
            gc.disable()
            try:
                results[f"expire_nogc_{size}"].append(table_insert_expire(size, ops) * _US)
            finally:
                gc.enable()
    own = table_bytes_per_entry(cfg.table_memory_entries, request_objects=False)
    whole = table_bytes_per_entry(cfg.table_memory_entries, request_objects=True)
    section = Section(
        "table",
        "3. pending table (direct, no network)",
        a_label=f"{large:,} live",
        b_label=f"{small:,} live",
    )
    section.rows = [
        _compare(
            "insert + expire, per op",
            median(results[f"expire_{large}"]),
            median(results[f"expire_{small}"]),
            "us",
            target=("<=", 2.0),
        ),
        _compare(
            "insert + remove (reply), per op",
            median(results[f"remove_{large}"]),
            median(results[f"remove_{small}"]),
            "us",
            target=("<=", 2.0),
        ),
        _compare(
            "insert + expire, GC off (diagnostic)",
            median(results[f"expire_nogc_{large}"]),
            median(results[f"expire_nogc_{small}"]),
            "us",
        ),
        Row(
            "bytes/entry: entry+id+fingerprint",
            whole,
            unit="B",
            target="< 1024 B",
            met=check(whole, "<", 1024),
        ),
        Row("bytes/entry: entry only", own, unit="B"),
    ]
    section.notes = [
        f"{cfg.table_rounds} round(s) of {ops:,} ops per size; ratio = {large:,} / {small:,}",
        (
            f"bytes by tracemalloc over {cfg.table_memory_entries:,} entries, frame excluded; "
            "an entry is also the deferred its callers follow"
        ),
    ]
    section.rounds = {**results, "bytes_whole": whole, "bytes_table": own}
    return section


# -- 4. timer precision -------------------------------------------------------


def timer_round(
    ref: ActorRef, ctx: Context, n: int, timeout: float, waiters: int, *, gc_on: bool = True
) -> dict[str, Any]:
    """``n`` silent requests; return how late each failure was observed after its deadline.

    With ``gc_on`` False the cyclic garbage collector is off for the round (a
    diagnostic: lateness without collector pauses).
    """
    feeds: list[queue.SimpleQueue[tuple[Any, float] | None]] = [
        queue.SimpleQueue() for _ in range(waiters)
    ]
    observed: list[list[tuple[float, str]]] = [[] for _ in range(waiters)]
    bound = timeout + 60.0

    def wait(j: int) -> None:
        feed, out = feeds[j], observed[j]
        for _ in range(n + 1):
            item = feed.get(timeout=bound)
            if item is None:
                return
            future, deadline = item
            try:
                future.get(timeout=bound)
                kind = "ok"
            except Unconfirmed as exc:
                kind = "unconfirmed" if exc.written else "unconfirmed_unwritten"
            except NotDelivered:
                kind = "not_delivered"
            except pykka.Timeout:
                kind = "no_outcome"
            out.append((time.monotonic() - deadline, kind))

    threads = [
        threading.Thread(target=wait, args=(j,), name=f"bench-waiter-{j}") for j in range(waiters)
    ]
    for thread in threads:
        thread.start()
    _collect()
    rss_before = common.rss_bytes()
    ids = ctx.ids()
    ask = ref.ask
    if not gc_on:
        gc.disable()
    try:
        with common.GcWatch() as watch:
            start = time.monotonic()
            for i in range(n):
                request_id = next(ids)
                request = WsDelegatedRequest(
                    request_id, request_frame(request_id, silent=True), timeout=timeout
                )
                future = ask(request, block=False)
                feeds[i % waiters].put((future, request.created_at + timeout))
            submit_s = time.monotonic() - start
            rss_peak = common.rss_bytes()
            pending_peak = ref.ask(WsGetStats()).pending
            for feed in feeds:
                feed.put(None)
            for thread in threads:
                thread.join(bound)
    finally:
        gc.enable()  # outside the watch: the collection it may start is not the round's
    late = [delay for out in observed for delay, _kind in out]
    kinds: dict[str, int] = {}
    for out in observed:
        for _delay, kind in out:
            kinds[kind] = kinds.get(kind, 0) + 1
    if len(late) != n:
        raise BenchError(f"{len(late)} of {n} outcomes observed")
    late_ms = [d * 1000 for d in late]
    return {
        "n": n,
        "submit_s": submit_s,
        "pending_peak": pending_peak,
        "p50_ms": percentile(late_ms, 50),
        "p99_ms": percentile(late_ms, 99),
        "max_ms": max(late_ms),
        "early": sum(1 for d in late if d < 0),
        "kinds": kinds,
        "rss_per_request": (rss_peak - rss_before) / n,
        "gc_on": gc_on,
        "gc_total_ms": watch.total * 1000,
        "gc_longest_ms": watch.longest * 1000,
        "gc_full_collections": watch.count(2),
    }


def timer_probe_round(
    ctx: Context, n: int, probes: int, every: float, timeout: float
) -> dict[str, Any]:
    """Timer precision with ``n`` requests pending: how late short probes expire.

    ``n`` silent requests with a long deadline fill the table; then a probe
    with a short ``timeout`` is asked every ``every`` seconds, and a waiter
    thread records how late each probe's ``Unconfirmed`` is seen. This is
    the scheduler's precision at that table size, apart from the cost of
    expiring many requests at once (the bulk figure above).
    """
    ref = start_actor(ctx.url, max_pending_requests=n + probes + 16, outbound_capacity=n + 16)
    feed: queue.SimpleQueue[tuple[Any, float] | None] = queue.SimpleQueue()
    late: list[float] = []

    def wait() -> None:
        while (item := feed.get(timeout=60)) is not None:
            future, deadline = item
            try:
                future.get(timeout=60)
            except WsDelegatedError:
                pass
            late.append(time.monotonic() - deadline)

    waiter = threading.Thread(target=wait, name="bench-probe-waiter")
    try:
        background = [
            ref.ask(
                WsDelegatedRequest(i, request_frame(i, silent=True), timeout=120.0), block=False
            )
            for i in (ctx.next_id() for _ in range(n))
        ]
        pending = ref.ask(WsGetStats()).pending
        waiter.start()
        tick = time.monotonic()
        for _ in range(probes):
            request_id = ctx.next_id()
            request = WsDelegatedRequest(
                request_id, request_frame(request_id, silent=True), timeout=timeout
            )
            feed.put((ref.ask(request, block=False), request.created_at + timeout))
            tick += every
            _PAUSE.wait(max(0.0, tick - time.monotonic()))
        feed.put(None)
        waiter.join(60)
    finally:
        ref.stop()
    for future in background:
        try:
            future.get(timeout=10)
        except WsDelegatedError:
            pass
    late_ms = [d * 1000 for d in late]
    return {
        "pending": pending,
        "probes": len(late),
        "p50_ms": percentile(late_ms, 50),
        "p99_ms": percentile(late_ms, 99),
        "max_ms": max(late_ms),
    }


def pending_memory(ctx: Context, n: int) -> float:
    """Bytes traced per pending request in the whole process: actor state and caller future.

    The frames and ids exist before tracing starts, so they do not count.
    """
    ref = start_actor(ctx.url, max_pending_requests=n + 16, outbound_capacity=n + 16)
    futures: list[Any] = []
    try:
        ids = [ctx.next_id() for _ in range(n)]
        frames = [request_frame(i, silent=True) for i in ids]
        written_before = ref.ask(WsGetStats()).frames_out
        _collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            futures.extend(
                ref.ask(WsDelegatedRequest(i, frame, timeout=120.0), block=False)
                for i, frame in zip(ids, frames, strict=True)
            )
            deadline = time.monotonic() + 60.0
            while True:  # until every frame is written and waits for its reply
                stats = ref.ask(WsGetStats())
                written = stats.frames_out - written_before
                if written >= n or time.monotonic() > deadline:
                    break
                _PAUSE.wait(0.01)
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        if stats.pending != n or written != n:
            raise BenchError(f"{stats.pending} pending, {written} written of {n}")
    finally:
        ref.stop()
    for future in futures:  # stop() ended them all
        try:
            future.get(timeout=10)
        except WsDelegatedError:
            pass
    return (after - before) / n


def bench_timer(ctx: Context) -> Section:
    """Section 4: lateness of ``Unconfirmed`` after the deadline."""
    cfg = ctx.config
    n, timeout = cfg.timer_requests, cfg.timer_timeout
    ref = start_actor(
        ctx.url, max_pending_requests=n + 16, outbound_capacity=n + 16, default_timeout=timeout
    )
    try:
        rounds = []
        for _ in range(cfg.timer_rounds):
            rounds.append(timer_round(ref, ctx, n, timeout, cfg.timer_waiters))
            if ref.ask(WsGetStats()).pending:
                raise BenchError("requests still pending after the round")
        gc_off = timer_round(ref, ctx, n, timeout, cfg.timer_waiters, gc_on=False)
        _collect()
    finally:
        ref.stop()
    probe = timer_probe_round(ctx, n, probes=cfg.timer_probes, every=0.01, timeout=0.1)
    memory = pending_memory(ctx, n)
    p99 = median([r["p99_ms"] for r in rounds])
    kinds: dict[str, int] = {}
    for r in rounds:
        for kind, count in r["kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    section = Section("timer", f"4. timer precision ({n:,} pending, silent server)", b_label="")
    section.rows = [
        Row(f"probe lateness p50 ({probe['pending']:,} pending)", probe["p50_ms"], unit="ms"),
        Row(
            f"probe lateness p99 ({probe['pending']:,} pending)",
            probe["p99_ms"],
            unit="ms",
            target="< 20 ms",
            met=check(probe["p99_ms"], "<", 20),
        ),
        Row("probe lateness max", probe["max_ms"], unit="ms"),
        Row(
            "bulk: all expire at once, lateness p50",
            median([r["p50_ms"] for r in rounds]),
            unit="ms",
        ),
        Row("bulk: lateness p99", p99, unit="ms"),
        Row("bulk: lateness max", median([r["max_ms"] for r in rounds]), unit="ms"),
        Row("GC pauses per round, total", median([r["gc_total_ms"] for r in rounds]), unit="ms"),
        Row("GC longest pause", median([r["gc_longest_ms"] for r in rounds]), unit="ms"),
        Row("lateness p99, GC off (diagnostic)", gc_off["p99_ms"], unit="ms"),
        Row("time to submit all", median([r["submit_s"] for r in rounds]), unit="s"),
        Row("traced bytes per pending request", memory, unit="B"),
    ]
    early = sum(r["early"] for r in rounds)
    section.notes = [
        (
            f"probe: {probe['probes']} requests (timeout 0.1 s, one every 10 ms) while "
            f"{probe['pending']:,} others wait for a 120 s deadline; the target applies here"
        ),
        (
            f"bulk: {n:,} requests submitted in one burst all expire within the submit time; "
            "lateness then measures expiry throughput (owner CPU per expiry, waiter wake-ups, "
            "GC pauses), not the timer"
        ),
        (
            f"{cfg.timer_rounds} round(s), +1 with the garbage collector off; timeout "
            f"{timeout:g} s from creation; {cfg.timer_waiters} waiter threads call get() "
            "in deadline order"
        ),
        "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
        f"outcomes observed before their deadline: {early}",
        (
            "lateness = when a waiter thread saw the exception minus created_at + timeout: it "
            "includes the caller's own wake-up, as any caller's would"
        ),
        (
            "traced bytes: tracemalloc over the whole process with all requests written and "
            "pending (actor state and the caller's future; frame and id excluded)"
        ),
    ]
    section.rounds = {
        "rounds": rounds,
        "gc_off": gc_off,
        "probe": probe,
        "traced_bytes_per_request": memory,
    }
    return section


# -- 5. many connections -------------------------------------------------------


def _fleet(kind: str, url: str, count: int, ping: str) -> tuple[Child, dict[str, Any]]:
    child = Child("fleet.py", "--kind", kind, "--url", url, "--count", str(count), "--ping", ping)
    try:
        return child, child.read_json(timeout=300)
    except BaseException:
        child.close()
        raise


def _quit(child: Child) -> dict[str, Any]:
    try:
        child.send("quit")
        return child.read_json(timeout=300)
    finally:
        child.close()


def _per_connection(setup: dict[str, Any]) -> tuple[float, float, float]:
    """Threads, RSS (KiB) and file descriptors per connection.

    Threads one per process (the scheduler) are not counted per connection.
    """
    count = setup["connections"]
    threads = (setup["threads_after"] - setup["threads_before"]) / count
    rss = (setup["rss_after"] - setup["rss_before"]) / count / 1024
    fds = (setup["fds_after"] - setup["fds_before"]) / count
    return threads, rss, fds


def _run_fleets(
    url: str,
    count: int,
    seconds: float,
    rounds: int,
    server_cpu: Callable[[], float],
    *,
    ping_none: bool,
) -> dict[str, Any]:
    """Open a fleet of each kind, drive them in alternating rounds, close them.

    With ``ping_none``, a second fleet of each kind without keepalive is
    opened and closed after, for its thread and memory figures.
    """
    children: dict[str, Child] = {}
    setups: dict[str, dict[str, Any]] = {}
    stops: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, float]]] = {"pykka-ws": [], "raw": []}
    try:
        for name, kind in (("pykka-ws", "lib"), ("raw", "raw")):
            children[name], setups[name] = _fleet(kind, url, count, "20")
        for _ in range(rounds):
            for name, child in children.items():
                server_before = server_cpu()
                child.send(f"run {seconds}")
                result = child.read_json(timeout=seconds + 300)
                result["server_cpu_s"] = server_cpu() - server_before
                result["rate"] = result["requests"] / result["elapsed"]
                result["cpu_us"] = result["cpu"] / result["requests"] * _US
                result["sys_pct"] = 100 * result["cpu_sys"] / max(result["cpu"], 1e-9)
                result["server_cpu_us"] = result["server_cpu_s"] / result["requests"] * _US
                runs[name].append(result)
        for name in list(children):
            stops[name] = _quit(children.pop(name))
        if ping_none:
            for name, kind in (("pykka-ws", "lib"), ("raw", "raw")):
                child, setups[f"{name} ping=None"] = _fleet(kind, url, count, "none")
                stops[f"{name} ping=None"] = _quit(child)
    finally:
        for child in children.values():
            child.close()
    return {"runs": runs, "setups": setups, "stops": stops}


def _fleet_rows(count: int, data: dict[str, Any], *, ping_none: bool) -> list[Row]:
    runs, setups, stops = data["runs"], data["setups"], data["stops"]
    lib_r, raw_r = runs["pykka-ws"], runs["raw"]
    lib_threads, lib_rss, lib_fds = _per_connection(setups["pykka-ws"])
    raw_threads, raw_rss, raw_fds = _per_connection(setups["raw"])
    rows = [
        _compare("total confirmed requests", _figure(lib_r, "rate"), _figure(raw_r, "rate"), "/s"),
        _compare(
            "  client CPU per request", _figure(lib_r, "cpu_us"), _figure(raw_r, "cpu_us"), "us"
        ),
        _compare(
            "    of which in the kernel", _figure(lib_r, "sys_pct"), _figure(raw_r, "sys_pct"), "%"
        ),
        _compare(
            "  server CPU per request",
            _figure(lib_r, "server_cpu_us"),
            _figure(raw_r, "server_cpu_us"),
            "us",
        ),
    ]
    if ping_none:
        lib_threads_np, lib_rss_np, _ = _per_connection(setups["pykka-ws ping=None"])
        raw_threads_np, raw_rss_np, _ = _per_connection(setups["raw ping=None"])
        rows += [
            _compare("threads per connection (ping 20 s)", lib_threads, raw_threads, "x"),
            _compare("threads per connection (ping None)", lib_threads_np, raw_threads_np, "x"),
            _compare("RSS per connection (ping 20 s)", lib_rss, raw_rss, "KiB"),
            _compare("RSS per connection (ping None)", lib_rss_np, raw_rss_np, "KiB"),
        ]
    else:
        row = _compare("threads per connection (ping 20 s)", lib_threads, raw_threads, "x")
        row = replace(row, target="pykka-ws <= 3", met=check(lib_threads, "<=", 3))
        rows += [
            row,
            _compare("RSS per connection (ping 20 s)", lib_rss, raw_rss, "KiB"),
            _compare("file descriptors per connection", lib_fds, raw_fds, "x"),
        ]
    failed = sum(r.get("failed", 0) for r in lib_r)
    reconnects = max((r.get("reconnects", 0) for r in lib_r), default=0)
    rows += [
        Row("pykka-ws requests not confirmed (all rounds)", failed, unit="n"),
        Row("pykka-ws reconnects (all rounds)", reconnects, unit="n"),
        _compare(
            f"time to open {count:,}", setups["pykka-ws"]["setup_s"], setups["raw"]["setup_s"], "s"
        ),
        _compare(
            f"time to close {count:,}", stops["pykka-ws"]["stop_s"], stops["raw"]["stop_s"], "s"
        ),
    ]
    return rows


def bench_conns(ctx: Context) -> Section:
    """Section 5: many connections in one process."""
    cfg = ctx.config
    count, seconds = cfg.connections, cfg.conn_seconds
    data = _run_fleets(ctx.url, count, seconds, cfg.conn_rounds, ctx.server_cpu, ping_none=True)
    section = Section("conns", f"5. {count} connections in one process")
    section.rows = _fleet_rows(count, data, ping_none=True)
    section.notes = [
        (
            f"each side in its own child process; {cfg.conn_rounds} alternating rounds of "
            f"{seconds:g} s; 4 driver threads keep one confirmed request in flight per connection"
        ),
        (
            "threads and RSS: deltas over opening the connections (and one request each), "
            f"divided by {count}; raw opens them one by one, pykka-ws actors connect in parallel"
        ),
        "server: bench/server.py (websockets' threading server, as in the other sections)",
    ]
    section.rounds = data
    return section


# A websockets client connection holds 4 descriptors (socket, selector, and a
# socket pair to wake it); the server holds one per connection of both fleets.
_FDS_PER_CONNECTION = 4
_FD_MARGIN = 256


def bench_conns1k(ctx: Context) -> Section:
    """Section 5b: 1,000 connections in one process, against an asyncio server."""
    cfg = ctx.config
    wanted, seconds, rounds = cfg.connections_1k, cfg.conn1k_seconds, cfg.conn1k_rounds
    count = wanted
    notes = []
    need = wanted * _FDS_PER_CONNECTION + _FD_MARGIN
    enough, message = common.raise_fd_limit(need)  # the children inherit the raised limit
    if not enough:
        soft = common.fd_limit()
        count = max(1, (soft - _FD_MARGIN) // _FDS_PER_CONNECTION)
        notes.append(f"DEGRADED: {count} connections instead of {wanted}: {message}")
        print(f"   conns1k: {notes[-1]}", file=sys.stderr, flush=True)
    section = Section("conns1k", f"5b. {count:,} connections in one process (asyncio server)")
    server, port = common.start_port_child("server.py", "--impl", "asyncio")
    try:
        url = ws_url(port)
        data = _run_fleets(url, count, seconds, rounds, server.cpu_seconds, ping_none=False)
    finally:
        server.close()
    section.rows = _fleet_rows(count, data, ping_none=False)
    section.notes = [
        *notes,
        (
            f"each side in its own child process; {rounds} alternating round(s) of {seconds:g} s; "
            "4 driver threads keep one confirmed request in flight per connection"
        ),
        (
            "server: bench/server.py --impl asyncio (one event loop; websockets' threading server "
            "spends more CPU than the clients at this count and would set the pace)"
        ),
        (
            f"threads, RSS and fds: deltas over opening the connections (and one request each), "
            f"divided by {count:,}; default settings (ping_interval 20 s); {message}"
        ),
    ]
    section.rounds = data
    return section


# -- 6. python-socketio ------------------------------------------------------


def _sio_missing() -> list[str]:
    modules = ("socketio", "engineio", "simple_websocket", "websocket", "werkzeug")
    return [m for m in modules if importlib.util.find_spec(m) is None]


def sio_sequential(client: Any, ctx: Context, n: int) -> tuple[list[float], float]:
    """``n`` sequential ``call()`` round trips; latencies (s) and CPU seconds per call."""
    ids = ctx.ids()
    perf = time.perf_counter
    call = client.call
    latencies = []
    cpu = time.process_time()
    for _ in range(n):
        request_id = next(ids)
        start = perf()
        reply = call("rpc", {"id": request_id, "method": "buy", "params": {"qty": 1}}, timeout=5)
        latencies.append(perf() - start)
        if reply["id"] != request_id:
            raise BenchError("socket.io reply mismatch")
    return latencies, (time.process_time() - cpu) / n


def sio_pipelined(client: Any, ctx: Context, n: int, window: int) -> dict[str, float]:
    """``n`` ``emit()`` calls with ack callbacks, at most ``window`` in flight."""
    slots = threading.BoundedSemaphore(window)
    done = threading.Event()
    state = {"acked": 0, "bad": 0}
    lock = threading.Lock()
    ids = ctx.ids()

    def make_ack(request_id: int) -> Callable[[Any], None]:
        def ack(reply: Any) -> None:
            with lock:
                state["acked"] += 1
                if reply["id"] != request_id:
                    state["bad"] += 1
                if state["acked"] == n:
                    done.set()
            slots.release()

        return ack

    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(n):
        if not slots.acquire(timeout=30):
            raise BenchError("socket.io acks stopped coming")
        request_id = next(ids)
        client.emit(
            "rpc",
            {"id": request_id, "method": "buy", "params": {"qty": 1}},
            callback=make_ack(request_id),
        )
    if not done.wait(60):
        raise BenchError(f"only {state['acked']} of {n} socket.io acks")
    elapsed = time.perf_counter() - start
    if state["bad"]:
        raise BenchError("socket.io ack mismatch")
    return _rate(n, elapsed, time.process_time() - cpu)


def bench_sio(ctx: Context) -> Section:
    """Section 6: python-socketio ``call()`` beside pykka-ws ``ask``."""
    cfg = ctx.config
    section = Section(
        "sio",
        "6. python-socketio call() (threading server, websocket transport)",
        b_label="python-socketio",
    )
    missing = _sio_missing()
    if missing:
        section.skipped = f"skipped ({SIO_REQUIREMENTS}); missing: {', '.join(missing)}"
        return section
    import socketio  # noqa: PLC0415 - optional dependency

    n, window = cfg.sio_requests, cfg.window
    pipe_n = cfg.sio_pipe_requests
    server, port = common.start_port_child("sio_server.py")
    client = socketio.Client(reconnection=False)
    ref = None
    try:
        client.connect(
            f"http://{common.LOOPBACK}:{port}", transports=["websocket"], wait_timeout=10
        )
        ref = start_actor(ctx.url)
        lib_sequential(ref, ctx, cfg.warmup)
        sio_sequential(client, ctx, cfg.warmup)

        def lib() -> dict[str, float]:
            latencies, cpu = lib_sequential(ref, ctx, n)
            return _latency_summary(latencies, cpu, n)

        def sio() -> dict[str, float]:
            latencies, cpu = sio_sequential(client, ctx, n)
            return _latency_summary(latencies, cpu, n)

        clocks = {"python-socketio": server.cpu_seconds}
        seq = _interleave(cfg.rounds, ctx, {"pykka-ws": lib, "python-socketio": sio}, clocks)
        pipe = _interleave(
            cfg.rounds,
            ctx,
            {
                "pykka-ws": lambda: lib_pipelined(ref, ctx, pipe_n, window),
                "python-socketio": lambda: sio_pipelined(client, ctx, pipe_n, window),
            },
            clocks,
        )
    finally:
        if ref is not None:
            ref.stop()
        client.disconnect()
        server.close()
    lib_s, sio_s = seq["pykka-ws"], seq["python-socketio"]
    lib_p, sio_p = pipe["pykka-ws"], pipe["python-socketio"]
    section.rows = [
        _compare("round trip p50", _figure(lib_s, "p50_us"), _figure(sio_s, "p50_us"), "us"),
        _compare("round trip p99", _figure(lib_s, "p99_us"), _figure(sio_s, "p99_us"), "us"),
        _compare(
            "client CPU per request", _figure(lib_s, "cpu_us"), _figure(sio_s, "cpu_us"), "us"
        ),
        _compare(
            f"pipelined ({window} in flight)", _figure(lib_p, "rate"), _figure(sio_p, "rate"), "/s"
        ),
        _compare(
            "  client CPU per request", _figure(lib_p, "cpu_us"), _figure(sio_p, "cpu_us"), "us"
        ),
    ]
    section.notes = [
        f"{cfg.rounds} alternating rounds; {n} sequential and {pipe_n} pipelined requests each",
        (
            "pykka-ws against bench/server.py, python-socketio against bench/sio_server.py "
            "(threading mode, werkzeug + simple-websocket); socket.io pipelined: "
            "emit(callback=...)"
        ),
        "ratio = pykka-ws / python-socketio",
    ]
    section.rounds = {"sequential": seq, "pipelined": pipe}
    return section


# -- latency picture (--plot) -------------------------------------------------


def plot_latencies(ctx: Context) -> tuple[dict[str, list[float]], list[str]]:
    """Sequential round trips (us) of pykka-ws, raw websockets and python-socketio.

    Interleaved rounds, like the sections; python-socketio is left out (and
    said so) when its packages are missing.
    """
    cfg = ctx.config
    n, rounds = cfg.plot_requests, cfg.plot_rounds
    notes: list[str] = []
    series: dict[str, list[float]] = {"pykka-ws": [], "raw websockets": []}
    ref = start_actor(ctx.url)
    ws = raw_connect(ctx.url)
    sio_server: Child | None = None
    client: Any = None
    try:
        runners: dict[str, Callable[[int], list[float]]] = {
            "pykka-ws": lambda k: lib_sequential(ref, ctx, k)[0],
            "raw websockets": lambda k: raw_sequential(ws, ctx, k)[0],
        }
        missing = _sio_missing()
        if missing:
            notes.append(f"python-socketio left out ({SIO_REQUIREMENTS}): {', '.join(missing)}")
        else:
            import socketio  # noqa: PLC0415 - optional dependency

            sio_server, port = common.start_port_child("sio_server.py")
            client = socketio.Client(reconnection=False)
            client.connect(
                f"http://{common.LOOPBACK}:{port}", transports=["websocket"], wait_timeout=10
            )
            sio = client
            runners["python-socketio"] = lambda k: sio_sequential(sio, ctx, k)[0]
            series["python-socketio"] = []
        for runner in runners.values():
            runner(cfg.warmup)
        for _ in range(rounds):
            for name, runner in runners.items():
                _collect()
                series[name].extend(_us(runner(n)))
    finally:
        ref.stop()
        ws.close()
        if client is not None:
            client.disconnect()
        if sio_server is not None:
            sio_server.close()
    return series, notes


def write_plot(ctx: Context, path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Measure the round trips, draw their CDF to ``path``, print and return percentiles."""
    import plot  # noqa: PLC0415 - imports matplotlib

    cfg = ctx.config
    series, notes = plot_latencies(ctx)
    note = (
        f"bench/run.py --plot: {cfg.plot_rounds} interleaved rounds x {cfg.plot_requests} "
        f"requests each, server in its own process; pykka-ws {info['commit']}"
    )
    plot.draw(path, {k: v for k, v in series.items() if v}, info, note)
    summary = {
        name: {q: percentile(v, q) for q in (50, 90, 99, 99.9)} for name, v in series.items() if v
    }
    print("== latency CDF (sequential round trips) ==")
    for name, qs in summary.items():
        figures = ", ".join(f"p{q:g} {value:,.0f} us" for q, value in qs.items())
        print(f"   {name:16s} {figures} ({len(series[name]):,} samples)")
    for line in notes:
        print(f"   note: {line}")
    size = path.stat().st_size
    print(f"   picture written to {path} ({size / 1024:.0f} KiB)", flush=True)
    return {"path": str(path), "bytes": size, "percentiles_us": summary, "notes": notes}


# -- main ----------------------------------------------------------------------

BENCHES: dict[str, Callable[[Context], Section]] = {
    "seq": bench_seq,
    "pipe": bench_pipe,
    "inbound": bench_inbound,
    "table": bench_table,
    "timer": bench_timer,
    "conns": bench_conns,
    "conns1k": bench_conns1k,
    "sio": bench_sio,
}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="pykka-ws benchmarks", epilog=f"sections: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument(
        "--sections",
        help="comma-separated sections to run (default: all, or none with --plot)",
    )
    parser.add_argument("--rounds", type=int, help="alternating rounds per figure")
    parser.add_argument("--connections", type=int, help="connections in section conns")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="draw a CDF of sequential round trips (pykka-ws, raw, python-socketio) to FILE (PNG)",
    )
    args = parser.parse_args(argv)
    if args.sections is None:
        args.sections = "" if args.plot is not None else ",".join(SECTIONS)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.chosen = [s for s in SECTIONS if s in chosen]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print a table per section, optionally write JSON."""
    args = _parse_args(argv)
    if args.plot is not None:
        import plot  # noqa: PLC0415 - matplotlib only with --plot

        missing = plot.matplotlib_missing()
        if missing:
            print(missing, file=sys.stderr)
            return 2
    config = QUICK if args.quick else Config()
    if args.rounds is not None:
        config = replace(config, rounds=max(1, args.rounds))
    if args.connections is not None:
        config = replace(config, connections=max(1, args.connections))
    info = common.machine_info(pykka_ws.__version__)
    print(common.render_machine(info))
    chosen = ", ".join(args.chosen) or "none"
    plotting = f"; --plot {args.plot}" if args.plot is not None else ""
    print(f"  run     : {'--quick' if config.quick else 'full'}; sections {chosen}{plotting}")
    print(flush=True)
    ctx = Context(config)
    sections: dict[str, Any] = {}
    failures = 0
    started = time.perf_counter()
    machine_before = common.cpu_times()
    needs_server = args.plot is not None or any(s != "table" for s in args.chosen)
    plotted: dict[str, Any] | None = None
    try:
        if needs_server:
            ctx.connect(*common.start_port_child("server.py"))
        for key in args.chosen:
            section_start = time.perf_counter()
            try:
                section = BENCHES[key](ctx)
            except Exception as exc:
                failures += 1
                section = Section(key, key)
                section.skipped = f"FAILED: {type(exc).__name__}: {exc}"
            section.rounds["duration_s"] = time.perf_counter() - section_start
            sections[key] = section.to_json()
            print(common.render(section))
            print(f"   ({section.rounds['duration_s']:.1f} s)", flush=True)
            print(flush=True)
        if args.plot is not None:
            try:
                plotted = write_plot(ctx, args.plot, info)
            except Exception as exc:
                failures += 1
                print(f"   --plot FAILED: {type(exc).__name__}: {exc}", flush=True)
            print(flush=True)
    finally:
        ctx.close()
    total = time.perf_counter() - started
    busy, steal = common.busy_and_steal(machine_before, common.cpu_times())
    info["run_busy_fraction"] = busy
    info["run_steal_fraction"] = steal
    print(f"total {total:.1f} s; machine CPU busy {busy:.0%}, stolen by the hypervisor {steal:.1%}")
    if args.json is not None:
        document = {
            "machine": info,
            "config": asdict(config),
            "argv": sys.argv[1:] if argv is None else argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "duration_s": total,
            "sections": sections,
            "plot": plotted,
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
