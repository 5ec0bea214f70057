"""Property tests: whatever a caller passes, valid input works and bad input is refused.

Request construction (`WsDelegatedRequest`, `WsSend`), `WsBackoff` and the
arguments of `WebSocketActor.start` get arbitrary values: valid ones are
accepted (and behave), invalid ones raise `TypeError` or `ValueError`, and
nothing else ever escapes. Arbitrary valid ids and frames also go end to end
through a real actor and server.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pykka
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pykka_ws import (
    Unconfirmed,
    WebSocketActor,
    WsBackoff,
    WsConfirmMode,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsEndpoint,
    WsGetStats,
    WsSend,
    WsStats,
)
from pykka_ws.testing import WsTestServer

from .support import FAST_BACKOFF, JsonEndpoint, wait_no_library_threads, wait_state, wait_until

pytestmark = pytest.mark.timeout(120)

# Nowhere to connect to, on the loopback interface: the actor starts, fails
# to connect, backs off, and stops cleanly.
NOWHERE = "ws://127.0.0.1:9"

ERRORS = (TypeError, ValueError)


class _Opaque:
    """An object of no expected type."""

    def __repr__(self) -> str:
        return "_Opaque()"


# Values of every kind a confused caller might pass. Integers stay below 2**64:
# huge ones are tested on their own (see the OverflowError test).
garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.binary(max_size=8),
    st.builds(bytearray, st.binary(max_size=4)),
    st.lists(st.integers(), max_size=2),
    st.tuples(st.integers()),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.fractions(),
    st.sampled_from(list(WsConfirmMode)),
    st.builds(_Opaque),
    st.complex_numbers(max_magnitude=10),
)
small_ints = st.integers(min_value=-(2**64), max_value=2**64)
anything = st.one_of(garbage, st.text(max_size=20), small_ints)
numbers = st.one_of(
    st.floats(), small_ints, st.booleans(), st.none(), st.text(max_size=3), st.decimals()
)


def seconds_kind(value: object, *, optional: bool = False) -> str:
    """Validity of a number of seconds: finite and > 0 (None if optional)."""
    if value is None and optional:
        return "ok"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "type"
    return "ok" if math.isfinite(value) and value > 0 else "value"


def wait_kind(value: object, *, optional: bool = False) -> str:
    """Validity of seconds that locks and sockets wait on: also <= threading.TIMEOUT_MAX."""
    kind = seconds_kind(value, optional=optional)
    if kind == "ok" and value is not None:
        assert isinstance(value, int | float)
        return "value" if value > threading.TIMEOUT_MAX else "ok"
    return kind


def optional_wait_kind(value: object) -> str:
    return wait_kind(value, optional=True)


def count_kind(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return "type"
    return "ok" if value >= 1 else "value"


def request_id_kind(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return "type"
    return "value" if value == "" else "ok"


def frame_kind(value: object) -> str:
    return "ok" if isinstance(value, str | bytes) else "type"


def fingerprint_kind(value: object) -> str:
    if value is None:
        return "ok"
    return "ok" if isinstance(value, str | bytes | int) and not isinstance(value, bool) else "type"


def mode_kind(value: object) -> str:
    return "ok" if isinstance(value, WsConfirmMode) else "type"


def assert_refused_as(kinds: list[str], call: Any) -> Any:
    """Call ``call``; it must succeed iff every kind is "ok", else raise the right error.

    A kind is "ok", "type" (a wrong type: TypeError), "value" (out of range:
    ValueError) or "bad" (either). With several bad values, either error.
    """
    bad = [k for k in kinds if k != "ok"]
    if not bad:
        return call()
    expected: tuple[type[Exception], ...] = ERRORS
    if len(bad) == 1 and bad[0] != "bad":
        expected = (TypeError,) if bad[0] == "type" else (ValueError,)
    with pytest.raises(expected):
        call()
    return None


# -- requests ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    request_id=st.one_of(small_ints, st.text(max_size=8), garbage),
    frame=st.one_of(st.text(max_size=20), st.binary(max_size=20), garbage),
    fingerprint=st.one_of(
        st.none(), st.text(max_size=4), st.binary(max_size=4), small_ints, garbage
    ),
    confirm_mode=st.one_of(st.sampled_from(list(WsConfirmMode)), garbage),
    timeout=st.one_of(st.none(), st.floats(), small_ints, garbage),
)
@example(request_id="", frame="x", fingerprint=None, confirm_mode=WsConfirmMode.SENT, timeout=None)
@example(request_id=1, frame="x", fingerprint=True, confirm_mode=WsConfirmMode.SENT, timeout=None)
@example(request_id=1, frame=b"", fingerprint=None, confirm_mode=WsConfirmMode.SENT, timeout=1e300)
@example(request_id=1, frame="", fingerprint=None, confirm_mode=WsConfirmMode.SENT, timeout=5e-324)
def test_requests_accept_exactly_the_valid_values(
    request_id: Any, frame: Any, fingerprint: Any, confirm_mode: Any, timeout: Any
) -> None:
    kinds = [
        request_id_kind(request_id),
        frame_kind(frame),
        fingerprint_kind(fingerprint),
        mode_kind(confirm_mode),
        seconds_kind(timeout, optional=True),
    ]
    request = assert_refused_as(
        kinds,
        lambda: WsDelegatedRequest(
            request_id, frame, fingerprint=fingerprint, confirm_mode=confirm_mode, timeout=timeout
        ),
    )
    if request is None:
        return
    assert request.request_id == request_id
    assert request.frame is frame
    assert request.confirm_mode is confirm_mode
    assert request.timeout == (None if timeout is None else float(timeout))
    assert isinstance(request.timeout, float | None)
    if fingerprint is None:
        # The default fingerprint depends on the frame only, and on its type.
        twin = WsDelegatedRequest(1, frame)
        assert request.fingerprint == twin.fingerprint
        other = frame.decode("latin-1") if isinstance(frame, bytes) else frame.encode()
        assert request.fingerprint != WsDelegatedRequest(1, other).fingerprint
    else:
        assert request.fingerprint == fingerprint
    hash(request.join_key)
    assert repr(request)


@settings(max_examples=200, deadline=None)
@given(frame=st.one_of(st.text(max_size=20), st.binary(max_size=20), anything))
def test_sends_accept_exactly_str_and_bytes_frames(frame: Any) -> None:
    send = assert_refused_as([frame_kind(frame)], lambda: WsSend(frame))
    if send is not None:
        assert send.frame is frame
        assert repr(send)


@given(value=st.integers(min_value=2**1024, max_value=2**2000))
def test_a_number_of_seconds_too_large_for_a_float_is_a_value_error(value: int) -> None:
    with pytest.raises(ValueError, match="timeout"):
        WsDelegatedRequest(1, "x", timeout=value)


@given(
    frame=st.text(
        alphabet=st.characters(codec=None, categories=["Cs", "Ll"]), min_size=1, max_size=8
    ).filter(lambda s: any("\ud800" <= c <= "\udfff" for c in s))
)
def test_a_str_frame_that_is_not_valid_unicode_is_refused(frame: str) -> None:
    with pytest.raises(ValueError, match="frame"):
        WsDelegatedRequest(1, frame)
    with pytest.raises(ValueError, match="frame"):
        WsSend(frame)


# -- backoff ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(initial=numbers, factor=numbers, cap=numbers, reset_after=numbers)
@example(initial=1.0, factor=1e308, cap=2.0, reset_after=1.0)
@example(initial=0.01, factor=10, cap=1e300, reset_after=1.0)
@example(initial=1.0, factor=1.0, cap=1.0, reset_after=5e-324)
def test_backoff_accepts_exactly_the_valid_settings_and_stays_within_them(
    initial: Any, factor: Any, cap: Any, reset_after: Any
) -> None:
    kinds = [seconds_kind(initial), seconds_kind(cap), seconds_kind(reset_after)]
    if isinstance(factor, bool) or not isinstance(factor, int | float):
        kinds.append("type")
    else:
        kinds.append("ok" if math.isfinite(factor) and factor >= 1 else "value")
    if all(k == "ok" for k in kinds) and cap < initial:
        kinds.append("value")
    backoff = assert_refused_as(
        kinds, lambda: WsBackoff(initial=initial, factor=factor, cap=cap, reset_after=reset_after)
    )
    if backoff is None:
        return
    rng = random.Random(0)
    previous = 0.0
    for attempt in (*range(12), 100, 1023, 1024, 5000, 10**9):
        ceiling = backoff.ceiling(attempt)
        assert previous <= ceiling <= cap
        assert 0.0 <= backoff.delay(attempt, rng) <= ceiling
        previous = ceiling
    assert backoff.ceiling(0) == min(cap, initial)


# -- WebSocketActor.start ---------------------------------------------------------------------


def optional_seconds_kind(value: object) -> str:
    return seconds_kind(value, optional=True)


def optional_count_kind(value: object) -> str:
    return "ok" if value is None else count_kind(value)


def url_kind(value: object) -> str:
    if isinstance(value, list | tuple):  # failover URLs: a non-empty sequence of them
        if not value:
            return "value"
        kinds = {url_kind(one) if isinstance(one, str) else "type" for one in value}
        return "type" if "type" in kinds else "value" if "value" in kinds else "ok"
    if not isinstance(value, str):
        return "type"
    return "ok" if value.startswith(("ws://127.0.0.1:9", "wss://127.0.0.1:9")) else "value"


def typed_kind(cls: type) -> Any:
    def check(value: object) -> str:
        return "ok" if value is None or isinstance(value, cls) else "type"

    return check


def compression_kind(value: object) -> str:
    # A str other than "deflate" is out of range; another type may be either.
    if value is None or value == "deflate":
        return "ok"
    return "value" if isinstance(value, str) else "bad"


# name -> (strategy of candidate values, validity); valid values kept modest
# (seconds below threading.TIMEOUT_MAX: see the scheduler test below).
modest_seconds = st.floats(min_value=1e-3, max_value=1e6)
START_ARGS: dict[str, tuple[st.SearchStrategy[Any], Any]] = {
    "max_pending_requests": (st.one_of(st.integers(-2, 10**6), garbage), count_kind),
    "default_timeout": (st.one_of(modest_seconds, st.floats(), garbage), seconds_kind),
    "outbound_capacity": (st.one_of(st.integers(-2, 10**6), garbage), count_kind),
    "max_batch": (st.one_of(st.integers(-2, 10**4), garbage), count_kind),
    "max_queue": (st.one_of(st.integers(-2, 10**4), garbage), count_kind),
    "max_size": (st.one_of(st.none(), st.integers(-2, 2**40), garbage), optional_count_kind),
    "open_timeout": (st.one_of(modest_seconds, garbage), wait_kind),
    "write_timeout": (st.one_of(st.none(), modest_seconds, garbage), optional_wait_kind),
    "close_timeout": (st.one_of(modest_seconds, garbage), wait_kind),
    "ping_interval": (st.one_of(st.none(), modest_seconds, garbage), optional_wait_kind),
    "compression": (
        st.one_of(st.sampled_from([None, "deflate", "gzip", ""]), garbage),
        compression_kind,
    ),
    "backoff": (
        st.one_of(st.just(WsBackoff(initial=0.05, cap=0.1)), garbage),
        typed_kind(WsBackoff),
    ),
    "endpoint": (st.one_of(st.just(WsEndpoint()), garbage), typed_kind(WsEndpoint)),
}


def start_arg_kind(name: str, value: object) -> str:
    return str(START_ARGS[name][1](value))


@st.composite
def start_arguments(draw: st.DrawFn) -> tuple[Any, dict[str, Any]]:
    url = draw(
        st.one_of(
            st.sampled_from([NOWHERE, NOWHERE + "/path?q=1", "wss://127.0.0.1:9"]),
            st.sampled_from(["", "http://127.0.0.1:9", "127.0.0.1:9", "ws://"]),
            garbage,
        )
    )
    names = draw(st.lists(st.sampled_from(sorted(START_ARGS)), max_size=3, unique=True))
    kwargs = {name: draw(START_ARGS[name][0]) for name in names}
    return url, kwargs


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(arguments=start_arguments())
@example(arguments=(NOWHERE, {"max_pending_requests": True}))
@example(arguments=(NOWHERE, {"max_size": None, "write_timeout": None, "ping_interval": None}))
@example(arguments=(NOWHERE, {"ping_interval": 9223372037.0}))  # > TIMEOUT_MAX: refused
@example(arguments=(b"ws://127.0.0.1:9", {}))
def test_start_accepts_exactly_the_valid_arguments(arguments: tuple[Any, dict[str, Any]]) -> None:
    url, kwargs = arguments
    kinds = [url_kind(url)] + [start_arg_kind(name, value) for name, value in kwargs.items()]
    kwargs.setdefault("backoff", WsBackoff(initial=0.05, cap=0.1))
    before = threading.active_count()
    ref = assert_refused_as(kinds, lambda: WebSocketActor.start(url, **kwargs))
    if ref is None:
        # Refused in the calling thread: no actor, no thread was started.
        assert threading.active_count() <= before
        return
    try:
        stats = ref.ask(WsGetStats(), timeout=10)
        assert isinstance(stats, WsStats)
        assert stats.state in {"connecting", "backoff"}
    finally:
        ref.stop(timeout=10)
    wait_no_library_threads(10.0)


# -- end to end -------------------------------------------------------------------------


ids = st.one_of(st.integers(), st.text(min_size=1, max_size=16))


def echo_result(frame: str | bytes) -> str | None:
    data = json.loads(frame)
    if isinstance(data, dict) and "id" in data:
        return json.dumps({"id": data["id"], "result": data.get("payload")})
    return None


@pytest.fixture(scope="module")
def echo_server() -> Any:
    with WsTestServer(echo_result) as server:
        yield server


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request_id=ids, payload=st.one_of(st.text(max_size=200), st.integers(), st.none()))
@example(request_id="\ud800", payload="\x00")
@example(request_id=2**100, payload="é" * 50)
@example(request_id=" ", payload="")
def test_any_valid_id_and_payload_is_confirmed_with_its_own_reply(
    echo_server: WsTestServer, request_id: int | str, payload: Any
) -> None:
    ref = _shared_actor(echo_server)
    frame = json.dumps({"id": request_id, "payload": payload})
    ok = ref.ask(WsDelegatedRequest(request_id, frame, timeout=10.0), timeout=15)
    assert isinstance(ok, WsDelegatedOk)
    assert ok.request_id == request_id
    assert ok.confirmed is True
    assert json.loads(ok.response or "") == {"id": request_id, "result": payload}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request_id=ids, frame=st.one_of(st.text(max_size=300), st.binary(max_size=300)))
@example(request_id=1, frame="")
@example(request_id=1, frame=b"")
@example(request_id=1, frame="\x00\uffff\U0010ffff")
def test_any_frame_reaches_the_server_byte_for_byte(
    echo_server: WsTestServer, request_id: int | str, frame: str | bytes
) -> None:
    ref = _shared_actor(echo_server)
    echo_server.set_silent(True)
    echo_server.clear_received()
    try:
        ok = ref.ask(
            WsDelegatedRequest(request_id, frame, confirm_mode=WsConfirmMode.SENT, timeout=10.0),
            timeout=15,
        )
        assert ok == WsDelegatedOk(request_id, confirmed=False, response=None)
        received = echo_server.wait_for_received(1)
        assert received == [frame]
        assert type(received[0]) is type(frame)
    finally:
        echo_server.set_silent(False)


_actors: dict[int, pykka.ActorRef[Any]] = {}


def _shared_actor(server: WsTestServer) -> pykka.ActorRef[Any]:
    """One actor per server and test (the conftest stops every actor after a test)."""
    ref = _actors.get(id(server))
    if ref is None or not ref.is_alive():
        ref = WebSocketActor.start(server.url, endpoint=JsonEndpoint())
        _actors[id(server)] = ref
        wait_state(ref, "open", 10)
    return ref


# -- valid but extreme values ---------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_huge_but_valid_timeout_does_not_stop_other_requests_deadlines(
    echo_server: WsTestServer,
) -> None:
    ref = _shared_actor(echo_server)
    echo_server.set_silent(True)
    try:
        huge = ref.ask(WsDelegatedRequest("huge", '{"id": "huge"}', timeout=1e10), block=False)
        wait_until(lambda: echo_server.received[-1:] == ['{"id": "huge"}'], 5, "the huge one")
        with pytest.raises(Unconfirmed):
            ref.ask(WsDelegatedRequest("short", '{"id": "short"}', timeout=0.2), timeout=5)
    finally:
        echo_server.set_silent(False)
        pykka.ActorRegistry.stop_all()
    with pytest.raises(Unconfirmed):
        huge.get(timeout=5)


def test_extreme_valid_numbers_are_accepted() -> None:
    # Values that are valid by the contract must not be refused.
    for value in (5e-324, 1e-9, 1, 10**15, 1e300, Decimal(1), Fraction(1, 2)):
        if isinstance(value, Decimal | Fraction):
            with pytest.raises(TypeError):
                WsDelegatedRequest(1, "x", timeout=value)  # type: ignore[arg-type]
        else:
            assert WsDelegatedRequest(1, "x", timeout=value).timeout == float(value)


HUGE = 1e300  # finite, so valid by the letter of check_timeout

# Seconds over threading.TIMEOUT_MAX (~292 years) cannot be waited on by
# Python's locks, sockets or struct timeval. Each setting must refuse such a
# value (ValueError) or cope with it. (ping_timeout is left out: whether
# websockets ever waits on it depends on how fast the pong comes.)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("open_timeout", {}),
        ("write_timeout", {}),
        ("close_timeout", {"write_timeout": None}),
        ("ping_interval", {}),
        ("default_timeout", {}),
        ("recent_ids_age", {}),
    ],
)
def test_a_huge_number_of_seconds_is_refused_or_works(
    caplog: pytest.LogCaptureFixture, name: str, extra: dict[str, Any]
) -> None:
    caplog.set_level(logging.ERROR)
    with WsTestServer(echo_result) as server:
        try:
            ref = WebSocketActor.start(
                server.url,
                endpoint=JsonEndpoint(),
                backoff=FAST_BACKOFF,
                **{name: HUGE},
                **extra,
            )
        except ValueError:
            return  # refused at once: fine
        try:
            for request_id in (1, 2):
                frame = json.dumps({"id": request_id})
                request = WsDelegatedRequest(request_id, frame, timeout=5.0)
                assert ref.ask(request, timeout=10).confirmed
                server.wait_for_open_connections(1, timeout=10)
                server.close_connections()  # and it must reconnect
            assert ref.ask(WsGetStats(), timeout=10).reconnects >= 1
        finally:
            ref.stop(timeout=10)
        wait_no_library_threads(10)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
