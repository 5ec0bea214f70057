"""The JSON-RPC dialect the benchmarks speak, for pykka-ws and for raw websockets alike."""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

import common
from websockets.sync.client import ClientConnection, connect

from pykka_ws import WebSocketActor, WsEndpoint, WsGetStats, WsRequestMatch

if TYPE_CHECKING:
    import pykka

LOOPBACK = common.LOOPBACK
_PAUSE = threading.Event()  # never set: waiting on it is a plain pause


class JsonRpcEndpoint(WsEndpoint):
    """Replies are ``{"id": n, "result": ...}`` or ``{"id": n, "error": ...}``."""

    def match_response(self, frame: str | bytes) -> WsRequestMatch | None:
        """Pair a reply with its request id."""
        reply = json.loads(frame)
        if isinstance(reply, dict) and "id" in reply:
            return WsRequestMatch(reply["id"], ok="error" not in reply)
        return None


def request_frame(request_id: int, *, silent: bool = False) -> str:
    """Return a JSON-RPC request frame; a silent one gets no reply from bench/server.py."""
    if silent:
        return f'{{"id":{request_id},"method":"buy","params":{{"qty":1}},"silent":true}}'
    return f'{{"id":{request_id},"method":"buy","params":{{"qty":1}}}}'


def notice_frame(seq: int) -> str:
    """Return a fire-and-forget frame (no id: the server counts it, never replies)."""
    return f'{{"method":"tick","params":{{"seq":{seq}}}}}'


def reply_id(frame: str | bytes) -> Any:
    """Return the id of a reply frame (what a raw client must parse to match it)."""
    return json.loads(frame)["id"]


def ws_url(port: int) -> str:
    """Return the benchmark server's URL."""
    return f"ws://{LOOPBACK}:{port}"


def start_actor(url: str, **kwargs: Any) -> pykka.ActorRef[WebSocketActor]:
    """Start a `WebSocketActor` without compression and wait until it is connected."""
    kwargs.setdefault("compression", None)
    kwargs.setdefault("endpoint", JsonRpcEndpoint())
    ref = WebSocketActor.start(url, **kwargs)
    wait_open(ref)
    return ref


def wait_open(ref: pykka.ActorRef[WebSocketActor], timeout: float = 20.0) -> None:
    """Wait until the actor's connection is open; raise `TimeoutError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if ref.ask(WsGetStats(), timeout=timeout).state == "open":
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not connected after {timeout} s")
        _PAUSE.wait(0.002)


def raw_connect(url: str, **kwargs: Any) -> ClientConnection:
    """Open a raw websockets connection with the settings the actor uses."""
    kwargs.setdefault("compression", None)
    kwargs.setdefault("proxy", None)
    kwargs.setdefault("open_timeout", 20)
    kwargs.setdefault("legacy", True)  # connect directly, no context manager
    return connect(url, **kwargs)


def push_request(count: int) -> str:
    """Return the frame that asks bench/server.py to push ``count`` frames (it has no id)."""
    return f'{{"push":{count}}}'
