"""Hostile hooks and subscribers: the actor survives, counts, logs once, and goes on.

Every `WsEndpoint` hook (``on_open``, ``match_response``, ``parse``,
``on_disconnect``) is made to raise, to return garbage, or to be slow; inbound
subscribers are dead or die. Each time the actor must stay alive, count the
failure in `WsStats.hook_errors`, log it once (with the traceback when the hook
raised), treat the hook as if it had returned its default, and keep resolving
requests.

Slow hooks: hooks run on the actor's thread, so a slow hook delays every
message queued behind it, outcomes and deadline timers included. The tests
check the bound that follows: a request ends by its deadline plus the hook
time queued ahead of it plus a scheduling slack. Keeping hooks quick is the
endpoint's job (see `WsEndpoint`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pykka
import pytest

from pykka_ws import (
    EndpointRejected,
    Unconfirmed,
    WsConnected,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsDisconnected,
    WsInbound,
    WsRequestMatch,
)
from pykka_ws.testing import WsTestServer

from .support import (
    DEADLINE_SLACK,
    FAST_BACKOFF,
    Collector,
    JsonEndpoint,
    next_of,
    pause,
    req_frame,
    stats,
    wait_no_library_threads,
    wait_state,
    wait_until,
)
from .support import start as start_actor

pytestmark = pytest.mark.timeout(60)

SLOW = 0.2  # seconds a slow hook takes


class HookError(Exception):
    """What the hostile hooks raise, to find it in the logs."""


class Dying(pykka.ThreadingActor):
    """A subscriber whose on_receive raises: pykka stops it on the first message."""

    def on_receive(self, message: Any) -> None:
        raise HookError(f"subscriber fails on {message!r}")


# The actors here reconnect fast, and start() returns at once unless told to
# wait for the connection to open.
start = partial(start_actor, wait_open=False, backoff=FAST_BACKOFF)


def confirmed(ref: pykka.ActorRef[Any], request_id: int | str) -> bool:
    ok = ref.ask(WsDelegatedRequest(request_id, req_frame(request_id), timeout=5.0), timeout=10)
    return isinstance(ok, WsDelegatedOk) and ok.confirmed


def push(server: WsTestServer, frame: str) -> None:
    """Send an unsolicited frame (the client may see its connection open first)."""
    server.wait_for_open_connections(1, timeout=10)
    assert server.send_to_all(frame) == 1


def drop(server: WsTestServer) -> None:
    """Close the connection politely, once the server sees it open too."""
    server.wait_for_open_connections(1, timeout=10)
    server.close_connections()


def hook_records(caplog: pytest.LogCaptureFixture, hook: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "pykka_ws" and r.levelno >= logging.WARNING and hook in r.getMessage()
    ]


def assert_logged_with_traceback(records: list[logging.LogRecord], count: int) -> None:
    assert len(records) == count, [r.getMessage() for r in records]
    for record in records:
        assert record.exc_info is not None
        assert record.exc_info[0] is HookError


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pykka_ws")


# -- on_open -------------------------------------------------------------------------------


class RaisingOnOpen(JsonEndpoint):
    def on_open(self) -> list[str]:
        raise HookError("on_open fails")


def test_on_open_that_raises_is_counted_and_logged_once_per_connection(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    ref = start(server.url, RaisingOnOpen(), wait_open=True)
    assert confirmed(ref, 1)
    assert stats(ref).hook_errors == 1
    assert_logged_with_traceback(hook_records(caplog, "on_open"), 1)
    drop(server)
    server.wait_for_connections(2)
    wait_until(lambda: stats(ref).reconnects == 1 and stats(ref).state == "open", 10, "reconnect")
    assert confirmed(ref, 2)
    assert stats(ref).hook_errors == 2
    assert_logged_with_traceback(hook_records(caplog, "on_open"), 2)
    assert server.received == [req_frame(1), req_frame(2)]
    assert ref.is_alive()


def _raising_generator() -> Iterator[str]:
    yield "auth"
    raise HookError("on_open fails half way")


@pytest.mark.parametrize(
    "garbage",
    [42, None, ["auth", 42], {"auth": 1}, "raising-generator"],
    ids=["int", "none", "list-with-an-int", "dict", "raising-generator"],
)
def test_on_open_returning_garbage_sends_no_preamble_and_the_actor_goes_on(
    server: WsTestServer, caplog: pytest.LogCaptureFixture, garbage: Any
) -> None:
    class GarbageOnOpen(JsonEndpoint):
        def on_open(self) -> Any:
            return _raising_generator() if garbage == "raising-generator" else garbage

    ref = start(server.url, GarbageOnOpen(), wait_open=True)
    assert confirmed(ref, 1)
    if isinstance(garbage, dict):
        # An iterable of str: its keys are frames. Legitimate, if odd.
        assert server.received == ["auth", req_frame(1)]
        assert stats(ref).hook_errors == 0
        return
    # Treated as the default (no frames): nothing of it is sent.
    assert server.received == [req_frame(1)]
    assert stats(ref).hook_errors == 1
    records = hook_records(caplog, "on_open")
    assert len(records) == 1
    if garbage == "raising-generator":
        assert_logged_with_traceback(records, 1)


# -- match_response -------------------------------------------------------------------------


class RaisingMatch(JsonEndpoint):
    def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
        raise HookError("match_response fails")


@pytest.mark.parametrize(
    "garbage",
    [
        "a match",
        (1, True),
        WsRequestMatch([1]),  # type: ignore[arg-type]
        WsRequestMatch({"id": 1}),  # type: ignore[arg-type]
        object(),
        "raise",
    ],
    ids=["str", "tuple", "unhashable-id", "dict-id", "object", "raises"],
)
def test_match_response_failing_leaves_the_request_to_its_deadline_and_passes_the_frame_on(
    server: WsTestServer,
    caplog: pytest.LogCaptureFixture,
    collector: pykka.ActorRef[Any],
    sink: queue.Queue[Any],
    garbage: Any,
) -> None:
    class GarbageMatch(JsonEndpoint):
        def match_response(self, frame: str | bytes) -> Any:
            if garbage == "raise":
                raise HookError("match_response fails")
            return garbage

    ref = start(server.url, GarbageMatch(), inbound=collector)
    next_of(sink, WsConnected)
    request = WsDelegatedRequest(1, req_frame(1), timeout=0.5)
    with pytest.raises(Unconfirmed):
        ref.ask(request, timeout=0.5 + DEADLINE_SLACK)
    # No match: the reply is an ordinary inbound frame, parsed and passed on.
    inbound = next_of(sink, WsInbound)
    assert json.loads(inbound.frame) == {"id": 1, "result": "ok"}
    assert inbound.message == {"id": 1, "result": "ok"}
    after = stats(ref)
    assert after.hook_errors == 1
    assert after.pending == 0
    records = hook_records(caplog, "match_response")
    if garbage == "raise":
        assert_logged_with_traceback(records, 1)
    else:
        assert len(records) == 1
    assert ref.is_alive()
    assert stats(ref).state == "open"


def test_match_response_failing_on_some_frames_only_costs_those_frames(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky(JsonEndpoint):
        def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
            if json.loads(frame).get("id") % 2:
                raise HookError("odd ids fail")
            return super().match_response(frame)

    ref = start(server.url, Flaky(), wait_open=True)
    futures = {
        i: ref.ask(WsDelegatedRequest(i, req_frame(i), timeout=1.0), block=False) for i in range(10)
    }
    for i, future in futures.items():
        if i % 2:
            with pytest.raises(Unconfirmed):
                future.get(timeout=1.0 + DEADLINE_SLACK)
        else:
            assert future.get(timeout=1.0 + DEADLINE_SLACK).confirmed
    assert stats(ref).hook_errors == 5
    assert_logged_with_traceback(hook_records(caplog, "match_response"), 5)


def test_match_response_rejecting_with_a_garbage_message_still_rejects(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    class OddMessage(JsonEndpoint):
        def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
            return WsRequestMatch(json.loads(frame)["id"], ok=False, message=12345)  # type: ignore[arg-type]

    ref = start(server.url, OddMessage(), wait_open=True)
    with pytest.raises(EndpointRejected) as info:
        ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=5.0), timeout=10)
    assert "12345" in str(info.value)
    assert ref.is_alive()


class Unhashable:
    """An id whose hash and equality raise something other than TypeError."""

    def __hash__(self) -> int:
        raise HookError("no hash")

    def __eq__(self, other: object) -> bool:
        raise HookError("no equality")

    def __repr__(self) -> str:
        return "Unhashable()"


@pytest.mark.parametrize("bad_id", [True, Unhashable()], ids=repr)
def test_match_response_naming_an_id_no_request_can_have_is_garbage(
    server: WsTestServer,
    caplog: pytest.LogCaptureFixture,
    collector: pykka.ActorRef[Any],
    sink: queue.Queue[Any],
    bad_id: Any,
) -> None:
    class BadId(JsonEndpoint):
        def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
            return WsRequestMatch(bad_id)

    ref = start(server.url, BadId(), inbound=collector)
    next_of(sink, WsConnected)
    # Request ids are int (not bool) or str: no request can have this id.
    with pytest.raises(Unconfirmed):
        ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=0.5), timeout=0.5 + DEADLINE_SLACK)
    assert json.loads(next_of(sink, WsInbound).frame) == {"id": 1, "result": "ok"}
    assert stats(ref).hook_errors == 1
    assert len(hook_records(caplog, "match_response")) == 1
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


def test_an_outcome_carries_the_requests_own_id_whatever_the_matcher_returns(
    server: WsTestServer,
) -> None:
    class EqualInt(int):
        """Equal to the request's id, with the same hash, of another type."""

    class OtherTypes(JsonEndpoint):
        def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
            request_id = json.loads(frame)["id"]
            if request_id == 1:
                return WsRequestMatch(EqualInt(request_id))
            return WsRequestMatch(float(request_id))  # type: ignore[arg-type]

    ref = start(server.url, OtherTypes(), wait_open=True)
    # An int subclass is an int id: it matches, and the outcome has the
    # request's own id, not the matcher's.
    ok = ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=5.0), timeout=10)
    assert isinstance(ok, WsDelegatedOk)
    assert ok.confirmed
    assert type(ok.request_id) is int
    assert ok.request_id == 1
    assert stats(ref).hook_errors == 0
    # A float (even 2.0 == 2) is no request id: garbage, so no match; the
    # request ends at its deadline, with its own id too.
    with pytest.raises(Unconfirmed) as info:
        ref.ask(WsDelegatedRequest(2, req_frame(2), timeout=0.5), timeout=0.5 + DEADLINE_SLACK)
    assert type(info.value.request_id) is int
    assert info.value.request_id == 2
    assert stats(ref).hook_errors == 1


