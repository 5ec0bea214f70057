"""Fixtures shared by the tests (the helpers they use are in ``support.py``)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
import trustme

from pykka_ws.testing import WsTestServer

from .support import Collector, JsonEndpoint, json_reply


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def server() -> Iterator[WsTestServer]:
    """A `WsTestServer` answering with `json_reply`."""
    with WsTestServer(json_reply) as srv:
        yield srv


@pytest.fixture
def endpoint() -> JsonEndpoint:
    return JsonEndpoint()


@pytest.fixture
def sink() -> queue.Queue[Any]:
    """The queue a `collector` puts what it is told on."""
    return queue.Queue()


@pytest.fixture
def collector(sink: queue.Queue[Any]) -> pykka.ActorRef[Any]:
    """An inbound subscriber (a `Collector`) that puts everything it is told on ``sink``."""
    return Collector.start(sink)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority of the test module's own, trusted by nothing by default."""
    return trustme.CA()
