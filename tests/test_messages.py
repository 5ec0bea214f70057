from __future__ import annotations

import copy
import math
import pickle
import random
import time

import pytest

from pykka_ws import (
    EndpointRejected,
    NotDelivered,
    TooManyPending,
    Unconfirmed,
    WsBackoff,
    WsConfirmMode,
    WsDelegatedRequest,
    WsSend,
    WsSendRefused,
)

pytestmark = pytest.mark.timeout(10)


def test_request_defaults() -> None:
    before = time.monotonic()
    req = WsDelegatedRequest(7, '{"id":7}')
    assert req.confirm_mode is WsConfirmMode.CONFIRMED
    assert req.timeout is None
    assert before <= req.created_at <= time.monotonic()
    assert isinstance(req.fingerprint, str)


def test_default_fingerprint_is_stable_and_distinguishes_text_from_binary() -> None:
    assert WsDelegatedRequest(1, "abc").fingerprint == WsDelegatedRequest(2, "abc").fingerprint
    assert WsDelegatedRequest(1, "abc").fingerprint != WsDelegatedRequest(1, b"abc").fingerprint
    assert WsDelegatedRequest(1, "abc").fingerprint != WsDelegatedRequest(1, "abd").fingerprint


def test_explicit_fingerprint_is_kept() -> None:
    assert WsDelegatedRequest(1, "x", fingerprint="buy-1").fingerprint == "buy-1"
    assert WsDelegatedRequest(1, "x", fingerprint=5).fingerprint == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"request_id": 1.5, "frame": "x"},
        {"request_id": True, "frame": "x"},
        {"request_id": None, "frame": "x"},
        {"request_id": 1, "frame": 5},
        {"request_id": 1, "frame": None},
        {"request_id": 1, "frame": {"id": 1}},
        {"request_id": 1, "frame": "x", "confirm_mode": "confirmed"},
        {"request_id": 1, "frame": "x", "timeout": "1"},
        {"request_id": 1, "frame": "x", "timeout": True},
        {"request_id": 1, "frame": "x", "fingerprint": 1.5},
        {"request_id": 1, "frame": "x", "fingerprint": [1]},
    ],
)
def test_request_with_a_wrong_type_raises_type_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        WsDelegatedRequest(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"request_id": "", "frame": "x"},
        {"request_id": 1, "frame": "x", "timeout": 0},
        {"request_id": 1, "frame": "x", "timeout": -1.0},
        {"request_id": 1, "frame": "x", "timeout": math.nan},
        {"request_id": 1, "frame": "x", "timeout": math.inf},
    ],
)
def test_request_with_a_bad_value_raises_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"request_id|timeout"):
        WsDelegatedRequest(**kwargs)  # type: ignore[arg-type]


def test_send_checks_its_frame() -> None:
    assert WsSend(b"\x00").frame == b"\x00"
    with pytest.raises(TypeError, match="frame must be str"):
        WsSend(42)  # type: ignore[arg-type]


def test_backoff_grows_by_factor_up_to_cap() -> None:
    backoff = WsBackoff(initial=0.5, factor=2.0, cap=3.0)
    assert [backoff.ceiling(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.ceiling(10_000) == 3.0
    rng = random.Random(1)
    assert all(0.0 <= backoff.delay(n, rng) <= backoff.ceiling(n) for n in range(50))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"initial": 0}, ValueError),
        ({"factor": 0.5}, ValueError),
        ({"factor": math.inf}, ValueError),
        ({"cap": 0.1, "initial": 1.0}, ValueError),
        ({"reset_after": -1}, ValueError),
        ({"initial": "1"}, TypeError),
        ({"factor": None}, TypeError),
    ],
)
def test_backoff_rejects_bad_values(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        WsBackoff(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc",
    [
        NotDelivered("gone", request_id=1),
        Unconfirmed("maybe", request_id="a", written=True),
        TooManyPending("full", limit=3),
        EndpointRejected("no", request_id=2, response='{"error":1}', reason="funds"),
        WsSendRefused("full", capacity=9),
    ],
)
def test_outcome_exceptions_survive_copy_and_pickle(exc: Exception) -> None:
    for clone in (copy.copy(exc), pickle.loads(pickle.dumps(exc))):  # noqa: S301
        assert type(clone) is type(exc)
        assert clone.args == exc.args
        assert vars(clone) == vars(exc)