# -- parse ----------------------------------------------------------------------------------


def test_parse_that_raises_passes_the_raw_frame_on_and_is_logged_once_per_frame(
    server: WsTestServer,
    caplog: pytest.LogCaptureFixture,
    collector: pykka.ActorRef[Any],
    sink: queue.Queue[Any],
) -> None:
    class RaisingParse(JsonEndpoint):
        def parse(self, frame: str | bytes) -> Any:
            raise HookError("parse fails")

    ref = start(server.url, RaisingParse(), inbound=collector)
    next_of(sink, WsConnected)
    for i in range(3):
        push(server, f'{{"push": {i}}}')
    for i in range(3):
        inbound = next_of(sink, WsInbound)
        assert inbound.frame == f'{{"push": {i}}}'
        assert inbound.message == inbound.frame  # the default parse: the frame as is
    assert confirmed(ref, 1)  # replies to requests never reach parse
    assert stats(ref).hook_errors == 3
    assert_logged_with_traceback(hook_records(caplog, "parse"), 3)


@pytest.mark.parametrize("value", [0, "", [], b"\x00", object()], ids=repr)
def test_parse_may_return_anything_but_none_and_it_is_passed_on(
    server: WsTestServer,
    collector: pykka.ActorRef[Any],
    sink: queue.Queue[Any],
    value: Any,
) -> None:
    class AnyParse(JsonEndpoint):
        def parse(self, frame: str | bytes) -> Any:
            return value

    ref = start(server.url, AnyParse(), inbound=collector)
    next_of(sink, WsConnected)
    push(server, "push")
    assert next_of(sink, WsInbound).message is value
    assert stats(ref).hook_errors == 0


