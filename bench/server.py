"""The benchmarks' WebSocket server: plain websockets, in a process of its own.

Usage: ``python bench/server.py [--impl sync|asyncio] [--max-seconds S]``

It listens on 127.0.0.1 on an ephemeral port, prints ``PORT <n>`` on stdout,
and serves until its stdin closes (or ``--max-seconds`` pass). Compression is
off. Per text frame:

- ``{"id": n, ...}`` is a JSON-RPC request: it replies
  ``{"id": n, "result": {"order": "accepted", "sends": k}}``, where k counts
  the frames without an id received on this connection since the previous
  reply. With ``"silent": true`` in the request it replies nothing. The
  method ``"cpu"`` replies ``{"id": n, "result": {"cpu": s}}`` with the CPU
  seconds this process has used (all threads), for the client's accounting.
- ``{"push": n}`` (no id): the server pushes n text frames of exactly
  `PUSH_FRAME_BYTES` bytes of JSON (``{"channel":"ticks","seq":k,...}``, no
  id) back as fast as it can, then goes on reading. The frames are encoded
  once (they are cached by n) and written straight to the socket in chunks,
  so the server costs little per frame and the client is what is measured.
  Sync server only.
- Anything else is a fire-and-forget frame: counted, not answered.

``--impl sync`` (the default) is websockets' threading server: one handler
thread (and one receiving thread) per connection. With many connections its
threads contend for the GIL and the server, not the client, sets the pace;
``--impl asyncio`` serves every connection on one event loop, for the
1,000-connection section.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import socket
import sys
import threading
import time
from typing import Any

from common import raise_fd_limit
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

_REQUEST_PREFIX = '{"id"'
_PUSH_PREFIX = '{"push"'
PUSH_FRAME_BYTES = 100
_PUSH_CHUNK_FRAMES = 512


def push_frame(seq: int) -> str:
    """Return pushed frame number ``seq``: JSON without an id, `PUSH_FRAME_BYTES` long."""
    head = f'{{"channel":"ticks","seq":{seq},"price":101.25,"qty":3,"side":"buy","pad":"'
    return head + "x" * (PUSH_FRAME_BYTES - len(head) - 2) + '"}'


@functools.lru_cache(maxsize=4)
def _push_chunks(count: int) -> tuple[bytes, ...]:
    """The wire bytes of ``count`` pushed frames (unmasked text frames), in chunks."""
    header = bytes([0x81, PUSH_FRAME_BYTES])  # FIN + text, payload length < 126
    frames = [header + push_frame(seq).encode() for seq in range(count)]
    step = _PUSH_CHUNK_FRAMES
    return tuple(b"".join(frames[i : i + step]) for i in range(0, count, step))


def push(ws: ServerConnection, count: int) -> None:
    """Write ``count`` frames to the connection's socket, holding websockets' lock per chunk.

    Written under the connection's protocol lock (as websockets' own
    ``send()`` writes), a chunk at a time so pings and pongs can pass
    between chunks.
    """
    for chunk in _push_chunks(count):
        with ws.protocol_mutex:
            ws.socket.sendall(chunk)


def handle(ws: ServerConnection) -> None:
    """Answer one connection's requests until it closes."""
    sends = 0
    try:
        for message in ws:
            if isinstance(message, str) and message.startswith(_PUSH_PREFIX):
                push(ws, int(json.loads(message)["push"]))
            elif isinstance(message, str) and message.startswith(_REQUEST_PREFIX):
                request = json.loads(message)
                if request.get("silent"):
                    continue
                if request.get("method") == "cpu":
                    ws.send(
                        json.dumps({"id": request["id"], "result": {"cpu": time.process_time()}})
                    )
                    continue
                reply = {"id": request["id"], "result": {"order": "accepted", "sends": sends}}
                ws.send(json.dumps(reply))
                sends = 0
            else:
                sends += 1
    except (ConnectionClosed, OSError):
        pass


async def handle_async(ws: Any) -> None:
    """`handle` for the asyncio server (no push)."""
    sends = 0
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith(_REQUEST_PREFIX):
                request = json.loads(message)
                if request.get("silent"):
                    continue
                if request.get("method") == "cpu":
                    await ws.send(
                        json.dumps({"id": request["id"], "result": {"cpu": time.process_time()}})
                    )
                    continue
                reply = {"id": request["id"], "result": {"order": "accepted", "sends": sends}}
                await ws.send(json.dumps(reply))
                sends = 0
            else:
                sends += 1
    except ConnectionClosed:
        pass


async def serve_async(sock: socket.socket, done: threading.Event, max_seconds: float) -> None:
    """Serve on one event loop until ``done`` is set (or ``max_seconds`` pass)."""
    from websockets.asyncio.server import serve as serve_asyncio  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    # No server pings: with a thousand connections a starved event loop would
    # fail them on its own timeouts; the clients ping (their keepalive is measured).
    async with serve_asyncio(
        handle_async, sock=sock, compression=None, max_size=2**20, ping_interval=None
    ):
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        await loop.run_in_executor(None, done.wait, max_seconds)


def _wait_for_eof(done: threading.Event) -> None:
    try:
        sys.stdin.read()
    finally:
        done.set()


def main() -> None:
    """Serve until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--impl", choices=("sync", "asyncio"), default="sync")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    raise_fd_limit()
    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    port = sock.getsockname()[1]
    if args.impl == "asyncio":
        done = threading.Event()
        threading.Thread(target=_wait_for_eof, args=(done,), name="stdin", daemon=True).start()
        asyncio.run(serve_async(sock, done, args.max_seconds))
        return
    with serve(handle, sock=sock, compression=None, max_size=2**20) as server:
        runner = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
        runner.start()
        print(f"PORT {port}", flush=True)
        done = threading.Event()
        threading.Thread(target=_wait_for_eof, args=(done,), name="stdin", daemon=True).start()
        done.wait(args.max_seconds)
        server.shutdown()
        runner.join(10)


if __name__ == "__main__":
    main()
