"""Helpers shared by the tests: one copy of each, imported by every test file.

Fixtures live in ``conftest.py``; everything else a test file needs more than
once is here, in these sections:

- Timing: the slack past a deadline, a plain pause, polling with a deadline.
- Library threads: the threads the library starts, and waiting for them to end.
- Backoffs: fast reconnection policies, and one that records its delays.
- A fake clock for the sans-I/O parts.
- The JSON protocol of the tests: the client's endpoint, the server's reply
  function and the request frames.
- Actors: starting one, asking its stats, waiting for a connection state.
- Subscribers and endpoints that stand in for slow or curious users.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pykka
import pytest

from pykka_ws import (
    WebSocketActor,
    WsBackoff,
    WsEndpoint,
    WsGetStats,
    WsLateResponse,
    WsRequestMatch,
    WsResolved,
    WsStats,
)

# -- timing ---------------------------------------------------------------------------------

DEADLINE_SLACK = 3.0
"""Seconds past its deadline an outcome may take: scheduling slack on 2 shared cores."""

_NEVER_SET = threading.Event()  # waiting on it is a plain pause


def pause(seconds: float) -> None:
    """Let ``seconds`` pass: a plain, bounded pause (for when the scenario is the passing time)."""
    _NEVER_SET.wait(seconds)


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        pause(0.005)  # the poll's interval; the deadline bounds the wait


# -- library threads ------------------------------------------------------------------------

LIBRARY_THREAD_PREFIXES = ("pykka-ws-", "WebSocketActor", "WsWriter")


def library_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith(LIBRARY_THREAD_PREFIXES) and not t.name.startswith("pykka-ws-testing")
    ]


def wait_no_library_threads(timeout: float = 5.0) -> None:
    wait_until(lambda: not library_threads(), timeout, "library threads to exit")


# -- backoffs -------------------------------------------------------------------------------

FAST_BACKOFF = WsBackoff(initial=0.01, factor=2.0, cap=0.1)
"""Reconnect after 10 ms, doubling up to 100 ms; the default reset after 10 s up."""

FAST_BACKOFF_EARLY_RESET = WsBackoff(initial=0.02, factor=2.0, cap=0.1, reset_after=5.0)
"""Reconnect after 20 ms, doubling up to 100 ms; reset after a connection stayed up 5 s."""

FAST_BACKOFF_LOW_CAP = WsBackoff(initial=0.01, factor=2.0, cap=0.05)
"""Reconnect after 10 ms, doubling up to 50 ms; the default reset after 10 s up."""


class RecordingBackoff(WsBackoff):
    """A `WsBackoff` that records every delay the actor draws from it.

    ``draws()`` returns ``(attempt, delay, at)`` for each call, in order: the
    attempt number the actor passed, the delay returned, and the monotonic
    time of the call (taken before the actor schedules the reconnection, so
    the reconnection cannot come before ``at + delay``). With
    ``jitter=False`` the delay is the attempt's ceiling, not a random part of
    it, so a test can rely on it.
    """

    def __init__(self, *, jitter: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # WsBackoff is a frozen dataclass: these are not fields of it.
        object.__setattr__(self, "jitter", jitter)
        object.__setattr__(self, "_draws", [])
        object.__setattr__(self, "_lock", threading.Lock())

    def delay(self, attempt: int, rng: random.Random) -> float:
        at = time.monotonic()
        value = super().delay(attempt, rng) if self.jitter else self.ceiling(attempt)
        with self._lock:
            self._draws.append((attempt, value, at))
        return value

    def draws(self) -> list[tuple[int, float, float]]:
        with self._lock:
            return list(self._draws)

    def attempts(self) -> list[int]:
        return [attempt for attempt, _, _ in self.draws()]

    def wait_for_draws(self, count: int, timeout: float = 10.0) -> list[tuple[int, float, float]]:
        """Wait until at least ``count`` delays were drawn; return them all."""

        def enough() -> list[tuple[int, float, float]] | None:
            draws = self.draws()
            return draws if len(draws) >= count else None

        return wait_until(  # type: ignore[no-any-return]
            enough, timeout, f"{count} reconnection delays to be drawn"
        )


# -- a fake clock ---------------------------------------------------------------------------


class FakeClock:
    """A clock that stands still until a test moves it (set ``now`` or call ``advance``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


# -- the JSON protocol of the tests ---------------------------------------------------------


def json_with_id(frame: str | bytes) -> dict[str, Any] | None:
    """``frame`` as a JSON object that has an "id", or None if it is not one."""
    try:
        data = json.loads(frame)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "id" in data else None


class JsonEndpoint(WsEndpoint):
    """Requests are {"id": n, ...}; replies {"id": n, "result": ...} or {"id": n, "error": ...}."""

    def __init__(self, on_open: list[str] | None = None) -> None:
        self.open_frames = on_open or []

    def on_open(self) -> list[str]:
        return list(self.open_frames)

    def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
        data = json_with_id(frame)
        if data is None:
            return None
        if "error" in data:
            return WsRequestMatch(data["id"], ok=False, message=str(data["error"]))
        if "result" in data:
            return WsRequestMatch(data["id"])
        return None

    def parse(self, frame: str | bytes) -> Any:
        try:
            return json.loads(frame)
        except ValueError:
            return frame


def json_reply(frame: str | bytes) -> str | None:
    """Server side: confirm, reject or ignore a JSON request by its "do" field."""
    data = json_with_id(frame)
    if data is None:
        return None
    action = data.get("do", "confirm")
    if action == "confirm":
        return json.dumps({"id": data["id"], "result": "ok"})
    if action == "reject":
        return json.dumps({"id": data["id"], "error": "insufficient funds"})
    return None


def req_frame(request_id: int | str, do: str = "confirm", **extra: Any) -> str:
    return json.dumps({"id": request_id, "do": do, **extra})


# -- actors ---------------------------------------------------------------------------------


def start(
    url: str,
    endpoint: WsEndpoint | None = None,
    *,
    wait_open: bool = True,
    open_within: float = 10.0,
    actor: type[WebSocketActor] = WebSocketActor,
    **kwargs: Any,
) -> pykka.ActorRef[Any]:
    """Start ``actor`` on ``url`` with ``endpoint`` (a new `JsonEndpoint` if None).

    The other keyword arguments go to ``actor.start``. With ``wait_open`` (the
    default) it returns once the actor's connection is open, and fails the
    test if that takes longer than ``open_within`` seconds; without, it
    returns at once.
    """
    ref = actor.start(url, endpoint=JsonEndpoint() if endpoint is None else endpoint, **kwargs)
    if wait_open:
        wait_state(ref, "open", open_within)
    return ref


def stats(ref: pykka.ActorRef[Any]) -> WsStats:
    result = ref.ask(WsGetStats(), timeout=10)
    assert isinstance(result, WsStats)
    return result


def wait_state(ref: pykka.ActorRef[Any], state: str, timeout: float = 5.0) -> None:
    """Wait until the actor's connection is in ``state`` ("open", "closed", ...), or fail."""
    wait_until(lambda: stats(ref).state == state, timeout, f"state {state!r}")


def inspectable() -> tuple[type[WebSocketActor], list[WebSocketActor]]:
    """A WebSocketActor subclass that records its instances, to look inside in tests."""
    instances: list[WebSocketActor] = []

    class Inspectable(WebSocketActor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            instances.append(self)

    return Inspectable, instances


# -- subscribers and endpoints --------------------------------------------------------------


class Collector(pykka.ThreadingActor):
    """An inbound subscriber that puts everything it is told on a queue."""

    def __init__(self, sink: queue.Queue[Any]) -> None:
        super().__init__()
        self.sink = sink

    def on_receive(self, message: Any) -> None:
        self.sink.put(message)


def next_of(sink: queue.Queue[Any], kind: type, timeout: float = 10.0) -> Any:
    """The next message of ``kind`` on ``sink``, skipping others; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no {kind.__name__} within {timeout} s")
        try:
            message = sink.get(timeout=remaining)
        except queue.Empty:
            continue
        if isinstance(message, kind):
            return message


class Tally(pykka.ThreadingActor):
    """An inbound subscriber that counts what it is told (bounded memory).

    It counts the messages by type name, and the `WsLateResponse` ones by
    request id too. Asked ``"counts"``, it answers both as they are at that
    moment: ``(counts by type name, late responses by request id)``. Asked
    ``"resolved"``, it answers each `WsResolved` it was told: ``{request id:
    [executed, ...]}``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.late: Counter[object] = Counter()
        self.resolved: dict[object, list[bool | None]] = {}

    def on_receive(self, message: Any) -> Any:
        if message == "counts":
            return dict(self.counts), dict(self.late)
        if message == "resolved":
            return {key: list(value) for key, value in self.resolved.items()}
        self.counts[type(message).__name__] += 1
        if isinstance(message, WsLateResponse):
            self.late[message.request_id] += 1
        elif isinstance(message, WsResolved):
            self.resolved.setdefault(message.request_id, []).append(message.executed)
        return None


def tally(ref: pykka.ActorRef[Any], name: str) -> int:
    """How many messages of the type called ``name`` the `Tally` ``ref`` was told."""
    counts, _ = ref.ask("counts", timeout=10)
    assert isinstance(counts, dict)
    return int(counts.get(name, 0))


_PARSED = object()  # BlockingParse's default result: the frame parsed as JSON


class BlockingParse(JsonEndpoint):
    """parse() holds the actor's thread until ``release`` is set: the actor falls behind.

    ``entered`` is set once parse() is called. Each call waits at most
    ``hold`` seconds for the release, then returns ``result`` if one was
    given, else the frame parsed as `JsonEndpoint` does.
    """

    def __init__(self, hold: float = 10.0, *, result: Any = _PARSED) -> None:
        super().__init__()
        self.hold = hold
        self.result = result
        self.entered = threading.Event()
        self.release = threading.Event()

    def parse(self, frame: str | bytes) -> Any:
        self.entered.set()
        self.release.wait(self.hold)
        return super().parse(frame) if self.result is _PARSED else self.result