# -- on_disconnect -----------------------------------------------------------------------


def test_on_disconnect_that_raises_falls_back_to_reconnecting(
    server: WsTestServer,
    caplog: pytest.LogCaptureFixture,
    collector: pykka.ActorRef[Any],
    sink: queue.Queue[Any],
) -> None:
    class RaisingDisconnect(JsonEndpoint):
        def on_disconnect(self, cause: BaseException | None) -> bool:
            raise HookError("on_disconnect fails")

    ref = start(server.url, RaisingDisconnect(), inbound=collector)
    next_of(sink, WsConnected)
    drop(server)
    assert next_of(sink, WsDisconnected).reconnecting is True
    next_of(sink, WsConnected)
    assert confirmed(ref, 1)
    assert stats(ref).hook_errors == 1
    assert_logged_with_traceback(hook_records(caplog, "on_disconnect"), 1)


class Ambiguous:
    """A value whose truth cannot be told (like a numpy array's)."""

    def __bool__(self) -> bool:
        raise HookError("the truth value is ambiguous")

    def __repr__(self) -> str:
        return "Ambiguous()"


@pytest.mark.parametrize("garbage", [None, "stop", Ambiguous()], ids=repr)
def test_on_disconnect_returning_garbage_is_counted_and_falls_back_to_reconnecting(
    server: WsTestServer,
    caplog: pytest.LogCaptureFixture,
    collector: pykka.ActorRef[Any],
    sink: queue.Queue[Any],
    garbage: Any,
) -> None:
    class GarbageDisconnect(JsonEndpoint):
        def on_disconnect(self, cause: BaseException | None) -> Any:
            return garbage

    ref = start(server.url, GarbageDisconnect(), inbound=collector)
    next_of(sink, WsConnected)
    drop(server)
    assert next_of(sink, WsDisconnected).reconnecting is True
    next_of(sink, WsConnected)
    assert confirmed(ref, 1)
    assert stats(ref).hook_errors == 1
    assert len(hook_records(caplog, "on_disconnect")) == 1


