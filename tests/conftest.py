from __future__ import annotations

from collections.abc import Iterator

import pykka
import pytest

from pykka_ws.testing import WsTestServer

from .support import JsonEndpoint, json_reply


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def server() -> Iterator[WsTestServer]:
    with WsTestServer(json_reply) as srv:
        yield srv


@pytest.fixture
def endpoint() -> JsonEndpoint:
    return JsonEndpoint()
