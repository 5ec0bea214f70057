"""Helpers shared by the tests."""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
import pytest

from pykka_ws import (
    WebSocketActor,
    WsBackoff,
    WsEndpoint,
    WsGetStats,
    WsRequestMatch,
    WsStats,
)

_POLL_INTERVAL = threading.Event()  # never set: waiting on it is a plain pause
LIBRARY_THREAD_PREFIXES = ("pykka-ws-", "WebSocketActor", "WsWriter")


def library_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith(LIBRARY_THREAD_PREFIXES) and not t.name.startswith("pykka-ws-testing")
    ]


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        _POLL_INTERVAL.wait(0.005)  # the poll's interval; the deadline bounds the wait


def wait_no_library_threads(timeout: float = 5.0) -> None:
    wait_until(lambda: not library_threads(), timeout, "library threads to exit")


class JsonEndpoint(WsEndpoint):
    """Requests are {"id": n, ...}; replies {"id": n, "result": ...} or {"id": n, "error": ...}."""

    def __init__(self, on_open: list[str] | None = None) -> None:
        self.open_frames = on_open or []

    def on_open(self) -> list[str]:
        return list(self.open_frames)

    def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
        try:
            data = json.loads(frame)
        except ValueError:
            return None
        if not isinstance(data, dict) or "id" not in data:
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
    try:
        data = json.loads(frame)
    except ValueError:
        return None
    if not isinstance(data, dict) or "id" not in data:
        return None
    action = data.get("do", "confirm")
    if action == "confirm":
        return json.dumps({"id": data["id"], "result": "ok"})
    if action == "reject":
        return json.dumps({"id": data["id"], "error": "insufficient funds"})
    return None


def req_frame(request_id: int | str, do: str = "confirm", **extra: Any) -> str:
    return json.dumps({"id": request_id, "do": do, **extra})


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


def stats(ref: pykka.ActorRef[Any]) -> WsStats:
    result = ref.ask(WsGetStats(), timeout=10)
    assert isinstance(result, WsStats)
    return result


def inspectable() -> tuple[type[WebSocketActor], list[WebSocketActor]]:
    """A WebSocketActor subclass that records its instances, to look inside in tests."""
    instances: list[WebSocketActor] = []

    class Inspectable(WebSocketActor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            instances.append(self)

    return Inspectable, instances


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