# -- slow hooks -------------------------------------------------------------------------------


class SlowEverything(JsonEndpoint):
    """Every hook takes SLOW seconds (on the actor's thread)."""

    def __init__(self, on_open: list[str] | None = None) -> None:
        super().__init__(on_open)
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def _slow(self, name: str) -> None:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1
        pause(SLOW)

    def on_open(self) -> list[str]:
        self._slow("on_open")
        return super().on_open()

    def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
        self._slow("match_response")
        return super().match_response(frame)

    def parse(self, frame: str | bytes) -> Any:
        self._slow("parse")
        return super().parse(frame)

    def on_disconnect(self, cause: BaseException | None) -> bool:
        self._slow("on_disconnect")
        return super().on_disconnect(cause)


def test_slow_hooks_delay_outcomes_by_no_more_than_the_hook_time_queued_ahead(
    server: WsTestServer,
    collector: pykka.ActorRef[Any],
    sink: queue.Queue[Any],
) -> None:
    endpoint = SlowEverything(on_open=["auth"])
    ref = start(server.url, endpoint, inbound=collector)
    # Asked before the connection is open: waits behind the slow on_open.
    early = WsDelegatedRequest(0, req_frame(0), timeout=2.0)
    early_future = ref.ask(early, block=False)
    next_of(sink, WsConnected)
    # Five requests, five replies: each reply costs SLOW of match_response.
    requests = [WsDelegatedRequest(i, req_frame(i), timeout=2.0) for i in range(1, 6)]
    futures = [ref.ask(r, block=False) for r in requests]
    backlog = SLOW * 8  # on_open, six replies, one pushed frame below
    # Its write may wait behind slow hooks too: its deadline leaves room for
    # that, so that it is written (and so Unconfirmed, not NotDelivered).
    silent_timeout = backlog + 0.5
    silent = WsDelegatedRequest(9, req_frame(9, "silent"), timeout=silent_timeout)
    silent_future = ref.ask(silent, block=False)
    push(server, '{"push": 1}')  # parse and match_response: 2 * SLOW
    for request, future in [(early, early_future), *zip(requests, futures, strict=True)]:
        assert request.timeout is not None
        remaining = (
            request.created_at + request.timeout + backlog + DEADLINE_SLACK - time.monotonic()
        )
        outcome = future.get(timeout=max(0.0, remaining))
        assert isinstance(outcome, WsDelegatedOk)
        assert outcome.confirmed
    remaining = silent.created_at + silent_timeout + backlog + DEADLINE_SLACK - time.monotonic()
    with pytest.raises(Unconfirmed) as info:
        silent_future.get(timeout=max(0.0, remaining))
    assert info.value.written is True
    assert next_of(sink, WsInbound).message == {"push": 1}
    # A slow on_disconnect delays the reconnection, and nothing else breaks.
    drop(server)
    next_of(sink, WsConnected)
    assert confirmed(ref, 10)
    assert endpoint.calls["on_disconnect"] >= 1
    assert stats(ref).hook_errors == 0
    assert ref.is_alive()


# -- inbound subscribers ------------------------------------------------------------------------


def test_a_subscriber_that_dies_is_dropped_once_and_the_others_get_everything(
    server: WsTestServer,
    caplog: pytest.LogCaptureFixture,
    collector: pykka.ActorRef[Any],
    sink: queue.Queue[Any],
) -> None:
    dying = Dying.start()
    ref = start(server.url, JsonEndpoint(), inbound=[dying, collector])
    next_of(sink, WsConnected)  # the first message kills `dying`
    wait_until(lambda: not dying.is_alive(), 10, "the subscriber to die")
    for i in range(5):
        push(server, f'{{"push": {i}}}')
    assert [next_of(sink, WsInbound).message["push"] for _ in range(5)] == list(range(5))
    assert confirmed(ref, 1)
    assert stats(ref).hook_errors == 1
    records = [r for r in caplog.records if r.name == "pykka_ws" and "subscriber" in r.getMessage()]
    assert len(records) == 1  # dropped once, not complained about for every frame
    assert ref.is_alive()


def test_a_subscriber_dead_before_start_is_dropped_at_the_first_event(
    server: WsTestServer,
    caplog: pytest.LogCaptureFixture,
    collector: pykka.ActorRef[Any],
    sink: queue.Queue[Any],
) -> None:
    dead = Collector.start(queue.Queue())
    dead.stop()
    ref = start(server.url, JsonEndpoint(), inbound=[dead, collector, dead])
    next_of(sink, WsConnected)
    push(server, '{"push": 1}')
    assert next_of(sink, WsInbound).message == {"push": 1}
    assert confirmed(ref, 1)
    after = stats(ref)
    # The same dead ref was given twice: each of the two is dropped, and
    # counted, at the first event; never again after.
    assert after.hook_errors == 2
    records = [r for r in caplog.records if r.name == "pykka_ws" and "subscriber" in r.getMessage()]
    assert len(records) == 2
    assert ref.is_alive()


def test_every_subscriber_dead_leaves_the_actor_working(
    server: WsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    subscribers = [Dying.start() for _ in range(3)]
    ref = start(server.url, JsonEndpoint(), inbound=subscribers, wait_open=True)
    wait_until(lambda: not any(s.is_alive() for s in subscribers), 10, "the subscribers to die")
    push(server, '{"push": 1}')
    assert confirmed(ref, 1)
    assert stats(ref).hook_errors == 3
    assert ref.is_alive()


def test_a_hook_that_stops_the_actor_ends_every_request_and_leaves_no_thread(
    server: WsTestServer,
) -> None:
    refs: list[pykka.ActorRef[Any]] = []

    class Stopper(JsonEndpoint):
        def parse(self, frame: str | bytes) -> Any:
            refs[0].stop(block=False)  # from the actor's own thread: never block
            return super().parse(frame)

    ref = start(server.url, Stopper())
    refs.append(ref)
    wait_state(ref, "open", 10)
    written = ref.ask(WsDelegatedRequest(1, req_frame(1, "silent"), timeout=30.0), block=False)
    server.wait_for_received(1)
    push(server, '{"push": 1}')
    with pytest.raises(Unconfirmed) as info:
        written.get(timeout=10)
    assert info.value.written is True
    wait_until(lambda: not ref.is_alive(), 10, "the actor to stop")
    wait_no_library_threads(10)
